"""The per-worker training loop (one code path for Ray Train workers and in-process runs).

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
from dataclasses import dataclass

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


@dataclass
class StepOutcome:
    """What one optimizer step leaves for logging: the loss terms (0-d tensors), the model outputs
    (``logit_scale``), the lr it used, the clipped gradient norm, the batch's decode stats and keys,
    and its times (data wait, data + compute)."""

    epoch: int
    keys: list
    stats: dict
    losses: dict
    outputs: dict
    lr: float
    grad_norm: float | None
    t_data: float = 0.0
    t_step: float = 0.0


def train_loop(loop_config: dict, session=None) -> None:
    """Train on this worker. ``loop_config``: ``config`` (TrainConfig dict), ``index`` (DataIndex),
    ``steps_per_epoch``, ``total_steps``, ``warmup_steps``, ``log_dir`` (local directory where rank 0
    writes metrics; None: a temp directory on rank 0's node), ``log_uri`` (remote output: rank 0
    continues the metrics found there and uploads its logs at each checkpoint and at the end),
    ``keys_dir``, optional ``resume_from`` (a checkpoint directory or URI)."""
    if session is None:
        from trainers.session import RaySession

        session = RaySession(find_unused_parameters=loop_config["config"].get("find_unused_parameters", False))
    trainer = Trainer(loop_config, session)
    trainer.setup()
    trainer.run()


class Trainer:
    """One worker's run: ``setup()`` builds the model and restores the latest checkpoint, ``run()``
    steps to ``stop_at``; ``step()``, ``log()`` and ``checkpoint()`` are the parts of one step."""

    def __init__(self, loop_config: dict, session):
        self.loop_config = loop_config
        self.session = session
        self.cfg = cfg = from_dict(loop_config["config"])
        self.index = loop_config["index"]
        self.spe, self.total = loop_config["steps_per_epoch"], loop_config["total_steps"]
        self.warmup = loop_config["warmup_steps"]
        self.stop_at = min(self.total, cfg.max_steps) if cfg.max_steps else self.total
        self.rank, self.world = session.rank, session.world_size
        self.mcfg, self.lcfg = cfg.model_config(), cfg.loss_config()
        image_size = cfg.data.image_size or self.mcfg.image_size
        if image_size != self.mcfg.image_size:
            raise ValueError(f"data.image_size {image_size} differs from the model's image_size {self.mcfg.image_size}")
        self.global_batch = cfg.batch_size * self.world
        self.step_count = self.samples_seen = 0  # optimizer steps completed, samples in them (all ranks)
        self.last_metrics: dict = {}
        self.log_dir, self.log_uri = loop_config.get("log_dir"), loop_config.get("log_uri")
        self.logger = self.keys_file = None

    def setup(self) -> None:
        """Model, loss, optimizer and schedule; the restored checkpoint; rank 0's logs; the shard reader."""
        from grain.losses import GrainLoss
        from grain.model import build_model
        from trainers.optim import build_optimizer, build_scheduler

        cfg, session = self.cfg, self.session
        if session.device.type == "cpu":
            # One intra-op thread per CPU the worker was given: oversubscribed OpenMP threads spin and
            # made a tiny step 10× slower on a shared 2-core machine.
            torch.set_num_threads(cfg.torch_threads or max(1, int(cfg.cpus_per_worker)))
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank (DDP also broadcasts rank 0's)
        self.model = session.prepare(build_model(self.mcfg))
        self.device = session.device
        self.loss_fn = GrainLoss(self.lcfg, rank=self.rank, world_size=self.world)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, total_steps=self.total, warmup_steps=self.warmup)
        self._restore()
        self._open_logs()
        self.reader = ShardReader(self.index.root, self.index.files, cache_groups=cfg.data.shuffle_window + 1)
        self.t_start = time.time()

    def _restore(self) -> None:
        with self.session.latest_checkpoint(self.loop_config.get("resume_from")) as ckpt_dir:
            if not ckpt_dir:
                return
            st = load_state(ckpt_dir)
            if st["world_size"] != self.world:
                print(f"[grain train] warning: checkpoint from {st['world_size']} workers resumed on {self.world}: sample order changes")
            unwrap(self.model).load_state_dict(st["model"])
            self.optimizer.load_state_dict(st["optimizer"])
            self.scheduler.load_state_dict(st["scheduler"])
            set_rng_state(st["rng"])
            self.step_count, self.samples_seen = st["step"], st["samples_seen"]
            if self.rank == 0:
                print(f"[grain train] resumed from {ckpt_dir} at step {self.step_count} ({self.samples_seen} samples)")

    def _open_logs(self) -> None:
        """Rank 0's metrics logger (continuing a remote output's records) and every rank's keys file."""
        from trainers.metrics import MetricsLogger

        if self.rank == 0:
            self.log_dir = self.log_dir or tempfile.mkdtemp(prefix="grain-train-logs-")
            if self.log_uri:
                _download_metrics(self.log_uri, self.log_dir)  # a resumed run appends to the earlier records
            self.logger = MetricsLogger(self.log_dir)
        keys_dir = self.loop_config.get("keys_dir")
        if self.cfg.log_sample_keys and keys_dir:
            os.makedirs(keys_dir, exist_ok=True)
            self.keys_file = open(os.path.join(keys_dir, f"rank{self.rank}.jsonl"), "a", buffering=1)

    def run(self) -> None:
        """Epochs of the plan from the restored step to ``stop_at``; logs closed (and uploaded) at the end."""
        if self.step_count >= self.stop_at and self.rank == 0:
            print(f"[grain train] nothing to do: checkpoint step {self.step_count} >= target {self.stop_at}")
        try:
            while self.step_count < self.stop_at:
                self._run_epoch()
            if not self.last_metrics and self.step_count >= self.stop_at:
                # A rerun of a finished run: re-report the restored state so the result points at a checkpoint.
                self.checkpoint({"step": self.step_count, "epoch": self.step_count // self.spe,
                                 "samples_seen": self.samples_seen, "noop": 1.0})
        finally:
            self.close()

    def _stream(self, epoch: int, start_step: int) -> BatchStream:
        """This rank's batches of ``epoch`` from ``start_step`` on, decoded and collated ahead."""
        from grain.data import sample_from_row

        cfg, mcfg = self.cfg, self.mcfg
        batches = epoch_batches(self.index, cfg.seed, epoch, self.rank, self.world, cfg.batch_size,
                                cfg.data.shuffle_window, n_steps=self.spe, start_step=start_step)
        return BatchStream(
            batches, self.reader,
            to_sample=lambda row, _e=epoch: sample_from_row(row, mcfg, seed=cfg.seed, epoch=_e,
                                                            alt_text_prob=cfg.data.alt_text_prob),
            collate=lambda samples: collate_trimmed(samples, mcfg),
            threads=cfg.data.decode_threads, prefetch=cfg.data.prefetch_batches)

    def _run_epoch(self) -> None:
        """The steps of the current epoch, up to its end or ``stop_at``."""
        epoch, j0 = divmod(self.step_count, self.spe)
        stream = self._stream(epoch, j0)
        try:
            t_wait = time.perf_counter()
            for batch, keys, stats in stream:
                t_data = time.perf_counter() - t_wait
                outcome = self.step(batch, keys, stats, epoch)
                outcome.t_data, outcome.t_step = t_data, time.perf_counter() - t_wait
                if self.keys_file:
                    self.keys_file.write(json.dumps({"step": self.step_count, "epoch": epoch, "keys": keys}) + "\n")
                if self._after_step(outcome):
                    break
                t_wait = time.perf_counter()
        finally:
            stream.close()

    def step(self, batch: dict, keys: list, stats: dict, epoch: int) -> StepOutcome:
        """One optimizer step on ``batch`` (collated tensors, leading dim B = batch_size)."""
        cfg, model, optimizer = self.cfg, self.model, self.optimizer
        _maybe_inject_failure(cfg, self.step_count + 1, self.rank, self.world)
        torch.manual_seed(step_seed(cfg.seed, self.step_count, self.rank))  # dropout draws: f(seed, step, rank)
        model.train()
        batch = _to_device(batch, self.device)
        with _autocast(self.device, cfg.precision):
            outputs = model(batch, return_intermediate=self.lcfg.aux_loss)  # aux: every decoder layer
            losses = self.loss_fn(outputs, batch)
        loss = losses["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss.item()} at step {self.step_count} (epoch {epoch}); keys {keys}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = None
        if cfg.optim.grad_clip:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip))
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        self.scheduler.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.step_count += 1
        self.samples_seen += self.global_batch
        return StepOutcome(epoch=epoch, keys=keys, stats=stats, losses=losses, outputs=outputs, lr=lr, grad_norm=grad_norm)

    def _after_step(self, o: StepOutcome) -> bool:
        """Log, report and checkpoint as the step's number says; True after the last step."""
        step = self.step_count
        is_last = step >= self.stop_at
        do_ckpt = step % self.cfg.checkpoint_every == 0 or is_last
        if step % self.cfg.log_every == 0 or do_ckpt:
            self.last_metrics = self._metrics(o)
            self.log(o, is_last)
            if do_ckpt:
                if self.logger and self.log_uri:
                    self.logger.flush()
                    _upload_logs(self.log_dir, self.log_uri)
                self.checkpoint(self.last_metrics)
            else:
                self.session.report(self.last_metrics)
        return is_last

    def _metrics(self, o: StepOutcome) -> dict:
        """The step's record: loss terms and times averaged over workers, counters, lr, throughput."""
        vals = {k: float(v.detach()) for k, v in o.losses.items() if v.numel() == 1}
        vals["skipped_decode"] = float(o.stats["skipped_decode"])
        vals["data_s"], vals["compute_s"] = o.t_data, o.t_step - o.t_data
        vals = _mean_over_workers(vals, self.world, self.device)
        vals["skipped_decode"] *= self.world  # a count, not a mean
        metrics = {**vals, "step": self.step_count, "epoch": o.epoch, "lr": o.lr, "samples_seen": self.samples_seen,
                   "samples_per_s": self.global_batch / max(o.t_step, 1e-9),
                   "logit_scale": float(o.outputs["logit_scale"].detach()),
                   "elapsed_s": time.time() - self.t_start}
        if o.grad_norm is not None:
            metrics["grad_norm"] = o.grad_norm
        return metrics

    def log(self, o: StepOutcome, is_last: bool) -> None:
        """Rank 0: the record to metrics.jsonl/TensorBoard; a progress line every 10 logged steps and at the end."""
        if not self.logger:
            return
        m, step = self.last_metrics, self.step_count
        self.logger.log(m)
        if step % max(1, self.cfg.log_every * 10) == 0 or is_last:
            print(f"[grain train] step {step}/{self.stop_at} epoch {o.epoch} loss {m['loss']:.4f} "
                  f"lr {o.lr:.2e} {m['samples_per_s']:.1f} samples/s "
                  f"(data {o.t_data:.3f}s, compute {o.t_step - o.t_data:.3f}s)", flush=True)

    def checkpoint(self, metrics: dict) -> None:
        """Rank 0 writes the state into a temp directory and reports it; the other ranks report metrics."""
        if self.rank != 0:
            self.session.report(metrics)
            return
        step = self.step_count
        with tempfile.TemporaryDirectory(prefix="grain-ckpt-") as d:
            save_state(d, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler, step=step,
                       epoch=step // self.spe, step_in_epoch=step % self.spe, samples_seen=self.samples_seen,
                       config=self.cfg.to_dict(), model_config=self.mcfg.to_dict(),
                       loss_config=self.lcfg.to_dict(), world_size=self.world)
            self.session.report(metrics, checkpoint_dir=d)  # Ray copies it to storage before returning (sync upload)

    def close(self) -> None:
        """Rank 0's logs closed and uploaded to a remote output; the keys file closed."""
        if self.logger:
            self.logger.close()
            if self.log_uri:
                _upload_logs(self.log_dir, self.log_uri)
        if self.keys_file:
            self.keys_file.close()


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
