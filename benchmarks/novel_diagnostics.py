"""Why a novel class is or is not recognised: diagnostics of one `grain bench novel-concepts` checkpoint.

Per single-object evaluation set of never-trained classes (``novel-*``, ``dev-*``), from the same image encodings and
class vectors as the zero-shot scores (grain.zeroshot):

- ``binding_within_<variant>``: over the images of classes whose binding sibling (the same words, two parts'
  colours swapped) is in the set, the share scored above that sibling (chance 0.5; a bag of words: 0.5);
- ``binding_vs_seen_<variant>``: the same against the seen class a novel class was made from by such a swap;
- ``global_<colour|pattern|form>``: what the global image embedding knows of each part. For every part of
  the image's class, candidates = that part's description with one attribute changed to each value of the
  vocabulary, as prompts ("a photo of a creature, which has a round blue head."); the share of (image,
  part) where the true value scores highest (chance 1/8 colour, 1/3 pattern, 1/3 or 1/2 form);
- GRAIN only: ``region_localised``: share of true parts with a region box at IoU ≥ 0.5;
  ``region_<attribute>``: the same probe with that region and the bare descriptions (as L_rd trained them);
  ``region_own_description``: that region's most similar description among every part description of every
  class is the part's own;
- ``errors_sibling``: share of the primary variant's errors that pick the binding sibling;
  ``errors_shared_parts`` / ``errors_shared_parts_chance``: part descriptions the wrongly picked class shares
  with the true one, against a wrong class picked at random.

Written once per run as ``runs/<arm>-seed<s>/eval/diagnostics.json``.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace

import torch
import torch.nn.functional as F

from benchmarks.concepts import COLOURS, FORMS, PATTERNS, Concept, Part
from benchmarks.novel_config import parse_novel_set

ATTRIBUTES = ("colour", "pattern", "form")
PROBE_SUBJECT = "creature"  # the word the dense captions use for every class


def load_concepts(path: str) -> list[Concept]:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)["classes"]
    return [Concept(c["name"], tuple(Part(**p) for p in c["parts"]), c["split"], c["sibling"]) for c in data]


def _values(p: Part, attr: str) -> tuple[str, ...]:
    return {"colour": COLOURS, "pattern": PATTERNS, "form": FORMS[p.part]}[attr]


def candidates(p: Part, attr: str) -> list[Part]:
    """``p`` with ``attr`` set to each value of the vocabulary (the true one included)."""
    return [replace(p, **{attr: v}) for v in _values(p, attr)]


@torch.no_grad()
def _text_vectors(model, descs: list[str], templates: list[str]) -> tuple[dict, dict]:
    """(prompt vectors: description → mean of its normalised template prompts about a ``creature``, raw vectors:
    description → normalised embedding of the bare text at the description length)."""
    from evaluation.runner import encode_texts
    from grain.zeroshot import descriptor_sentence

    prompts = [t.format(f"{PROBE_SUBJECT}, {descriptor_sentence(d)}") for d in descs for t in templates]
    emb = F.normalize(encode_texts(model, prompts), dim=-1).view(len(descs), len(templates), -1).mean(1)
    raw = F.normalize(encode_texts(model, descs, context_length=model.cfg.desc_context_length), dim=-1)
    return dict(zip(descs, F.normalize(emb, dim=-1))), dict(zip(descs, raw))


def _variant_scores(model, enc: dict, classes: list[Concept], templates: list[str], alphas: list[float]) -> dict:
    """{variant: scores [N, C]} as evaluation.runner computes them (names, descriptors, fusion_a<α>)."""
    from grain import zeroshot as zs

    names = [c.name for c in classes]
    out = {"names": zs.zeroshot_scores(enc, zs.class_embeddings(model, names, None, templates), 1.0)}
    ce = zs.class_embeddings(model, names, {c.name: c.descriptions() for c in classes}, templates)
    out["descriptors"] = zs.zeroshot_scores(enc, ce, 1.0)
    if enc.get("region_embed") is not None:
        for a in (a for a in alphas if a < 1.0):
            out[f"fusion_a{a:g}"] = zs.zeroshot_scores(enc, ce, a)
    return out


def _binding(scores: dict, labels: torch.Tensor, label_names: list[str], siblings: dict[str, str], prefix: str) -> dict:
    """Share of images whose true class outscores its sibling (both columns of ``scores``), per variant."""
    index = {n: i for i, n in enumerate(label_names)}
    rows = [(i, index[label_names[int(y)]], index[siblings[label_names[int(y)]]]) for i, y in enumerate(labels)
            if label_names[int(y)] in siblings and siblings[label_names[int(y)]] in index]
    if not rows:
        return {}
    i, t, s = (torch.tensor(x) for x in zip(*rows))
    return {f"{prefix}_{v}": float((sc[i, t] > sc[i, s]).float().mean()) for v, sc in scores.items()
            if v != "names"} | {f"{prefix}_images": len(rows)}


def _matched_region(boxes: torch.Tensor, part_box: list[float]) -> tuple[int, float]:
    from grain import box_ops

    iou = box_ops.box_iou(boxes, torch.tensor([part_box]))[0][:, 0]
    q = int(iou.argmax())
    return q, float(iou[q])


def _probes(enc: dict, ds, root: str, classes: dict[str, Concept], prompt_vec: dict, raw_vec: dict,
            vocabulary: list[str]) -> dict:
    """The global (and, with regions, the region) attribute probes and own-description retrieval."""
    with open(os.path.join(root, ".bench-set.json"), encoding="utf-8") as f:
        info = json.load(f)["image_info"]
    img = F.normalize(enc["image_embed"], dim=-1)
    reg = F.normalize(enc["region_embed"], dim=-1) if enc.get("region_embed") is not None else None
    vocab = torch.stack([raw_vec[d] for d in vocabulary])
    hits: dict[str, list[float]] = {}
    for n, (ref, y) in enumerate(zip(ds.images, ds.labels)):
        c = classes[ds.classnames[y]]
        boxes = dict(info[os.path.relpath(ref.path, root)]["parts"]) if reg is not None else {}
        for p in c.parts:
            q = None
            if reg is not None:
                q, iou = _matched_region(enc["region_boxes"][n], boxes[p.description()])
                hits.setdefault("region_localised", []).append(float(iou >= 0.5))
                q = q if iou >= 0.5 else None
            if q is not None:
                own = int((reg[n, q] @ vocab.T).argmax())
                hits.setdefault("region_own_description", []).append(float(vocabulary[own] == p.description()))
            for attr in ATTRIBUTES:
                cands = [x.description() for x in candidates(p, attr)]
                truth = cands.index(p.description())
                g = torch.stack([prompt_vec[d] for d in cands]) @ img[n]
                hits.setdefault(f"global_{attr}", []).append(float(int(g.argmax()) == truth))
                if q is not None:
                    r = torch.stack([raw_vec[d] for d in cands]) @ reg[n, q]
                    hits.setdefault(f"region_{attr}", []).append(float(int(r.argmax()) == truth))
    return {k: sum(v) / len(v) for k, v in hits.items() if v} | {"probe_parts": sum(len(classes[ds.classnames[y]].parts)
                                                                                    for y in ds.labels)}


def _errors(scores: torch.Tensor, labels: torch.Tensor, classes: list[Concept]) -> dict:
    """What the wrong picks of one variant have in common with the truth."""
    pred = scores.argmax(1)
    wrong = (pred != labels).nonzero().flatten().tolist()
    if not wrong:
        return {"errors": 0}
    sets = [set(c.descriptions()) for c in classes]
    sib = [next((j for j, o in enumerate(classes) if o.name == c.sibling), None) for c in classes]
    t = [int(labels[i]) for i in wrong]
    p = [int(pred[i]) for i in wrong]
    shared = [len(sets[a] & sets[b]) for a, b in zip(t, p)]
    chance = [sum(len(sets[a] & sets[b]) for b in range(len(classes)) if b != a) / (len(classes) - 1) for a in t]
    with_sib = [(a, b) for a, b in zip(t, p) if sib[a] is not None]
    return {"errors": len(wrong), "errors_shared_parts": sum(shared) / len(shared),
            "errors_shared_parts_chance": sum(chance) / len(chance),
            "errors_sibling": sum(sib[a] == b for a, b in with_sib) / len(with_sib) if with_sib else float("nan")}


def diagnose_set(model, root: str, concepts: list[Concept], split: str, templates: list[str], alphas: list[float],
                 primary: str, batch_size: int = 64) -> dict:
    """Every diagnostic of the module docstring on one prepared set of never-trained classes."""
    from evaluation.evalsets import load_evalset
    from evaluation.runner import encode_images

    ds = load_evalset(root)
    by_name = {c.name: c for c in concepts}
    classes = [by_name[n] for n in ds.classnames]
    enc = encode_images(model, ds.images, batch_size, progress=False)
    labels = torch.tensor(ds.labels)
    scores = _variant_scores(model, enc, classes, templates, alphas)
    out = _binding(scores, labels, ds.classnames, {c.name: c.sibling for c in classes if c.sibling}, "binding_within")
    seen_sibs = [by_name[c.sibling] for c in classes if c.sibling and by_name[c.sibling].split == "seen"]
    if seen_sibs:  # the seen classes these novel ones were made from, added to the label space for this check
        wide = classes + list({c.name: c for c in seen_sibs}.values())
        wide_scores = _variant_scores(model, enc, wide, templates, alphas)
        out |= _binding(wide_scores, labels, [c.name for c in wide],
                        {c.name: c.sibling for c in classes if c.sibling in {s.name for s in seen_sibs}}, "binding_vs_seen")
    vocabulary = sorted({d for c in concepts for d in c.descriptions()})
    needed = sorted(set(vocabulary) | {x.description() for c in classes for p in c.parts for a in ATTRIBUTES
                                       for x in candidates(p, a)})
    prompt_vec, raw_vec = _text_vectors(model, needed, templates)
    out |= _probes(enc, ds, root, by_name, prompt_vec, raw_vec, vocabulary)
    out |= _errors(scores[primary], labels, classes)
    return out


def run_diagnostics(run: dict, cfg: dict, prep: dict, run_dir: str) -> dict:
    """``run["diagnostics"]`` = {set: diagnostics} for the never-trained single-object sets (cached in
    eval/diagnostics.json; clutter sets are left out: their parts are a few pixels wide, and the cost would double)."""
    path = os.path.join(run_dir, "eval", "diagnostics.json")
    if not os.path.exists(path):
        from evaluation.runner import load_model

        out_dir = os.path.dirname(os.path.dirname(run_dir))
        concepts = load_concepts(os.path.join(out_dir, prep.get("concepts", "concepts.json")))
        model, _, _ = load_model(os.path.join(run_dir, "train", "final.pt"))
        e = cfg["eval"]
        from grain.zeroshot import TEMPLATES

        templates = e.get("templates") or list(TEMPLATES)
        res = {s: diagnose_set(model, prep["eval_sets"][s], concepts, parse_novel_set(s)[0], templates,
                               [float(a) for a in e.get("alphas", [1.0, 0.5, 0.0])], e.get("primary_variant", "descriptors"),
                               int(e.get("batch_size", 64)))
               for s in e["sets"] if parse_novel_set(s)[0] != "seen" and not parse_novel_set(s)[2]}
        with open(path, "w", encoding="utf-8") as f:
            json.dump(res, f, indent=1)
    with open(path, encoding="utf-8") as f:
        run["diagnostics"] = json.load(f)
    return run


__all__ = ["candidates", "diagnose_set", "load_concepts", "run_diagnostics"]
