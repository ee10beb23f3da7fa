"""`grain bench grounding`: config handling, identical arms, the summary maths, and (slow) the smoke run."""

from __future__ import annotations

import json
import os

import pytest
import torch

from benchmarks import bench_grounding as bg


def _write(tmp_path, text):
    p = tmp_path / "bench.yaml"
    p.write_text(text)
    return p


def test_shipped_configs_load_and_fix_the_evaluation_in_advance():
    for path in (bg.DEFAULT_CONFIG, bg.SMOKE_CONFIG):
        cfg = bg.load_bench_config(path)
        e = cfg["eval"]
        assert e["sets"] and set(e["heldout_sets"]) <= set(e["sets"])
        assert e["templates"] and e["alphas"][0] == 1.0 and e["primary_variant"] == "descriptors"
        assert {bg.parse_set_name(s)[1] for s in e["heldout_sets"]} <= {"seen", "unseen"}
        assert "kind" not in cfg["train"].get("model", {})  # the arm sets it, nothing else differs


def test_config_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        bg.load_bench_config(tmp_path / "nope.yaml")
    with pytest.raises(ValueError, match=r"trian: unknown key 'trian' \(from .*bench.yaml\)"):
        bg.load_bench_config(_write(tmp_path, "bench: {}\ntrian: {}\n"))
    with pytest.raises(ValueError, match="model.kind"):
        bg.load_bench_config(_write(tmp_path, "train: {model: {kind: clip}}\n"))
    with pytest.raises(ValueError, match="--set"):
        bg.load_bench_config(bg.SMOKE_CONFIG, ["max_steps=3"])
    with pytest.raises(ValueError, match="twitter-sen"):
        bg.parse_set_name("twitter-sen")
    cfg = bg.load_bench_config(bg.SMOKE_CONFIG, ["train.max_steps=3", "eval.per_class=4"])
    assert cfg["train"]["max_steps"] == 3 and cfg["eval"]["per_class"] == 4


def test_arms_differ_only_in_model_kind(tmp_path):
    cfg = bg.load_bench_config(bg.DEFAULT_CONFIG)
    a = bg.train_config_for(cfg, "grain", 1, "/data", str(tmp_path / "runs" / "grain-seed1" / "train")).to_dict()
    b = bg.train_config_for(cfg, "clip", 1, "/data", str(tmp_path / "runs" / "clip-seed1" / "train")).to_dict()
    assert a["model"]["kind"] == "grain" and b["model"]["kind"] == "clip" and a["seed"] == b["seed"] == 1
    for d in (a, b):
        d["model"].pop("kind"), d.pop("output"), d.pop("run_name")
    assert a == b
    with pytest.raises(ValueError, match="arm"):
        bg.train_config_for(cfg, "dino", 0, "/data", str(tmp_path))


def _run(acc: dict[tuple[str, str], float]) -> dict:
    return {"results": [{"dataset": d, "variant": v, "metrics": {"acc1": a}} for (d, v), a in acc.items()]}


def test_summary_means_stds_and_deltas():
    cfg = {"eval": {"sets": ["twitter-seen", "google-seen"], "heldout_sets": ["twitter-seen"], "primary_variant": "descriptors"}}
    runs = {
        ("clip", 0): _run({("twitter-seen", "names"): 0.10, ("twitter-seen", "descriptors"): 0.20, ("google-seen", "descriptors"): 0.5}),
        ("clip", 1): _run({("twitter-seen", "names"): 0.20, ("twitter-seen", "descriptors"): 0.30, ("google-seen", "descriptors"): 0.5}),
        ("grain", 0): _run({("twitter-seen", "names"): 0.30, ("twitter-seen", "descriptors"): 0.40,
                            ("twitter-seen", "fusion_a0.5"): 0.45, ("google-seen", "descriptors"): 0.4}),
        ("grain", 1): _run({("twitter-seen", "names"): 0.30, ("twitter-seen", "descriptors"): 0.20,
                            ("twitter-seen", "fusion_a0.5"): 0.35, ("google-seen", "descriptors"): 0.6}),
    }
    s = bg.summarize(runs, cfg)
    rows = {(r["set"], r["variant"]): r for r in s["rows"]}
    assert [k for k in rows] == [("twitter-seen", "names"), ("twitter-seen", "descriptors"), ("twitter-seen", "fusion_a0.5"),
                                 ("google-seen", "descriptors")]
    r = rows[("twitter-seen", "names")]
    assert r["clip"]["mean"] == pytest.approx(15.0) and r["clip"]["std"] == pytest.approx(7.0710678)
    assert r["grain"]["std"] == pytest.approx(0.0) and r["delta"] == pytest.approx(15.0) and r["heldout"]
    f = rows[("twitter-seen", "fusion_a0.5")]
    assert "clip" not in f and f["delta_vs"] == "descriptors" and f["delta"] == pytest.approx(40.0 - 25.0)
    assert s["grain_minus_clip"] == pytest.approx({"twitter-seen": 5.0, "google-seen": 0.0})
    md = bg.summary_markdown(s, "grain bench grounding")
    assert "| twitter-seen (held-out) | names | 15.0 ± 7.1 | 30.0 ± 0.0 | +15.0 ± 7.1 |" in md  # paired: +20, +10
    assert rows[("twitter-seen", "descriptors")]["delta_std"] == pytest.approx(21.2132034)  # +20, −10
    assert "twitter-seen +5.0" in md


def test_summary_marks_comparisons_not_grounded_above_the_threshold():
    """The localisation precondition: mean boxes / fixed-layout ratio over GRAIN seeds > grounded_max_ratio
    marks every GRAIN − CLIP entry "not grounded"; at or below it, nothing is marked."""
    cfg = {"eval": {"sets": ["google-unseen-clutter"], "heldout_sets": ["google-unseen-clutter"], "grounded_max_ratio": 0.85}}
    acc = {("google-unseen-clutter", "descriptors"): 0.3}
    loc = lambda r: {"ratio": r, "spread": 0.05, "target_spread": 0.14, "rows": 512}  # noqa: E731
    for ratios, grounded in (([0.9, 0.84], False), ([0.6, 0.7], True)):
        runs = {("clip", 0): _run(acc), ("clip", 1): _run(acc),
                ("grain", 0): {**_run(acc), "localisation": loc(ratios[0])}, ("grain", 1): {**_run(acc), "localisation": loc(ratios[1])}}
        s = bg.summarize(runs, cfg)
        assert s["localisation"]["grounded"] is grounded
        assert s["localisation"]["ratio"]["mean"] == pytest.approx(sum(ratios) / 2)
        md = bg.summary_markdown(s, "cmd")
        assert ("not grounded" in md) is not grounded and "seed 0 %.2f" % ratios[0] in md
        assert ("+0.0 ± 0.0 (not grounded)" in md) is not grounded
    assert "not measured" in bg.summary_markdown(bg.summarize({("clip", 0): _run(acc)}, cfg), "cmd")


def test_cli_help_and_bad_usage(capsys):
    with pytest.raises(SystemExit) as e:
        bg.main(["grounding", "--help"])
    assert e.value.code == 0 and "--smoke" in capsys.readouterr().out
    assert bg.main(["nothing"]) == 2
    assert bg.main(["grounding", "--jobs", "0"]) == 2 and "--jobs" in capsys.readouterr().err
    assert bg.main(["grounding", "--config", "/nonexistent.yaml"]) == 2
    assert "/nonexistent.yaml" in capsys.readouterr().err


@pytest.mark.slow
def test_position_probe_reads_position_not_noise():
    """grounding_boxes.position_probe: R² ≈ 1 from features that hold the patch's position linearly,
    ≈ 0 from features that hold none (held-out rows)."""
    from benchmarks.grounding_boxes import position_probe

    g = torch.Generator().manual_seed(0)
    n, grid = 40, 4
    onehot = torch.eye(grid * grid).unsqueeze(0).expand(n, -1, -1)
    noisy = onehot + 0.05 * torch.randn(n, grid * grid, grid * grid, generator=g)
    assert position_probe(noisy, 32) > 0.95
    assert abs(position_probe(torch.randn(n, grid * grid, 16, generator=g), 32)) < 0.1


@pytest.mark.slow  # trains both arms of the smoke benchmark twice (≈ 40 s of the fast tier on 2 cores)
def test_smoke_benchmark_end_to_end_and_resume(tmp_path, capsys):
    """The CI smoke run: corpus → both arms through the trainer → run_eval → table/PNG; a rerun skips."""
    pytest.importorskip("skimage")
    from evaluation.datasets import node_modules_dir

    if not os.path.exists(os.path.join(node_modules_dir(), "emoji-datasource-twitter", "package.json")):
        pytest.skip("emoji npm packages not installed (grain data build)")
    out = tmp_path / "smoke"
    # --jobs 2: each arm in its own process (logs/<arm>.log), then this process skips both and summarises
    assert bg.main(["grounding", "--smoke", "--output", str(out), "--quiet", "--jobs", "2"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("started as its own process") == 2 and printed.count("done before, skipped") == 2
    for arm in ("clip", "grain"):
        assert f"[bench] {arm} seed 0: trained in" in (out / "logs" / f"{arm}.log").read_text()
    summary = json.loads((out / "summary.json").read_text())
    cfg = bg.load_bench_config(bg.SMOKE_CONFIG)
    assert set(summary["grain_minus_clip"]) == set(cfg["eval"]["sets"])
    variants = {(r["set"], r["variant"]) for r in summary["rows"]}
    for s in cfg["eval"]["sets"]:
        assert {(s, "names"), (s, "descriptors"), (s, "fusion_a0.5")} <= variants
    for arm in ("clip", "grain"):
        run = json.loads((out / "runs" / f"{arm}-seed0" / "eval" / "results.json").read_text())
        assert run["kind"] == arm
        train = json.loads((out / "runs" / f"{arm}-seed0" / "train" / "run.json").read_text())
        assert train["status"] == "done" and train["result"]["steps"] == cfg["train"]["max_steps"]
    assert (out / "summary.png").stat().st_size > 1000
    loc = summary["localisation"]  # measured on the prepared canvases the runs never trained on
    assert loc["per_seed"]["0"]["rows"] == cfg["eval"]["localisation_canvases"] and loc["ratio"]["mean"] > 0
    assert (out / "runs" / "grain-seed0" / "eval" / "localisation.json").exists()
    assert "Localisation (precondition)" in (out / "summary.md").read_text()
    from benchmarks import ground_examples  # the README's overlays: `grain ground` on a clutter canvas

    assert ground_examples.main(["--bench", str(out), "--set", "google-unseen-clutter", "--n", "1",
                                 "--output", str(tmp_path / "img")]) == 0
    assert (tmp_path / "img" / "ground-google-unseen-clutter.png").stat().st_size > 1000
    rates = ground_examples.hit_rates(str(out / "runs" / "grain-seed0" / "train" / "final.pt"),
                                      str(out / "eval-sets" / "google-unseen-clutter"))
    assert rates["images"] > 0
    assert 0 <= rates["text_hit"] <= rates["any_query_hit"] <= 1  # the name's region is one of the Q regions
    assert 0 <= rates["winner_on_target"] <= rates["any_query_hit"] and 0 <= rates["winner_correct"] <= 1
    from benchmarks import localise_probe  # the evidence table's runs: train on the first shards, score the last

    assert localise_probe.main(["--bench", str(out), "--output", str(tmp_path / "probe"), "--config", str(bg.SMOKE_CONFIG),
                                "--train-shards", "1", "--set", "train.model.region_queries=two_stage"]) == 0
    probe = json.loads((tmp_path / "probe" / "boxes.json").read_text())
    assert probe["grain-seed0"]["model"]["1-giou"] > 0 and "best-constant" in probe
    capsys.readouterr()
    assert bg.main(["grounding", "--smoke", "--output", str(out), "--quiet"]) == 0  # resumable: nothing retrained
    assert capsys.readouterr().out.count("done before, skipped") == 2
    # The diagnostics of docs/bench-grounding.md run on any bench output (here the smoke one).
    from benchmarks import decoder_probe, grounding_boxes

    diag = tmp_path / "boxes.json"
    assert grounding_boxes.main(["--bench", str(out), "--rows", "32", "--json", str(diag)]) == 0
    res = json.loads(diag.read_text())
    base = res["best-constant"]["1-giou"]
    assert 0 <= base <= 2
    r = res["grain-seed0"]
    assert set(r["patch_probe_balanced_accuracy"]) == {"trained", "random-init", "position-only"}
    assert all(0 <= v <= 1 for v in r["patch_probe_balanced_accuracy"].values())
    assert r["model"]["1-giou"] >= base - 0.1  # 6 steps of training: no better than the best fixed layout
    sel = r["two_stage_selection"]  # the smoke config's decoder is the full bench's: two-stage queries
    assert sum(sel[k]["share"] for k in ("centre", "one_off", "far")) == pytest.approx(1.0)
    assert sel["oracle_ratio"] > 0
    assert decoder_probe.main(["--bench", str(out), "--steps", "4", "--train-rows", "32"]) == 0
    assert decoder_probe.main(["--bench", str(out), "--steps", "2", "--train-rows", "32", "--train-tower"]) == 0
    assert decoder_probe.main(["--bench", str(out), "--steps", "2", "--train-rows", "32", "--tower", "oracle",
                               "--image-size", "64"]) == 0  # the oracle needs width ≥ 2·grid²
    assert "best image-independent boxes" in capsys.readouterr().out
    assert decoder_probe.main(["--bench", str(out), "--steps", "2", "--train-rows", "32", "--train-tower",
                               "--memory-pos", "sine_kv", "--vision-pos", "sincos2d", "--grad-clip", "0"]) == 0
    assert "position probe" in capsys.readouterr().out
    assert set(res["grain-seed0"]["position_probe_r2"]) == {"trained", "random-init"}


def test_jobs_stops_its_arms_when_terminated(tmp_path):
    """`--jobs 2` under SIGTERM (a job manager stopping it): both arm processes are stopped with it, and
    it exits 130 with a one-line message (no traceback)."""
    import signal
    import subprocess
    import sys
    import time

    pytest.importorskip("skimage")
    from evaluation.datasets import node_modules_dir

    if not os.path.exists(os.path.join(node_modules_dir(), "emoji-datasource-twitter", "package.json")):
        pytest.skip("emoji npm packages not installed (grain data build)")
    out = tmp_path / "bench"
    parent = subprocess.Popen([sys.executable, "-m", "benchmarks.bench_grounding", "--smoke", "--output", str(out),
                               "--jobs", "2", "--quiet", "--set", "train.epochs=1000", "--set", "train.max_steps=100000"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not all((out / "logs" / f"{a}.log").exists() for a in ("clip", "grain")):
        time.sleep(0.5)
    children = subprocess.run(["pgrep", "-P", str(parent.pid)], capture_output=True, text=True).stdout.split()
    assert len(children) == 2, children
    parent.send_signal(signal.SIGTERM)
    _, err = parent.communicate(timeout=60)
    assert parent.returncode == 130 and "interrupted; the arms were stopped" in err and "Traceback" not in err
    for pid in children:
        assert not os.path.exists(f"/proc/{pid}") or "zombie" in open(f"/proc/{pid}/status").read().lower()
