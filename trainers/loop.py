"""The per-worker training loop (one function for Ray Train workers and in-process runs).

Per step: wait for the prefetched batch (data time) → seed this step's RNG from (seed, step, rank) →
forward + GrainLoss under bf16 autocast on GPU → backward → optional clipping → AdamW → per-step
LambdaLR (compute time). Every ``log_every`` steps all ranks report (a Ray barrier) the loss terms
averaged over workers; every ``checkpoint_every`` steps and at the last step rank 0 writes a
checkpoint (trainers/state.py) and reports it.

Resume: the latest checkpoint (Ray restores it when the run is started again with the same
RunConfig name and storage, or after a worker-group failure; or ``resume_from`` in the config)
gives the completed step s; epoch = s // steps_per_epoch and the plan (trainers/plan.py) is
replayed from step s % steps_per_epoch, so the samples of every later step equal those of an
uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time

import torch

from trainers.config import from_dict
from trainers.plan import epoch_batches
from trainers.samples import BatchStream, ShardReader, collate_trimmed
from trainers.state import load_state, save_state, set_rng_state, step_seed, unwrap


def _to_device(batch: dict, device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def _mean_over_workers(values: dict[str, float], world_size: int, device) -> dict[str, float]:
    """Average scalar metrics over workers (one small all-reduce), so logs describe the global batch."""
    if world_size <= 1 or not torch.distributed.is_initialized():
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return {k: float(v) / world_size for k, v in zip(keys, t.tolist())}


def _autocast(device, precision: str):
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if not use_bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def train_loop(loop_config: dict, session=None) -> None:
    """Train on this worker. ``loop_config``: ``config`` (TrainConfig dict), ``index`` (DataIndex),
    ``steps_per_epoch``, ``total_steps``, ``warmup_steps``, ``log_dir`` (local directory where rank 0
    writes metrics; None: a temp directory on rank 0's node), ``log_uri`` (remote output: rank 0
    continues the metrics found there and uploads its logs at each checkpoint and at the end),
    ``keys_dir``, optional ``resume_from`` (a checkpoint directory)."""
    from grain.data import sample_from_row
    from grain.losses import GrainLoss
    from grain.model import build_model
    from trainers.metrics import MetricsLogger
    from trainers.optim import build_optimizer, build_scheduler

    if session is None:
        from trainers.session import RaySession

        session = RaySession(find_unused_parameters=loop_config["config"].get("find_unused_parameters", False))
    cfg = from_dict(loop_config["config"])
    index = loop_config["index"]
    spe, total, warmup = loop_config["steps_per_epoch"], loop_config["total_steps"], loop_config["warmup_steps"]
    stop_at = min(total, cfg.max_steps) if cfg.max_steps else total
    rank, world = session.rank, session.world_size
    mcfg, lcfg = cfg.model_config(), cfg.loss_config()
    image_size = cfg.data.image_size or mcfg.image_size
    if image_size != mcfg.image_size:
        raise ValueError(f"data.image_size {image_size} differs from the model's image_size {mcfg.image_size}")

    if session.device.type == "cpu":
        # One intra-op thread per CPU the worker was given: oversubscribed OpenMP threads spin and
        # made a tiny step 10× slower on a shared 2-core machine.
        torch.set_num_threads(cfg.torch_threads or max(1, int(cfg.cpus_per_worker)))
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank (DDP also broadcasts rank 0's)
    model = session.prepare(build_model(mcfg))
    device = session.device
    loss_fn = GrainLoss(lcfg, rank=rank, world_size=world)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, total_steps=total, warmup_steps=warmup)

    step = samples_seen = 0
    with session.latest_checkpoint(loop_config.get("resume_from")) as ckpt_dir:
        if ckpt_dir:
            st = load_state(ckpt_dir)
            if st["world_size"] != world:
                print(f"[grain train] warning: checkpoint from {st['world_size']} workers resumed on {world}: sample order changes")
            unwrap(model).load_state_dict(st["model"])
            optimizer.load_state_dict(st["optimizer"])
            scheduler.load_state_dict(st["scheduler"])
            set_rng_state(st["rng"])
            step, samples_seen = st["step"], st["samples_seen"]
            if rank == 0:
                print(f"[grain train] resumed from {ckpt_dir} at step {step} ({samples_seen} samples)")

    log_dir, log_uri = loop_config.get("log_dir"), loop_config.get("log_uri")
    logger = None
    if rank == 0:
        log_dir = log_dir or tempfile.mkdtemp(prefix="grain-train-logs-")
        if log_uri:
            _download_metrics(log_uri, log_dir)  # a resumed run appends to the earlier records
        logger = MetricsLogger(log_dir)
    keys_file = None
    if cfg.log_sample_keys and loop_config.get("keys_dir"):
        os.makedirs(loop_config["keys_dir"], exist_ok=True)
        keys_file = open(os.path.join(loop_config["keys_dir"], f"rank{rank}.jsonl"), "a", buffering=1)
    reader = ShardReader(index.root, index.files, cache_groups=cfg.data.shuffle_window + 1)
    global_batch = cfg.batch_size * world
    t_start = time.time()
    last_metrics: dict = {}
    if step >= stop_at and rank == 0:
        print(f"[grain train] nothing to do: checkpoint step {step} >= target {stop_at}")
    try:
        while step < stop_at:
            epoch, j0 = divmod(step, spe)
            batches = epoch_batches(index, cfg.seed, epoch, rank, world, cfg.batch_size,
                                    cfg.data.shuffle_window, n_steps=spe, start_step=j0)
            stream = BatchStream(
                batches, reader,
                to_sample=lambda row, _e=epoch: sample_from_row(row, mcfg, seed=cfg.seed, epoch=_e,
                                                                alt_text_prob=cfg.data.alt_text_prob),
                collate=lambda samples: collate_trimmed(samples, mcfg),
                threads=cfg.data.decode_threads, prefetch=cfg.data.prefetch_batches)
            try:
                t_wait = time.perf_counter()
                for batch, keys, stats in stream:
                    t_data = time.perf_counter() - t_wait
                    _maybe_inject_failure(cfg, step + 1, rank, world)
                    torch.manual_seed(step_seed(cfg.seed, step, rank))  # dropout draws: f(seed, step, rank)
                    model.train()
                    batch = _to_device(batch, device)
                    with _autocast(device, cfg.precision):
                        outputs = model(batch, return_intermediate=lcfg.aux_loss)  # aux: every decoder layer
                        losses = loss_fn(outputs, batch)
                    loss = losses["loss"]
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"non-finite loss {loss.item()} at step {step} (epoch {epoch}); keys {keys}")
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    grad_norm = None
                    if cfg.optim.grad_clip:
                        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip))
                    lr = optimizer.param_groups[0]["lr"]
                    optimizer.step()
                    scheduler.step()
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    step += 1
                    samples_seen += global_batch
                    t_step = time.perf_counter() - t_wait
                    if keys_file:
                        keys_file.write(json.dumps({"step": step, "epoch": epoch, "keys": keys}) + "\n")
                    is_last = step >= stop_at
                    do_ckpt = step % cfg.checkpoint_every == 0 or is_last
                    if step % cfg.log_every == 0 or do_ckpt:
                        vals = {k: float(v.detach()) for k, v in losses.items() if v.numel() == 1}
                        vals["skipped_decode"] = float(stats["skipped_decode"])
                        vals["data_s"], vals["compute_s"] = t_data, t_step - t_data
                        vals = _mean_over_workers(vals, world, device)
                        vals["skipped_decode"] *= world  # a count, not a mean
                        last_metrics = {**vals, "step": step, "epoch": epoch, "lr": lr, "samples_seen": samples_seen,
                                        "samples_per_s": global_batch / max(t_step, 1e-9),
                                        "logit_scale": float(outputs["logit_scale"].detach()),
                                        "elapsed_s": time.time() - t_start}
                        if grad_norm is not None:
                            last_metrics["grad_norm"] = grad_norm
                        if logger:
                            logger.log(last_metrics)
                            if step % max(1, cfg.log_every * 10) == 0 or is_last:
                                print(f"[grain train] step {step}/{stop_at} epoch {epoch} loss {last_metrics['loss']:.4f} "
                                      f"lr {lr:.2e} {last_metrics['samples_per_s']:.1f} samples/s "
                                      f"(data {t_data:.3f}s, compute {t_step - t_data:.3f}s)", flush=True)
                        if do_ckpt:
                            if logger and log_uri:
                                logger.flush()
                                _upload_logs(log_dir, log_uri)
                            _checkpoint(session, last_metrics, model, optimizer, scheduler, step, spe,
                                        samples_seen, cfg, mcfg, lcfg, world)
                        else:
                            session.report(last_metrics)
                    if is_last:
                        break
                    t_wait = time.perf_counter()
            finally:
                stream.close()
        if not last_metrics and step >= stop_at:
            # A rerun of a finished run: re-report the restored state so the result points at a checkpoint.
            _checkpoint(session, {"step": step, "epoch": step // spe, "samples_seen": samples_seen, "noop": 1.0},
                        model, optimizer, scheduler, step, spe, samples_seen, cfg, mcfg, lcfg, world)
    finally:
        if logger:
            logger.close()
            if log_uri:
                _upload_logs(log_dir, log_uri)
        if keys_file:
            keys_file.close()


def _maybe_inject_failure(cfg, next_step: int, rank: int, world: int) -> None:
    """``debug_fail_at_step``: the last rank raises once (a marker file in the output remembers it),
    so tests can check that FailureConfig restarts the group from the latest checkpoint."""
    if cfg.debug_fail_at_step != next_step or rank != world - 1:
        return
    marker = os.path.join(cfg.output, f".failure-injected-at-step-{next_step}")
    if os.path.exists(marker):
        return
    with open(marker, "w") as f:
        f.write("injected\n")
    raise RuntimeError(f"debug_fail_at_step: injected failure before step {next_step} on rank {rank}")


def _download_metrics(log_uri: str, log_dir: str) -> None:
    from grain.common import storage

    src = storage.join(log_uri, "metrics.jsonl")
    if storage.exists(src):
        with open(os.path.join(log_dir, "metrics.jsonl"), "wb") as f:
            f.write(storage.read_bytes(src))


def _upload_logs(log_dir: str, log_uri: str) -> None:
    """metrics.jsonl and tensorboard/ of rank 0's node → the remote output (each file one atomic write)."""
    from grain.common import storage

    storage.put_dir(log_dir, log_uri, commit=False)


def _checkpoint(session, metrics, model, optimizer, scheduler, step, spe, samples_seen, cfg, mcfg, lcfg, world):
    """Rank 0 writes the state into a temp directory and reports it; the other ranks report metrics."""
    if session.rank != 0:
        session.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="grain-ckpt-") as d:
        save_state(d, model=model, optimizer=optimizer, scheduler=scheduler, step=step,
                   epoch=step // spe, step_in_epoch=step % spe, samples_seen=samples_seen,
                   config=cfg.to_dict(), model_config=mcfg.to_dict(), loss_config=lcfg.to_dict(), world_size=world)
        session.report(metrics, checkpoint_dir=d)  # Ray copies it to storage before returning (sync upload)

