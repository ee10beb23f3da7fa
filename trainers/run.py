"""The driver: index the shards, launch the loop (Ray ``TorchTrainer`` or in-process), export ``final.pt``.

``run_training(cfg) -> dict`` is the Python entry (the Prefect flow calls it); ``grain train`` wraps it.

Output layout (``cfg.output``, a local path or fsspec URI)::

    run.json            config, data files, annotation manifest(s), skipped-row counts, result
    metrics.jsonl       one JSON record per logged step (loss terms, lr, samples/s, data vs compute s)
    tensorboard/        the same scalars for TensorBoard
    loss_curves.png     loss terms and lr against the step
    final.pt            grain.checkpoint.write_checkpoint of the last model (evaluation loads it)
    ray/<run_name>/     Ray Train's run directory: checkpoint_* with state.pt (resume)
    sample_keys/        per-rank keys of every step (only with log_sample_keys)

Local outputs are written in place (a multi-node cluster then needs a shared filesystem for the
metrics; checkpoints always go through Ray's storage). For a URI output, rank 0 writes metrics to a
local directory on its node and uploads them at every checkpoint and at the end (a resumed run first
downloads and continues them); checkpoints go to ``storage_path`` via ``RunConfig(storage_filesystem=...)``.
A rerun keeps the earlier attempts' run.json entries under ``history``.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass

from grain.common import storage
from grain.common.safety import refuse_test_hooks
from trainers.config import TEST_HOOK_KEYS, TrainConfig
from trainers.index import DataError, DataIndex, build_index
from trainers.optim import warmup_steps_for
from trainers.plan import steps_per_epoch


def _write_json(uri: str, obj: dict) -> None:
    storage.atomic_write_bytes(uri, json.dumps(obj, indent=2, sort_keys=True, default=str).encode(), commit=False)


def _ray_init(cfg: TrainConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    address = cfg.ray_address or os.environ.get("RAY_ADDRESS") or "local"
    if address != "local":
        ray.init(address=address)
        return
    # A private local Ray ("local": never silently joins someone else's cluster) with every listening
    # socket on 127.0.0.1 and its session files in its own short temp dir, as the annotation job's: a
    # plain ray.init(address="local") serves its dashboard agent on 0.0.0.0 and the external address.
    from grain.common.ray_session import init_loopback_ray, local_temp_dir

    init_loopback_ray(include_dashboard=False, _temp_dir=local_temp_dir())


def _fit_with_ray(cfg: TrainConfig, loop_config: dict, run_name: str, storage_path: str):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from trainers.dist_backend import LocalRendezvousTorchConfig
    from trainers.loop import train_loop

    _ray_init(cfg)
    pafs, inner = storage.pyarrow_fs(storage_path)
    resources = {"CPU": cfg.cpus_per_worker}
    if cfg.use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=loop_config,
        # gloo on one node: a file rendezvous, sockets on loopback only (trainers/dist_backend.py)
        torch_config=LocalRendezvousTorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=run_name,
            storage_path=inner,
            storage_filesystem=pafs,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
        ),
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    if result.checkpoint is None:
        raise RuntimeError(f"training run {run_name!r} finished without a checkpoint")
    return result.checkpoint


def _fit_in_process(cfg: TrainConfig, loop_config: dict, run_name: str, storage_path: str) -> str:
    from trainers.loop import train_loop
    from trainers.session import LocalSession

    if not storage.is_local(storage_path):
        raise ValueError("workers: 0 (in-process) needs a local storage_path; use Ray workers for URIs")
    session = LocalSession(os.path.join(storage_path, run_name), keep=cfg.keep_checkpoints, use_gpu=cfg.use_gpu)
    train_loop(loop_config, session=session)
    with session.latest_checkpoint() as d:
        if d is None:
            raise RuntimeError(f"in-process run {run_name!r} finished without a checkpoint")
        return d


def export_final(checkpoint_dir: str, out_uri: str) -> dict:
    """Load ``state.pt`` from a checkpoint directory, rebuild the model, save it with
    ``grain.checkpoint.write_checkpoint`` at ``out_uri`` (local path or URI). Returns the training state's counters."""
    from grain.checkpoint import write_checkpoint
    from grain.config import ModelConfig
    from grain.model import build_model
    from trainers.state import load_state

    st = load_state(checkpoint_dir)
    mcfg = ModelConfig.from_dict(st["model_config"])
    model = build_model(mcfg)
    model.load_state_dict(st["model"])
    extra = {"step": st["step"], "epoch": st["epoch"], "samples_seen": st["samples_seen"],
             "train_config": st["config"], "loss_config": st["loss_config"]}
    # One atomic write, local path or URI. An object-store final.pt is committed (a .done marker after
    # the object, the storage protocol's rule for remote readers); a local one carries no marker.
    with storage.atomic_open(out_uri, commit=not storage.is_local(out_uri)) as f:
        write_checkpoint(f, model, mcfg, extra=extra)
    return {k: st[k] for k in ("step", "epoch", "samples_seen")}


@dataclass
class RunPlan:
    """Where a run writes and its schedule, fixed before any worker starts."""

    out: str  # cfg.output without a trailing slash (local path or URI)
    run_name: str
    storage_path: str  # Ray's storage (checkpoints)
    index: DataIndex
    world: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int

    @property
    def local_out(self) -> bool:
        return storage.is_local(self.out)

    def loop_config(self, cfg: TrainConfig) -> dict:
        """The ``train_loop`` argument: a local output is written in place, a URI one through rank 0's uploads."""
        local = self.local_out
        return {"config": cfg.to_dict(), "index": self.index, "steps_per_epoch": self.steps_per_epoch,
                "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "log_dir": self.out if local else None, "log_uri": None if local else self.out,
                "keys_dir": os.path.join(self.out, "sample_keys") if local else None}


def plan_run(cfg: TrainConfig) -> RunPlan:
    """Create the output, index the shards and fix the schedule; DataError when the rows are too few."""
    out = cfg.output.rstrip("/")
    storage.makedirs(out)
    run_name = cfg.run_name or os.path.basename(out) or "grain-train"
    storage_path = cfg.storage_path or storage.join(out, "ray")
    index = build_index(cfg.data.path)
    world = max(1, cfg.workers)
    spe = steps_per_epoch(index, world, cfg.batch_size, cfg.seed, cfg.epochs)
    if spe == 0:
        raise DataError(f"{cfg.data.path}: {index.num_ok} trainable rows are too few for {world} worker(s) × batch "
                         f"{cfg.batch_size} (skipped: {index.skipped})")
    total = spe * cfg.epochs
    warmup = min(warmup_steps_for(cfg.optim, spe), total)
    return RunPlan(out=out, run_name=run_name, storage_path=storage_path, index=index, world=world,
                   steps_per_epoch=spe, total_steps=total, warmup_steps=warmup)


def _start_run_json(cfg: TrainConfig, plan: RunPlan, t0: float, run_json: str) -> dict:
    """Write run.json's "running" record (a rerun keeps the earlier attempts under ``history``); return it."""
    run_info = {
        "status": "running",
        "started_at": t0,
        "config": cfg.to_dict(),
        "data": plan.index.summary(),
        "schedule": {"steps_per_epoch": plan.steps_per_epoch, "total_steps": plan.total_steps,
                     "warmup_steps": plan.warmup_steps, "global_batch": cfg.batch_size * plan.world,
                     "stop_at": min(plan.total_steps, cfg.max_steps or plan.total_steps)},
        "ray": {"run_name": plan.run_name, "storage_path": plan.storage_path},
    }
    if storage.exists(run_json):  # a rerun (resume): keep what the earlier attempts recorded
        try:
            prev = json.loads(storage.read_bytes(run_json))
            run_info["history"] = prev.pop("history", []) + [
                {k: prev.get(k) for k in ("status", "started_at", "finished_at", "error", "result")}]
        except ValueError:
            run_info["history"] = [{"unreadable_run_json": True}]
    _write_json(run_json, run_info)
    return run_info


def _fit_and_export(cfg: TrainConfig, plan: RunPlan) -> tuple[dict, str]:
    """Train in-process or on Ray, export final.pt; return (its counters, the last checkpoint's location)."""
    loop_config = plan.loop_config(cfg)
    final = storage.join(plan.out, "final.pt")
    if cfg.workers == 0:
        ckpt_dir = _fit_in_process(cfg, loop_config, plan.run_name, plan.storage_path)
        return export_final(ckpt_dir, final), ckpt_dir
    ckpt = _fit_with_ray(cfg, loop_config, plan.run_name, plan.storage_path)
    with ckpt.as_directory() as d:
        counters = export_final(d, final)
    return counters, ckpt.path


def _curves(cfg: TrainConfig, plan: RunPlan) -> tuple[str | None, list[dict]]:
    """Draw loss_curves.png (uploaded for a URI output); return (the local PNG or None, the metric records)."""
    from trainers.metrics import plot_loss_curves, read_metrics

    out, log_dir = plan.out, plan.out
    if not plan.local_out:  # rank 0 uploaded its logs; plot from a local copy
        log_dir = tempfile.mkdtemp(prefix="grain-train-plot-")
        with open(os.path.join(log_dir, "metrics.jsonl"), "wb") as f:
            f.write(storage.read_bytes(storage.join(out, "metrics.jsonl")))
    metrics_path = os.path.join(log_dir, "metrics.jsonl")
    png = plot_loss_curves(metrics_path, os.path.join(log_dir, "loss_curves.png"),
                           title=f"{plan.run_name} ({cfg.model.get('kind', 'grain')})")
    records = read_metrics(metrics_path)
    if png and not plan.local_out:
        with open(png, "rb") as f:
            storage.atomic_write_bytes(storage.join(out, "loss_curves.png"), f.read(), commit=False)
    return png, records


def run_training(cfg: TrainConfig) -> dict:
    """Train per ``cfg``; return {output, final_checkpoint, steps, metrics, run_json, ...}."""
    refuse_test_hooks({k: getattr(cfg, k) for k in TEST_HOOK_KEYS}, "run_training")  # configs built in code too
    cfg.validate()
    t0 = time.time()
    plan = plan_run(cfg)
    out, index = plan.out, plan.index
    run_json = storage.join(out, "run.json")
    run_info = _start_run_json(cfg, plan, t0, run_json)
    print(f"[grain train] {index.num_ok} rows from {len(index.files)} shard(s) (skipped {index.skipped or 'none'}); "
          f"{plan.steps_per_epoch} steps/epoch × {cfg.epochs} epochs, global batch {cfg.batch_size * plan.world}",
          flush=True)
    try:
        counters, ckpt_ref = _fit_and_export(cfg, plan)
    except BaseException as e:
        run_info.update(status="failed", error=f"{type(e).__name__}: {e}", finished_at=time.time())
        _write_json(run_json, run_info)
        raise
    png, records = _curves(cfg, plan)
    result = {
        "output": out,
        "final_checkpoint": storage.join(out, "final.pt"),
        "checkpoint": ckpt_ref,
        "steps": counters["step"],
        "epoch": counters["epoch"],
        "samples_seen": counters["samples_seen"],
        "final_metrics": records[-1] if records else {},
        "first_metrics": records[0] if records else {},
        "metrics_jsonl": storage.join(out, "metrics.jsonl"),
        "loss_curves_png": storage.join(out, "loss_curves.png") if png else None,
        "run_json": run_json,
        "skipped_rows": dict(index.skipped),
        "wall_s": time.time() - t0,
    }
    run_info.update(status="done", finished_at=time.time(), result=result)
    _write_json(run_json, run_info)
    print(f"[grain train] done: step {result['steps']}, final loss "
          f"{result['final_metrics'].get('loss', float('nan')):.4f}, model → {result['final_checkpoint']}", flush=True)
    return result
