"""Every bad input through the reader and decode stages (no models: fast tier).

The extended bad-input corpus (annotators/badinputs.py, ``extended=True``) goes through the same
stage functions the Ray job runs (stages.read_shards_batch → stages.decode_batch): every input
record must come out exactly once, with the expected status (decode-level outcomes are final here;
the model stages only add ``model_error``), a reason on every error row, and nothing written
anywhere. The full annotate run over the same corpus is tests/reliability/test_annotate_faults.py.
"""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pytest

from annotators.badinputs import build_bad_input_corpus
from annotators.readers import discover_shards
from annotators.stages import decode_batch, read_shards_batch

LIMITS = {"max_image_bytes": 32 << 20, "max_caption_chars": 4000, "max_json_bytes": 1 << 20}

# The kinds of bad input docs/reliability.md lists, mapped to the corpus entries that exercise them.
KINDS = ("truncated_jpeg", "truncated_png", "corrupt_png_crc", "zero_bytes", "not_an_image", "one_pixel", "bomb_png",
         "cmyk_jpeg", "png_16bit", "animated_gif", "alpha_png", "palette_png", "exif_rotated", "missing_caption",
         "non_utf8_caption", "caption_1mb")


def _tree(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_bad_input_corpus(str(tmp_path_factory.mktemp("bad") / "in"), n_good=6, max_side=128, extended=True)


def test_corpus_has_every_kind(corpus):
    from annotators.badinputs import bad_cases, extended_cases, good_photos

    photo = good_photos(2, 64)[1][1]
    names = {c[0] for c in bad_cases(photo)} | {c[0] for c in extended_cases(photo)}
    assert set(KINDS) <= names and len(names) >= 15
    shards = discover_shards([corpus.root])
    assert [s.name for s in shards] == [f"{i:05d}" for i in range(7)]  # incl. wrong-schema and empty shards


def test_every_record_accounted_once_with_reason(corpus):
    root_parent = os.path.dirname(corpus.root)
    before = _tree(root_parent)
    shards = discover_shards([corpus.root])
    batch = pa.Table.from_pylist([{"shard": json.dumps(s.to_dict())} for s in shards])
    rows = decode_batch(read_shards_batch(batch, LIMITS), max_image_pixels=40_000_000, min_image_side=8).to_pylist()
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)), "a record came out twice"
    assert set(keys) == set(corpus.expected), set(keys) ^ set(corpus.expected)
    per_shard = {}
    for r in rows:
        per_shard.setdefault(r["shard"], []).append(r)
        exp = corpus.expected[r["key"]]
        assert r["status"] == exp.status, (r["key"], r["status"], r["error"])
        if exp.status != "ok":
            assert r["error"] and len(r["error"]) > 5, r["key"]
            continue
        assert (r["image_width"], r["image_height"]) == tuple(exp.size), r["key"]
        assert len(r["rgb"]) == r["image_width"] * r["image_height"] * 3
        for flag in exp.flags:
            assert flag in r["flags"], (r["key"], flag)
    for name, rs in per_shard.items():  # the driver's "shard complete" test relies on this count
        assert all(r["shard_rows"] == len(rs) for r in rs), name
    assert "00005" not in per_shard and "00006" not in per_shard  # empty shards: no rows (written empty)
    unreadable = [r for r in rows if r["key"] == "00004/unreadable"][0]
    assert "00004.parquet" in unreadable["error"]
    escape = [r for r in rows if r["source"].endswith("'../x.jpg'")]
    assert len(escape) == 1 and escape[0]["status"] == "input_error" and ".." in escape[0]["error"]
    long_caption = [r for r in rows if r["key"] == "000030004"][0]
    assert len(long_caption["source_caption"]) <= 4000
    assert _tree(root_parent) == before, "reading the corpus wrote files"
    assert not os.path.exists(os.path.join(root_parent, "x.jpg"))


def test_16bit_png_keeps_its_range():
    """16-bit greyscale decodes to the top 8 bits, not PIL's clip at 255 (a white image)."""
    import numpy as np

    from annotators.badinputs import png_16bit
    from grain.data import decode_image

    arr = np.asarray(decode_image(png_16bit(96, 8)))
    assert arr.shape == (8, 96, 3)
    assert arr[0, 0, 0] == 0 and arr[0, -1, 0] == 255 and 100 < arr[0, 48, 0] < 155  # a ramp, not saturated
