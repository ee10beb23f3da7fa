"""The driver's index of annotated shards: which rows can train, where they sit, what was skipped.

The driver lists the Parquet shards (local path or fsspec URI), reads only the tiny ``key`` and
``status`` columns, and records for every row group the row numbers of ``status == "ok"`` rows.
Rows with any other status are skipped and counted by status (docs/method.md §1.5: nothing dropped
silently). The index is what makes the sample order a pure function of (seed, epoch): see plan.py.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from grain.common import storage
from grain.common.schema import COLUMNS, STATUS_OK


class DataError(ValueError):
    """Training data that cannot train: a missing path, no shards, a shard that is not readable Parquet or not in
    the annotation schema, or no ``ok`` row at all. The message names the path or file and the reason;
    `grain train` prints it as one line and exits 2 (the same as bad arguments)."""


def list_shards(path: str) -> tuple[list[str], list[str]]:
    """(shards to train on, uncommitted shards ignored) under ``path`` (a directory, searched at every
    level, or one file), through ``grain.common.storage.list_shards``: when the directory uses the commit
    protocol (any ``*.parquet.done`` marker), a shard still being written is never trained on.

    Paths are inside the filesystem of ``path`` (``grain.common.storage.pyarrow_fs``)."""
    try:
        files, ignored = storage.list_shards(path, ".parquet", recursive=True)
    except FileNotFoundError as e:
        raise DataError(f"training data not found: {e}") from None
    if not files:
        raise DataError(f"no (committed) *.parquet shards under training data path {path}")
    return [storage.open_fs(f)[1] for f in files], [storage.open_fs(f)[1] for f in ignored]


@dataclass
class DataIndex:
    """Trainable rows of a set of shards.

    ``files``: shard paths inside the filesystem of ``root`` (a local path or URI).
    ``groups``: one entry per row group: (file index, row-group index, int64 array of ok row numbers
    *within that row group*). ``skipped``: count of non-ok rows by status.
    """

    root: str
    files: list[str]
    groups: list[tuple[int, int, np.ndarray]]
    skipped: dict[str, int] = field(default_factory=dict)
    total_rows: int = 0
    manifests: list[dict] = field(default_factory=list)
    uncommitted: list[str] = field(default_factory=list)  # shards without a commit marker (not read)

    @property
    def num_ok(self) -> int:
        return int(sum(len(g[2]) for g in self.groups))

    def summary(self) -> dict:
        return {
            "root": self.root,
            "files": self.files,
            "total_rows": self.total_rows,
            "ok_rows": self.num_ok,
            "skipped_rows": dict(self.skipped),
            "manifests": self.manifests,
            "uncommitted_files_ignored": self.uncommitted,
        }


def _read_manifests(fs, dirs: list[str]) -> list[dict]:
    """``manifest.json`` files beside the shards (written by the annotation stage), path + content."""
    from pyarrow.fs import FileType

    out = []
    for d in dirs:
        p = posixpath.join(d, "manifest.json")
        if fs.get_file_info(p).type != FileType.File:
            continue
        with fs.open_input_stream(p) as f:
            raw = f.read(8 * 1024 * 1024)  # bounded: a manifest is small; a huge one is not parsed
        try:
            content = json.loads(raw)
        except ValueError as e:
            content = {"unreadable": f"{p}: {e}"}
        out.append({"path": p, "content": content})
    return out


def _scan_file(fs, fi: int, f: str) -> tuple[list, dict, int]:
    """One shard → (row groups with ok rows, skipped counts by status, total rows); DataError naming the file
    when it is not readable Parquet (corrupt, truncated) or lacks the schema's columns."""
    import pyarrow as pa

    try:
        pf = pq.ParquetFile(f, filesystem=fs)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{f}: not a readable Parquet shard ({type(e).__name__}: {e})") from None
    names = set(pf.schema_arrow.names)
    missing = [c for c in ("key", "status", "image") if c not in names]
    if missing:
        raise DataError(f"{f}: not an annotated shard (missing columns {missing}; schema columns: {list(COLUMNS)})")
    groups, skipped, total = [], {}, 0
    for rg in range(pf.num_row_groups):
        try:
            status = pf.read_row_group(rg, columns=["status"]).column("status")
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"{f}: row group {rg} is not readable ({type(e).__name__}: {e})") from None
        total += len(status)
        ok = np.asarray(pc.equal(status, STATUS_OK).to_numpy(zero_copy_only=False), dtype=bool)  # null → False
        for s, n in zip(*np.unique(np.asarray(status.to_pylist(), dtype=object)[~ok].astype(str), return_counts=True)):
            skipped[str(s)] = skipped.get(str(s), 0) + int(n)
        rows = np.flatnonzero(ok).astype(np.int64)
        if len(rows):
            groups.append((fi, rg, rows))
    return groups, skipped, total


def build_index(path: str, threads: int = 16) -> DataIndex:
    """Scan the shards under ``path`` (files in parallel: on object stores each costs round trips). A shard
    that cannot be read is refused, not skipped: training on a silent subset of a corpus is the loss the
    annotation stage's commit protocol exists to prevent, and a corrupt shard is re-made by re-running it.
    Raises DataError (see there)."""
    from concurrent.futures import ThreadPoolExecutor

    fs, _ = storage.pyarrow_fs(path)
    files, ignored = list_shards(path)
    groups: list[tuple[int, int, np.ndarray]] = []
    skipped: dict[str, int] = {}
    total = 0
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(files)))) as pool:
        for g, sk, n in pool.map(lambda a: _scan_file(fs, *a), enumerate(files)):  # map keeps file order
            groups.extend(g)
            total += n
            for k, v in sk.items():
                skipped[k] = skipped.get(k, 0) + v
    dirs = sorted({posixpath.dirname(f) for f in files})
    index = DataIndex(root=path, files=files, groups=groups, skipped=skipped, total_rows=total,
                      manifests=_read_manifests(fs, dirs), uncommitted=ignored)
    if index.num_ok == 0:
        raise DataError(f"{path}: no ok row to train on in {len(files)} shard(s) ({total} rows; by status: {skipped})")
    return index
