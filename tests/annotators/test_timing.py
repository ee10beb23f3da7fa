"""Steady-state timing (annotators/timing.py), the actor restart bound and the private local Ray's
settings (fast: synthetic stamps, no Ray)."""

from __future__ import annotations

import os

import pytest

from annotators.stages import count_restart
from annotators.timing import RunTimer


def _rows(shard, n, t_dec, d0, d1, g0, g1):
    return [dict(shard=shard, t_decoded=t_dec, decode_s=0.01, t_describe_start=d0, t_described=d1,
                 t_ground_start=g0, t_grounded=g1) for _ in range(n)]


def test_steady_window_excludes_start_up_and_counts_later_batches():
    t = RunTimer()
    # Engine start: rows decoded at 0 wait until 100; batches of 4 take 1 s in each model stage.
    t.add_rows(_rows("a", 4, 0.0, 100.0, 101.0, 101.0, 102.0), t_received=102.5)
    t.add_rows(_rows("a", 4, 0.0, 101.0, 102.0, 102.0, 103.0), t_received=103.5)
    t.mark_committed("a", 103.6, write_s=0.08)
    t.add_rows(_rows("b", 4, 0.0, 102.0, 103.0, 103.0, 104.0), t_received=104.5)
    t.add_rows(_rows("b", 4, 0.0, 103.0, 104.0, 104.0, 105.0), t_received=105.5)
    t.mark_committed("b", 105.6, write_s=0.08)
    s = t.summary()
    # T0 = 101 (first describer batch done), T1 = 105.6; rows started ≥ 101: 12
    assert s["steady_rows"] == 12 and s["window_batches"] == 3
    assert s["window_s"] == pytest.approx(4.6)
    assert s["steady_images_per_s"] == pytest.approx(12 / 4.6, rel=1e-3)
    assert s["per_image_ms"] == {"decode": 10.0, "describe": 250.0, "ground": 250.0, "driver_write": 10.0}  # 2 × 80 ms over 16 rows
    assert s["busy_fraction"]["describe"] == pytest.approx(3 / 4.6, rel=1e-3)  # [101, 104] busy
    assert s["busy_fraction"]["ground"] == pytest.approx(4 / 4.6, rel=1e-3)  # [101, 105]
    assert s["busy_fraction"]["both"] == pytest.approx(3 / 4.6, rel=1e-3)  # [101, 104]
    assert s["wait_ms"]["describe_to_ground"] == 0.0 and s["wait_ms"]["ground_to_driver"] == 500.0
    # waits of the steady rows only (the first batch's 100 s start-up queueing is excluded):
    # describer start − decode: (101 + 102 + 103) / 3 s on average
    assert s["wait_ms"]["decode_to_describe"] == pytest.approx(102000.0)
    assert s["wait_ms"]["driver_to_commit"] == pytest.approx(1000 * (0.1 + 1.1 + 0.1) / 3, abs=0.01)


def test_overlapping_actor_batches_count_once_in_busy_time():
    t = RunTimer()
    t.add_rows(_rows("a", 2, 0, 0.0, 2.0, 2.0, 3.0) + _rows("a", 2, 0, 1.0, 3.0, 3.0, 4.0), t_received=4.0)
    t.mark_committed("a", 4.0)
    s = t.summary()
    assert s["busy_fraction"]["describe"] == pytest.approx(0.5)  # [2, 3] of the window [2, 4]
    assert s["steady_rows"] == 0  # both batches started before the first one ended


def test_no_rows_no_summary():
    assert RunTimer().summary() == {}


def test_restart_bound(tmp_path):
    d = str(tmp_path)
    assert count_restart("abc", False, 2, d) == 0  # first start: not counted
    assert count_restart("abc", True, 2, d) == 1
    assert count_restart("abc", True, 2, d) == 2
    assert count_restart("other", True, 2, d) == 1  # per actor
    with pytest.raises(RuntimeError, match="restarted 3 times.*max_restarts=2"):
        count_restart("abc", True, 2, d)


def test_local_ray_temp_dir_is_short_and_under_grain_cache(tmp_path, monkeypatch):
    from grain.common.ray_session import MAX_TEMP_DIR_CHARS, local_temp_dir

    short = tmp_path / "c"
    if len(str(short / "ray")) <= MAX_TEMP_DIR_CHARS:
        monkeypatch.setenv("GRAIN_CACHE", str(short))
        assert local_temp_dir() == str(short / "ray") and (short / "ray").is_dir()
    monkeypatch.setenv("GRAIN_CACHE", str(tmp_path / ("x" * 60)))
    fallback = local_temp_dir()
    assert fallback.startswith("/tmp/grain-ray-") and len(fallback) <= MAX_TEMP_DIR_CHARS
    os.rmdir(fallback)


def test_pin_cpus_in_a_child_process():
    """The grounder's CPU pinning (stages.pin_cpus): pins to the allowed subset, ignores unknown CPUs."""
    import subprocess
    import sys

    code = ("import os; from annotators.stages import pin_cpus; last = max(os.sched_getaffinity(0)); "
            "print(pin_cpus([last, 100000]), sorted(os.sched_getaffinity(0)) == [last], pin_cpus([100000]), pin_cpus(None), "
            "pin_cpus('auto') == [last])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    pinned, only_last, none, off, auto = r.stdout.strip().rsplit(" ", 4)[0], *r.stdout.split()[-4:]
    assert only_last == "True" and none == "[]" and off == "[]" and auto == "True"
    assert pinned.startswith("[") and "100000" not in pinned
