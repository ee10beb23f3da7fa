"""`grain bench grounding`: does grounding help? GRAIN vs CLIP-only on a miniature of real images.

    grain bench grounding [--config configs/bench-grounding.yaml] [--output DIR] [--smoke]
                          [--seeds 0 1 2] [--arms clip grain] [--set key=value ...]

1. Classes: emoji of the configured subsets (animals, food) split by a fixed seed into *seen* and
   *held-out* classes. Training uses one style (Google) of the seen classes only.
2. Training corpus (evaluation.grounded_corpus): 2–4 objects per canvas (seen emoji + Tux Paint
   cut-outs whose names share no word with a held-out class), exact boxes, a caption naming every
   object, one description per object; shards in the annotation schema (grain.schema).
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

import argparse
import copy
import dataclasses
import glob
import json
import os
import sys
import time
from pathlib import Path

from benchmarks.bench_config import ClutterSection, is_clutter, load_bench_config, parse_set_name  # noqa: F401
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
    record_path = os.path.join(out, "prepare.json")
    digest = prep_digest(cfg)
    if os.path.exists(record_path):
        with open(record_path, encoding="utf-8") as f:
            rec = json.load(f)
        paths = [os.path.join(out, p) for p in rec.get("eval_sets", {}).values()] + [os.path.join(out, "corpus")]
        paths += [os.path.join(out, rec["localisation"])] if rec.get("localisation") else []
        if rec.get("digest") == digest and all(os.path.isdir(p) for p in paths):
            rec["eval_sets"] = {k: os.path.join(out, v) for k, v in rec["eval_sets"].items()}
            if rec.get("localisation"):
                rec["localisation"] = os.path.join(out, rec["localisation"])
            return rec
    rec = _build_prepared(cfg, out, progress)
    rec["digest"] = digest
    with open(record_path, "w", encoding="utf-8") as f:
        json.dump({**rec, "eval_sets": {k: os.path.relpath(v, out) for k, v in rec["eval_sets"].items()},
                   "localisation": rec["localisation"] and os.path.relpath(rec["localisation"], out)}, f, indent=1)
    return rec


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
# One (arm, seed): train through the trainer, evaluate through the runner
# ---------------------------------------------------------------------------------------------

def train_config_for(cfg: dict, arm: str, seed: int, data: str, out: str):
    """The arm's TrainConfig: the bench's ``train`` section with only kind, seed, data and output set."""
    from trainers.config import load_config

    if arm not in ("grain", "clip"):
        raise ValueError(f"arm must be grain or clip, got {arm!r}")
    section = copy.deepcopy(cfg["train"])
    section.setdefault("model", {})["kind"] = arm
    section.setdefault("data", {})["path"] = data
    section.update(seed=seed, output=out, run_name=os.path.basename(os.path.dirname(out)))
    return load_config(overrides=section).validate()


def run_one(cfg: dict, prep: dict, arm: str, seed: int, out: str, progress: bool = True) -> dict:
    """Train and evaluate one arm/seed unless ``runs/<arm>-seed<seed>/eval/results.json`` exists."""
    from evaluation.runner import EvalConfig, run_eval
    from trainers.run import run_training

    run_dir = os.path.join(out, "runs", f"{arm}-seed{seed}")
    results = os.path.join(run_dir, "eval", "results.json")
    if os.path.exists(results):
        print(f"[bench] {arm} seed {seed}: done before, skipped ({results})", flush=True)
        run = json.load(open(results, encoding="utf-8"))
        return _with_localisation(run, prep, arm, run_dir)
    t0 = time.time()
    final = os.path.join(run_dir, "train", "final.pt")
    if not os.path.exists(final):
        tcfg = train_config_for(cfg, arm, seed, os.path.join(out, "corpus"), os.path.join(run_dir, "train"))
        run_training(tcfg)
    t1 = time.time()
    e = cfg["eval"]
    ecfg = EvalConfig(checkpoint=final, datasets=[prep["eval_sets"][s] for s in e["sets"]],
                      output=os.path.join(run_dir, "eval"), alphas=[float(a) for a in e.get("alphas", [1.0, 0.5])],
                      batch_size=int(e.get("batch_size", 64)), templates=e.get("templates"), model_name=f"{arm}-seed{seed}",
                      device=str(e.get("device", "cpu")), build_missing=False, progress=progress)
    run = run_eval(ecfg)
    print(f"[bench] {arm} seed {seed}: trained in {t1 - t0:.0f} s, evaluated in {time.time() - t1:.0f} s", flush=True)
    return _with_localisation(run, prep, arm, run_dir)


def _with_localisation(run: dict, prep: dict, arm: str, run_dir: str) -> dict:
    """Add ``run["localisation"]`` for a GRAIN run (``eval/localisation.json``, measured once) on the
    prepared localisation canvases (``benchmarks.grounding_boxes.localisation``)."""
    shards = sorted(glob.glob(os.path.join(prep.get("localisation") or "", "*.parquet")))
    if arm != "grain" or not shards:
        return run
    path = os.path.join(run_dir, "eval", "localisation.json")
    if not os.path.exists(path):
        from benchmarks.grounding_boxes import localisation

        loc = localisation(os.path.join(run_dir, "train", "final.pt"), shards[0], rows=None)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(loc, f, indent=1)
    with open(path, encoding="utf-8") as f:
        run["localisation"] = json.load(f)
    r = run["localisation"]
    print(f"[bench] {os.path.basename(run_dir)}: boxes / best fixed layout {r['ratio']:.2f} on {r['rows']} unseen "
          f"canvases (spread {r['spread']:.3f}, targets {r['target_spread']:.3f})", flush=True)
    return run


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="grain bench grounding", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help=f"bench config (default {DEFAULT_CONFIG.name}; with --smoke {SMOKE_CONFIG.name})")
    p.add_argument("--smoke", action="store_true", help="the CI-sized run (≤ 3 min): tiny corpus, few steps, one seed")
    p.add_argument("--output", help="output folder (default $GRAIN_CACHE/bench-grounding[-smoke])")
    p.add_argument("--seeds", type=int, nargs="+", help="training seeds (default: the config's bench.seeds)")
    p.add_argument("--arms", nargs="+", choices=("clip", "grain"), help="arms to run (default both)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set train.max_steps=50 (both arms alike; "
                        "`grain config show bench` lists every key)")
    p.add_argument("--prepare-only", action="store_true", help="build the corpus and evaluation sets, train nothing")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="run the arms as N processes at once (default 1: in turn, in this process). With "
                        "torch_threads 1, --jobs 2 uses both cores of a 2-core machine; each arm's log goes to "
                        "OUTPUT/logs/<arm>.log, then this process writes the summary")
    return p


def _run_arms_in_parallel(args, cfg: dict, out: str, arms: list[str], seeds: list[int]) -> int:
    """``--jobs N``: one `grain bench grounding --arms ARM` process per arm, N at a time, on the same
    (already prepared) output folder; returns the first non-zero exit status (0 when all succeeded)."""
    logs = os.path.join(out, "logs")
    os.makedirs(logs, exist_ok=True)
    import signal

    def _stop(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    pending, running = list(arms), []
    previous = signal.signal(signal.SIGTERM, _stop)  # a terminated parent stops its arms too
    try:
        status = _supervise(args, cfg, out, seeds, logs, pending, running)
    finally:  # interrupted (Ctrl-C, SIGTERM) or failed: no arm keeps training on its own
        signal.signal(signal.SIGTERM, previous)
        for _, _, fh, proc in running:
            proc.terminate()
            proc.wait()
            fh.close()
    return status


def _supervise(args, cfg, out, seeds, logs, pending, running) -> int:
    """Start arms from ``pending`` while fewer than ``args.jobs`` run; move finished ones out of ``running``."""
    import subprocess

    status = 0
    while pending or running:
        while pending and len(running) < args.jobs:
            arm = pending.pop(0)
            cmd = [sys.executable, "-m", "benchmarks.bench_grounding", "--config", cfg["_path"], "--output", out,
                   "--arms", arm, "--seeds", *map(str, seeds), "--quiet"]
            for kv in args.sets:
                cmd += ["--set", kv]
            log = os.path.join(logs, f"{arm}.log")
            print(f"[bench] {arm}: started as its own process, log {log}", flush=True)
            fh = open(log, "w", encoding="utf-8")
            running.append((arm, log, fh, subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)))
        time.sleep(1.0)
        for item in list(running):
            arm, log, fh, proc = item
            if proc.poll() is not None:
                fh.close()
                running.remove(item)
                if proc.returncode:
                    print(f"grain bench grounding: the {arm} arm failed (exit {proc.returncode}); see {log}",
                          file=sys.stderr, flush=True)
                    status = status or proc.returncode
                else:
                    print(f"[bench] {arm}: done ({log})", flush=True)
    return status


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "grounding":
        print("usage: grain bench grounding [--help]  (the only benchmark so far)", file=sys.stderr)
        return 2
    args = _parser().parse_args(argv[1:])
    if args.jobs < 1:
        print(f"grain bench grounding: --jobs must be ≥ 1, got {args.jobs}", file=sys.stderr)
        return 2
    from evaluation.datasets import grain_cache

    try:
        cfg = load_bench_config(args.config or (SMOKE_CONFIG if args.smoke else DEFAULT_CONFIG), args.sets)
    except (OSError, ValueError) as e:
        print(f"grain bench grounding: {e}", file=sys.stderr)
        return 2
    out = os.path.abspath(args.output or os.path.join(grain_cache(), "bench-grounding-smoke" if args.smoke else "bench-grounding"))
    os.makedirs(out, exist_ok=True)
    seeds = args.seeds or list(cfg["bench"].get("seeds", [0]))
    arms = args.arms or list(cfg["bench"].get("arms", ["clip", "grain"]))
    command = "grain bench " + " ".join(argv)
    if cfg["bench"].get("torch_threads"):
        import torch

        # Evaluation runs in this process; on a busy shared CPU one thread avoids OpenMP spin-waits.
        torch.set_num_threads(int(cfg["bench"]["torch_threads"]))
    t0 = time.time()
    print(f"[bench] config {cfg['_path']}, output {out}, arms {arms}, seeds {seeds}", flush=True)
    prep = prepare(cfg, out, progress=not args.quiet)
    print(f"[bench] {prep['seen_classes']} seen / {prep['heldout_classes']} held-out classes, "
          f"{prep['tuxpaint_objects']} Tux Paint objects, corpus {prep['corpus']['spec']['images']} images "
          f"({time.time() - t0:.0f} s)", flush=True)
    if args.prepare_only:
        return 0
    if args.jobs > 1 and len(arms) > 1:
        try:
            status = _run_arms_in_parallel(args, cfg, out, arms, seeds)
        except KeyboardInterrupt:
            print(f"grain bench grounding: interrupted; the arms were stopped. Finished runs are kept in {out}: "
                  "the same command resumes", file=sys.stderr, flush=True)
            return 130
        if status:
            return status
    runs = {}
    for seed in seeds:  # seed-major: a partial run already holds complete pairs to compare
        for arm in arms:
            runs[(arm, seed)] = run_one(cfg, prep, arm, seed, out, progress=not args.quiet)
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
    return 0


if __name__ == "__main__":
    sys.exit(main(["grounding", *sys.argv[1:]]))
