"""Grounded corpus: exact boxes, schema-valid reproducible shards the trainer reads, eval folders.

Sprites are synthetic RGBA PNGs written here (no npm/apt data needed), so the box checks can
compare against the pixels that were actually pasted.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random

import numpy as np
import pytest
from PIL import Image

from evaluation import grounded_corpus as gc
from evaluation import grounded_evalsets as ge


def _sprite(path, color, size=(40, 30), margin=5):
    """An opaque ``size`` rectangle inside a transparent margin (the margin must not count in boxes)."""
    w, h = size
    img = Image.new("RGBA", (w + 2 * margin, h + 2 * margin), (0, 0, 0, 0))
    img.paste(Image.new("RGBA", (w, h), (*color, 255)), (margin, margin))
    img.save(path)
    return str(path)


@pytest.fixture(scope="module")
def objects(tmp_path_factory):
    d = tmp_path_factory.mktemp("sprites")
    colors = [(200, 0, 0), (0, 150, 0), (0, 0, 200), (120, 60, 0), (90, 0, 140), (0, 120, 120)]
    names = ["dog face", "apple", "taxi", "owl", "eggplant", "umbrella"]
    return [gc.ObjectSpec(n, f"{n}: thing, {i}", _sprite(d / f"s{i}.png", c, size=(30 + 4 * i, 40 - 3 * i)), "emoji-test", f"k{i}")
            for i, (n, c) in enumerate(zip(names, colors))]


def test_compose_boxes_are_the_pasted_pixels(objects):
    rng = random.Random(0)
    for trial in range(5):
        canvas = Image.new("RGB", (128, 128), (255, 255, 255))
        chosen = objects[trial: trial + 2]
        boxes = gc.compose(chosen, rng, canvas, 0.2, 0.4, max_overlap=0.0, tries=200)
        px = np.asarray(canvas).astype(int)
        for obj, box in zip(chosen, boxes):
            assert 0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1
            x1, y1, x2, y2 = (round(c * 128) for c in box)
            # Inside the box the sprite's colour dominates; one pixel outside it there is none of it.
            color = np.array(Image.open(obj.path).convert("RGB").getpixel((10, 10)))
            match = (np.abs(px - color).sum(-1) < 60)
            inside = match[y1:y2, x1:x2].mean()
            assert inside > 0.9, f"{obj.name}: only {inside:.2f} of its box shows it"
            ys, xs = np.nonzero(match)
            assert xs.min() >= x1 - 1 and xs.max() <= x2 and ys.min() >= y1 - 1 and ys.max() <= y2


def test_caption_and_articles():
    assert gc.caption_for(["dog face"]) == "a dog face"
    assert gc.caption_for(["dog face", "apple", "taxi"]) == "a dog face, an apple and a taxi"


def test_class_split_is_seeded_disjoint_and_complete():
    keys = [f"k{i:03d}" for i in range(100)]
    seen, held = gc.class_split(keys, 0.25, seed=7)
    assert len(held) == 25 and len(seen) == 75 and not set(seen) & set(held) and set(seen) | set(held) == set(keys)
    assert gc.class_split(list(reversed(keys)), 0.25, seed=7) == (seen, held)  # input order does not matter
    assert gc.class_split(keys, 0.25, seed=8)[1] != held
    with pytest.raises(ValueError, match="holdout_frac"):
        gc.class_split(keys, 1.0, seed=0)


def test_corpus_spec_rejects_bad_values():
    with pytest.raises(ValueError, match="min_objects"):
        gc.CorpusSpec(min_objects=3, max_objects=2)
    with pytest.raises(ValueError, match="min_scale"):
        gc.CorpusSpec(min_scale=0.5, max_scale=0.2)
    with pytest.raises(ValueError, match="unknown key"):
        gc.CorpusSpec.from_dict({"imgs": 3})


def _digest(folder):
    h = hashlib.sha256()
    for f in sorted(os.listdir(folder)):
        if f.endswith(".parquet"):
            from grain.common.schema import read_table

            t = read_table(os.path.join(folder, f))
            h.update(json.dumps(t.drop(["image"]).to_pylist(), sort_keys=True).encode())
            for b in t.column("image").to_pylist():
                h.update(b)
    return h.hexdigest()


def test_corpus_shards_follow_the_schema_are_reproducible_and_train(tmp_path, objects):
    from grain.config import ModelConfig
    from grain.data import make_batch, sample_from_row
    from grain.common.schema import read_table

    spec = gc.CorpusSpec(images=12, shard_size=5, row_group_size=2, seed=3)
    emoji, stamps = objects[:4], objects[4:]
    m = gc.build_corpus(str(tmp_path / "a"), spec, emoji, stamps, progress=False)
    assert m["files"] == ["train-00000.parquet", "train-00001.parquet", "train-00002.parquet"]
    gc.build_corpus(str(tmp_path / "b"), spec, emoji, stamps, progress=False)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")  # seeded: byte-identical
    assert gc.build_corpus(str(tmp_path / "a"), spec, emoji, stamps, progress=False)["digest"] == m["digest"]

    rows = [r for f in m["files"] for r in read_table(str(tmp_path / "a" / f), validate=True).to_pylist()]
    assert len(rows) == 12 and len({r["key"] for r in rows}) == 12
    by_desc = {o.description: o for o in objects}
    for r in rows:
        assert 2 <= len(r["boxes"]) <= 4
        names = [by_desc[r["descriptions"][i]].name for i in r["box_desc_index"]]
        assert r["source_caption"] == gc.caption_for(names)  # the caption names every boxed object
        assert all(n in r["mllm_caption"] for n in names)
        img = Image.open(io.BytesIO(r["image"]))
        assert img.size == (r["image_width"], r["image_height"]) == (128, 128)
    cfg = ModelConfig.preset("tiny")
    samples = [sample_from_row(r, cfg) for r in rows[:4]]
    batch = make_batch(samples, cfg)
    assert batch["images"].shape == (4, 3, 64, 64)
    assert batch["target_boxes"].shape[0] == sum(len(r["boxes"]) for r in rows[:4])
    b0 = rows[0]["boxes"][0]  # xyxy in the shard → cxcywh in the batch, no other mapping
    assert batch["target_boxes"][0].tolist() == pytest.approx([(b0[0] + b0[2]) / 2, (b0[1] + b0[3]) / 2, b0[2] - b0[0], b0[3] - b0[1]], abs=1e-6)


def test_eval_folder_loads_as_an_evaluation_set(tmp_path, objects):
    from evaluation.evalsets import load_evalset

    descriptors = {o.name: ["thing", "red"] for o in objects}
    path = ge.build_eval_folder(str(tmp_path / "ev"), objects[:3], descriptors, per_class=2, seed=1, canvas=96,
                                min_scale=0.3, max_scale=0.6, photo_prob=0.5)
    ds = load_evalset(path)
    assert sorted(ds.classnames) == sorted(o.name for o in objects[:3])
    assert len(ds.images) == 6 and sorted(ds.labels) == [0, 0, 1, 1, 2, 2]
    assert ds.descriptors == {o.name: ["thing", "red"] for o in objects[:3]}
    mtime = os.path.getmtime(os.path.join(path, "classes.json"))
    ge.build_eval_folder(str(tmp_path / "ev"), objects[:3], descriptors, 2, 1, 96, 0.3, 0.6, 0.5)
    assert os.path.getmtime(os.path.join(path, "classes.json")) == mtime  # unchanged inputs: not rebuilt


def test_clutter_folder_has_a_small_unoccluded_target_among_distractors(tmp_path, objects):
    """build_clutter_folder: per_class canvases per class, each with the class's object small and fully
    visible (pasted last) among larger distractors; the set loads as an evaluation set; boxes recorded."""
    from evaluation.evalsets import load_evalset

    descriptors = {o.name: ["thing"] for o in objects}
    targets, distractors = objects[:2], objects[2:]
    path = ge.build_clutter_folder(str(tmp_path / "cl"), targets, distractors, descriptors, per_class=3, seed=5,
                                   canvas=128, target_scale=(0.15, 0.2), distractor_scale=(0.3, 0.4),
                                   n_distractors=(2, 3), photo_prob=0.0)
    ds = load_evalset(path)
    assert sorted(ds.classnames) == sorted(o.name for o in targets) and len(ds.images) == 6
    meta = json.loads(open(os.path.join(path, ".bench-set.json")).read())
    assert meta["kind"] == "clutter" and len(meta["target_boxes"]) == 6
    by_name = {o.name: o for o in objects}
    others = [np.array(Image.open(o.path).convert("RGB").getpixel((10, 10))) for o in distractors]
    for ref, y in zip(ds.images, ds.labels):
        rel = os.path.relpath(ref.path, path)
        x1, y1, x2, y2 = (round(c * 128) for c in meta["target_boxes"][rel])
        assert 0.15 * 128 - 1 <= max(x2 - x1, y2 - y1) <= 0.2 * 128 + 1  # small
        px = np.asarray(Image.open(ref.path).convert("RGB")).astype(int)
        color = np.array(Image.open(by_name[ds.classnames[y]].path).convert("RGB").getpixel((10, 10)))
        # On top, not occluded: the inner half of its box shows its colour (JPEG smears the edges).
        w, h = x2 - x1, y2 - y1
        inner = px[y1 + h // 4: y2 - h // 4, x1 + w // 4: x2 - w // 4]
        assert (np.abs(inner - color).sum(-1) < 100).mean() > 0.9
        seen = sum((np.abs(px - c).sum(-1) < 60).sum() > 50 for c in others)
        assert seen >= 1  # distractors are there (two or three; one may hide another)
    with pytest.raises(ValueError, match="distractor"):
        ge.build_clutter_folder(str(tmp_path / "none"), targets, [], descriptors, 1, 0, 64, (0.2, 0.3), (0.3, 0.4), (1, 2), 0.0)


def test_sprite_loader_crops_transparency_and_bounds_pixels(tmp_path, objects):
    s = gc.load_sprite(objects[0].path)
    assert s.size == (30, 40) and s.mode == "RGBA"  # the 5 px transparent margin is gone
    empty = tmp_path / "empty.png"
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(empty)
    with pytest.raises(ValueError, match="empty.png"):
        gc.load_sprite(str(empty))


@pytest.mark.skipif(not os.path.isdir(gc.TUXPAINT_DIR), reason="Tux Paint stamps not installed")
def test_tuxpaint_objects_leave_out_heldout_words():
    allo = gc.tuxpaint_objects()
    assert allo and all(o.source == "tuxpaint" and o.name == o.name.lower() for o in allo)
    assert any("penguin" in o.name for o in allo)
    kept = gc.tuxpaint_objects(exclude_words={"penguin", "cat"})
    assert not any(gc.words(o.name) & {"penguin", "cat"} for o in kept) and len(kept) < len(allo)
