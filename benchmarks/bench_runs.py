"""What every `grain bench <name>` shares: both arms through the trainer and the evaluation runner, per seed,
resumable, optionally as one process per arm (``--jobs``), and the command line around it.

A benchmark is a ``BenchSpec``: its configs, how it prepares its corpus and evaluation sets, and how it
writes its summary. ``bench_main(spec, argv)`` does the rest:

1. load the bench config (``--config`` or the default / ``--smoke`` one, ``--set`` overrides);
2. ``spec.prepare(cfg, out)`` → the preparation record (corpus, ``eval_sets``, ``localisation``);
3. for each seed and arm: ``run_one`` trains (``trainers.run.run_training``) unless ``final.pt`` exists and
   evaluates (``evaluation.runner.run_eval``) unless ``eval/results.json`` exists; a GRAIN run also gets its
   localisation figure (``benchmarks.grounding_boxes.localisation``) and ``spec.after_run``'s extras;
4. ``spec.finish(runs, cfg, out, command, prep, t0)`` writes the summary.
"""

from __future__ import annotations

import argparse
import copy
import glob
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BenchSpec:
    """One `grain bench <name>`."""

    name: str  # "grounding": the subcommand
    module: str  # "benchmarks.bench_grounding": runnable with -m (its __main__ prepends ``name``)
    doc: str  # the --help text
    default_config: Path
    smoke_config: Path
    load: Callable  # (path, sets) → config dict
    prepare: Callable  # (cfg, out, progress) → preparation record
    describe: Callable  # preparation record → one line for the log
    finish: Callable  # (runs, cfg, out, command, prep, t0) → None: writes the summary
    after_run: Callable | None = None  # (run, cfg, prep, arm, seed, run_dir, progress) → run, e.g. diagnostics
    # What one ``--jobs`` process runs: "arm" (an arm's seeds in turn; logs/<arm>.log) or "run" (one (arm, seed);
    # logs/<arm>-seed<s>.log), GRAIN runs first: the longest first keeps both cores busy to the end.
    job_unit: str = "arm"


def prepared(out: str, digest: str, build: Callable[[], dict]) -> dict:
    """The preparation record of ``out`` (``out/prepare.json``, paths relative to ``out``): reused when it holds
    ``digest`` and its folders exist (no npm packages or Tux Paint needed then: a prepared output folder can be
    copied to another machine and trained there), else ``build()`` (a record with ``eval_sets`` {name: path}
    and ``localisation``: a folder or None) is run and saved."""
    record_path = os.path.join(out, "prepare.json")
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
    rec = build()
    rec["digest"] = digest
    with open(record_path, "w", encoding="utf-8") as f:
        json.dump({**rec, "eval_sets": {k: os.path.relpath(v, out) for k, v in rec["eval_sets"].items()},
                   "localisation": rec["localisation"] and os.path.relpath(rec["localisation"], out)}, f, indent=1)
    return rec


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


def run_one(cfg: dict, prep: dict, arm: str, seed: int, out: str, progress: bool = True, after_run=None) -> dict:
    """Train and evaluate one arm/seed unless ``runs/<arm>-seed<seed>/eval/results.json`` exists."""
    from evaluation.runner import EvalConfig, run_eval
    from trainers.run import run_training

    run_dir = os.path.join(out, "runs", f"{arm}-seed{seed}")
    results = os.path.join(run_dir, "eval", "results.json")
    if os.path.exists(results):
        print(f"[bench] {arm} seed {seed}: done before, skipped ({results})", flush=True)
        with open(results, encoding="utf-8") as f:
            run = json.load(f)
    else:
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
    run = _with_localisation(run, prep, arm, run_dir)
    return after_run(run, cfg, prep, arm, seed, run_dir, progress) if after_run else run


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


def _parser(spec: BenchSpec) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"grain bench {spec.name}", description=spec.doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help=f"bench config (default {spec.default_config.name}; with --smoke {spec.smoke_config.name})")
    p.add_argument("--smoke", action="store_true", help="the CI-sized run: tiny corpus, few steps, one seed")
    p.add_argument("--output", help=f"output folder (default $GRAIN_CACHE/bench-{spec.name}[-smoke])")
    p.add_argument("--seeds", type=int, nargs="+", help="training seeds (default: the config's bench.seeds)")
    p.add_argument("--arms", nargs="+", choices=("clip", "grain"), help="arms to run (default both)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set train.max_steps=50 (both arms alike)")
    p.add_argument("--prepare-only", action="store_true", help="build the corpus and evaluation sets, train nothing")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="run the benchmark as N processes at once (default 1: in turn, in this process), one per "
                        + ("arm (log: OUTPUT/logs/<arm>.log)" if spec.job_unit == "arm" else
                           "(arm, seed), GRAIN first (log: OUTPUT/logs/<arm>-seed<s>.log)")
                        + ". With torch_threads 1, --jobs 2 uses both cores of a 2-core machine; then this process "
                          "writes the summary")
    return p


def run_arms_in_parallel(spec: BenchSpec, args, cfg: dict, out: str, arms: list[str], seeds: list[int]) -> int:
    """``--jobs N``: one `grain bench NAME --arms ARM --seeds ...` process per job (``spec.job_unit``), N at a
    time, on the same (already prepared) output folder; returns the first non-zero exit status (0: all succeeded)."""
    logs = os.path.join(out, "logs")
    os.makedirs(logs, exist_ok=True)

    def _stop(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    if spec.job_unit == "run":
        pending = [(a, [s], f"{a}-seed{s}") for a in sorted(arms, key=lambda a: a != "grain") for s in seeds]
    else:
        pending = [(a, list(seeds), a) for a in arms]
    running: list = []
    previous = signal.signal(signal.SIGTERM, _stop)  # a terminated parent stops its arms too
    try:
        status = _supervise(spec, args, cfg, out, logs, pending, running)
    finally:  # interrupted (Ctrl-C, SIGTERM) or failed: no arm keeps training on its own
        signal.signal(signal.SIGTERM, previous)
        for _, _, fh, proc in running:
            proc.terminate()
            proc.wait()
            fh.close()
    return status


def _supervise(spec: BenchSpec, args, cfg, out, logs, pending, running) -> int:
    """Start jobs ``(arm, seeds, name)`` from ``pending`` while fewer than ``args.jobs`` run; move finished ones
    out of ``running``."""
    status = 0
    while pending or running:
        while pending and len(running) < args.jobs:
            arm, seeds, name = pending.pop(0)
            cmd = [sys.executable, "-m", spec.module, "--config", cfg["_path"], "--output", out,
                   "--arms", arm, "--seeds", *map(str, seeds), "--quiet"]
            for kv in args.sets:
                cmd += ["--set", kv]
            log = os.path.join(logs, f"{name}.log")
            print(f"[bench] {name}: started as its own process, log {log}", flush=True)
            fh = open(log, "w", encoding="utf-8")
            running.append((name, log, fh, subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)))
        time.sleep(1.0)
        for item in list(running):
            name, log, fh, proc = item
            if proc.poll() is not None:
                fh.close()
                running.remove(item)
                if proc.returncode:
                    print(f"grain bench {spec.name}: the {name} job failed (exit {proc.returncode}); see {log}",
                          file=sys.stderr, flush=True)
                    status = status or proc.returncode
                else:
                    print(f"[bench] {name}: done ({log})", flush=True)
    return status


def bench_main(spec: BenchSpec, argv: list[str]) -> int:
    """`grain bench NAME ARGS...` (``argv`` without NAME); exit status 0, 2 (bad arguments or config), 130
    (interrupted) or a failed arm's."""
    args = _parser(spec).parse_args(argv)
    if args.jobs < 1:
        print(f"grain bench {spec.name}: --jobs must be ≥ 1, got {args.jobs}", file=sys.stderr)
        return 2
    from grain.common.cache import grain_cache

    try:
        cfg = spec.load(args.config or (spec.smoke_config if args.smoke else spec.default_config), args.sets)
    except (OSError, ValueError) as e:
        print(f"grain bench {spec.name}: {e}", file=sys.stderr)
        return 2
    default_out = f"bench-{spec.name}" + ("-smoke" if args.smoke else "")
    out = os.path.abspath(args.output or os.path.join(grain_cache(), default_out))
    os.makedirs(out, exist_ok=True)
    seeds = args.seeds or list(cfg["bench"].get("seeds", [0]))
    arms = args.arms or list(cfg["bench"].get("arms", ["clip", "grain"]))
    command = f"grain bench {spec.name} " + " ".join(argv)
    if cfg["bench"].get("torch_threads"):
        import torch

        # Evaluation runs in this process; on a busy shared CPU one thread avoids OpenMP spin-waits.
        torch.set_num_threads(int(cfg["bench"]["torch_threads"]))
    t0 = time.time()
    print(f"[bench] config {cfg['_path']}, output {out}, arms {arms}, seeds {seeds}", flush=True)
    prep = spec.prepare(cfg, out, progress=not args.quiet)
    print(f"[bench] {spec.describe(prep)} ({time.time() - t0:.0f} s)", flush=True)
    if args.prepare_only:
        return 0
    if args.jobs > 1 and (len(arms) > 1 or (spec.job_unit == "run" and len(seeds) > 1)):
        try:
            status = run_arms_in_parallel(spec, args, cfg, out, arms, seeds)
        except KeyboardInterrupt:
            print(f"grain bench {spec.name}: interrupted; the arms were stopped. Finished runs are kept in {out}: "
                  "the same command resumes", file=sys.stderr, flush=True)
            return 130
        if status:
            return status
    runs = {}
    for seed in seeds:  # seed-major: a partial run already holds complete pairs to compare
        for arm in arms:
            runs[(arm, seed)] = run_one(cfg, prep, arm, seed, out, progress=not args.quiet, after_run=spec.after_run)
    spec.finish(runs, cfg, out, command, prep, t0)
    return 0


__all__ = ["BenchSpec", "bench_main", "prepared", "run_arms_in_parallel", "run_one", "train_config_for"]
