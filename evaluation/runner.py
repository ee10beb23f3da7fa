"""`run_eval(cfg) -> run dict`: zero-shot classification, retrieval and novel concepts for one checkpoint.

Per classification set, variants (docs/method.md §5):
- ``names``: prompts = templates(class name); class vector = mean of normalised prompt embeddings;
- ``descriptors``: prompts = template(c) + descriptor sentence, for every template × descriptor
  (grain.zeroshot's rule); classes without descriptors keep their name prompts;
- ``fusion_a<α>`` for each α < 1 (GRAIN checkpoints only): α·s_global(descriptors) + (1 − α)·s_region,
  s_region = mean over region queries of max over the class's descriptors of cosine similarity
  (a class without descriptors uses its name as its one descriptor). α = 1 is the ``descriptors`` row.
Per retrieval set: recall@1/5/10 both ways. With ``train_manifest``: seen/unseen split (evaluation.novelty).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict

import torch
from tqdm import tqdm

from evaluation.config import EvalConfig
from evaluation.evalsets import ClassificationSet, RetrievalSet, decode_ref, load_evalset
from evaluation.metrics import classification_metrics, retrieval_metrics


def _resolve_dataset(ref: str, build_missing: bool) -> str:
    if os.path.exists(os.path.expanduser(ref)):
        return ref
    from evaluation import datasets as ds

    try:
        ds.dataset_spec(ref)
    except ValueError:
        raise FileNotFoundError(f"{ref}: neither a data set path nor a known local set ({', '.join(ds.all_set_names())})") from None
    if build_missing:
        return ds.ensure_dataset(ref)
    path = os.path.join(ds.datasets_dir(), ref)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{ref}: not built; run `grain data build --sets {ref}`")
    return path


@torch.no_grad()
def encode_images(model, refs, batch_size: int, device: str = "cpu", desc: str = "images", progress: bool = True) -> dict:
    """ImageRefs → ``{"image_embed" [N, D], "region_embed" [N, Q, D] | None, "region_boxes" [N, Q, 4] | None}``
    (embeddings unnormalised; boxes normalised xyxy in [0, 1] of the decoded image)."""
    from grain import box_ops
    from grain.data import preprocess_image

    size = model.cfg.image_size
    img, reg, boxes = [], [], []
    for i in tqdm(range(0, len(refs), batch_size), desc=desc, leave=False, disable=not progress or len(refs) <= batch_size):
        x = torch.stack([preprocess_image(decode_ref(r), size) for r in refs[i:i + batch_size]]).to(device)
        out = model.encode_image(x)
        img.append(out["image_embed"].float().cpu())
        if out.get("region_embed") is not None:
            reg.append(out["region_embed"].float().cpu())
            boxes.append(box_ops.box_cxcywh_to_xyxy(out["pred_boxes"].float().cpu()).clamp(0, 1))
    return {"image_embed": torch.cat(img), "region_embed": torch.cat(reg) if reg else None,
            "region_boxes": torch.cat(boxes) if boxes else None}


@torch.no_grad()
def encode_texts(model, texts: Sequence[str], batch_size: int = 256, device: str = "cpu",
                 context_length: int | None = None) -> torch.Tensor:
    """Texts → [N, D] unnormalised text embeddings (grain.tokenizer, the model's context length)."""
    from grain.tokenizer import tokenize, trim_token_padding

    length = context_length or model.cfg.context_length
    uniq = list(dict.fromkeys(texts))  # prompt sets repeat texts (shared descriptors): encode each once
    outs = []
    for i in range(0, len(uniq), batch_size):
        # Trim the shared zero padding: under the causal mask the EOT token never attends to later
        # positions, so the embedding is unchanged and short prompts cost 3–5× less.
        tok = trim_token_padding(tokenize(uniq[i:i + batch_size], context_length=length))
        outs.append(model.encode_text(tok.to(device)).float().cpu())
    if not outs:
        return torch.zeros(0, model.cfg.embed_dim)
    emb = torch.cat(outs)
    index = {t: i for i, t in enumerate(uniq)}
    return emb[torch.tensor([index[t] for t in texts])]


def _templates(cfg: EvalConfig, ds: ClassificationSet) -> list[str]:
    """Templates in grain.zeroshot's ``{}`` form (clip_benchmark files write ``{c}``)."""
    from grain import zeroshot as zs

    raw = cfg.templates or ds.templates or list(zs.TEMPLATES)
    return [t.replace("{c}", "{}") for t in raw]


def eval_classification(model, ds: ClassificationSet, cfg: EvalConfig, model_name: str) -> tuple[list[dict], torch.Tensor]:
    """Result records for every variant, and the scores [N, C] used for the novelty split.

    Text side and scores come from grain.zeroshot (class_embeddings / zeroshot_scores).
    """
    from grain import zeroshot as zs

    t0 = time.time()
    enc = encode_images(model, ds.images, cfg.batch_size, cfg.device, desc=ds.name, progress=cfg.progress)
    labels = torch.tensor(ds.labels)
    templates = _templates(cfg, ds)
    base = {"dataset": ds.name, "model": model_name, "task": ds.task, "classes": len(ds.classnames), "layout": ds.layout}
    records = []

    def record(variant: str, scores: torch.Tensor, **extra):
        records.append({**base, "variant": variant, "metrics": classification_metrics(scores, labels), **extra})

    ce_names = zs.class_embeddings(model, ds.classnames, None, templates, progress=cfg.progress and len(ds.classnames) > 50)
    final = zs.zeroshot_scores(enc, ce_names, 1.0)
    record("names", final)
    if ds.descriptors:
        ce_desc = zs.class_embeddings(model, ds.classnames, ds.descriptors, templates, progress=cfg.progress and len(ds.classnames) > 50)
        final = zs.zeroshot_scores(enc, ce_desc, 1.0)
        record("descriptors", final)
        if enc["region_embed"] is not None:
            for a in (a for a in cfg.alphas if a < 1.0):
                record(f"fusion_a{a:g}", zs.zeroshot_scores(enc, ce_desc, a), alpha=a)
    for r in records:
        r["seconds"] = round(time.time() - t0, 2)
    return records, final


def eval_retrieval(model, ds: RetrievalSet, cfg: EvalConfig, model_name: str) -> dict:
    enc = encode_images(model, ds.images, cfg.batch_size, cfg.device, desc=ds.name, progress=cfg.progress)
    txt = encode_texts(model, ds.captions, cfg.batch_size * 4, cfg.device)
    return {"dataset": ds.name, "model": model_name, "task": ds.task, "variant": "retrieval", "layout": ds.layout,
            "metrics": retrieval_metrics(enc["image_embed"], txt, ds.caption_image), "skipped_rows": ds.skipped}


def load_model(checkpoint: str, device: str = "cpu"):
    """A ``final.pt`` or a folder written by `grain export` → (GrainModel in eval mode, its config, extra)."""
    from grain.checkpoint import load_checkpoint
    from grain.openclip_format import is_export_folder

    if not os.path.exists(checkpoint):
        raise FileNotFoundError(f"{checkpoint}: checkpoint not found")
    if is_export_folder(checkpoint):
        from grain.hub import load_model as load_folder

        model, mcfg = load_folder(checkpoint)
        return model.to(device).eval(), mcfg, {}
    model, mcfg, extra = load_checkpoint(checkpoint)
    return model.to(device).eval(), mcfg, extra


def run_eval(cfg: EvalConfig | dict, model=None) -> dict:
    """Evaluate ``cfg.checkpoint`` on ``cfg.datasets``; write results.json/.md/.png under ``cfg.output``.

    ``model``: an already loaded GrainModel (skips loading the checkpoint; tests and flows).
    Returns the run dict (see evaluation.report for its layout) with ``outputs`` (written paths).
    """
    from evaluation import report

    cfg = EvalConfig.from_dict(cfg) if isinstance(cfg, dict) else cfg
    if not cfg.datasets:
        raise ValueError("no data sets to evaluate (give --dataset PATH or a local set name)")
    paths = [_resolve_dataset(d, cfg.build_missing) for d in cfg.datasets]  # fail fast on a bad path
    mcfg = None
    if model is None:
        model, mcfg, _ = load_model(cfg.checkpoint, cfg.device)
    model.eval()
    name = cfg.model_name or os.path.splitext(os.path.basename(os.path.normpath(cfg.checkpoint)))[0]
    texts = None
    if cfg.train_manifest:
        from evaluation.novelty import load_training_texts

        texts = load_training_texts(cfg.train_manifest)
    run = {"model": name, "checkpoint": cfg.checkpoint, "kind": getattr(model.cfg, "kind", None),
           "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "config": asdict(cfg), "results": [], "novelty": {}}
    for p in paths:
        ds = load_evalset(p).limit(cfg.limit)
        if isinstance(ds, ClassificationSet):
            recs, scores = eval_classification(model, ds, cfg, name)
            run["results"] += recs
            if texts is not None:
                from evaluation.novelty import novelty_report

                run["novelty"][ds.name] = novelty_report(ds.classnames, ds.descriptors, texts, scores, torch.tensor(ds.labels))
        else:
            run["results"].append(eval_retrieval(model, ds, cfg, name))
    run["outputs"] = report.write_outputs(run, cfg.output)
    return run
