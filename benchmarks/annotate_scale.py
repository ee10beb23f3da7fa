"""Is the annotation driver's cost per row flat with scale? (docs/performance.md, goal 3; CPU only)

    python -m benchmarks.annotate_scale [--rows 1000 10000 100000] [--rows-per-shard 10000]
                                        [--resume-shards 10000] [--json out.json]

Runs the real annotation job (``annotators.pipeline.run_annotation``: discovery, the Ray Data read →
decode → describe → ground pipeline, the driver's per-shard grouping, ``finalize_row``, ShardWriter's
validated atomic commit, the manifest) over 10³ … 10⁶ rows of tiny images, with ONE substitution: the
model call. ``FixedAnswerDescribeStage`` / ``FixedAnswerGroundStage`` (this file only: no run file or
config key can name them) are the production ``DescribeStage`` / ``GroundStage`` classes whose engine
is replaced by an object that returns a fixed caption, two descriptions and one box instantly; the
stages' own code (Arrow ↔ rows, status handling, box clamping and sorting) runs unchanged. They are
swapped in for the duration of one ``run_annotation`` call by patching ``annotators.stages`` in this
process (``fixed_answer_models``), which is where ``build_dataset`` looks them up.

Printed per size: driver-process CPU seconds per 1,000 rows (``time.process_time`` of this process
over the whole ``run_annotation`` call: discovery, manifest, Ray Data planning and streaming, the
driver's row conversion and grouping, finalize/validate, Parquet encode, atomic writes), the CPU of
the whole local Ray (this process + every Ray process it started: GCS, raylet, workers, actors; from
psutil, so it includes Ray's idle background work, which grows with wall time rather than rows), wall
seconds and the per-row ratio against the smallest size (the full table). The headline figure is the
**marginal cost slope**: the CPU per row of the rows added between the two largest sizes,
(cpu(n₂) − cpu(n₁)) / (n₂ − n₁), over the CPU per row at n₁ (goal ≤ 1.5). A ratio against the smallest
size is flattered by its fixed costs (Ray Data planning, actor start, the manifest), which a 10³-row
run is mostly made of: the 2026-11-29 run read 0.57× at 10⁶ vs 10³ where the slope from 10⁵ to 10⁶
was 1.36× (docs/performance.md).

Then, at ``--resume-shards`` committed shards (default 10⁴): the resume scan (``run_annotation`` over
an input whose every shard is already committed: discovery, one commit check per shard, manifest load
and the run's manifest writes; no Ray starts), the trainer's shard index (``trainers.index.build_index``)
over the same folder, and the manifest's cost of recording shard after shard (``RunManifest.mark_done``
called once per shard, as the driver does), which is where the O(n²) was (docs/performance.md).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
import time

if __package__ in (None, ""):  # run as a file: measure this checkout, not an installed copy of the project
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pyarrow as pa
import pyarrow.parquet as pq

from annotators.stages import DescribeStage, GroundStage, _ModelStage
from benchmarks.provenance import provenance, write_results

FIXED_CAPTION = "a fixed caption from the fixed-answer model stage"
FIXED_DESCRIPTIONS = ["a fixed thing", "another fixed thing"]


# ---------------------------------------------------------------------------------------------------
# the fixed-answer model stage (benchmark only)
# ---------------------------------------------------------------------------------------------------


class _FixedDescriber:
    """Stands in for annotators.describer.Describer: same ``describe(images)`` contract, no model."""

    def describe(self, images: list) -> list:
        return [{"caption": FIXED_CAPTION, "descriptions": list(FIXED_DESCRIPTIONS), "num_generated_tokens": 20}
                for _ in images]


class _FixedGrounder:
    """Stands in for annotators.grounder.Grounder: one box per description, fixed scores."""

    def ground(self, images: list, descriptions: list) -> list:
        return [{"boxes_xyxy_norm": [[0.1, 0.1, 0.6, 0.6] for _ in d], "scores": [0.9 - 0.1 * i for i in range(len(d))],
                 "desc_index": list(range(len(d)))} for d in descriptions]


class FixedAnswerDescribeStage(DescribeStage):
    """The production DescribeStage with its MLLM replaced by a fixed answer (benchmark only)."""

    def __init__(self, model: str, family: str, describer_kwargs: dict, max_descriptions: int = 10,
                 threads: int | None = None, inject: dict | None = None, max_restarts: int | None = None,
                 cpu_bind: str | None = None):
        _ModelStage.__init__(self, threads, inject, max_restarts)
        self.describer = _FixedDescriber()
        self.max_descriptions = max_descriptions
        self._engine_watch = None


class FixedAnswerGroundStage(GroundStage):
    """The production GroundStage with its detector replaced by a fixed answer (benchmark only)."""

    def __init__(self, model: str, grounder_kwargs: dict, max_boxes: int = 50, threads: int | None = None,
                 inject: dict | None = None, max_restarts: int | None = None, cpu_affinity: list | None = None):
        _ModelStage.__init__(self, threads, inject, max_restarts, None)  # no pinning: nothing to protect
        self.grounder = _FixedGrounder()
        self.max_boxes = max_boxes


@contextlib.contextmanager
def fixed_answer_models():
    """Within the block, ``run_annotation`` in this process builds its pipeline with the fixed-answer stages."""
    from annotators import stages

    saved = stages.DescribeStage, stages.GroundStage
    stages.DescribeStage, stages.GroundStage = FixedAnswerDescribeStage, FixedAnswerGroundStage
    try:
        yield
    finally:
        stages.DescribeStage, stages.GroundStage = saved


# ---------------------------------------------------------------------------------------------------
# corpus
# ---------------------------------------------------------------------------------------------------


def tiny_png(side: int = 8) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (side, side), (120, 60, 200)).save(buf, format="PNG")
    return buf.getvalue()


def write_input(root: str, rows: int, rows_per_shard: int, png: bytes, prefix: str = "") -> int:
    """img2dataset-style parquet shards (key, jpg, txt, url) of the same tiny PNG; returns the shard count."""
    os.makedirs(root, exist_ok=True)
    n_shards = max(1, -(-rows // rows_per_shard))
    for s in range(n_shards):
        n = min(rows_per_shard, rows - s * rows_per_shard)
        keys = [f"{prefix}{s:06d}{i:06d}" for i in range(n)]
        table = pa.table({"key": keys, "jpg": pa.array([png] * n, pa.binary()),
                          "txt": ["a small purple square"] * n, "url": [f"https://example.invalid/{k}.png" for k in keys]})
        pq.write_table(table, os.path.join(root, f"{prefix}{s:06d}.parquet"), compression="none")
    return n_shards


def annotate_config(inp: str, out: str, batch_size: int):
    from annotators.config import load_config

    cfg = load_config(profile="tiny", overrides=[f"run.batch_size={batch_size}", "run.decode_batch_size=256",
                                                 "run.progress=false", "models.structured_output=false"])
    cfg.models.mllm, cfg.models.detector = "fixed-answer-mllm", "fixed-answer-detector"  # labels only, never loaded
    cfg.input, cfg.output = [inp], out
    return cfg


# ---------------------------------------------------------------------------------------------------
# measurements
# ---------------------------------------------------------------------------------------------------


def _tree_cpu() -> dict:
    """{pid: cpu seconds} of this process and every process it started (the local Ray)."""
    import psutil

    me = psutil.Process()
    out = {}
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
        except psutil.Error:
            pass
    return out


def _tree_delta(before: dict, after: dict) -> float:
    return sum(v - before.get(pid, 0.0) for pid, v in after.items())


def run_size(tmp: str, rows: int, rows_per_shard: int, png: bytes, batch_size: int) -> dict:
    from annotators.pipeline import run_annotation

    inp, out = os.path.join(tmp, f"in-{rows}"), os.path.join(tmp, f"out-{rows}")
    shards = write_input(inp, rows, rows_per_shard, png)
    cfg = annotate_config(inp, out, batch_size)
    tree0, cpu0, t0 = _tree_cpu(), time.process_time(), time.perf_counter()
    with fixed_answer_models():
        summary = run_annotation(cfg)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    tree = _tree_delta(tree0, _tree_cpu())
    if summary["rows"] != rows or summary["counts"].get("ok") != rows:
        raise RuntimeError(f"{rows} rows in, summary says {summary['rows']} rows, counts {summary['counts']}")
    shutil.rmtree(inp)
    shutil.rmtree(out)
    return {"rows": rows, "shards": shards, "wall_s": round(wall, 2), "driver_cpu_s": round(cpu, 4),
            "driver_cpu_s_per_1k": round(1000 * cpu / rows, 4), "all_ray_cpu_s": round(tree, 4),
            "all_ray_cpu_s_per_1k": round(1000 * tree / rows, 4)}


def build_committed_folder(tmp: str, n: int, png: bytes) -> tuple[str, str, float]:
    """``n`` one-row input shards and their ``n`` committed output shards (as the writer leaves them) plus a
    manifest recording them: the state after a long run, for the resume scan and the trainer's index.
    Returns (input dir, output dir, seconds the manifest took to record the n shards one by one)."""
    from annotators.manifest import RunManifest
    from annotators.pipeline import finalize_row, resolve_models
    from annotators.writer import ShardWriter

    inp, out = os.path.join(tmp, "resume-in"), os.path.join(tmp, "resume-out")
    os.makedirs(inp)
    os.makedirs(out)
    one_in = io.BytesIO()
    pq.write_table(pa.table({"key": ["k"], "jpg": pa.array([png], pa.binary()), "txt": ["x"]}), one_in)
    cfg = annotate_config(inp, out, 8)
    models = resolve_models(cfg)
    row = {"key": "k", "source": "s", "status": "ok", "image": png, "image_width": 8, "image_height": 8,
           "mllm_caption": FIXED_CAPTION, "descriptions": FIXED_DESCRIPTIONS, "boxes": [[0.1, 0.1, 0.6, 0.6]],
           "box_scores": [0.9], "box_desc_index": [0], "flags": [], "url": None, "source_caption": "x"}
    ShardWriter(out).write("template", [finalize_row(row, models)])
    with open(os.path.join(out, "template.parquet"), "rb") as f:
        one_out = f.read()
    marker = json.dumps({"kind": "file", "size": len(one_out), "committed_at": time.time()}).encode()
    for p in ("template.parquet", "template.parquet.done"):
        os.unlink(os.path.join(out, p))
    for i in range(n):
        name = f"{i:06d}"
        with open(os.path.join(inp, name + ".parquet"), "wb") as f:
            f.write(one_in.getvalue())
        with open(os.path.join(out, name + ".parquet"), "wb") as f:
            f.write(one_out)
        with open(os.path.join(out, name + ".parquet.done"), "wb") as f:
            f.write(marker)
    manifest = RunManifest(out)
    manifest.start_run(cfg.to_dict(), models)
    t0 = time.perf_counter()
    for i in range(n):  # what the driver does after each committed shard
        name = f"{i:06d}"
        manifest.mark_done(name, {"input": os.path.join(inp, name + ".parquet"), "format": "parquet",
                                  "output": os.path.join(out, name + ".parquet"), "rows": 1, "counts": {"ok": 1},
                                  "bytes": len(one_out), "seconds_since_start": 0.0, "generated_tokens": 20})
    manifest.finish_run({"rows": n})
    return inp, out, time.perf_counter() - t0


def resume_and_index(tmp: str, n: int, png: bytes) -> dict:
    from annotators.pipeline import run_annotation
    from trainers.index import build_index

    inp, out, record_s = build_committed_folder(tmp, n, png)
    cfg = annotate_config(inp, out, 8)
    cpu0, t0 = time.process_time(), time.perf_counter()
    summary = run_annotation(cfg)
    resume_s, resume_cpu = time.perf_counter() - t0, time.process_time() - cpu0
    if summary["shards_skipped"] != n or summary["shards_written"]:
        raise RuntimeError(f"resume scan: expected {n} skipped shards, got {summary}")
    cpu0, t0 = time.process_time(), time.perf_counter()
    index = build_index(out)
    index_s, index_cpu = time.perf_counter() - t0, time.process_time() - cpu0
    if len(index.files) != n or index.num_ok != n:
        raise RuntimeError(f"index: expected {n} shards/rows, got {len(index.files)} / {index.num_ok}")
    return {"committed_shards": n, "manifest_record_s": round(record_s, 2),
            "manifest_record_ms_per_shard": round(1000 * record_s / n, 3),
            "resume_scan_s": round(resume_s, 2), "resume_scan_cpu_s": round(resume_cpu, 2),
            "index_s": round(index_s, 2), "index_cpu_s": round(index_cpu, 2)}


def marginal_slope(small: dict, large: dict) -> dict:
    """Per-row CPU of the rows ``large`` adds over ``small`` against the per-row CPU at ``small``, for the
    driver and for the whole local Ray: the headline figure (module docstring)."""
    added = large["rows"] - small["rows"]
    if added <= 0:
        raise ValueError(f"the slope needs two sizes, larger second: {small['rows']} → {large['rows']} rows")
    out = {"from_rows": small["rows"], "to_rows": large["rows"]}
    for key in ("driver", "all_ray"):
        per_1k = 1000 * (large[f"{key}_cpu_s"] - small[f"{key}_cpu_s"]) / added
        out[f"{key}_cpu_s_per_1k_added"] = round(per_1k, 4)
        out[f"ratio_{key}"] = round(per_1k / (1000 * small[f"{key}_cpu_s"] / small["rows"]), 3)
    return out


def print_report(results: dict) -> None:
    """The full table (ratio against the smallest size), then the headline slope and the resume figures."""
    base = results["sizes"][0]
    print(f"\nannotation driver cost vs scale (fixed-answer model stage; {results['rows_per_shard']} rows/shard, "
          f"batch {results['batch_size']}, {results['png_bytes']}-byte PNGs)")
    print(f"{'rows':>9} {'shards':>6} {'wall s':>8} {'driver CPU s/1k':>16} {'ratio':>6} {'all-Ray CPU s/1k':>17} {'ratio':>6}")
    for s in results["sizes"]:
        s["ratio_driver"] = round(s["driver_cpu_s_per_1k"] / base["driver_cpu_s_per_1k"], 3)
        s["ratio_all"] = round(s["all_ray_cpu_s_per_1k"] / base["all_ray_cpu_s_per_1k"], 3)
        print(f"{s['rows']:>9} {s['shards']:>6} {s['wall_s']:>8.2f} {s['driver_cpu_s_per_1k']:>16.3f} "
              f"{s['ratio_driver']:>6.2f} {s['all_ray_cpu_s_per_1k']:>17.3f} {s['ratio_all']:>6.2f}")
    if "slope" in results:
        m = results["slope"]
        print(f"marginal slope {m['from_rows']} -> {m['to_rows']} rows (driver CPU per added row vs per row at "
              f"{m['from_rows']}): {m['driver_cpu_s_per_1k_added']:.3f} s/1k, {m['ratio_driver']:.2f}x (goal <= 1.5); "
              f"all-Ray {m['ratio_all_ray']:.2f}x")
    if "resume" in results:
        r = results["resume"]
        print(f"resume scan, {r['committed_shards']} committed shards: {r['resume_scan_s']:.2f} s "
              f"({r['resume_scan_cpu_s']:.2f} s CPU)")
        print(f"trainer shard index, {r['committed_shards']} shards: {r['index_s']:.2f} s ({r['index_cpu_s']:.2f} s CPU)")
        print(f"manifest recording {r['committed_shards']} shards one by one: {r['manifest_record_s']:.2f} s "
              f"({r['manifest_record_ms_per_shard']:.2f} ms per shard)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, nargs="+", default=[1000, 10000, 100000])
    p.add_argument("--rows-per-shard", type=int, default=10000)
    p.add_argument("--batch-size", type=int, default=128, help="rows per model call (run.batch_size)")
    p.add_argument("--resume-shards", type=int, default=10000, help="committed shards for the resume/index figures (0: skip)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING)
    from grain.common.ray_session import ensure_ray

    png = tiny_png()
    results = {**provenance("benchmarks.annotate_scale", argv), "png_bytes": len(png),
               "rows_per_shard": args.rows_per_shard, "batch_size": args.batch_size, "sizes": []}
    with tempfile.TemporaryDirectory(prefix="grain-scale-") as tmp:
        started = ensure_ray(None, num_cpus=os.cpu_count())  # once, outside every measurement
        try:
            run_size(tmp, min(200, min(args.rows)), args.rows_per_shard, png, args.batch_size)  # warm-up, not reported
            for rows in args.rows:
                results["sizes"].append(run_size(tmp, rows, args.rows_per_shard, png, args.batch_size))
                print(json.dumps(results["sizes"][-1]), flush=True)
        finally:
            if started:
                import ray

                ray.shutdown()
        if args.resume_shards:
            results["resume"] = resume_and_index(tmp, args.resume_shards, png)
    by_rows = sorted(results["sizes"], key=lambda r: r["rows"])
    if len(by_rows) >= 2:
        results["slope"] = marginal_slope(by_rows[-2], by_rows[-1])
        results["goal_ratio"] = results["slope"]["ratio_driver"]
    print_report(results)
    if args.json:
        write_results(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
