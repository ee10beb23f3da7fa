"""grain.common.webdataset: the one tar reader (keys, member kinds, unsafe names, bounded reads, corrupt archives)."""

import io
import tarfile

import pytest

from grain.common.webdataset import iter_members, split_key, unsafe_member_reason


def _tar_bytes(members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tar.addfile(info)
            elif data == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_split_key_follows_webdataset():
    assert split_key("./dir/abc.seg.JPG") == ("dir/abc", "seg.jpg")
    assert split_key("abc") == ("abc", "")
    assert unsafe_member_reason("../x.jpg") == "'..' path component"
    assert unsafe_member_reason("/abs.jpg") == "absolute path" and unsafe_member_reason("a/b.jpg") is None


def test_members_in_order_with_kinds_and_bounded_reads():
    data = _tar_bytes([("d", "dir"), ("d/k1.jpg", b"\xff\xd8img"), ("d/k1.txt", b"a caption"),
                       ("link.jpg", "symlink"), ("../evil.txt", b"x")])
    ms = list(iter_members(io.BytesIO(data)))
    assert [(m.index, m.key, m.ext, m.kind) for m in ms] == [
        (0, "d", "", "dir"), (1, "d/k1", "jpg", "file"), (2, "d/k1", "txt", "file"),
        (3, "link", "jpg", "link"), (4, "../evil", "txt", "file")]
    assert [m.unsafe for m in ms][-1] == "'..' path component" and ms[1].size == 5
    with pytest.raises(ValueError, match="link.jpg.*link"):
        ms[3].read()


def test_read_during_iteration_and_truncated_archive_raises_after_good_members():
    data = _tar_bytes([("a.txt", b"hello world"), ("b.txt", b"x" * 4000)])
    got = [(m.name, m.read(5)) for m in iter_members(io.BytesIO(data))]
    assert got == [("a.txt", b"hello"), ("b.txt", b"xxxxx")]
    seen = []
    with pytest.raises((tarfile.TarError, EOFError, OSError)):
        for m in iter_members(io.BytesIO(data[:1536])):  # cut inside b.txt's data
            seen.append(m.name)
            m.read()
    assert seen[0] == "a.txt"
