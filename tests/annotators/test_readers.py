"""Readers: img2dataset webdataset/parquet layouts, image folders, and unsafe inputs (fast, no models)."""

import io
import json
import os
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from annotators.readers import (
    InputShard,
    ReaderError,
    decode_caption,
    discover_shards,
    read_shard,
)
from grain.common.webdataset import unsafe_member_reason


def _tar(path, members):
    """members: list of (name, bytes) or (name, ('symlink', target))."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if isinstance(data, tuple):
                info.type = tarfile.SYMTYPE
                info.linkname = data[1]
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_caption_decoding_flags():
    assert decode_caption(b"a dog") == ("a dog", [])
    assert decode_caption(None) == (None, ["missing_source_caption"])
    assert decode_caption(b"   ") == (None, ["missing_source_caption"])
    text, flags = decode_caption(b"caf\xe9")
    assert text == "caf\ufffd" and flags == ["undecodable_source_caption"]
    text, flags = decode_caption("x" * 50, max_chars=10)
    assert text == "x" * 10 and flags == ["truncated_source_caption"]


@pytest.mark.parametrize("name", ["../x.jpg", "/etc/x.jpg", "a/../../x.jpg", "..\\x.jpg", "C:/x.jpg", ""])
def test_unsafe_member_names(name):
    assert unsafe_member_reason(name)


@pytest.mark.parametrize("name", ["000.jpg", "dir/000.jpg", "./000.txt", "a..b.jpg"])
def test_safe_member_names(name):
    assert unsafe_member_reason(name) is None


def test_tar_shard_grouping_and_escape(tmp_path):
    """The path-escape member becomes an error row and nothing is written outside the folder."""
    shard = tmp_path / "in" / "00007.tar"
    shard.parent.mkdir()
    _tar(shard, [
        ("000070000.jpg", b"JPEGBYTES"),
        ("000070000.txt", b"a red car"),
        ("000070000.json", json.dumps({"url": "http://x/1.jpg", "caption": "ignored"}).encode()),
        ("../escape.jpg", b"EVIL"),
        ("000070001.jpg", b"JPEG2"),
        ("000070001.json", json.dumps({"url": "http://x/2.jpg", "caption": "from json"}).encode()),
        ("link.jpg", ("symlink", "/etc/passwd")),
        ("000070002.txt", b"caption only"),
    ])
    before = set(os.listdir(tmp_path))
    (s,) = discover_shards([str(shard)])
    assert s.format == "webdataset" and s.name == "00007"
    recs = read_shard(s)
    by_key = {r["key"]: r for r in recs}
    assert by_key["000070000"]["image"] == b"JPEGBYTES"
    assert by_key["000070000"]["source_caption"] == "a red car"
    assert by_key["000070000"]["url"] == "http://x/1.jpg"
    assert by_key["000070001"]["source_caption"] == "from json"  # no .txt: img2dataset json caption
    escape = [r for r in recs if "escape" in r["source"]]
    assert len(escape) == 1 and escape[0]["status"] == "input_error" and escape[0]["image"] is None
    assert "'..'" in escape[0]["error"]
    link = [r for r in recs if "link.jpg" in r["source"]]
    assert link[0]["status"] == "input_error" and "link" in link[0]["error"]
    assert by_key["000070002"]["status"] == "input_error"
    assert len(recs) == 5 and len({r["key"] for r in recs}) == 5
    assert set(os.listdir(tmp_path)) == before and not (tmp_path / "escape.jpg").exists()


class _CountingFile:
    """A file object that counts the bytes read through it (everything else is delegated)."""

    def __init__(self, f):
        self._f, self.bytes_read = f, 0

    def read(self, *a):
        data = self._f.read(*a)
        self.bytes_read += len(data)
        return data

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def test_tar_too_large_member_not_read(tmp_path, monkeypatch):
    """The oversized member's bytes never leave the disk: the tar reader seeks past them (counted
    through the shard's file object) and no member read is asked for it."""
    import annotators.readers as readers
    from grain.common import webdataset

    payload = 4 << 20
    shard = tmp_path / "00000.tar"
    _tar(shard, [("a.jpg", b"x" * payload), ("a.txt", b"cap")])
    opened, member_reads = [], []
    real_open_fs, real_read = readers.open_fs, webdataset.TarMember.read

    def counting_open_fs(uri):
        fs, path = real_open_fs(uri)

        class FS:
            def open(self, p, mode="rb"):
                opened.append(_CountingFile(fs.open(p, mode)))
                return opened[-1]
        return FS(), path

    monkeypatch.setattr(readers, "open_fs", counting_open_fs)
    monkeypatch.setattr(webdataset.TarMember, "read", lambda self, *a: member_reads.append(self.name) or real_read(self, *a))
    (rec,) = read_shard(InputShard(str(shard), "webdataset", "00000"), max_image_bytes=100)
    assert rec["status"] == "too_large" and rec["image"] is None and rec["source_caption"] == "cap"
    assert member_reads == ["a.txt"]  # the caption was read, the image was not
    assert len(opened) == 1 and 0 < opened[0].bytes_read < 64 << 10, opened[0].bytes_read  # headers only


def test_truncated_tar_keeps_rows_and_reports(tmp_path):
    shard = tmp_path / "00000.tar"
    _tar(shard, [("a.jpg", b"x" * 3000), ("a.txt", b"cap"), ("b.jpg", b"y" * 3000)])
    data = shard.read_bytes()
    shard.write_bytes(data[:2500])
    recs = read_shard(InputShard(str(shard), "webdataset", "00000"))
    assert recs[-1]["status"] == "input_error" and "truncated" in recs[-1]["error"]


def test_webdataset_listing_gives_download_errors(tmp_path):
    _tar(tmp_path / "00000.tar", [("k1.jpg", b"J"), ("k1.txt", b"c")])
    pq.write_table(pa.Table.from_pylist([
        {"key": "k1", "url": "u1", "status": "success", "error_message": None},
        {"key": "k2", "url": "u2", "status": "failed_to_download", "error_message": "404"},
        {"key": "k3", "url": "u3", "status": "success", "error_message": None},
    ]), tmp_path / "00000.parquet")
    (s,) = discover_shards([str(tmp_path)])
    assert s.listing and s.listing.endswith("00000.parquet")
    recs = {r["key"]: r for r in read_shard(s)}
    assert recs["k1"]["status"] == "ok"
    assert recs["k2"]["status"] == "download_error" and "404" in recs["k2"]["error"]
    assert recs["k3"]["status"] == "input_error"  # listed as downloaded, absent from the tar


def test_parquet_shard(tmp_path):
    schema = pa.schema([("key", pa.string()), ("jpg", pa.binary()), ("txt", pa.string()), ("url", pa.string()),
                        ("status", pa.string()), ("error_message", pa.string())])
    rows = [
        {"key": "p0", "jpg": b"IMG\x00", "txt": "a cat", "url": "u0", "status": "success", "error_message": None},
        {"key": "p1", "jpg": None, "txt": None, "url": "u1", "status": "failed_to_download", "error_message": "timeout"},
        {"key": "p2", "jpg": b"IMG", "txt": None, "url": "u2", "status": "success", "error_message": None},
        {"key": "p0", "jpg": b"IMG", "txt": "dup", "url": "u3", "status": "success", "error_message": None},
    ]
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp_path / "00003.parquet")
    (s,) = discover_shards([str(tmp_path)])
    assert s.format == "parquet" and s.name == "00003"
    recs = read_shard(s)
    assert [r["key"] for r in recs] == ["p0", "p1", "p2", "p0#dup1"]
    assert recs[0]["image"] == b"IMG\x00"  # bytes kept exactly (trailing NUL included)
    assert recs[1]["status"] == "download_error"
    assert recs[2]["flags"] == ["missing_source_caption"] and recs[2]["status"] == "ok"
    assert recs[3]["status"] == "input_error" and "duplicate" in recs[3]["error"]


def test_image_folder_with_sidecars(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"A")
    (folder / "a.txt").write_text("first")
    (folder / "b.png").write_bytes(b"B")
    (folder / "notes.md").write_text("ignored")
    os.symlink("/etc/hostname", folder / "c.jpg")
    (s,) = discover_shards([str(folder)])
    assert s.format == "folder" and s.name == "photos"
    recs = {r["key"]: r for r in read_shard(s)}
    assert recs["a"]["source_caption"] == "first" and recs["a"]["image"] == b"A"
    assert recs["b"]["flags"] == ["missing_source_caption"]
    assert recs["c"]["status"] == "input_error" and recs["c"]["image"] is None


def test_discovery_errors_name_the_input(tmp_path):
    with pytest.raises(ReaderError, match="does not exist"):
        discover_shards([str(tmp_path / "nope")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReaderError, match="empty"):
        discover_shards([str(tmp_path / "empty")])
    pq.write_table(pa.table({"key": ["a"]}), tmp_path / "lonely.parquet")
    with pytest.raises(ReaderError, match="lonely.parquet"):
        discover_shards([str(tmp_path / "lonely.parquet")])
    _tar(tmp_path / "a" / "00000.tar" if (tmp_path / "a").mkdir() is None else None, [("k.jpg", b"J")])
    _tar(tmp_path / "b" / "00000.tar" if (tmp_path / "b").mkdir() is None else None, [("k.jpg", b"J")])
    with pytest.raises(ReaderError, match="both write 00000.parquet"):
        discover_shards([str(tmp_path / "a"), str(tmp_path / "b")])
