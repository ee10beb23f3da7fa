"""Flow wiring without engines: overrides → stage configs, reports/artifacts on fixture shards, pipeline checks."""

import os
import subprocess
import sys

import pytest

from flows import stages


@pytest.fixture(scope="module")
def prefect_api():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_stage_configs_take_overrides_and_the_stack_ray_address(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6380")
    a = stages.annotation_config(None, {"run": {"batch_size": 3}, "input": ["/x"], "output": "/y"})
    assert (a.run.batch_size, a.input, a.output, a.run.ray_address, a.profile) == (3, ["/x"], "/y", "127.0.0.1:6380", "tiny")
    t = stages.training_config(None, {"data.path": "/shards", "output": "/run", "max_steps": 2})
    assert (t.data.path, t.output, t.max_steps, t.ray_address) == ("/shards", "/run", 2, "127.0.0.1:6380")
    explicit = stages.training_config(None, {"data.path": "/s", "output": "/o", "ray_address": "auto"})
    assert explicit.ray_address == "auto"  # an explicit choice wins over the stack's address
    e = stages.eval_config(None, {"checkpoint": "/c.pt", "limit": 5})
    assert (e.checkpoint, e.limit, e.datasets) == ("/c.pt", 5, stages.EVAL_DEFAULTS["datasets"])
    with pytest.raises(ValueError, match=r"model: unknown key 'model' \(from flow parameter overrides\)"):
        stages.eval_config(None, {"checkpoint": "/c.pt", "model": {"x": 1}})


def test_bad_override_key_names_it():
    from annotators.config import ConfigError

    with pytest.raises(ConfigError, match="batch_sise"):
        stages.annotation_config(None, {"run": {"batch_sise": 3}})


def test_pipeline_overrides_are_checked():
    from flows.pipeline import split_overrides

    assert split_overrides({"train": {"max_steps": 2}})["annotate"] == {}
    with pytest.raises(ValueError, match="unknown sections"):
        split_overrides({"training": {}})


def test_url_list_detection(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from flows.annotate import is_url_list

    tsv = tmp_path / "cc12m.tsv"
    tsv.write_text("url\tcaption\nhttp://x/a.jpg\ta\n")
    pq.write_table(pa.table({"url": ["http://x"], "caption": ["c"]}), tmp_path / "urls.parquet")
    pq.write_table(pa.table({"key": ["0"], "jpg": [b"x"]}), tmp_path / "00000.parquet")
    assert is_url_list(str(tsv)) and is_url_list(str(tmp_path / "urls.parquet"))
    assert not is_url_list(str(tmp_path / "00000.parquet")) and not is_url_list(str(tmp_path))


def test_overlay_draws_boxes_in_the_decoded_frame(tmp_path):
    import io

    from PIL import Image

    from flows import visuals
    from grain.testing.fixtures import write_fixture_shards

    paths = write_fixture_shards(str(tmp_path), num_shards=1, rows_per_shard=6, min_objects=1, max_objects=1, width=96, height=80)
    rows = visuals.pick_rows(paths, 2)
    assert len(rows) == 2 and all(r["boxes"] for r in rows)
    png = Image.open(io.BytesIO(visuals.draw_overlay(rows[0], max_side=96))).convert("RGB")
    x1, y1, x2, y2 = rows[0]["boxes"][0]
    # The box outline of the first box is drawn in the first palette colour at its left edge.
    edge = png.getpixel((round(x1 * 96), round((y1 + y2) / 2 * 80)))
    assert edge == visuals._PALETTE[0]


def test_overlay_applies_the_pixel_limit_before_decoding(tmp_path, monkeypatch):
    """An image over visuals.MAX_PIXELS is refused from its header (PIL's own bomb check would let
    anything up to twice its limit decode, with a warning); the markdown says so instead of drawing it."""
    import io

    from PIL import Image

    from flows import visuals
    from grain.data import ImageTooLarge

    buf = io.BytesIO()
    Image.new("RGB", (50, 30)).save(buf, format="PNG")  # 1500 pixels: over 1000, under PIL's 2x
    row = {"key": "k1", "image": buf.getvalue(), "boxes": [[0.1, 0.1, 0.5, 0.5]], "box_scores": [0.9],
           "box_desc_index": [0], "descriptions": ["a box"], "source_caption": "", "mllm_caption": ""}
    monkeypatch.setattr(visuals, "MAX_PIXELS", 1000)
    loads, real_load = [], Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda self: loads.append(self.size) or real_load(self))
    with pytest.raises(ImageTooLarge, match="row k1: 50×30"):
        visuals.draw_overlay(row)
    assert loads == []  # no pixel decoded
    md = visuals.overlay_markdown([row], str(tmp_path), lambda n: n)
    assert "`k1` — not drawn" in md and "exceeds the limit of 1000" in md and os.listdir(tmp_path) == []
    monkeypatch.setattr(visuals, "MAX_PIXELS", 1500)
    assert Image.open(io.BytesIO(visuals.draw_overlay(row))).size == (50, 30)  # at the limit: drawn


def test_report_annotation_creates_table_and_overlay_artifacts(prefect_api, tmp_path, monkeypatch):
    from prefect import flow
    from prefect.client.orchestration import get_client

    from annotators.manifest import RunManifest
    from flows.annotate import report_annotation
    from grain.common.schema import read_table, summarise
    from grain.testing.fixtures import write_fixture_shards

    monkeypatch.delenv("GRAIN_ARTIFACT_DIR", raising=False)
    out = str(tmp_path / "annot")
    paths = write_fixture_shards(out, num_shards=2, rows_per_shard=4, min_objects=1, error_rows_per_shard=1)
    m = RunManifest(out)
    for p in paths:
        t = read_table(p)
        m.mark_done(os.path.basename(p)[:-8], {"input": p, "rows": t.num_rows, "counts": summarise([t]), "seconds": 1.5})

    @flow
    def report_only():
        return report_annotation(out, n_overlays=3)

    res = report_only()
    assert res["shards"] == 2 and res["status_counts"] == {"ok": 8, "decode_error": 2}
    assert len([f for f in os.listdir(res["overlays"]) if f.endswith(".png")]) == 3
    with get_client(sync_client=True) as client:
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["annotation-stats", "annotation-samples"])))
    kinds = {a.key: a for a in arts}
    assert set(kinds) == {"annotation-stats", "annotation-samples"}
    assert "decode_error=1" in str(kinds["annotation-stats"].data)
    assert str(kinds["annotation-samples"].data).count("![") == 3


def test_training_progress_reads_plan_and_metrics(tmp_path):
    import json

    from flows.pretrain import _progress

    assert _progress(str(tmp_path)) == 0.0
    (tmp_path / "run.json").write_text(json.dumps({"schedule": {"stop_at": 8}}))
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps({"step": s, "loss": 1.0}) for s in (1, 2)) + "\n")
    assert _progress(str(tmp_path)) == 25.0


def test_pipeline_workdir_local_is_absolute_uri_is_kept(tmp_path, monkeypatch):
    from flows.pipeline import resolve_workdir

    monkeypatch.chdir(tmp_path)
    assert resolve_workdir("runs/demo") == str(tmp_path / "runs" / "demo")
    assert resolve_workdir("s3://bucket/runs/demo/") == "s3://bucket/runs/demo"
    with pytest.raises(ValueError, match="workdir"):
        resolve_workdir("  ")


def test_flow_helpers_read_an_s3_workdir(s3_bucket, tmp_path):
    """The cluster deployments use s3:// workdirs: manifest, shard listing/stats, overlays, progress."""
    import json

    from flows import visuals
    from flows.annotate import _count_inputs, _manifest, list_parquet, shard_box_stats
    from flows.pretrain import _progress
    from grain.common import storage
    from grain.testing.fixtures import write_fixture_shards

    local = tmp_path / "shards"
    paths = write_fixture_shards(str(local), num_shards=2, rows_per_shard=3, min_objects=1, max_objects=2)
    out = storage.join(s3_bucket, "run", "annotated")
    assert _manifest(out) == {}  # nothing written yet: no error
    for p in paths:
        storage.atomic_write_bytes(storage.join(out, os.path.basename(p)), open(p, "rb").read())
    storage.atomic_write_bytes(storage.join(out, "manifest.json"), json.dumps({"shards": {"00000": {"rows": 3}}}).encode())
    assert _manifest(out)["shards"]["00000"]["rows"] == 3
    files = list_parquet(out)
    assert [f.rsplit("/", 1)[1] for f in files] == [os.path.basename(p) for p in paths] and files[0].startswith("s3://")
    stats = shard_box_stats(files[0])
    assert stats["with_boxes"] == 3 and 3 <= stats["boxes"] <= 6
    rows = visuals.pick_rows(files, 2)
    assert len(rows) == 2 and all(r["boxes"] for r in rows)
    assert _count_inputs([out]) == 1  # no .tar inside: the folder counts as one input
    train = storage.join(s3_bucket, "run", "train")
    storage.atomic_write_bytes(storage.join(train, "run.json"), json.dumps({"schedule": {"stop_at": 4}}).encode())
    storage.atomic_write_bytes(storage.join(train, "metrics.jsonl"), b'{"step": 1}\n{"step": 3}\n')
    assert _progress(train) == 75.0


def test_training_coverage_counts_rows_trained_per_epoch():
    from flows.pretrain import coverage_line, training_coverage

    info = {"data": {"total_rows": 120, "ok_rows": 119, "skipped_rows": {"decode_error": 1}},
            "schedule": {"steps_per_epoch": 14, "global_batch": 8}, "result": {"samples_seen": 224}}
    cov = training_coverage(info)
    assert (cov["rows_trained"], cov["rows_total"]) == (112, 120) and abs(cov["fraction"] - 112 / 120) < 1e-9
    assert "trained on 112 of 120 annotated rows (93.3 %)" in coverage_line(cov) and "decode_error" in coverage_line(cov)
    info["result"]["samples_seen"] = 40  # stopped by max_steps inside the first epoch
    assert training_coverage(info)["rows_trained"] == 40


def test_pipeline_summary_links_runs_and_shows_results():
    from flows.pipeline import summary_markdown

    md = summary_markdown(
        "/w", {"output": "/w/annotated", "url": "http://ui/runs/flow-run/a", "status_counts": {"ok": 9}, "with_boxes": 7,
               "boxes": 30, "descriptions": 12, "overlay_markdown": "# x\n![k1](http://art/k1.png)\n- alt\n![k2](http://art/k2.png)"},
        {"checkpoint": "/w/train/final.pt", "flow_run_id": "b", "steps": 3, "curves_markdown": "![loss curves](http://art/c.png)",
         "coverage": {"rows_total": 9, "rows_ok": 9, "rows_skipped": {}, "rows_trained": 8, "fraction": 8 / 9}},
        {"output": "/w/eval", "url": "http://ui/runs/flow-run/c", "table": "| data set |\n|---|\n| emoji |"})
    assert "[annotate-cc12m](http://ui/runs/flow-run/a)" in md and "`pretrain-grain` (b)" in md
    assert "![k1](http://art/k1.png)" in md and "![loss curves](http://art/c.png)" in md
    assert "trained on 8 of 9 annotated rows (88.9 %)" in md and "| emoji |" in md


def test_zombie_automation_is_registered_once_with_the_crash_action(prefect_api):
    """`grain stack up` registers it every time: one automation of that name, Prefect's zombie recipe (a missed
    heartbeat → Crashed). That a silent run really ends Crashed is tests/infra/test_stack_e2e.py's check."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    from infra.zombies import AUTOMATION_NAME, ensure_zombie_automation, zombie_automation

    url = PREFECT_API_URL.value()
    # Unchanged settings keep the automation itself (its pending expectations for silent runs survive a
    # worker restart), whichever process registers it: the trigger's sets come back in an order set by the
    # string-hash seeds of the server and the client (CI once replaced it so, and a killed run stayed Running;
    # the order-independence itself is asserted deterministically in the test below).
    ids = []
    for seed in range(4):
        r = subprocess.run([sys.executable, "-m", "infra.zombies", "--api-url", url, "--within", "90"],
                           env={**os.environ, "PYTHONHASHSEED": str(seed)}, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        ids.append(r.stdout.strip())
    first = ids[0]
    assert ids == [first] * 4 and ensure_zombie_automation(url, 90) == first
    # Other settings replace it.
    second = ensure_zombie_automation(url, 100)
    with get_client(sync_client=True) as client:
        found = client.read_automations_by_name(AUTOMATION_NAME)
    assert [str(a.id) for a in found] == [second] and second != first
    a = found[0]
    assert a.trigger.posture.value == "Proactive" and a.trigger.within.total_seconds() == 100
    assert a.trigger.after == {"prefect.flow-run.heartbeat"} and "prefect.flow-run.Completed" in a.trigger.expect
    assert a.actions[0].type == "change-flow-run-state" and a.actions[0].state.value == "CRASHED"
    with pytest.raises(ValueError, match="heartbeat period"):
        zombie_automation(30)


def test_zombie_automation_comparison_ignores_the_order_of_its_sets():
    """The server returns the trigger's ``after``/``expect``/``for_each`` sets as lists in any order: an
    automation read back with its lists reversed is the same one; another ``within`` is not."""
    import types

    from infra.zombies import _same, zombie_automation

    wanted = zombie_automation(90)
    dump = wanted.model_dump(mode="json", include={"trigger", "actions", "enabled"})
    assert len(dump["trigger"]["expect"]) == 5
    shuffled = {**dump, "trigger": {**dump["trigger"], "expect": dump["trigger"]["expect"][::-1], "id": "from-server"}}
    read_back = types.SimpleNamespace(model_dump=lambda **kw: shuffled)
    assert _same(read_back, wanted)
    other = {**shuffled, "trigger": {**shuffled["trigger"], "within": 100.0}}
    assert not _same(types.SimpleNamespace(model_dump=lambda **kw: other), wanted)
