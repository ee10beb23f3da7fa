"""Where the training loop runs: a Ray Train worker, or in-process (``workers: 0``, tests/debugging).

The loop talks to either through the same five members, so it has one code path:
``rank``, ``world_size``, ``device``, ``prepare(model)``, ``latest_checkpoint()`` (a context manager
yielding a local directory or None), ``report(metrics, checkpoint_dir=None)``.
"""

from __future__ import annotations

import contextlib
import os
import shutil

import torch


class RaySession:
    """Inside ``TorchTrainer``: DDP via ``prepare_model``, checkpoints via ``ray.train.report``."""

    def __init__(self, find_unused_parameters: bool = True):
        import ray.train

        ctx = ray.train.get_context()
        self.rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()
        self.find_unused_parameters = find_unused_parameters
        from ray.train.torch import get_device

        self.device = get_device()

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        from ray.train.torch import prepare_model

        return prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": self.find_unused_parameters})

    @contextlib.contextmanager
    def latest_checkpoint(self, fallback: str | None = None):
        """Ray's restored checkpoint (rerun with the same RunConfig name/storage, or a worker-group
        restart after a failure), else ``fallback`` (a checkpoint directory given in the config)."""
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is not None:
            with ckpt.as_directory() as d:
                yield d
        elif fallback:
            from ray.train import Checkpoint

            with Checkpoint(fallback).as_directory() as d:
                yield d
        else:
            yield None

    def report(self, metrics: dict, checkpoint_dir: str | None = None) -> None:
        import ray.train

        ckpt = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=ckpt)  # a barrier: every rank calls it at the same steps


class LocalSession:
    """One process, no Ray: checkpoints are directories ``<root>/checkpoint_<step:09d>`` (latest wins)."""

    rank = 0
    world_size = 1

    def __init__(self, root: str, keep: int = 2, use_gpu: bool = False):
        self.root = root
        self.keep = max(1, keep)
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.last_checkpoint: str | None = None
        self.last_metrics: dict = {}

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device)

    def _checkpoints(self) -> list[str]:
        if not os.path.isdir(self.root):
            return []
        names = sorted(n for n in os.listdir(self.root) if n.startswith("checkpoint_") and not n.endswith(".tmp"))
        return [os.path.join(self.root, n) for n in names]

    @contextlib.contextmanager
    def latest_checkpoint(self, fallback: str | None = None):
        found = self._checkpoints()
        yield found[-1] if found else fallback

    def report(self, metrics: dict, checkpoint_dir: str | None = None) -> None:
        self.last_metrics = dict(metrics)
        if checkpoint_dir is None:
            return
        os.makedirs(self.root, exist_ok=True)
        dest = os.path.join(self.root, f"checkpoint_{int(metrics['step']):09d}")
        tmp = dest + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(checkpoint_dir, tmp)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)  # complete or absent: a crash never leaves a half checkpoint as "latest"
        self.last_checkpoint = dest
        for old in self._checkpoints()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
