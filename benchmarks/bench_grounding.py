"""`grain bench grounding`: does grounding help? GRAIN vs CLIP-only on a miniature of real images.

    grain bench grounding [--config configs/bench-grounding.yaml] [--output DIR] [--smoke]
                          [--seeds 0 1 2] [--arms clip grain] [--set key=value ...]

1. Classes: emoji of the configured subsets (animals, food) split by a fixed seed into *seen* and
   *held-out* classes. Training uses one style (Google) of the seen classes only.
2. Training corpus (evaluation.grounded_corpus): 2–4 objects per canvas (seen emoji + Tux Paint
   cut-outs whose names share no word with a held-out class), exact boxes, a caption naming every
   object, one description per object; shards in the annotation schema (grain.common.schema).
3. Both arms train through the project's trainer (``trainers.config.load_config`` →
   ``trainers.run.run_training``) with identical run configs except ``model.kind`` (grain | clip), for
   each seed.
4. Each checkpoint is evaluated zero-shot (``evaluation.runner.run_eval``) on single-object canvases:
   ``<style>-<split>`` sets, e.g. ``twitter-seen`` (held-out style), ``google-unseen`` (held-out
   classes), ``twitter-unseen`` (both), ``google-seen`` (in-distribution reference); variants
   ``names``, ``descriptors`` and ``fusion_a<α>`` (GRAIN only). Sets, templates and α are fixed in
   the config before any result is seen.
5. ``summary.md`` / ``summary.json`` / ``summary.png``: top-1 mean ± std over seeds per set and
   variant, and GRAIN − CLIP (GRAIN's variant vs CLIP's ``descriptors`` for fusion rows).

Resumable: each (arm, seed) is skipped when its ``eval/results.json`` exists; an interrupted training
run resumes from its last checkpoint (trainers). Output layout under ``--output``::

    corpus/  eval-sets/<set>/  runs/<arm>-seed<s>/{train,eval}/  summary.{md,json,png}  bench.json
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from benchmarks.bench_config import ClutterSection, is_clutter, load_bench_config, parse_set_name  # noqa: F401
from benchmarks.bench_runs import BenchSpec, bench_main, prepared, run_one, train_config_for  # noqa: F401
from benchmarks.bench_summary import localisation_line, summarize, summary_markdown, summary_png  # noqa: F401

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "bench-grounding.yaml"
SMOKE_CONFIG = CONFIG_DIR / "bench-grounding-smoke.yaml"
SECTIONS = ("bench", "classes", "corpus", "eval", "train")  # benchmarks/bench_config.py types them


# ---------------------------------------------------------------------------------------------
# Preparation: split, corpus, evaluation sets
# ---------------------------------------------------------------------------------------------

# eval keys the prepared corpus and sets depend on: the first ones always enter the digest (None when
# unset), the later ones only when a config sets them, so configs written before they existed keep theirs.
PREP_KEYS_ALWAYS = ("sets", "per_class", "seed", "canvas", "min_scale", "max_scale", "photo_background_prob")
PREP_KEYS_WHEN_SET = ("clutter", "localisation_canvases", "localisation_seed")


def prep_digest(cfg: dict) -> str:
    """What the corpus and the evaluation sets depend on (not training or scoring options)."""
    from evaluation.grounded_corpus import FORMAT_VERSION, spec_digest

    e = cfg["eval"]
    ev = {**{k: e.get(k) for k in PREP_KEYS_ALWAYS}, **{k: e[k] for k in PREP_KEYS_WHEN_SET if k in e}}
    return spec_digest(FORMAT_VERSION, cfg["classes"], cfg["corpus"], ev)


def prepare(cfg: dict, out: str, progress: bool = True) -> dict:
    """Build (or reuse) the corpus and the evaluation sets; returns the preparation record.

    The record is saved as ``out/prepare.json`` with paths relative to ``out``; when its digest
    matches the config, it is reused as is (no npm packages or Tux Paint needed: a prepared output
    folder can be copied to another machine and trained there)."""
    return prepared(out, prep_digest(cfg), lambda: _build_prepared(cfg, out, progress))


def _build_prepared(cfg: dict, out: str, progress: bool) -> dict:
    from evaluation import grounded_corpus as gc
    from evaluation import grounded_evalsets as ge
    from evaluation.datasets import ensure_npm_packages, node_modules_dir
    from evaluation.emoji import descriptors_for, load_emoji_metadata, select

    c, e = cfg["classes"], cfg["eval"]
    train_style = c.get("train_style", "google")
    sets = [parse_set_name(s) for s in e.get("sets", [])]
    if not sets:
        raise ValueError(f"{cfg['_path']}: eval.sets is empty")
    styles = sorted({train_style, *(s for s, _ in sets)})
    ensure_npm_packages(["emoji-datasource", "emojibase-data"] + [f"emoji-datasource-{s}" for s in styles if s != "openmoji"])
    meta = load_emoji_metadata(node_modules_dir())
    by_key = {}
    for sub in c.get("subsets", ["animals", "food"]):
        chosen = select(meta, sub, train_style)
        chosen = [x for x in chosen if all(s in x.images for s in styles)]  # every style must show every class
        by_key.update({x.key: x for x in chosen[: c.get("limit_per_subset") or None]})
    names = {}
    for k in sorted(by_key):  # one class per name across subsets
        names.setdefault(by_key[k].name, k)
    keys = sorted(names.values())
    seen, held = gc.class_split(keys, float(c.get("holdout_frac", 0.25)), int(c.get("split_seed", 0)))
    held_words = set().union(*(gc.words(by_key[k].name) for k in held)) if held else set()
    stamps = gc.tuxpaint_objects(exclude_words=held_words) if c.get("tuxpaint", True) else []
    if c.get("tuxpaint_limit"):
        stamps = stamps[: int(c["tuxpaint_limit"])]
    spec = gc.CorpusSpec.from_dict(cfg["corpus"])
    manifest = gc.build_corpus(os.path.join(out, "corpus"), spec, gc.emoji_objects([by_key[k] for k in seen], train_style),
                               stamps, progress=progress)
    descriptors = {by_key[k].name: descriptors_for(by_key[k]) for k in keys}
    set_paths = {}
    canvas = int(e.get("canvas") or spec.canvas)
    photo_prob = float(e["photo_background_prob"] if e.get("photo_background_prob") is not None else spec.photo_background_prob)
    clutter = {**dataclasses.asdict(ClutterSection()), **e.get("clutter", {})}
    for name, (style, split) in zip(e["sets"], sets):
        objs = gc.emoji_objects([by_key[k] for k in (seen if split == "seen" else held)], style)
        path = os.path.join(out, "eval-sets", name)
        if is_clutter(name):
            # Distractors from outside the label space, sharing no word with any of its classes: Tux Paint
            # cut-outs, and for held-out classes also the seen classes' emoji in the same style.
            label_words = set().union(*(gc.words(o.name) for o in objs))
            pool = [o for o in stamps + (gc.emoji_objects([by_key[k] for k in seen], style) if split == "unseen" else [])
                    if not gc.words(o.name) & label_words]
            set_paths[name] = ge.build_clutter_folder(
                path, objs, pool, descriptors, int(clutter[f"per_class_{split}"]), int(clutter["seed"]), canvas,
                (float(clutter["target_min_scale"]), float(clutter["target_max_scale"])),
                (float(clutter["distractor_min_scale"]), float(clutter["distractor_max_scale"])),
                tuple(int(n) for n in clutter["distractors"]), photo_prob)
        else:
            set_paths[name] = ge.build_eval_folder(
                path, objs, descriptors, int(e.get("per_class", 2)), int(e.get("seed", 0)), canvas,
                float(e.get("min_scale", 0.3)), float(e.get("max_scale", 0.6)), photo_prob)
    localisation = None
    if int(e.get("localisation_canvases", 0)):
        # Multi-object canvases never trained on: the corpus's own spec, another seed, one shard.
        n = int(e["localisation_canvases"])
        loc_spec = gc.CorpusSpec.from_dict({**cfg["corpus"], "images": n, "shard_size": n, "seed": int(e["localisation_seed"])})
        localisation = os.path.join(out, "localisation")
        gc.build_corpus(localisation, loc_spec, gc.emoji_objects([by_key[k] for k in seen], train_style), stamps,
                        progress=progress)
    return {"seen_classes": len(seen), "heldout_classes": len(held), "heldout_names": [by_key[k].name for k in held],
            "tuxpaint_objects": len(stamps), "corpus": {k: manifest[k] for k in ("digest", "files", "spec")},
            "localisation": localisation,
            "eval_sets": set_paths}


# ---------------------------------------------------------------------------------------------
# Summary and CLI (the runs themselves: benchmarks/bench_runs.py)
# ---------------------------------------------------------------------------------------------

def _describe(prep: dict) -> str:
    return (f"{prep['seen_classes']} seen / {prep['heldout_classes']} held-out classes, {prep['tuxpaint_objects']} "
            f"Tux Paint objects, corpus {prep['corpus']['spec']['images']} images")


def finish(runs: dict, cfg: dict, out: str, command: str, prep: dict, t0: float) -> None:
    """summary.md / summary.json / summary.png of the runs."""
    summary = summarize(runs, cfg)
    md = summary_markdown(summary, command)
    with open(os.path.join(out, "summary.md"), "w", encoding="utf-8") as f:
        f.write(md)
    with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as f:
        json.dump({**summary, "command": command, "config": {k: v for k, v in cfg.items() if k != "_path"},
                   "config_path": cfg["_path"], "prepare": prep, "wall_s": time.time() - t0}, f, indent=1)
    summary_png(summary, os.path.join(out, "summary.png"))
    print(md, flush=True)
    print(f"[bench] done in {time.time() - t0:.0f} s → {out}/summary.md, summary.png", flush=True)


SPEC = BenchSpec(name="grounding", module="benchmarks.bench_grounding", doc=__doc__, default_config=DEFAULT_CONFIG,
                 smoke_config=SMOKE_CONFIG, load=load_bench_config, prepare=prepare, describe=_describe, finish=finish)


def main(argv: list[str] | None = None) -> int:
    """`grain bench grounding ...` (``argv[0]`` is the benchmark's name)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "grounding":
        print("usage: grain bench grounding|novel-concepts [--help]", file=sys.stderr)
        return 2
    return bench_main(SPEC, argv[1:])


if __name__ == "__main__":
    sys.exit(main(["grounding", *sys.argv[1:]]))
