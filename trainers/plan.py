"""Deterministic sample order: which rows each worker trains on at each step, from (seed, epoch).

Why not Ray Data's streaming split: it hands blocks to whichever worker asks first, so which rank
sees which row (and in what order) depends on timing; a resumed run could not skip "exactly the
first k samples". Instead the order is a pure function of (index, seed, epoch, world size):

1. Every row group's ok rows are cut into *units* of at most ``unit_rows`` rows (so even a single
   big shard spreads over all workers).
2. Units are permuted with ``rng(seed, epoch)`` and dealt to ranks greedily (to the rank with the
   fewest rows so far), which balances ranks while keeping each unit's rows on one reader.
3. Each rank walks its units in windows of ``shuffle_window`` units and permutes the rows inside
   each window with ``rng(seed, epoch, rank, window)``: a bounded-memory shuffle (a window's row
   groups are all a worker holds), reads stay sequential per row group.
4. Steps per epoch = min over ranks of rows // batch_size (every rank runs the same number of
   steps: DDP and the cross-worker L_ic gather need equal batches); the tail is dropped.

Resuming at global step s (epoch e, step j within it) replays the same plan and starts at row
j × batch_size on every rank: the exact samples an uninterrupted run would have used. A different
world size gives a different (equally valid) order.
"""

from __future__ import annotations

import math

import numpy as np

from trainers.index import DataIndex


def _rng(*parts: int) -> np.random.Generator:
    return np.random.default_rng([int(p) & 0xFFFFFFFF for p in parts])


def make_units(index: DataIndex, world_size: int) -> list[tuple[int, int, np.ndarray]]:
    """Row groups cut into units of ≤ ceil(ok rows / (4 × world)) rows: (file, row group, rows)."""
    unit_rows = max(1, math.ceil(index.num_ok / (4 * max(1, world_size))))
    units = []
    for fi, rg, rows in index.groups:
        for start in range(0, len(rows), unit_rows):
            units.append((fi, rg, rows[start:start + unit_rows]))
    return units


def _deal(units: list, seed: int, epoch: int, world_size: int) -> list[list[int]]:
    """Unit ids per rank for one epoch, in permuted order (greedy: next unit → least-loaded rank)."""
    order = _rng(seed, epoch).permutation(len(units))
    load = np.zeros(world_size, dtype=np.int64)
    dealt: list[list[int]] = [[] for _ in range(world_size)]
    for u in order:
        r = int(np.argmin(load))  # ties → lowest rank: deterministic
        load[r] += len(units[u][2])
        dealt[r].append(int(u))
    return dealt


def rank_rows(index: DataIndex, seed: int, epoch: int, rank: int, world_size: int, shuffle_window: int) -> np.ndarray:
    """This rank's rows for one epoch, in training order: int64 array [N, 3] of (file, row group, row)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    units = make_units(index, world_size)
    mine = [units[u] for u in _deal(units, seed, epoch, world_size)[rank]]
    window = max(1, int(shuffle_window))
    out = []
    for w, start in enumerate(range(0, len(mine), window)):
        chunk = mine[start:start + window]
        rows = np.concatenate([np.stack([np.full(len(rr), fi), np.full(len(rr), rg), rr], axis=1) for fi, rg, rr in chunk])
        out.append(rows[_rng(seed, epoch, rank, w + 1).permutation(len(rows))])
    if not out:
        return np.zeros((0, 3), dtype=np.int64)
    return np.concatenate(out).astype(np.int64)


def steps_per_epoch(index: DataIndex, world_size: int, batch_size: int, seed: int, epochs: int) -> int:
    """Steps per epoch, the same for every epoch and rank: min over epochs and ranks of rows // batch.

    Constant across epochs so the per-step schedule is known up front (greedy dealing keeps rank
    loads within one unit of each other, so little is dropped).
    """
    units = make_units(index, world_size)
    if not units:
        return 0
    sizes = np.array([len(u[2]) for u in units])
    best = None
    for e in range(max(1, epochs)):
        loads = [int(sizes[d].sum()) if d else 0 for d in _deal(units, seed, e, world_size)]
        best = min(loads) if best is None else min(best, min(loads))
    return best // batch_size


def epoch_batches(index: DataIndex, seed: int, epoch: int, rank: int, world_size: int, batch_size: int,
                  shuffle_window: int, n_steps: int, start_step: int = 0) -> list[np.ndarray]:
    """Row batches [batch_size, 3] of (file, row group, row) for steps ``start_step`` … ``n_steps - 1``."""
    rows = rank_rows(index, seed, epoch, rank, world_size, shuffle_window)
    if len(rows) < n_steps * batch_size:
        raise RuntimeError(f"rank {rank} has {len(rows)} rows in epoch {epoch} < {n_steps} steps × {batch_size}")
    return [rows[j * batch_size:(j + 1) * batch_size] for j in range(start_step, n_steps)]
