"""benchmarks/annotate_overhead.py: both bare baselines (serial, and overlapped the way the pipeline's two
actor pools are) and the pipeline's ratio against each. The loops run on stand-in models that sleep (no
CPU: the overlap shows on a loaded machine too); the end-to-end run on the tiny vLLM/OWLv2 checkpoints
is slow (it starts two vLLM engines: the bare loops' and the pipeline actor's)."""

from __future__ import annotations

import json
import os
import threading
import time
from types import SimpleNamespace

import pytest

from benchmarks import annotate_overhead as bench

CALL_S = 0.03  # per batch, each model: 4 timed batches → ≈ 240 ms serial, ≈ 150 ms overlapped


class _SleepyDescriber:
    def describe(self, images):
        time.sleep(CALL_S)
        return [SimpleNamespace(descriptions=["a thing"]) for _ in images]


class _SleepyGrounder:
    def __init__(self):
        self.seen = []  # (thread name, CPUs it may run on, torch threads) per call

    def ground(self, images, descriptions):
        import torch

        self.seen.append((threading.current_thread().name, os.sched_getaffinity(0), torch.get_num_threads()))
        time.sleep(CALL_S)
        return [SimpleNamespace(boxes_xyxy_norm=[[0.1, 0.1, 0.5, 0.5]] * len(d)) for d in descriptions]


@pytest.fixture(scope="module")
def batches(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    bench.build_corpus(str(root), images=10, shards=1)
    return bench.load_batches(str(root), batch_size=2)


def test_overlapped_baseline_runs_the_two_models_at_once_on_the_grounders_cpus(batches):
    d, g = _SleepyDescriber(), _SleepyGrounder()
    affinity = os.sched_getaffinity(0)
    serial = bench.bare_serial(d, g, batches)
    g.seen.clear()
    over = bench.bare_overlapped(d, g, batches, grounder_cpus="auto", threads=None, depth=2)
    for k in ("images", "with_descriptions", "boxes"):
        assert serial[k] == over[k]  # the same work: every batch but the warm-up
    assert serial["images"] == 8 and over["queue_depth"] == 2
    assert over["images_per_s"] > 1.2 * serial["images_per_s"]  # the two sleeps overlap
    assert {s[0] for s in g.seen} == {"bare-grounder"}
    assert all(s[1] == {max(affinity)} and s[2] == 1 for s in g.seen)  # pinned like the grounder actor
    assert os.sched_getaffinity(0) == affinity  # only the grounder thread was pinned


def test_overlapped_baseline_reraises_a_model_error_without_hanging(batches):
    class Broken(_SleepyGrounder):
        def ground(self, images, descriptions):
            raise RuntimeError("grounder broke")

    with pytest.raises(RuntimeError, match="grounder broke"):
        bench.bare_overlapped(_SleepyDescriber(), Broken(), batches, depth=1)


def test_report_has_both_baselines_and_the_ratio_against_each(capsys):
    def bare(ips):
        return {"images_per_s": ips, "images": 8, "with_descriptions": 8, "boxes": 16,
                "per_image_ms": {"decode": 1.0, "describe": 50.0, "ground": 40.0}}

    res = {"bare": {"serial": bare(10.0), "overlapped": bare(16.0)}, "pipeline": {"steady_images_per_s": 14.0},
           "pipeline_variant": None}
    res["ratios"] = bench.ratios(res["bare"], res["pipeline"])
    assert res["ratios"] == pytest.approx({"overlapped_vs_serial": 1.6, "pipeline_vs_serial": 1.4,
                                           "pipeline_vs_overlapped": 0.875})
    bench.report(res, [])
    text = capsys.readouterr().out
    assert "bare serial    : 10.00 images/s" in text and "bare overlapped: 16.00 images/s" in text
    assert "0.88x bare overlapped (goal >= 0.9), 1.40x bare serial; overlapped/serial 1.60x" in text


@pytest.mark.slow  # two vLLM engine starts on the tiny LLaVA (bare loops, pipeline actor)
def test_benchmark_end_to_end_on_the_tiny_models(ray_local, tiny_models, tmp_path, capsys):
    out = tmp_path / "overhead.json"
    assert bench.main(["--size", "tiny", "--images", "12", "--shards", "2", "--batch-size", "4",
                       "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "bare serial" in text and "bare overlapped" in text and "x bare overlapped (goal >= 0.9)" in text
    res = json.loads(out.read_text())
    assert res["bare"]["serial"]["images"] == res["bare"]["overlapped"]["images"] == 8
    assert set(res["ratios"]) == {"overlapped_vs_serial", "pipeline_vs_serial", "pipeline_vs_overlapped"}
    assert res["ratios"]["pipeline_vs_overlapped"] == pytest.approx(
        res["pipeline"]["steady_images_per_s"] / res["bare"]["overlapped"]["images_per_s"])
    assert res["command"].startswith("python -m benchmarks.annotate_overhead --size tiny")
    assert {"commit", "date", "hardware"} <= set(res)
