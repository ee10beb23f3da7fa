"""Training state ↔ a checkpoint directory (``state.pt``), loadable with ``torch.load(weights_only=True)``.

The directory is a local path or a storage URI (grain.common.storage): ``state.pt`` is one atomic
write there (temp file + rename locally, one object upload on an object store).

Everything stored is tensors or plain Python types: model and optimizer state dicts, the scheduler's
state, counters, RNG states as uint8 tensors, and the configs as dicts.
"""

from __future__ import annotations

import io
import os
import random

import numpy as np
import torch

from grain.common import storage

STATE_FILE = "state.pt"


def rng_state() -> dict:
    """RNG states as tensors / plain types (weights_only-safe)."""
    st = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]), "python_version": random.getstate()[0]}
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    st["numpy"] = {"keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "gauss": float(gauss)}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state()
    return st


def set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    random.setstate((st["python_version"], tuple(st["python"]), None))
    n = st["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state(st["cuda"])


def step_seed(seed: int, step: int, rank: int) -> int:
    """Seed for dropout etc. at one step on one rank: a pure function, so a resumed run draws what an
    uninterrupted one would, whatever happened to the process's RNG in between."""
    return (int(seed) * 1_000_003 + int(step) * 7919 + int(rank) * 104_729) % (2**63 - 1)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DDP (``prepare_model``) wrappers."""
    return getattr(model, "module", model)


def save_state(directory: str, *, model, optimizer, scheduler, step: int, epoch: int, step_in_epoch: int,
               samples_seen: int, config: dict, model_config: dict, loss_config: dict, world_size: int) -> str:
    """Write ``<directory>/state.pt`` (local path or URI); ``step`` = optimizer steps completed. Returns its location."""
    state = {
        "model": {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": int(step),
        "epoch": int(epoch),
        "step_in_epoch": int(step_in_epoch),
        "samples_seen": int(samples_seen),
        "world_size": int(world_size),
        "rng": rng_state(),
        "config": config,
        "model_config": model_config,
        "loss_config": loss_config,
    }
    path = storage.join(directory, STATE_FILE)
    # A crash mid-write never leaves a truncated state.pt. No .done marker: the checkpoint is
    # committed by whoever publishes the directory (Ray's report, LocalSession's rename).
    with storage.atomic_open(path, commit=False) as f:
        torch.save(state, f)
    return path


def load_state(directory: str, map_location="cpu") -> dict:
    """The state saved by ``save_state`` in ``directory`` (local path or URI)."""
    path = storage.join(directory, STATE_FILE)
    if storage.is_local(directory):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint directory {directory} has no {STATE_FILE}")
        return torch.load(path, map_location=map_location, weights_only=True)
    if not storage.exists(path):
        raise FileNotFoundError(f"checkpoint directory {directory} has no {STATE_FILE}")
    return torch.load(io.BytesIO(storage.read_bytes(path)), map_location=map_location, weights_only=True)
