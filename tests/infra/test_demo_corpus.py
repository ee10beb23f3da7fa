"""Demo corpus: img2dataset's webdataset layout, captions, white compositing, and the annotation reader's view."""

import io
import json
import os
import tarfile

import pytest

from infra import demo_corpus

pytestmark = pytest.mark.skipif(
    not (os.path.isdir(demo_corpus.TUXPAINT_DIR) and os.path.isdir(demo_corpus.OPENCLIPART_DIR)),
    reason="apt packages tuxpaint-stamps-default / openclipart-svg not installed (infra/setup.sh installs them)",
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("corpus"))
    summary = demo_corpus.build_corpus(out, limit=14, shard_size=6, seed=3, show_progress=False)
    return out, summary


def test_layout_matches_img2dataset(corpus):
    out, summary = corpus
    assert summary["shards"] == 3 and summary["samples"] + sum(summary["render_failures"].values()) == 14
    names = sorted(os.listdir(out))
    for s in ("00000", "00001", "00002"):
        assert {f"{s}.tar", f"{s}.parquet", f"{s}_stats.json"} <= set(names)
    with tarfile.open(os.path.join(out, "00000.tar")) as tar:
        members = tar.getnames()
        keys = sorted({m.split(".")[0] for m in members})
        for k in keys:
            assert {f"{k}.jpg", f"{k}.txt", f"{k}.json"} <= set(members)
            meta = json.loads(tar.extractfile(f"{k}.json").read())
            caption = tar.extractfile(f"{k}.txt").read().decode()
            assert meta["key"] == k and meta["status"] == "success" and meta["caption"] == caption and caption
            assert k.startswith("00000") and len(k) == 9
    stats = json.load(open(os.path.join(out, "00000_stats.json")))
    assert stats["count"] == 6 and stats["successes"] == len(keys)


def test_images_are_rgb_jpegs_on_white_within_size(corpus):
    from PIL import Image

    out, _ = corpus
    with tarfile.open(os.path.join(out, "00001.tar")) as tar:
        jpgs = [m for m in tar.getnames() if m.endswith(".jpg")]
        for name in jpgs:
            img = Image.open(io.BytesIO(tar.extractfile(name).read()))
            assert img.format == "JPEG" and img.mode == "RGB"
            assert max(img.size) <= demo_corpus.MAX_SIDE


def test_transparent_stamp_is_composited_on_white(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.setenv("GRAIN_CACHE", str(tmp_path))
    src = os.path.join(demo_corpus.TUXPAINT_DIR, "animals", "birds", "penguin.png")
    if not os.path.exists(src):
        pytest.skip("penguin stamp not in this Tux Paint version")
    alpha = Image.open(src).convert("RGBA").getchannel("A")
    assert alpha.getpixel((0, 0)) == 0  # a cut-out: transparent corner
    jpg = demo_corpus.render(demo_corpus.Item(src, "A penguin.", "tuxpaint"))
    assert min(Image.open(io.BytesIO(jpg)).getpixel((0, 0))) > 240  # white, not black
    assert demo_corpus.render(demo_corpus.Item(src, "A penguin.", "tuxpaint")) == jpg  # cached copy


def test_titles_are_filtered_and_cleaned():
    assert demo_corpus.clean_title("red_flower_01") == "Red flower."
    assert demo_corpus._GENERIC_TITLE.search("Clipart by Nicu Buculei - head1")
    assert demo_corpus._GENERIC_TITLE.search("Part of the Flat Icon Collection (Wed Aug 25 2004)")
    items = demo_corpus.openclipart_items()
    assert len(items) > 1000
    assert not any(os.path.relpath(i.path, demo_corpus.OPENCLIPART_DIR).split(os.sep)[0] in ("shapes", "computer", "unsorted") for i in items)


def test_annotation_reader_reads_every_sample(corpus):
    from annotators.readers import discover_shards, read_shard

    out, summary = corpus
    shards = discover_shards([out])
    recs = [r for s in shards for r in read_shard(s)]
    assert len(recs) == summary["samples"]
    assert all(r["status"] == "ok" and r["source_caption"] and r["image"] for r in recs)


def test_cli_rejects_bad_limit(tmp_path, capsys):
    assert demo_corpus.main(["--output", str(tmp_path), "--limit", "0"]) == 2
    assert "--limit" in capsys.readouterr().out
