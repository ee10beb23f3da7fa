"""Data path of the trainer: top-5 boxes in cxcywh, skipped rows, deterministic plan (the caption draw: tests/grain/test_data.py)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from grain.config import ModelConfig
from grain.data import make_batch, sample_from_row, top_boxes
from grain.common.schema import empty_row, to_table, write_table
from grain.testing.fixtures import FixtureSpec, write_fixture_shards
from trainers.index import DataError, build_index
from trainers.plan import epoch_batches, rank_rows, steps_per_epoch
from trainers.samples import BatchStream, ShardReader

TINY = ModelConfig.preset("tiny")


def test_top5_by_score_then_cxcywh_in_the_batch():
    boxes = [[0.1 * i, 0.05 * i, 0.1 * i + 0.2, 0.05 * i + 0.4] for i in range(7)]
    scores = [0.4, 0.9, 0.5, 0.95, 0.31, 0.8, 0.6]  # deliberately unsorted
    desc_idx = [0, 1, 2, 0, 1, 2, 0]
    top, idx = top_boxes(boxes, scores, desc_idx, 5)
    order = [3, 1, 5, 6, 2]
    assert top == [pytest.approx(boxes[i]) for i in order] and idx == [desc_idx[i] for i in order]
    from PIL import Image
    import io

    buf = io.BytesIO()
    Image.new("RGB", (50, 30), (10, 200, 30)).save(buf, format="PNG")
    row = {"key": "r0", "image": buf.getvalue(), "source_caption": "alt", "mllm_caption": "m",
           "descriptions": ["a", "b", "c"], "boxes": boxes, "box_scores": scores, "box_desc_index": desc_idx}
    s = sample_from_row(row, TINY)
    assert s["image"].shape == (3, TINY.image_size, TINY.image_size)
    batch = make_batch([{k: v for k, v in s.items() if k != "key"}], TINY)
    x1, y1, x2, y2 = torch.tensor([boxes[i] for i in order]).unbind(1)
    expected = torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], 1)  # docs/method.md §1.4: only xyxy→cxcywh
    assert torch.allclose(batch["target_boxes"], expected, atol=1e-6)
    with pytest.raises(ValueError, match="lengths differ"):
        top_boxes(boxes, scores[:3], desc_idx, 5)


def test_index_skips_and_counts_non_ok_rows_and_records_manifest(tmp_path):
    write_fixture_shards(str(tmp_path), FixtureSpec(num_shards=2, rows_per_shard=5, error_rows_per_shard=2, seed=1))
    (tmp_path / "manifest.json").write_text(json.dumps({"run": "annotate-123", "mllm": "fixture"}))
    index = build_index(str(tmp_path))
    assert index.num_ok == 10 and index.total_rows == 14
    assert index.skipped == {"decode_error": 4}
    assert index.manifests and index.manifests[0]["content"]["run"] == "annotate-123"
    with pytest.raises(DataError, match="not found"):
        build_index(str(tmp_path / "nope"))


def test_plan_is_deterministic_disjoint_and_resumable(train_shards):
    index = build_index(train_shards)
    assert index.num_ok == 48 and index.skipped == {"decode_error": 4}
    world, bs = 2, 4
    spe = steps_per_epoch(index, world, bs, seed=0, epochs=3)
    assert spe >= 5  # 48 rows / (2 × 4) = 6 at best; greedy dealing loses at most a unit
    for epoch in range(3):
        r0, r1 = (rank_rows(index, 0, epoch, r, world, shuffle_window=2) for r in range(world))
        assert np.array_equal(r0, rank_rows(index, 0, epoch, 0, world, shuffle_window=2))
        s0, s1 = {tuple(x) for x in r0}, {tuple(x) for x in r1}
        assert not s0 & s1 and len(s0 | s1) == 48  # every ok row once per epoch, on one rank
    assert not np.array_equal(rank_rows(index, 0, 0, 0, world, 2), rank_rows(index, 0, 1, 0, world, 2))
    full = epoch_batches(index, 0, 1, 1, world, bs, 2, n_steps=spe)
    resumed = epoch_batches(index, 0, 1, 1, world, bs, 2, n_steps=spe, start_step=2)
    assert len(full) == spe and all(np.array_equal(a, b) for a, b in zip(full[2:], resumed))


def test_batch_stream_replaces_and_counts_undecodable_rows(tmp_path):
    paths = write_fixture_shards(str(tmp_path), FixtureSpec(num_shards=1, rows_per_shard=3, seed=2))
    import pyarrow.parquet as pq

    rows = pq.read_table(paths[0]).to_pylist()
    bad = empty_row("bad0", "x::bad")
    bad.update(image=b"\x89PNG not really", image_width=10, image_height=10, mllm_caption="m")
    write_table(to_table(rows + [bad]), paths[0])
    index = build_index(str(tmp_path))
    reader = ShardReader(index.root, index.files)
    plan = [np.array([[0, 0, 3], [0, 0, 0]]), np.array([[0, 0, 1], [0, 0, 2]])]
    stream = BatchStream(plan, reader,
                         to_sample=lambda r: sample_from_row(r, TINY),
                         collate=lambda s: make_batch(s, TINY), threads=2, prefetch=1)
    out = list(stream)
    stream.close()
    assert [o[1] for o in out] == [["!bad0", rows[0]["key"]], [rows[1]["key"], rows[2]["key"]]]
    assert [o[2]["skipped_decode"] for o in out] == [1, 0]
    assert "bad0" in out[0][2]["errors"][0]
    assert out[0][0]["images"].shape == (2, 3, TINY.image_size, TINY.image_size)
    assert torch.equal(out[0][0]["images"][0], out[0][0]["images"][1])  # the stand-in is the good sample
