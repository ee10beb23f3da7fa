"""`grain bench novel-concepts`: can a model recognise a class it never saw by name, from its description?

    grain bench novel-concepts [--config configs/bench-novel-concepts.yaml] [--smoke] [--seeds 0 1 2]
                               [--jobs N] [--arms clip grain] [--set key=value ...] --output DIR

The only route to a novel class is its description (classes: benchmarks/concepts.py):

1. Classes are creatures made of 3–5 described parts ("a round red striped head", "long blue legs").
   *Novel* classes never appear in training images or text; every one of their part descriptions does,
   so only the combination is new. Some differ from a seen class or from each other only in which part
   carries which colour. Names are nonce strings; a novel name shares no BPE token with any training text.
2. Training corpus (benchmarks/novel_corpus.py): canvases with 1–2 seen creatures and 0–2 real cut-outs
   (Tux Paint), written in the annotation shard schema: the alt-text names the class, the dense caption
   lists every part and attribute, the descriptions are the parts', each with its exact box.
3. Both arms train through the project's trainer on the same rows (50/50 caption draw) with run configs
   that differ only in ``model.kind``, for each seed (benchmarks/bench_runs.py).
4. Each checkpoint is evaluated zero-shot (evaluation.runner) on ``<seen|novel|dev>-<flat|soft>[-clutter]``
   sets: ``flat`` is the training rendering, ``soft`` one never used in training; ``dev`` is a second group
   of never-trained classes for validating recipe choices (never ``novel``). Variants ``names`` (the leakage
   control on novel sets), ``descriptors`` and ``fusion_a<α>`` (GRAIN). Diagnostics per run
   (benchmarks/novel_diagnostics.py): binding accuracy, what the global embedding and the regions know of
   each part's attributes, region → own-description retrieval.
5. ``summary.json`` (``sets: {name: {novel, chance, top1: {arm: {variant: %}}}}``, ``localisation: {seed:
   ratio}``, per-seed values, goals), ``summary.md``, ``summary.png``.

Resumable like `grain bench grounding`. Output layout under ``--output``::

    corpus/  localisation/  eval-sets/<set>/  concepts.json  runs/<arm>-seed<s>/{train,eval}/  summary.*
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
import zlib
from pathlib import Path

from benchmarks.bench_runs import BenchSpec, bench_main, prepared
from benchmarks.novel_config import (ConceptsSection, GoalsSection, NovelEvalSection, load_novel_config,
                                     parse_novel_set)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "bench-novel-concepts.yaml"
SMOKE_CONFIG = CONFIG_DIR / "bench-novel-concepts-smoke.yaml"
# eval keys the prepared sets depend on (scoring options are not among them)
PREP_KEYS = ("sets", "per_class", "seed", "canvas", "single_scale", "clutter_scale", "clutter_distractors",
             "distractor_scale", "photo_background_prob", "localisation_canvases", "localisation_seed")


def eval_section(cfg: dict) -> NovelEvalSection:
    """The typed eval section, defaults filled in."""
    e = dict(cfg["eval"])
    goals = GoalsSection(**e.pop("goals", {}))
    return NovelEvalSection(**e, goals=goals)


def prep_digest(cfg: dict) -> str:
    from benchmarks.novel_corpus import NOVEL_FORMAT
    from evaluation.grounded_corpus import FORMAT_VERSION, spec_digest

    e = eval_section(cfg)
    return spec_digest(FORMAT_VERSION, NOVEL_FORMAT, ConceptsSection(**cfg["concepts"]), cfg["corpus"],
                       {k: getattr(e, k) for k in PREP_KEYS})


def prepare(cfg: dict, out: str, progress: bool = True) -> dict:
    """Build (or reuse) the classes, the corpus, the localisation canvases and the evaluation sets."""
    return prepared(out, prep_digest(cfg), lambda: _build_prepared(cfg, out, progress))


def distractor_stamps(limit: int | None) -> list:
    """Tux Paint cut-outs whose names share no word with the part grammar (attribute words then mean parts only)."""
    from benchmarks import concepts as cg
    from evaluation.grounded_corpus import tuxpaint_objects

    grammar = set(cg.PARTS) | set(cg.COLOURS) | set(cg.PATTERNS) | {w for f in cg.FORMS.values() for w in f}
    grammar |= {"creature", "animal", "beast", "wing", "leg"}
    stamps = tuxpaint_objects(exclude_words=grammar)
    return stamps[:limit] if limit else stamps


def training_token_ids(corpus_dir: str) -> set[int]:
    """Every BPE token of every training text (alt-text, dense caption, descriptions) of the written corpus."""
    import glob

    import pyarrow.parquet as pq

    from benchmarks.concepts import bpe_ids

    ids: set[int] = set()
    texts: set[str] = set()
    for f in sorted(glob.glob(os.path.join(corpus_dir, "*.parquet"))):
        t = pq.read_table(f, columns=["source_caption", "mllm_caption", "descriptions"]).to_pydict()
        texts.update(t["source_caption"], t["mllm_caption"], *t["descriptions"])
    for text in texts:
        ids |= bpe_ids(text)
    return ids


def _classes(cfg: dict) -> tuple[list, random.Random]:
    from benchmarks import concepts as cg

    c = ConceptsSection(**cfg["concepts"])
    concepts = cg.make_concepts(seen=c.seen, novel=c.novel, dev=c.dev, novel_binding_pairs=c.novel_binding_pairs,
                                novel_seen_swaps=c.novel_seen_swaps, dev_binding_pairs=c.dev_binding_pairs,
                                dev_seen_swaps=c.dev_seen_swaps, min_parts=c.min_parts, max_parts=c.max_parts, seed=c.seed)
    rng = random.Random(c.seed + 1)
    seen = [x.name for x in concepts if x.split == "seen"]
    return cg.renamed(concepts, dict(zip(seen, cg.nonce_names(len(seen), rng, cg.SEEN_LETTERS)))), rng


def _build_prepared(cfg: dict, out: str, progress: bool) -> dict:
    from benchmarks import concepts as cg
    from benchmarks import novel_corpus as nc

    c, e = ConceptsSection(**cfg["concepts"]), eval_section(cfg)
    spec = nc.NovelCorpusSpec(**cfg["corpus"])
    concepts, rng = _classes(cfg)
    stamps = distractor_stamps(c.tuxpaint_limit)
    if not stamps and (spec.distractors[1] > 0 or any(parse_novel_set(s)[2] for s in e.sets)):
        raise FileNotFoundError("no Tux Paint cut-outs for distractors: apt-get install tuxpaint-stamps-default")
    seen = [x for x in concepts if x.split == "seen"]
    manifest = nc.build_corpus(os.path.join(out, "corpus"), spec, seen, stamps, progress=progress)
    # Novel and dev names: nonce words none of whose BPE tokens occurs in any training text.
    train_ids = training_token_ids(os.path.join(out, "corpus"))
    unnamed = [x.name for x in concepts if x.split != "seen"]
    names = cg.nonce_names(len(unnamed), rng, cg.NOVEL_LETTERS, forbidden_ids=train_ids, taken={x.name for x in seen})
    concepts = cg.renamed(concepts, {**{x.name: x.name for x in seen}, **dict(zip(unnamed, names))})
    with open(os.path.join(out, "concepts.json"), "w", encoding="utf-8") as f:
        json.dump({"training_tokens": len(train_ids), "classes": [
            {"name": x.name, "split": x.split, "sibling": x.sibling, "descriptions": x.descriptions(),
             "parts": [vars(p) for p in x.parts]} for x in concepts]}, f, indent=1)
    set_paths, chance = {}, {}
    for name in e.sets:
        split, rendering, clutter = parse_novel_set(name)
        classes = [x for x in concepts if x.split == split]
        s = nc.SetSpec(classes, rendering, clutter, int(e.per_class[split]), e.seed * 1000 + zlib.crc32(name.encode()) % 1000,
                       int(e.canvas or spec.canvas), tuple(e.clutter_scale if clutter else e.single_scale),
                       tuple(e.clutter_distractors if clutter else (0, 0)), tuple(e.distractor_scale),
                       spec.photo_background_prob if e.photo_background_prob is None else e.photo_background_prob)
        set_paths[name] = nc.build_eval_set(os.path.join(out, "eval-sets", name), s, stamps)
        chance[name] = 100.0 / len(classes)
    localisation = None
    if e.localisation_canvases:
        n = int(e.localisation_canvases)
        loc = nc.NovelCorpusSpec(**{**cfg["corpus"], "images": n, "shard_size": n, "seed": int(e.localisation_seed)})
        localisation = os.path.join(out, "localisation")
        nc.build_corpus(localisation, loc, seen, stamps, progress=progress)
    return {"classes": {s: sum(x.split == s for x in concepts) for s in cg.SPLITS}, "tuxpaint_objects": len(stamps),
            "corpus": {k: manifest[k] for k in ("digest", "files", "spec")}, "concepts": "concepts.json",
            "training_tokens": len(train_ids), "chance": chance, "localisation": localisation, "eval_sets": set_paths}


def _describe(prep: dict) -> str:
    k = prep["classes"]
    return (f"{k['seen']} seen / {k['novel']} novel / {k['dev']} dev classes, {prep['tuxpaint_objects']} Tux Paint "
            f"cut-outs, corpus {prep['corpus']['spec']['images']} images")


def _after_run(run, cfg, prep, arm, seed, run_dir, progress):
    from benchmarks.novel_diagnostics import run_diagnostics

    return run_diagnostics(run, cfg, prep, run_dir)


def finish(runs: dict, cfg: dict, out: str, command: str, prep: dict, t0: float) -> None:
    """summary.json / summary.md / summary.png of the runs (benchmarks/novel_summary.py)."""
    from benchmarks import novel_summary as ns

    summary = ns.summarize(runs, cfg, prep)
    md = ns.summary_markdown(summary, command)
    with open(os.path.join(out, "summary.md"), "w", encoding="utf-8") as f:
        f.write(md)
    with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as f:
        json.dump({**summary, "command": command, "config": {k: v for k, v in cfg.items() if k != "_path"},
                   "config_path": cfg["_path"], "prepare": prep, "wall_s": time.time() - t0}, f, indent=1)
    ns.summary_png(summary, os.path.join(out, "summary.png"))
    print(md, flush=True)
    print(f"[bench] done in {time.time() - t0:.0f} s → {out}/summary.md, summary.png", flush=True)


SPEC = BenchSpec(name="novel-concepts", module="benchmarks.bench_novel", doc=__doc__, default_config=DEFAULT_CONFIG,
                 smoke_config=SMOKE_CONFIG, load=load_novel_config, prepare=prepare, describe=_describe, finish=finish,
                 after_run=_after_run, job_unit="run")


def main(argv: list[str] | None = None) -> int:
    """`grain bench novel-concepts ...` (``argv`` without the benchmark's name)."""
    return bench_main(SPEC, list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
