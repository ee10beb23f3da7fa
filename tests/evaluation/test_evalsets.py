"""Each data-set layout on a small fixture made here, and bad inputs naming the file at fault."""

import io
import json
import os
import tarfile

import pytest
from PIL import Image

from evaluation.evalsets import EvalSetError, ImageRef, decode_ref, detect_layout, load_evalset


def _png(colour=(200, 10, 10), size=(8, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def _imagefolder(root, classes=("cat", "dog_face", "owl"), per_class=2):
    for c in classes:
        os.makedirs(root / c)
        for i in range(per_class):
            (root / c / f"{i}.png").write_bytes(_png())
    return root


def test_imagefolder_plain(tmp_path):
    ds = load_evalset(str(_imagefolder(tmp_path / "set")))
    assert ds.layout == "imagefolder" and ds.name == "set"
    assert ds.classnames == ["cat", "dog face", "owl"]  # folder order; _ → space
    assert ds.labels == [0, 0, 1, 1, 2, 2] and ds.descriptors is None
    assert decode_ref(ds.images[0]).size == (8, 6)


def test_imagefolder_with_json_and_limit(tmp_path):
    root = _imagefolder(tmp_path / "set", per_class=3)
    (root / "classes.json").write_text(json.dumps({"owl": "barn owl"}))
    (root / "descriptors.json").write_text(json.dumps({"cat": ["whiskers"], "dog face": ["a snout"], "barn owl": ["has feathers", " "]}))
    ds = load_evalset(str(root))
    assert ds.classnames == ["cat", "dog face", "barn owl"]
    assert ds.descriptors["barn owl"] == ["has feathers"]  # blank descriptors dropped
    small = ds.limit(4)
    assert len(small.images) == 4 and sorted(set(small.labels)) == [0, 1, 2]  # round-robin keeps every class


def test_descriptor_file_missing_a_class_names_file_and_class(tmp_path):
    root = _imagefolder(tmp_path / "set")
    (root / "descriptors.json").write_text(json.dumps({"cat": ["whiskers"], "owl": []}))
    with pytest.raises(EvalSetError, match=r"descriptors\.json.*dog face"):
        load_evalset(str(root))


def test_empty_class_folder_is_named(tmp_path):
    root = _imagefolder(tmp_path / "set")
    os.makedirs(root / "zebra")
    with pytest.raises(EvalSetError, match=r"zebra: class folder has no images"):
        load_evalset(str(root))


def test_unreadable_image_is_named(tmp_path):
    root = _imagefolder(tmp_path / "set")
    (root / "cat" / "broken.png").write_bytes(b"\x89PNG not really")
    ds = load_evalset(str(root))
    bad = next(r for r in ds.images if r.path.endswith("broken.png"))
    with pytest.raises(EvalSetError, match=r"broken\.png"):
        decode_ref(bad)
    with pytest.raises(EvalSetError, match="missing.png"):
        ImageRef(where="missing.png", path=str(tmp_path / "missing.png")).read_bytes()


def _wds(root, samples, classnames=None, dtype=None):
    os.makedirs(root / "test")
    with tarfile.open(root / "test" / "0.tar", "w") as tf:
        for name, data in samples:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    (root / "test" / "nshards.txt").write_text("1\n")
    if classnames:
        (root / "classnames.txt").write_text("\n".join(classnames) + "\n")
        (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\nart of the {c}.\n")
    if dtype:
        (root / "dataset_type.txt").write_text(dtype + "\n")
    return root


def test_clip_benchmark_wds_classification(tmp_path):
    root = _wds(tmp_path / "wds_toy", [("s0.webp", _png()), ("s0.cls", b"1"), ("s1.png", _png()), ("s1.cls", b"0"),
                                       ("s2.jpg", _png()), ("s2.cls", b"2")], classnames=["apple", "pear", "plum"])
    assert detect_layout(str(root)) == "clip_benchmark_wds"
    ds = load_evalset(str(root))
    assert ds.classnames == ["apple", "pear", "plum"] and sorted(ds.labels) == [0, 1, 2]
    assert ds.templates == ["a photo of a {c}.", "art of the {c}."]
    assert decode_ref(ds.images[0]).mode == "RGB"


def test_clip_benchmark_wds_bad_label_names_member(tmp_path):
    root = _wds(tmp_path / "bad", [("s0.png", _png()), ("s0.cls", b"7")], classnames=["a", "b"])
    with pytest.raises(EvalSetError, match=r"0\.tar::s0\.cls: label 7"):
        load_evalset(str(root))


def test_tar_member_over_the_size_cap_is_refused_naming_it(tmp_path):
    from evaluation.evalsets import MAX_MEMBER_BYTES, load_clip_benchmark_wds

    root = _wds(tmp_path / "big", [("s0.png", _png()), ("s0.cls", b"0"), ("s1.png", b"x" * 5000), ("s1.cls", b"0")],
                classnames=["a"])
    with pytest.raises(EvalSetError, match=r"0\.tar::s1\.png: member of 5000 bytes exceeds the 4096-byte limit"):
        load_clip_benchmark_wds(str(root), max_member_bytes=4096)
    assert len(load_clip_benchmark_wds(str(root), max_member_bytes=5000).images) == 2  # at the cap: read
    # The default cap is checked from the header, before reading: a member claiming 1 GiB in a tiny
    # (truncated) tar is refused by name instead of being read into memory.
    info = tarfile.TarInfo("huge.png")
    info.size = 1 << 30
    os.makedirs(tmp_path / "lying" / "test")
    (tmp_path / "lying" / "test" / "0.tar").write_bytes(info.tobuf() + b"\0" * 512)
    (tmp_path / "lying" / "classnames.txt").write_text("a\n")
    assert MAX_MEMBER_BYTES < 1 << 30
    with pytest.raises(EvalSetError, match=rf"0\.tar::huge\.png: member of {1 << 30} bytes exceeds"):
        load_evalset(str(tmp_path / "lying"))


def test_tar_members_over_the_total_cap_are_refused_naming_the_tar(tmp_path, monkeypatch):
    """Every member under the per-member cap, their sum over the per-tar cap: refused before the
    member that passes it is read."""
    from evaluation.evalsets import MAX_TAR_BYTES, load_clip_benchmark_wds
    from grain.common import webdataset

    members = [(f"s{i}.png", b"x" * 3000) for i in range(4)] + [(f"s{i}.cls", b"0") for i in range(4)]
    root = _wds(tmp_path / "many", sorted(members), classnames=["a"])
    reads, real_read = [], webdataset.TarMember.read
    monkeypatch.setattr(webdataset.TarMember, "read", lambda self, *a: reads.append(self.name) or real_read(self, *a))
    with pytest.raises(EvalSetError, match=r"test/0\.tar: its members pass the 7000-byte limit per tar .* at s2\.png"):
        load_clip_benchmark_wds(str(root), max_member_bytes=4096, max_tar_bytes=7000)
    assert "s2.png" not in reads and "s3.png" not in reads  # stopped at the member that passed the cap
    assert len(load_clip_benchmark_wds(str(root), max_member_bytes=4096, max_tar_bytes=12004).images) == 4  # at the cap
    assert MAX_TAR_BYTES <= 8 << 30


def test_imagefolder_image_over_the_size_cap_is_refused_naming_it(tmp_path, monkeypatch):
    import builtins

    ds = load_evalset(str(_imagefolder(tmp_path / "set", classes=("cat",), per_class=1)))
    big = tmp_path / "set" / "cat" / "0.png"
    big.write_bytes(_png() + b"\0" * 10_000)  # trailing bytes: still a PNG, now 10 kB larger
    ref = ImageRef(where=str(big), path=str(big), max_bytes=4096)
    sizes, real_open = [], builtins.open

    class Spy:  # records how many bytes each read asks for
        def __init__(self, f):
            self.f = f

        def read(self, n=-1):
            sizes.append(n)
            return self.f.read(n)

        def __getattr__(self, k):
            return getattr(self.f, k)

        def __enter__(self):
            return self

        def __exit__(self, *e):
            self.f.close()

    monkeypatch.setattr(builtins, "open", lambda p, *a, **k: Spy(real_open(p, *a, **k)) if str(p) == str(big) else real_open(p, *a, **k))
    with pytest.raises(EvalSetError, match=r"cat/0\.png: image file of \d+ bytes exceeds the 4096-byte limit per image"):
        decode_ref(ref)
    assert sizes == []  # refused from the file's size: nothing read
    assert decode_ref(ImageRef(where=str(big), path=str(big))).size == (8, 6)  # the default cap admits it
    assert ds.images[0].max_bytes >= 32 << 20


def test_clip_benchmark_wds_retrieval_multiple_captions(tmp_path):
    root = _wds(tmp_path / "ret", [("a.png", _png()), ("a.txt", b"a red thing\na crimson block\n"),
                                   ("b.png", _png()), ("b.txt", b"another\n")], dtype="retrieval")
    ds = load_evalset(str(root))
    assert ds.task == "zeroshot_retrieval" and len(ds.images) == 2
    assert ds.captions == ["a red thing", "a crimson block", "another"] and ds.caption_image == [0, 0, 1]


def test_annotated_shards_retrieval(tmp_path):
    from grain.testing.fixtures import write_fixture_shards

    write_fixture_shards(str(tmp_path / "shards"), num_shards=2, rows_per_shard=3, error_rows_per_shard=1)
    ds = load_evalset(str(tmp_path / "shards"))
    assert ds.layout == "annotated_shards" and len(ds.images) == 6
    assert ds.skipped == {"status_decode_error": 2}  # error rows are counted, not used
    assert len(ds.captions) == 12  # source + mllm caption per image (they differ in the fixture)
    assert ds.caption_image[:2] == [0, 0]
    only_src = load_evalset(str(tmp_path / "shards"), captions="source")
    assert len(only_src.captions) == 6


def test_missing_path_is_named(tmp_path):
    with pytest.raises(EvalSetError, match="nowhere"):
        load_evalset(str(tmp_path / "nowhere"))
