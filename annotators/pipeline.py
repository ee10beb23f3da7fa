"""The annotation job on Ray Data (docs/method.md §1), and ``run_annotation(cfg) -> summary`` for flows/CLI.

    input shards ──read (tasks, one shard each)──▶ records ──decode (tasks, bounded)──▶ blocks of batch_size
        ──▶ DescribeStage actor pool (vLLM) ──▶ GroundStage actor pool (OWLv2)
        ──▶ driver: rows grouped by input shard ──▶ ShardWriter

Rows travel in blocks of ``run.batch_size`` (streaming repartition), so each model task is one batch
and the describer, the grounder and the driver work at the same time (build_dataset says why).

One streaming Ray Data job covers every pending shard, so each model engine starts once per run.
The driver groups finished rows by input shard; a shard is written (validated, atomic, committed)
and recorded in the manifest as soon as all of its rows are back — the read stage tags every row
with its shard's row count, so "all rows are back" is exact. Resume: shards already committed are
skipped; a shard interrupted mid-way has no committed output and is redone whole (no duplicates).

Fault tolerance: Ray Data restarts a dead model actor and retries its batch (its default; the
``max_restarts`` remote arg of ``map_batches`` is deprecated in Ray 2.60), so a dead engine process
(the stage exits on vLLM's EngineDeadError) is replaced. ``run.max_restarts`` bounds it: the stage's
constructor counts restarts and gives up past the bound (stages.count_restart), so a batch that kills
its engine every time fails the run instead of looping. A failing model call for one image becomes a
``model_error`` row; the job goes on.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import defaultdict

from annotators.config import AnnotateConfig, check_test_hooks
from annotators.manifest import RunManifest
from annotators.readers import discover_shards, read_shard
from annotators.timing import RunTimer
from annotators.writer import ShardWriter
from grain.common.schema import (
    FLAG_MISSING_SOURCE_CAPTION,
    FLAG_NO_BOXES,
    FLAG_NO_DESCRIPTIONS,
    SchemaError,
    _validate_row,
    empty_row,
    error_row,
)

log = logging.getLogger(__name__)


def _model_label(path: str, revision: str | None = None) -> str:
    """The ``mllm_model``/``detector_model`` label: hub id (``@revision`` when pinned), or a tiny
    checkpoint's name + spec hash (same rule as ``Describer.model_id``), or the local dir."""
    if revision:
        return f"{path}@{revision}"
    marker = os.path.join(path, ".grain-tiny.json")
    if os.path.isfile(marker):
        with open(marker) as fh:
            return f"tiny-{os.path.basename(path.rstrip('/'))}@{json.load(fh).get('spec_hash', '?')}"
    return path


def resolve_models(cfg: AnnotateConfig) -> dict:
    """Model ids → ``{"mllm": dir or id, "mllm_id": label, "detector": ..., "detector_id": ...}``.
    ``tiny`` resolves to the locally built checkpoints (built once, cached)."""
    m = cfg.models
    out = {"mllm": m.mllm, "detector": m.detector}
    names = {"mllm": "llava" if m.mllm_family == "llava" else "qwen2-vl", "detector": "owlv2"}
    tiny = [names[k] for k in out if out[k] == "tiny"]
    if tiny:
        from grain.testing.tiny_models import ensure_tiny_models

        paths = ensure_tiny_models(tiny)
        out.update({k: paths[names[k]] for k in ("mllm", "detector") if out[k] == "tiny"})
    # A revision applies to a hub id only (tiny checkpoints and local dirs are what they are).
    for k in ("mllm", "detector"):
        rev = getattr(m, f"{k}_revision", None)
        out[f"{k}_revision"] = rev if rev and out[k] == getattr(m, k) and not os.path.isdir(out[k]) else None
    out.update(mllm_id=_model_label(out["mllm"], out["mllm_revision"]),
               detector_id=_model_label(out["detector"], out["detector_revision"]))
    return out


def resolve_profile(profile: str) -> dict:
    """``{"mllm": dir or id, "mllm_family": ..., "detector": dir or id}`` for a profile; tiny ones are built if missing.

    The model ids live in one place, the profile's run file (``configs/annotate-<profile>.yaml``), and are
    resolved by ``resolve_models``."""
    from annotators.config import load_config

    cfg = load_config(profile=profile)  # ConfigError (a ValueError) naming an unknown profile
    models = resolve_models(cfg)
    return {"mllm": models["mllm"], "mllm_family": cfg.models.mllm_family, "detector": models["detector"]}


def finalize_row(r: dict, models: dict) -> dict:
    """An intermediate row → a schema row (grain/common/schema.py). A row that would break the schema
    becomes a model_error row naming the rule, so one bad model output never loses a shard."""
    flags = list(r.get("flags") or [])
    common = dict(url=r.get("url"), source_caption=r.get("source_caption"), image_width=r.get("image_width"),
                  image_height=r.get("image_height"))
    if r["status"] != "ok":
        if r["status"] == "model_error":
            common.update(mllm_model=models["mllm_id"], detector_model=models["detector_id"])
        return error_row(r["key"], r["source"], r["status"], r.get("error") or r["status"], flags=flags, **common)
    if not r.get("mllm_caption") and FLAG_MISSING_SOURCE_CAPTION in flags:
        return error_row(r["key"], r["source"], "model_error", "no caption at all: the source caption is missing "
                         "and the MLLM returned none", flags=flags, mllm_model=models["mllm_id"], **common)
    if not r.get("descriptions"):
        flags.append(FLAG_NO_DESCRIPTIONS)
    if not r.get("boxes"):
        flags.append(FLAG_NO_BOXES)
    row = empty_row(r["key"], r["source"])
    row.update(common, image=r["image"], mllm_caption=r.get("mllm_caption"), descriptions=r.get("descriptions") or [],
               boxes=r.get("boxes") or [], box_scores=r.get("box_scores") or [],
               box_desc_index=r.get("box_desc_index") or [], flags=flags,
               mllm_model=models["mllm_id"], detector_model=models["detector_id"])
    try:
        _validate_row(row, f"row {r['key']!r}")
    except SchemaError as e:
        return error_row(r["key"], r["source"], "model_error", f"model output breaks the shard schema: {e}",
                         flags=flags, mllm_model=models["mllm_id"], detector_model=models["detector_id"], **common)
    return row


def _ensure_ray(cfg: AnnotateConfig) -> bool:
    """Use the Ray already initialised in this process, else join ``run.ray_address`` or start a private
    local one (grain/common/ray_session.py). True if started here."""
    from grain.common.ray_session import ensure_ray

    return ensure_ray(cfg.run.ray_address, cfg.run.ray_num_cpus, dashboard=cfg.run.ray_dashboard)


def grounder_kwargs(cfg: AnnotateConfig, models: dict) -> dict:
    """Keyword arguments of ``annotators.grounder.Grounder`` (besides the model) for this run."""
    m = cfg.models
    return {"threshold": m.box_threshold, "nms_iou": m.nms_iou, "revision": models.get("detector_revision"),
            "max_boxes": m.max_boxes, "batch_size": cfg.run.batch_size,
            "dtype": None if m.detector_dtype == "float32" else m.detector_dtype}  # None: the Grounder's float32


def describer_kwargs(cfg: AnnotateConfig, models: dict) -> dict:
    """Keyword arguments of ``annotators.describer.Describer`` (besides the model and family) for this run."""
    m = cfg.models
    return {"max_new_tokens": m.max_new_tokens, "max_descriptions": m.max_descriptions,
            "enforce_eager": m.enforce_eager, "max_model_len": m.max_model_len,
            "gpu_memory_utilization": m.gpu_memory_utilization,
            "structured_output": m.structured_output, "structured_output_backend": m.structured_output_backend,
            "caption_max_chars": m.caption_max_chars, "description_max_chars": m.description_max_chars,
            "revision": models.get("mllm_revision"), **m.extra_engine_args}


def reblock(ds, rows: int, num_cpus: float):
    """``ds.repartition(target_num_rows_per_block=rows)`` whose tasks ask for ``num_cpus`` CPUs, like the
    pipeline's other tasks (``run.task_cpus``).

    Ray Data (2.60) gives a streaming repartition no resource argument, so its tasks ask for 1 CPU. When the
    actor pools hold all of a node's CPUs but one, the second repartition's CPU budget stays 0 and the
    pipeline stalls for good — measured with ``benchmarks/annotate_scale.py`` at 10⁶ rows on 2 CPUs:
    ``StreamingRepartition[num_rows_per_block=128] - Tasks: 0 [backpressured:tasks(ResourceBudget)]``,
    147 blocks queued, nothing committed in 6 minutes. The logical operator's ``ray_remote_args`` is not
    public API, so a change of Ray's internals is an error here, not a silent 1-CPU task."""
    out = ds.repartition(target_num_rows_per_block=rows)
    op = getattr(getattr(out, "_logical_plan", None), "dag", None)
    if type(op).__name__ != "StreamingRepartition" or not isinstance(getattr(op, "ray_remote_args", None), dict):
        import ray

        raise RuntimeError(f"reblock: Ray {ray.__version__} builds {type(op).__name__} for a streaming repartition; "
                           "annotators/pipeline.py needs updating to set its tasks' CPUs")
    object.__setattr__(op, "ray_remote_args", {**op.ray_remote_args, "num_cpus": num_cpus})  # a frozen dataclass
    return out


def build_dataset(cfg: AnnotateConfig, shards: list, models: dict):
    """The lazy Ray Data pipeline over ``shards`` (see module docstring); yields intermediate rows."""
    import ray
    from ray.data import ActorPoolStrategy

    from annotators import stages

    run, m = cfg.run, cfg.models
    limits = {"max_image_bytes": cfg.limits.max_image_bytes, "max_caption_chars": cfg.limits.max_caption_chars,
              "max_json_bytes": cfg.limits.max_json_bytes}
    inject = getattr(run, "inject", None) or {}
    ds = ray.data.from_items([{"shard": json.dumps(s.to_dict())} for s in shards], override_num_blocks=len(shards))
    ds = ds.map_batches(stages.read_shards_batch, batch_size=1, batch_format="pyarrow", num_cpus=run.task_cpus,
                        fn_kwargs={"limits": limits})
    # Streaming (no shuffle) re-blocking, for two reasons measured with benchmarks/annotate_overhead.py:
    # 1. Without it Ray Data fuses read and decode into one task whose input bundle is sized by decode's
    #    batch_size counted in *shard descriptors*: decode_batch_size shards were read by ONE task.
    # 2. A map task emits its output as one block when it ends (blocks are cut at 128 MB), so a block of a
    #    whole shard went through the describer as one task and reached the grounder only when all of
    #    it was described: the two model stages never overlapped and rows reached the driver in a burst.
    # Blocks of batch_size rows make every model task one batch, so the stages pipeline.
    ds = reblock(ds, run.decode_batch_size, run.task_cpus)
    ds = ds.map_batches(stages.decode_batch, batch_size=run.decode_batch_size, batch_format="pyarrow",
                        num_cpus=run.task_cpus, fn_kwargs={"max_image_pixels": cfg.limits.max_image_pixels,
                                                           "min_image_side": cfg.limits.min_image_side})
    ds = reblock(ds, run.batch_size, run.task_cpus)
    ds = ds.map_batches(
        stages.DescribeStage, batch_size=run.batch_size, batch_format="pyarrow",
        compute=ActorPoolStrategy(min_size=1, max_size=max(1, run.describer_actors)),
        num_cpus=run.describer_cpus, num_gpus=run.describer_gpus or None,
        fn_constructor_kwargs={"model": models["mllm"], "family": m.mllm_family, "describer_kwargs": describer_kwargs(cfg, models),
                               "max_descriptions": m.max_descriptions, "threads": run.threads_per_actor,
                               "inject": inject, "max_restarts": run.max_restarts, "cpu_bind": run.describer_cpu_bind})
    ds = ds.map_batches(
        stages.GroundStage, batch_size=run.batch_size, batch_format="pyarrow",
        compute=ActorPoolStrategy(min_size=1, max_size=max(1, run.grounder_actors)),
        num_cpus=run.grounder_cpus, num_gpus=run.grounder_gpus or None,
        fn_constructor_kwargs={"model": models["detector"], "max_boxes": m.max_boxes, "threads": run.threads_per_actor,
                               "grounder_kwargs": grounder_kwargs(cfg, models),
                               "inject": inject, "max_restarts": run.max_restarts,
                               "cpu_affinity": run.grounder_cpu_affinity})
    return ds


def run_annotation(cfg: AnnotateConfig) -> dict:
    """Annotate ``cfg.input`` into ``cfg.output``; skip committed shards; return the summary dict:
    shards (total/skipped/written/left), rows, counts by status, seconds, images/s, tokens/s."""
    if not cfg.input or not cfg.output:
        raise ValueError("run_annotation: cfg.input and cfg.output are required")
    check_test_hooks(cfg, "run_annotation")  # also for configs built in code, not only loaded ones
    t0 = time.perf_counter()
    shards = discover_shards(cfg.input)
    writer = ShardWriter(cfg.output)
    manifest = RunManifest(cfg.output)
    stale = writer.remove_stale_temp_files()
    if stale:
        log.warning("removed %d temp files left by an interrupted run", len(stale))
    models = resolve_models(cfg)
    manifest.start_run(cfg.to_dict(), models)
    pending, skipped = [], 0
    for s in shards:
        if writer.is_done(s.name):
            skipped += 1
            if s.name not in manifest.shards:  # committed, but the run died before the manifest update
                manifest.mark_done(s.name, {"input": s.path, "counts": writer.counts_of(s.name), "healed": True})
            continue
        pending.append(s)
    left = []
    if cfg.run.max_shards is not None:
        pending, left = pending[: cfg.run.max_shards], pending[cfg.run.max_shards:]
    counts: dict[str, int] = defaultdict(int)
    tokens = rows_done = 0
    timer = RunTimer()
    if pending:
        started_ray = _ensure_ray(cfg)
        try:
            rows_done, tokens = _execute(cfg, pending, models, writer, manifest, counts, timer)
        finally:
            if started_ray:
                import ray

                ray.shutdown()
    seconds = time.perf_counter() - t0
    timing = timer.summary()
    summary = {
        "output": cfg.output, "shards_total": len(shards), "shards_skipped": skipped, "shards_written": len(pending),
        "shards_left": len(left), "rows": rows_done, "counts": dict(counts), "seconds": round(seconds, 2),
        "images_per_s": round(rows_done / seconds, 3) if seconds else 0.0,
        "generated_tokens": tokens, "tokens_per_s": round(tokens / seconds, 2) if seconds else 0.0,
        "steady_images_per_s": timing.get("steady_images_per_s"), "timing": timing, "models": models,
    }
    manifest.finish_run(summary)
    return summary


def _execute(cfg, pending, models, writer, manifest, counts, timer: RunTimer) -> tuple[int, int]:
    """Stream rows back, write each shard when complete. Returns (rows, generated tokens)."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False  # ours below counts rows across shards
    # Blocks leave every stage in input order, so shards complete (and commit) one after another: a crash
    # loses at most the shards in flight, and the driver buffers few partial shards. Without it, the
    # fractional-CPU repartitions (``reblock``) split every small shard at once and all of them completed
    # together at the very end of a run (the kill-mid-run test saw 7 of 7 committed at its first commit).
    ctx.execution_options.preserve_order = True
    bar = None
    if cfg.run.progress:
        from tqdm import tqdm

        bar = tqdm(total=None, unit="img", desc="annotate", dynamic_ncols=True)
    by_name = {s.name: s for s in pending}
    buffers: dict[str, list] = defaultdict(list)
    totals: dict[str, int] = {}
    rows_done = tokens = 0
    started = time.perf_counter()
    for batch in build_dataset(cfg, pending, models).iter_batches(batch_format="pyarrow", batch_size=None):
        rows = batch.to_pylist()
        timer.add_rows(rows)
        for r in rows:
            name = r["shard"]
            if name not in totals:
                totals[name] = r["shard_rows"]
                if bar is not None:
                    bar.total = sum(totals.values())
            buffers[name].append(r)
            tokens += r.get("generated_tokens") or 0
        if bar is not None:
            bar.update(batch.num_rows)
        rows_done += batch.num_rows
        for name in [n for n, rs in buffers.items() if len(rs) >= totals[n]]:
            t_write = time.perf_counter()
            _commit_shard(by_name[name], buffers.pop(name), models, writer, manifest, counts, started)
            timer.mark_committed(name, write_s=time.perf_counter() - t_write)
    missing = [n for n in by_name if not writer.is_done(n)]
    for name in missing:  # an empty input shard yields no rows: write it empty; anything else is a bug
        if not read_shard(by_name[name]):
            _commit_shard(by_name[name], [], models, writer, manifest, counts, started)
        else:
            raise RuntimeError(f"shard {name}: {len(buffers.get(name, []))} of {totals.get(name, '?')} rows came back; "
                               "nothing was written for it (rerun to resume)")
    if bar is not None:
        bar.close()
    return rows_done, tokens


def _commit_shard(shard, rows, models, writer, manifest, counts, started) -> None:
    final = [finalize_row(r, models) for r in rows]
    info = writer.write(shard.name, final)
    for k, v in info["counts"].items():
        counts[k] += v
    manifest.mark_done(shard.name, {"input": shard.path, "format": shard.format, "output": info["path"],
                                    "rows": info["rows"], "counts": info["counts"], "bytes": info["bytes"],
                                    "seconds_since_start": round(time.perf_counter() - started, 2),
                                    "generated_tokens": sum(r.get("generated_tokens") or 0 for r in rows)})
    log.info("shard %s: %d rows %s", shard.name, info["rows"], info["counts"])
