"""ShardWriter: validated, atomic, committed Parquet shards in grain/common/schema.py's schema.

One output shard per input shard, named after it (``00000.tar`` → ``<output>/00000.parquet``).
A shard is written in one go once all its rows are done: to_table → validate_table → one atomic
write (local: temp file + fsync + rename; object store: one all-or-nothing upload) → the
``00000.parquet.done`` commit marker (grain.common.storage's protocol). Readers and resume trust committed
shards only, so a crash at any point leaves either a complete shard or none.

Guards: output names are plain file names (no separators, no leading dot, no ``..``), and the
resolved path must lie inside the output folder; a row set must hold unique keys.
"""

from __future__ import annotations

import io
import os
import re
import time

import pyarrow.parquet as pq

from grain.common import storage
from grain.common.schema import SCHEMA, SchemaError, summarise, to_table, validate_table

_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class OutputPathError(ValueError):
    """An output shard name would land outside the output folder (or is not a plain file name)."""


def safe_output_name(name: str) -> str:
    """Check a shard name is a plain file-name stem; return it."""
    if not isinstance(name, str) or not _NAME_OK.match(name) or ".." in name:
        raise OutputPathError(f"output shard name {name!r} is not a plain file name ([A-Za-z0-9._-], no '..')")
    return name


class ShardWriter:
    """Writes ``<output>/<name>.parquet`` shards. ``output`` is a local folder or an fsspec URI."""

    def __init__(self, output: str):
        self.output = output.rstrip("/") if "://" in output else os.path.abspath(output)
        storage.makedirs(self.output)

    def path_for(self, name: str) -> str:
        """The output location of shard ``name``; raises OutputPathError unless it is inside ``output``."""
        path = storage.join(self.output, safe_output_name(name) + ".parquet")
        if storage.is_local(self.output):
            root = os.path.realpath(self.output)
            real = os.path.realpath(path)
            if os.path.dirname(real) != root:
                raise OutputPathError(f"output shard {name!r} resolves to {real!r}, outside {root!r}")
        return path

    def is_done(self, name: str) -> bool:
        """True when the shard is written and committed (its ``.done`` marker exists)."""
        return storage.is_committed(self.path_for(name))

    def write(self, name: str, rows: list[dict]) -> dict:
        """Validate ``rows`` and write them as shard ``name``, atomically, then commit it.

        Returns ``{"path", "rows", "counts": {status: n}, "bytes", "seconds"}``. Raises SchemaError
        (naming the shard and the offending row) before anything is written if a row is invalid."""
        t0 = time.perf_counter()
        path = self.path_for(name)
        keys = [r["key"] for r in rows]
        if len(set(keys)) != len(keys):
            dup = sorted({k for k in keys if keys.count(k) > 1})[:5]
            raise SchemaError(f"{path}: duplicate keys {dup}")
        table = to_table(rows)
        validate_table(table, where=path)
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **SCHEMA.metadata})
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        data = buf.getvalue()
        storage.uncommit(path)  # replacing an entry: the marker goes first (grain.common.storage protocol)
        storage.atomic_write_bytes(path, data, commit=True)
        return {
            "path": path,
            "rows": table.num_rows,
            "counts": summarise([table]),
            "bytes": len(data),
            "seconds": round(time.perf_counter() - t0, 3),
        }

    def counts_of(self, name: str) -> dict:
        """Status counts of a committed shard, read back from its Parquet ``status`` column."""
        fs, path = storage.open_fs(self.path_for(name))
        with fs.open(path, "rb") as f:
            table = pq.read_table(f, columns=["status"])
        return summarise([table])

    def remove_stale_temp_files(self) -> list[str]:
        """Delete temp files a crashed local run left behind (``.NAME.parquet.XXXX.tmp``)."""
        if not storage.is_local(self.output):
            return []  # object stores have no partial objects (uploads are all-or-nothing)
        removed = []
        for entry in os.listdir(self.output):
            if entry.startswith(".") and entry.endswith(".tmp"):
                os.unlink(os.path.join(self.output, entry))
                removed.append(entry)
        return removed
