"""AdamW with the release's parameter groups and the per-step warm-up + cosine schedule (docs/method.md §4.4)."""

from __future__ import annotations

import math

import torch

from trainers.config import OptimSettings


def lr_at(step: int, *, total_steps: int, warmup_steps: int, peak: float, start: float, final: float) -> float:
    """Learning rate before optimizer step ``step`` (0-based).

    Linear warm-up from ``start`` to ``peak`` over ``warmup_steps``, then cosine from ``peak`` to
    ``final`` at ``total_steps``; constant ``final`` afterwards.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return start + (peak - start) * step / warmup_steps
    decay = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / decay)
    return final + 0.5 * (peak - final) * (1.0 + math.cos(math.pi * t))


def warmup_steps_for(cfg: OptimSettings, steps_per_epoch: int) -> int:
    if cfg.warmup_steps is not None:
        return int(cfg.warmup_steps)
    return int(round(cfg.warmup_epochs * steps_per_epoch))


def build_optimizer(model: torch.nn.Module, cfg: OptimSettings) -> torch.optim.AdamW:
    """AdamW over ``model.param_groups(weight_decay)`` (no decay on biases, norms, logit scale).

    ``model`` may be wrapped in DDP: the groups come from the wrapped module, whose parameters
    are the DDP parameters.
    """
    inner = getattr(model, "module", model)
    groups = inner.param_groups(cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


def build_scheduler(optimizer, cfg: OptimSettings, total_steps: int, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step LambdaLR (call ``.step()`` after each optimizer step); factors are relative to ``cfg.lr``."""

    def factor(step: int) -> float:
        return lr_at(step, total_steps=total_steps, warmup_steps=warmup_steps, peak=cfg.lr,
                     start=cfg.warmup_start_lr, final=cfg.min_lr) / cfg.lr

    for g in optimizer.param_groups:  # LambdaLR multiplies each group's initial lr
        g["lr"] = cfg.lr
        g.setdefault("initial_lr", cfg.lr)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
