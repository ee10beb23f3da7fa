"""The two collectives the losses need, working with or without a torch.distributed process group.

The loss knows nothing of the launcher (Ray Train, torchrun, none): it only asks whether a process
group is initialised. With one process, or no group, both functions are the identity.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` [n, ...] from every rank along dim 0 (rank order) → [world·n, ...].

    ``all_gather`` returns tensors without autograd history; the local slot is replaced by ``x``
    itself so gradients flow into this rank's features (open_clip's ``gather_features``). Each rank
    then back-propagates the global loss through its own features only: summed over ranks, that is
    exactly the gradient of the single-process loss on the whole batch. Ranks may hold different
    ``n`` (a short last batch): sizes are exchanged first and the parts padded to the largest.
    """
    if not is_distributed():
        return x
    world, rank = dist.get_world_size(), dist.get_rank()
    n = torch.tensor([x.shape[0]], device=x.device, dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    padded = x.detach().new_zeros((max(sizes), *x.shape[1:]))
    padded[: x.shape[0]] = x.detach()
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    parts = [p[:s] for p, s in zip(parts, sizes)]
    parts[rank] = x
    return torch.cat(parts, dim=0)


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over ranks (a new tensor, no gradient): used for the global normalisers."""
    x = x.detach().clone()
    if is_distributed():
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x
