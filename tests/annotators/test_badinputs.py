"""The bad-input generator writes what it promises (fast; the annotate run checks outcomes, slow)."""

import io
import struct

import pytest
from PIL import Image

from annotators.badinputs import build_bad_input_corpus, png_bomb
from annotators.readers import discover_shards, read_shard
from grain.data import ImageDecodeError, ImageTooLarge, decode_image


def test_corpus_layout_and_reader_agree(tmp_path):
    corpus = build_bad_input_corpus(str(tmp_path), n_good=20)
    shards = discover_shards([str(tmp_path)])
    assert [s.format for s in shards] == ["webdataset", "webdataset", "parquet"]
    recs = [r for s in shards for r in read_shard(s)]
    assert len(recs) == len(corpus.expected) and {r["key"] for r in recs} == set(corpus.expected)
    statuses = {e.status for e in corpus.expected.values()}
    assert {"ok", "decode_error", "too_large", "too_small", "input_error", "download_error"} <= statuses
    assert sum(e.status == "ok" for e in corpus.expected.values()) >= 20
    # Reader-level outcomes already final: input/download errors.
    for r in recs:
        exp = corpus.expected[r["key"]]
        if exp.status in ("input_error", "download_error"):
            assert r["status"] == exp.status, r["key"]
        for flag in exp.flags:
            assert flag in r["flags"], (r["key"], flag)


def test_bomb_is_small_on_disk_and_refused_before_decoding():
    data = png_bomb(30000, 30000)
    assert len(data) < 200
    assert struct.unpack(">II", data[16:24]) == (30000, 30000)  # IHDR width, height
    with pytest.raises(Image.DecompressionBombError):  # PIL itself refuses to open it
        Image.open(io.BytesIO(data))
    with pytest.raises(ImageTooLarge):
        decode_image(data, max_pixels=50_000_000)
    with pytest.raises(ImageDecodeError):
        decode_image(b"")
