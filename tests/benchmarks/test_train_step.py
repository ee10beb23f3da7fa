"""benchmarks/train_step.py at the tiny preset: the data path runs concurrently with the step and the
combined loop is reported against the same steps alone (no absolute times checked)."""

from __future__ import annotations

import json

import pytest

from benchmarks import train_step as bench


@pytest.mark.slow  # ≈ 15 s on 2 shared cores (imports, tiny fixture shards, a few tiny steps)
def test_combined_loop_is_reported_against_the_step_alone(tmp_path, capsys):
    out = tmp_path / "train_step.json"
    assert bench.main(["--preset", "tiny", "--batch-size", "4", "--steps", "2", "--warmup", "1", "--rounds", "1",
                       "--image-size", "64x48", "--threads", "1", "--decode-threads", "1", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "GRAIN steps fed by the data iterator" in text and "(goal ≥ 0.95" in text
    assert "combined_over_step=" in text and "isolated, each with every core" in text
    res = json.loads(out.read_text())
    c = res["concurrent"]
    assert c["batches"] == 3 and c["rounds"] == 1  # max(3, steps + 1) planned batches, each stepped in both loops
    assert c["step_alone_sps"] == pytest.approx(3 * 4 / c["step_alone_s"])
    assert res["combined_over_step"] == pytest.approx(c["combined_sps"] / c["step_alone_sps"])
    assert res["command"].startswith("python -m benchmarks.train_step --preset tiny")
    assert {"commit", "date", "hardware"} <= set(res)
