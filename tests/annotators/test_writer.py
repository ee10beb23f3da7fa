"""ShardWriter and RunManifest: validation, atomic commit, path guard, resume bookkeeping (fast)."""

import json
import os

import pytest

from annotators.manifest import ManifestMismatch, RunManifest
from annotators.writer import OutputPathError, ShardWriter
from grain.common import storage
from grain.common.schema import SchemaError, empty_row, error_row, read_table


def _ok_row(key):
    row = empty_row(key, f"00000.tar::{key}.jpg")
    row.update(image=b"\x89PNG", image_width=10, image_height=8, source_caption="c", mllm_caption="m",
               descriptions=["a dog"], boxes=[[0.1, 0.2, 0.5, 0.9]], box_scores=[0.7], box_desc_index=[0],
               mllm_model="tiny-llava", detector_model="tiny-owlv2")
    return row


def test_write_validates_commits_and_reads_back(tmp_path):
    w = ShardWriter(str(tmp_path / "out"))
    rows = [_ok_row("a"), error_row("b", "00000.tar::b.jpg", "decode_error", "truncated")]
    info = w.write("00000", rows)
    assert info["rows"] == 2 and info["counts"] == {"ok": 1, "decode_error": 1}
    assert w.is_done("00000")
    assert storage.is_committed(str(tmp_path / "out" / "00000.parquet"))
    t = read_table(str(tmp_path / "out" / "00000.parquet"))
    assert t.column("key").to_pylist() == ["a", "b"]
    assert w.counts_of("00000") == {"ok": 1, "decode_error": 1}
    assert not [f for f in os.listdir(tmp_path / "out") if f.endswith(".tmp")]


def test_invalid_rows_write_nothing(tmp_path):
    w = ShardWriter(str(tmp_path))
    bad = _ok_row("a")
    bad["boxes"] = [[0.5, 0.5, 0.1, 0.1]]  # x2 < x1: not xyxy
    with pytest.raises(SchemaError, match="key='a'"):
        w.write("00000", [bad])
    with pytest.raises(SchemaError, match="duplicate keys"):
        w.write("00000", [_ok_row("a"), _ok_row("a")])
    assert not w.is_done("00000") and os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", ["../x", "/abs", "a/b", ".hidden", "", "a..b"])
def test_output_names_stay_inside(tmp_path, name):
    with pytest.raises(OutputPathError):
        ShardWriter(str(tmp_path)).path_for(name)


def test_symlinked_output_entry_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(tmp_path / "elsewhere.parquet", out / "00000.parquet")
    with pytest.raises(OutputPathError, match="outside"):
        ShardWriter(str(out)).path_for("00000")


def test_uncommitted_shard_is_not_done_and_stale_temp_removed(tmp_path):
    w = ShardWriter(str(tmp_path))
    (tmp_path / "00000.parquet").write_bytes(b"half")  # a crash before the commit marker
    (tmp_path / ".00000.parquet.abc.tmp").write_bytes(b"partial")
    assert not w.is_done("00000")
    assert w.remove_stale_temp_files() == [".00000.parquet.abc.tmp"]
    w.write("00000", [_ok_row("a")])  # a rerun overwrites it and commits
    assert w.is_done("00000")


def test_manifest_records_and_refuses_mixed_models(tmp_path):
    m = RunManifest(str(tmp_path))
    cfg = {"models": {"mllm": "m1", "detector": "d1", "box_threshold": 0.3}}
    m.start_run(cfg, {"mllm": "m1"})
    m.mark_done("00000", {"rows": 2, "counts": {"ok": 2}})
    data = json.loads((tmp_path / "manifest.json").read_text())
    assert data["shards"]["00000"]["rows"] == 2 and data["runs"][0]["shards_done"] == 1
    assert "pyarrow" in data["versions"] and data["config"] == cfg
    m2 = RunManifest(str(tmp_path))
    assert "00000" in m2.shards
    m2.start_run(cfg, {"mllm": "m1"})  # same models: resume allowed
    with pytest.raises(ManifestMismatch, match="box_threshold"):
        RunManifest(str(tmp_path)).start_run({"models": {**cfg["models"], "box_threshold": 0.5}}, {})
