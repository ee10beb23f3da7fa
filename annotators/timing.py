"""Steady-state throughput and a per-stage breakdown of one annotation run, from the wall-clock stamps
the stages put on every row (stages.INTERMEDIATE_SCHEMA ``t_*``) and the driver's receive/commit times.

Why not "rows / run time": a run's first minute is engine start-up (vLLM: 17-60 s on CPU) while the
read/decode tasks queue rows; and shard commits arrive in bursts, so gaps between commits are no rate.

Steady window: from ``T0`` = the end of the first describer batch (an engine is warm and the pipeline
has work) to ``T1`` = the last shard commit. Steady rows: rows whose describer batch started at or after
``T0``. ``images_per_s = steady rows / (T1 - T0)``. The window includes draining the last batch through
the grounder and the driver write, so it slightly understates the rate; use runs of ≥ 3 batches after
the first (``window_batches`` reports how many describer batches the window holds).

    timer = RunTimer()
    timer.add_rows(rows, t_received)        # rows as they reach the driver (dicts with the t_* stamps)
    timer.mark_committed(shard, t)          # after each shard commit
    timer.summary() -> dict                 # see ``summary``

Memory: one float per row (its describer start), one entry per model batch, and 6 floats per row for
the first ``MAX_ROWS_WITH_WAITS`` rows (the per-row waits, averaged over steady rows only).
"""

from __future__ import annotations

import math
import time
from array import array

MAX_ROWS_WITH_WAITS = 1_000_000  # per-row waits are kept for this many rows (5 floats each)

_GAPS = {  # name: (later stamp, earlier stamp): where a row waits between stages
    "decode_to_describe": ("t_describe_start", "t_decoded"),  # queued for the describer (+ transfer)
    "describe_to_ground": ("t_ground_start", "t_described"),  # queued for the grounder (+ transfer)
    "ground_to_driver": ("t_received", "t_grounded"),  # transfer to the driver (+ Ray Data output queue)
    "driver_to_commit": ("t_committed", "t_received"),  # waiting for the rest of the shard + the write
}


class RunTimer:
    """Accumulates stamps online (see module docstring). Not thread-safe (the driver loop owns it)."""

    def __init__(self):
        self.describe_starts = array("d")
        self.describe_starts_by_row = array("d")  # aligned with self.gaps (NaN: row skipped the describer)
        self.describe_batches: dict[tuple[float, float], int] = {}  # (start, end) → rows
        self.ground_batches: dict[tuple[float, float], int] = {}
        self.decode_s = 0.0
        self.decoded = 0
        # Per-row waits (NaN = unknown), for the first MAX_ROWS_WITH_WAITS rows: averaged over steady rows.
        self.gaps = {name: array("d") for name in _GAPS}
        self.pending: dict[str, list[dict]] = {}  # shard → received rows' stamps, until the shard commits
        self.commits: list[float] = []
        self.first_received: float | None = None
        self.write_s = 0.0  # driver time spent finalising + writing shards
        self.written_rows = 0

    def add_rows(self, rows: list[dict], t_received: float | None = None) -> None:
        t_received = time.time() if t_received is None else t_received
        self.first_received = self.first_received or t_received
        for r in rows:
            shard = r.get("shard") or ""
            r = {**{k: r.get(k) for k in ("t_decoded", "t_describe_start", "t_described", "t_ground_start",
                                          "t_grounded", "decode_s")}, "t_received": t_received}
            if len(self.describe_starts_by_row) < MAX_ROWS_WITH_WAITS:
                self.describe_starts_by_row.append(math.nan if r["t_describe_start"] is None else r["t_describe_start"])
            if r["t_describe_start"] is not None:
                self.describe_starts.append(r["t_describe_start"])
                key = (r["t_describe_start"], r["t_described"])
                self.describe_batches[key] = self.describe_batches.get(key, 0) + 1
            if r["t_ground_start"] is not None:
                key = (r["t_ground_start"], r["t_grounded"])
                self.ground_batches[key] = self.ground_batches.get(key, 0) + 1
            if r["decode_s"] is not None:
                self.decode_s += r["decode_s"]
                self.decoded += 1
            if len(self.gaps["decode_to_describe"]) < MAX_ROWS_WITH_WAITS:
                r["row"] = len(self.gaps["decode_to_describe"])
                for name in _GAPS:
                    self.gaps[name].append(_diff(r, name))
            self.pending.setdefault(shard, []).append(r)

    def mark_committed(self, shard: str, t: float | None = None, write_s: float = 0.0) -> None:
        """``shard`` was written at ``t`` (default: now), which took the driver ``write_s`` seconds: its
        received rows are done."""
        t = time.time() if t is None else t
        self.commits.append(t)
        done = self.pending.pop(shard, [])
        self.write_s += write_s
        self.written_rows += len(done)
        for r in done:
            if "row" in r:
                r["t_committed"] = t
                self.gaps["driver_to_commit"][r["row"]] = _diff(r, "driver_to_commit")

    def summary(self) -> dict:
        """``{"steady_images_per_s", "steady_rows", "window_s", "window_batches", "per_image_ms": {decode,
        describe, ground, driver_write} (busy time per image), "busy_fraction": {describe, ground, both} (share of the
        window each model stage was busy; both at once), "wait_ms": mean waits between stages of the steady rows}``; empty dict
        when no row went through the describer."""
        if not self.describe_batches or not self.commits:
            return {}
        t0 = min(end for _, end in self.describe_batches)
        t1 = max(self.commits)
        steady = sum(1 for s in self.describe_starts if s >= t0)
        window = max(t1 - t0, 1e-9)
        out = {
            "steady_images_per_s": round(steady / window, 3) if steady else 0.0,
            "steady_rows": steady, "window_s": round(window, 3),
            "window_batches": sum(1 for s, _ in self.describe_batches if s >= t0),
            "per_image_ms": {
                "decode": _ms(self.decode_s, self.decoded),
                "describe": _ms(sum(e - s for s, e in self.describe_batches), sum(self.describe_batches.values())),
                "ground": _ms(sum(e - s for s, e in self.ground_batches), sum(self.ground_batches.values())),
                "driver_write": _ms(self.write_s, self.written_rows),
            },
            "busy_fraction": {"describe": _busy(self.describe_batches, t0, t1),
                              "ground": _busy(self.ground_batches, t0, t1),
                              "both": _both_busy(self.describe_batches, self.ground_batches, t0, t1)},
            "wait_ms": self._steady_waits(t0),
        }
        return out

    def _steady_waits(self, t0: float) -> dict:
        """Mean wait (ms) per gap over the steady rows among those stored (start-up queueing excluded)."""
        out = {}
        steady = [i for i in range(len(self.gaps["decode_to_describe"])) if self.describe_starts_by_row[i] >= t0]
        for name, vals in self.gaps.items():
            xs = [vals[i] for i in steady if not math.isnan(vals[i])]
            out[name] = _ms(sum(xs), len(xs))
        return out


def _diff(r: dict, name: str) -> float:
    later, earlier = _GAPS[name]
    a, b = r.get(later), r.get(earlier)
    return math.nan if a is None or b is None else a - b


def _ms(total_s: float, n: int) -> float | None:
    return round(1000 * total_s / n, 2) if n else None


def _union(batches: dict, t0: float, t1: float) -> list[tuple[float, float]]:
    """The batch intervals clipped to [t0, t1], merged (several actors overlap)."""
    merged: list[list[float]] = []
    for s, e in sorted((max(s, t0), min(e, t1)) for s, e in batches if e > t0 and s < t1):
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    return [(s, e) for s, e in merged]


def _busy(batches: dict, t0: float, t1: float) -> float:
    """Share of [t0, t1] during which at least one batch of the stage ran."""
    return round(sum(e - s for s, e in _union(batches, t0, t1)) / max(t1 - t0, 1e-9), 3)


def _both_busy(a: dict, b: dict, t0: float, t1: float) -> float:
    """Share of [t0, t1] during which both stages ran at once (how much the pipeline overlaps them)."""
    ua, ub = _union(a, t0, t1), _union(b, t0, t1)
    both = sum(max(0.0, min(e1, e2) - max(s1, s2)) for s1, e1 in ua for s2, e2 in ub)
    return round(both / max(t1 - t0, 1e-9), 3)
