"""benchmarks/annotate_scale.py (docs/performance.md, goal 3): the fixed-answer stages, the manifest's rewrite policy,
the marginal slope, and the benchmark end to end at a very small size (table and slope printed; no absolute
times checked)."""

from __future__ import annotations

import json

import pyarrow as pa

from annotators import manifest as manifest_mod
from annotators import stages
from annotators.manifest import RunManifest
from benchmarks import annotate_scale as bench


def _batch(n: int) -> pa.Table:
    rows = [{"shard": "s", "shard_rows": n, "key": f"k{i}", "source": "x", "status": "ok", "image_width": 8,
             "image_height": 8, "rgb": bytes(8 * 8 * 3)} for i in range(n)]
    rows.append({"shard": "s", "shard_rows": n, "key": "bad", "source": "x", "status": "decode_error", "error": "e"})
    return stages.to_batch(rows)


def test_fixed_answer_stages_run_the_production_stage_code():
    d = bench.FixedAnswerDescribeStage("fixed", "llava", {}, max_descriptions=1)
    g = bench.FixedAnswerGroundStage("fixed", {}, max_boxes=5)
    assert isinstance(d, stages.DescribeStage) and isinstance(g, stages.GroundStage)
    out = g(d(_batch(3))).to_pylist()
    ok = [r for r in out if r["status"] == "ok"]
    assert len(ok) == 3 and out[-1]["status"] == "decode_error"  # error rows pass through untouched
    assert ok[0]["descriptions"] == bench.FIXED_DESCRIPTIONS[:1]  # the stage's own max_descriptions cut
    assert ok[0]["boxes"] and ok[0]["rgb"] is None  # GroundStage drops the pixels, as in production


def test_fixed_answer_models_patch_is_scoped():
    real = stages.DescribeStage, stages.GroundStage
    with bench.fixed_answer_models():
        assert stages.DescribeStage is bench.FixedAnswerDescribeStage
    assert (stages.DescribeStage, stages.GroundStage) == real


def test_manifest_rewrites_are_throttled_past_the_small_size(tmp_path, monkeypatch):
    monkeypatch.setattr(manifest_mod, "SAVE_EVERY_SHARD_UP_TO", 3)
    saves = []
    m = RunManifest(str(tmp_path))
    m.start_run({"models": {}}, {})
    real_save = m.save
    monkeypatch.setattr(m, "save", lambda: (saves.append(len(m.shards)), real_save()))
    for i in range(50):
        m.mark_done(f"{i:05d}", {"rows": 1})
    assert saves[:3] == [1, 2, 3] and len(saves) <= 5  # every shard while small, then at most every 5 s
    assert m.dirty
    m.finish_run({})
    assert len(json.loads((tmp_path / "manifest.json").read_text())["shards"]) == 50 and not m.dirty


def test_resume_scan_and_index_at_a_small_size(tmp_path):
    r = bench.resume_and_index(str(tmp_path), 20, bench.tiny_png())
    assert r["committed_shards"] == 20 and {"resume_scan_s", "index_s", "manifest_record_s"} <= set(r)


def test_marginal_slope_from_two_known_sizes():
    """The headline is the per-row cost of the rows added between the two largest sizes over the per-row
    cost at the smaller one; on the 2026-11-29 figures (10⁵ → 10⁶) that is 1.36×, where the ratio of
    per-row costs at 10⁶ vs 10³ read 0.57×."""
    small = {"rows": 100_000, "driver_cpu_s": 14.07, "all_ray_cpu_s": 26.87}
    large = {"rows": 1_000_000, "driver_cpu_s": 186.39, "all_ray_cpu_s": 299.71}
    m = bench.marginal_slope(small, large)
    assert (m["from_rows"], m["to_rows"]) == (100_000, 1_000_000)
    assert m["driver_cpu_s_per_1k_added"] == 0.1915  # 1000 · 172.32 s / 900,000 rows
    assert m["ratio_driver"] == 1.361 and m["ratio_all_ray"] == 1.128


def test_benchmark_prints_the_table_and_the_slope(ray_local, tmp_path, capsys):
    out = tmp_path / "scale.json"
    assert bench.main(["--rows", "50", "200", "--rows-per-shard", "80", "--batch-size", "32",
                       "--resume-shards", "20", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "driver CPU s/1k" in text and "resume scan, 20 committed shards" in text
    assert "trainer shard index, 20 shards" in text
    res = json.loads(out.read_text())
    assert [s["rows"] for s in res["sizes"]] == [50, 200] and res["sizes"][1]["shards"] == 3
    small, large = res["sizes"]
    per_row_added = (large["driver_cpu_s"] - small["driver_cpu_s"]) / 150
    slope = per_row_added / (small["driver_cpu_s"] / 50)
    assert res["goal_ratio"] == res["slope"]["ratio_driver"]
    assert abs(res["goal_ratio"] - slope) < 2e-3  # the slope 50 → 200 rows, not per-row cost at 200 over 50's
    assert "marginal slope 50 -> 200 rows" in text and f"{res['goal_ratio']:.2f}x (goal <= 1.5)" in text
    assert {"command", "commit", "date", "hardware"} <= set(res)
    assert res["command"].startswith("python -m benchmarks.annotate_scale --rows 50 200")


def test_reblock_asks_for_the_pipelines_task_cpus_and_keeps_every_row(ray_local):
    """annotators.pipeline.reblock: the streaming repartition's tasks ask for ``num_cpus`` (Ray's default of
    1 CPU starved it at 10⁶ rows on 2 CPUs: see its docstring), and rows come out complete, in blocks of at
    most ``rows``."""
    import ray

    from annotators.pipeline import reblock

    ds = ray.data.from_items([{"i": i} for i in range(50)], override_num_blocks=2)
    out = reblock(ds, 8, 0.25)
    assert out._logical_plan.dag.ray_remote_args["num_cpus"] == 0.25
    sizes = [len(batch["i"]) for batch in out.iter_batches(batch_size=None)]  # one batch per block
    assert sum(sizes) == 50 and max(sizes) <= 8
    assert sorted(r["i"] for r in out.take_all()) == list(range(50))
