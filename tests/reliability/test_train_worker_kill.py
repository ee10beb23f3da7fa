"""A Ray Train worker process killed with SIGKILL mid-run: the group restarts from the last checkpoint.

Stronger than tests/trainers/test_train_ray.py's ``debug_fail_at_step`` (a Python exception): here a
``RayTrainWorker`` process of a 2-worker gloo run gets ``kill -9`` once a checkpoint exists. With
``max_failures=1`` the run must still finish every step, and the per-rank sample-key logs (appended by
each attempt) must show the restart resumed from a checkpoint: the steps up to the first checkpoint
were run once, and the redone steps start right after a checkpoint step. Slow tier (~60 s).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import psutil
import pytest

from grain.testing.fixtures import FixtureSpec, write_fixture_shards
from trainers.config import load_config
from trainers.run import run_training

pytestmark = pytest.mark.slow
CKPT_EVERY = 4
STEPS = 12  # 16 rows / global batch 8 = 2 steps per epoch × 6 epochs


def _train_workers():
    """RayTrainWorker processes started by this test process (never another user's Ray)."""
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(p.cmdline()):
                out.append(p)
        except psutil.NoSuchProcess:
            continue
    return out


def _logged_steps(out) -> int:
    try:
        with open(os.path.join(out, "sample_keys", "rank0.jsonl")) as f:
            return max((json.loads(line)["step"] for line in f if line.strip()), default=0)
    except (OSError, ValueError):
        return 0


def test_sigkilled_worker_restarts_from_checkpoint(ray_local, tmp_path):
    data = str(tmp_path / "shards")
    write_fixture_shards(data, FixtureSpec(num_shards=2, rows_per_shard=8, seed=5))
    out = str(tmp_path / "killrun")
    cfg = load_config(profile="tiny", overrides={
        "data": {"path": data}, "output": out, "workers": 2, "epochs": STEPS // 2, "batch_size": 4,
        "checkpoint_every": CKPT_EVERY, "log_sample_keys": True, "max_failures": 1})
    result: dict = {}

    def _run():
        try:
            result["value"] = run_training(cfg)
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            result["error"] = e

    t = threading.Thread(target=_run, daemon=True)
    t.start()
    killed = None
    deadline = time.time() + 240
    while time.time() < deadline and t.is_alive() and killed is None:
        # Kill once the step-CKPT_EVERY checkpoint is registered: training has gone two steps past it
        # (a worker killed while its checkpoint is still being reported loses that checkpoint, and the
        # group rightly restarts from the one before — from scratch for the first).
        if _logged_steps(out) >= CKPT_EVERY + 2:
            workers = _train_workers()
            if workers:
                killed = workers[-1]
                killed.send_signal(signal.SIGKILL)
                break
        time.sleep(0.1)
    t.join(timeout=300)
    assert killed is not None, f"no worker was killed (run ended or never checkpointed): {result}"
    assert not t.is_alive(), "training did not finish after the worker was killed"
    assert "error" not in result, result.get("error")
    assert result["value"]["steps"] == STEPS
    assert not killed.is_running()

    for rank in (0, 1):
        with open(os.path.join(out, "sample_keys", f"rank{rank}.jsonl")) as f:
            steps = [json.loads(line)["step"] for line in f]
        assert sorted(set(steps)) == list(range(1, STEPS + 1)), rank
        counts = {s: steps.count(s) for s in set(steps)}
        assert all(counts[s] == 1 for s in range(1, CKPT_EVERY + 1)), ("restarted from scratch", rank, counts)
        assert max(counts.values()) <= 2, ("more than one restart", rank, counts)
    # The restarted group resumed: the second attempt's first step is right after a checkpoint step.
    with open(os.path.join(out, "sample_keys", "rank0.jsonl")) as f:
        steps = [json.loads(line)["step"] for line in f]
    restarts = [i for i in range(1, len(steps)) if steps[i] <= steps[i - 1]]
    # The kill lands ≥ 2 steps after a checkpoint, so the group must restart once, from that checkpoint, and
    # redo exactly the steps between it and the kill: no more, no fewer.
    assert len(restarts) == 1, ("expected one restart of the group", steps)
    r = restarts[0]
    resumed_from = steps[r] - 1
    assert resumed_from >= CKPT_EVERY and resumed_from % CKPT_EVERY == 0, ("not resumed from a checkpoint", steps)
    counts = {s: steps.count(s) for s in set(steps)}
    assert {s for s, n in counts.items() if n == 2} == set(range(resumed_from + 1, steps[r - 1] + 1)), steps
