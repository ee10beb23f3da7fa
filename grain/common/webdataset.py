"""webdataset tar shards (img2dataset's and clip_benchmark's layout): the one tar reader of the project.

    with open(path, "rb") as f:                 # or an fsspec file: grain.common.storage.open_fs(uri)
        for m in iter_members(f):               # one TarMember per entry, in archive order
            if m.kind == "file" and m.unsafe is None:
                data = m.read()                 # valid while the iteration is at this member

Keys follow the webdataset convention: ``dir/abc.seg.jpg`` → key ``dir/abc``, extension ``seg.jpg``
(the text after the first dot of the last component, lower-cased; a leading ``./`` is dropped).

Reading is safe: members are never extracted to disk, so a name with ``..`` or an absolute path cannot
write anywhere; ``unsafe`` still says why such a name would escape the shard's folder, and links and
devices are reported by ``kind``, never followed. What to do with them is the caller's policy (the
annotation reader turns them into ``input_error`` rows; the evaluation-set reader skips non-files).
A corrupt or truncated archive raises ``tarfile.TarError``, ``EOFError`` or ``OSError`` from the
iteration, after the members read so far were yielded.
"""

from __future__ import annotations

import posixpath
import re
import tarfile
from collections.abc import Iterator
from typing import IO


def unsafe_member_reason(name: str) -> str | None:
    """Why a tar member name is unsafe (would escape the shard's folder if extracted), or None."""
    if not name or "\x00" in name:
        return "empty or NUL-containing name"
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "absolute path"
    parts = re.split(r"[\\/]", name)
    if ".." in parts:
        return "'..' path component"
    return None


def split_key(name: str) -> tuple[str, str]:
    """webdataset convention: key = path up to the first '.' of the last component; ext = the rest (lower-case)."""
    while name.startswith("./"):
        name = name[2:]
    directory, base = posixpath.split(name)
    stem, dot, ext = base.partition(".")
    key = posixpath.join(directory, stem) if directory else stem
    return key, ext.lower() if dot else ""


class TarMember:
    """One archive entry: ``index`` (position), ``name``, webdataset ``key``/``ext``, ``size`` (bytes, from
    the header), ``kind`` (``file`` | ``dir`` | ``link`` | ``special``), ``unsafe`` (reason or None)."""

    __slots__ = ("index", "name", "key", "ext", "size", "kind", "unsafe", "_tar", "_info")

    def __init__(self, index: int, info: tarfile.TarInfo, tar: tarfile.TarFile):
        self.index, self.name, self.size = index, info.name, int(info.size)
        self.key, self.ext = split_key(info.name)
        self.kind = ("file" if info.isfile() else "dir" if info.isdir()
                     else "link" if (info.issym() or info.islnk()) else "special")
        self.unsafe = unsafe_member_reason(info.name)
        self._tar, self._info = tar, info

    def read(self, limit: int | None = None) -> bytes:
        """The member's bytes (at most ``limit``); only for ``kind == "file"``, during the iteration."""
        if self.kind != "file":
            raise ValueError(f"tar member {self.name!r} is a {self.kind}, not a file: not read")
        f = self._tar.extractfile(self._info)
        return f.read() if limit is None else f.read(limit)

    def __repr__(self) -> str:
        return f"TarMember({self.index}, {self.name!r}, {self.kind}, {self.size} bytes)"


def iter_members(fileobj: IO[bytes]) -> Iterator[TarMember]:
    """The entries of the tar archive in ``fileobj`` (plain or compressed: ``r:*``), in order, streamed."""
    with tarfile.open(fileobj=fileobj, mode="r:*") as tar:
        for i, info in enumerate(tar):
            yield TarMember(i, info, tar)
