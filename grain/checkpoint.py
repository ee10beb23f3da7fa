"""Checkpoints: ``{"format", "config" (plain dict), "state_dict", "extra"}`` in one ``torch.save`` file.

The config is stored as a plain dict (``ModelConfig.to_dict``) so loading works with
``torch.load(weights_only=True)``: no pickled classes, no code execution on load. ``extra`` must
hold only plain types (numbers, strings, lists, dicts, tensors), e.g. step, epoch, metrics.
"""

from __future__ import annotations

import os
from typing import BinaryIO

import torch
from torch import nn

from grain.config import ModelConfig
from grain.model import GrainModel, build_model

FORMAT = "grain-checkpoint-v1"
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers


def unwrapped_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict without DDP's ``module.`` / torch.compile's ``_orig_mod.`` prefixes."""
    out = {}
    for k, v in model.state_dict().items():
        changed = True
        while changed:
            changed = False
            for p in _WRAPPER_PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p) :], True
        out[k] = v
    return out


def _payload(model: nn.Module, cfg: ModelConfig, extra: dict | None) -> dict:
    return {
        "format": FORMAT,
        "config": cfg.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in unwrapped_state_dict(model).items()},
        "extra": dict(extra or {}),
    }


def write_checkpoint(f: BinaryIO, model: nn.Module, cfg: ModelConfig, extra: dict | None = None) -> None:
    """Write the checkpoint of ``model`` + ``cfg`` to a binary file object. Atomicity is the caller's
    (e.g. a storage layer's atomic open), so a checkpoint can go to any location the caller can open."""
    torch.save(_payload(model, cfg, extra), f)


def save_checkpoint(path: str, model: nn.Module, cfg: ModelConfig, extra: dict | None = None) -> str:
    """Write ``model``'s weights + ``cfg`` to ``path`` atomically (temp file + rename); return ``path``."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save(_payload(model, cfg, extra), tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str, map_location: str | torch.device = "cpu") -> tuple[GrainModel, ModelConfig, dict]:
    """Read a checkpoint written by ``save_checkpoint`` or ``write_checkpoint`` → ``(model, cfg, extra)``
    (model in eval mode).

    Uses ``torch.load(weights_only=True)``; a file of another format or with mismatched weights
    raises ValueError naming ``path``.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not a loadable grain checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        fmt = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{path}: expected a {FORMAT} checkpoint, found format {fmt!r}")
    cfg = ModelConfig.from_dict(payload["config"])
    model = build_model(cfg)
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not match the stored config ({e})") from e
    model.to(map_location).eval()
    return model, cfg, payload.get("extra") or {}
