"""Local paths and object-store URIs (``s3://``, ``gs://``, ``abfs://`` …) behind one small API.

Every data, shard, manifest and checkpoint location of the pipeline may be a local path or an fsspec
URI. This module is pure Python on top of fsspec and pyarrow.fs (no Ray, Prefect or vLLM import).

    fs, path = open_fs("s3://bucket/annotated")            # fsspec filesystem + protocol-less path
    pafs, path = pyarrow_fs("s3://bucket/annotated")       # pyarrow.fs.FileSystem for pq.* / Ray
    with atomic_open(join(out, "shard-00000.parquet")) as f:   # written, then committed
        pq.write_table(table, f)
    for uri in list_committed(out): ...                     # readers see committed entries only
    shards, uncommitted = list_shards(out)                   # the one listing of annotated shards

Commit protocol (why and how)
-----------------------------
On a local disk "write a temp file, then ``os.replace``" is atomic. On object stores it is not: a
rename is a server-side copy + delete (one object at a time, so a directory "rename" is many
operations), and a reader listing the prefix in between sees half of it. What object stores do
guarantee (S3 since Dec 2020, GCS, Azure Blob) is that **one object write is all-or-nothing**
(a single PUT, or a multipart upload, which becomes visible only on CompleteMultipartUpload) and
that reads and listings after a completed write are **strongly consistent**. Hence:

1. The writer writes the data object(s) under their final names: one file, or every file of a
   directory (e.g. a checkpoint). A crash leaves an *uncommitted* entry, which readers ignore and a
   rerun simply overwrites.
2. Only after every data write has returned does the writer put a small marker object
   ``<name>.done`` next to the entry (``commit(uri)``). Its JSON body records the size of the file,
   or the relative names and sizes of the directory's files, and the time.
3. Readers trust only committed entries: ``is_committed(uri)`` / ``list_committed(prefix)``.
   ``list_committed`` lists *one level* under the prefix and returns the entries whose marker exists,
   never the markers themselves.
4. To replace a committed entry: ``uncommit(uri)`` (deletes the marker first), rewrite, ``commit``.

The same protocol is used on local disks, so readers follow one rule everywhere; there
``atomic_write_bytes``/``atomic_open`` additionally write to a temp file and ``os.replace`` it,
so even an uncommitted local file is never half-written.

Endpoints and credentials
-------------------------
Credentials never appear in URIs or config files: fsspec/botocore read the usual environment
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, instance/IRSA roles;
``GOOGLE_APPLICATION_CREDENTIALS`` for gcsfs). An S3-compatible endpoint (MinIO, Ceph, moto, R2)
is taken from the first of ``GRAIN_S3_ENDPOINT_URL``, ``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``
that is set (or ``storage_options={"endpoint_url": ...}``). Ray workers see these variables when
the cluster's pods get them from a Kubernetes Secret (infra/README.md) or via ``runtime_env``.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping

import fsspec

MARKER_SUFFIX = ".done"
ENDPOINT_ENV_VARS = ("GRAIN_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
# fsspec implementation packages, named in the error when one is missing.
_PROTOCOL_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "abfs": "adlfs", "az": "adlfs"}


class StorageError(RuntimeError):
    """A URI could not be opened, or an entry is not in the state the caller needs."""


def _check_uri(uri) -> str:
    if isinstance(uri, os.PathLike):
        uri = os.fspath(uri)
    if not isinstance(uri, str) or not uri:
        raise StorageError(f"storage location must be a non-empty path or URI, got {uri!r}")
    return uri


def protocol_of(uri: str) -> str:
    """``"s3"`` for ``s3://b/k``, ``"file"`` for a local path or ``file://`` URI."""
    uri = _check_uri(uri)
    if "://" not in uri:
        return "file"
    return uri.split("://", 1)[0].lower()


def is_local(uri: str) -> bool:
    return protocol_of(uri) in ("file", "local")


def endpoint_url() -> str | None:
    """The S3-compatible endpoint configured in the environment (see module docstring), or None."""
    for var in ENDPOINT_ENV_VARS:
        if os.environ.get(var):
            return os.environ[var]
    return None


def _default_options(protocol: str) -> dict:
    if protocol in ("s3", "s3a"):
        url = endpoint_url()
        return {"endpoint_url": url} if url else {}
    return {}


def open_fs(uri: str, storage_options: Mapping | None = None):
    """Return ``(filesystem, path)``: an fsspec filesystem and the path it understands.

    Local paths (and ``file://``) give fsspec's LocalFileSystem and an absolute path; object-store
    URIs give e.g. ``s3fs.S3FileSystem`` and ``"bucket/key"`` (protocol stripped).
    ``storage_options`` override the environment defaults (endpoint, anon, ...).
    """
    uri = _check_uri(uri)
    protocol = protocol_of(uri)
    if protocol in ("file", "local"):
        path = uri.split("://", 1)[1] if "://" in uri else uri
        return fsspec.filesystem("file"), os.path.abspath(os.path.expanduser(path))
    options = {**_default_options(protocol), **dict(storage_options or {})}
    try:
        fs, path = fsspec.core.url_to_fs(uri, **options)
    except (ImportError, ValueError) as e:
        package = _PROTOCOL_PACKAGES.get(protocol)
        hint = f" (install {package!r}, e.g. pip install 'grain-pipeline[s3]')" if package else ""
        raise StorageError(f"cannot open {uri!r}: {e}{hint}") from e
    return fs, path.rstrip("/")


def pyarrow_fs(uri: str, storage_options: Mapping | None = None):
    """Return ``(pyarrow.fs.FileSystem, path)`` for ``pq.write_table/read_table(path, filesystem=)``
    and for Ray (``ray.data.read_parquet(path, filesystem=)``, ``RunConfig(storage_path=path,
    storage_filesystem=)``). Local: pyarrow's LocalFileSystem; remote: the fsspec filesystem wrapped in
    ``PyFileSystem(FSSpecHandler(...))``, so credentials and endpoints are configured once, here."""
    import pyarrow.fs as pafs

    fs, path = open_fs(uri, storage_options)
    if is_local(uri):
        return pafs.LocalFileSystem(), path
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def _to_uri(uri: str, fs, path: str) -> str:
    """Rebuild a caller-facing location: plain paths stay plain paths, URIs keep their protocol."""
    if is_local(uri):
        return path
    return f"{protocol_of(uri)}://{path}"


def join(uri: str, *parts: str) -> str:
    """Join with ``/`` for URIs, ``os.path.join`` for local paths. Parts must be relative."""
    uri = _check_uri(uri)
    for part in parts:
        if not isinstance(part, str) or part.startswith("/") or "://" in part:
            raise StorageError(f"join({uri!r}, ...): part {part!r} must be a relative path")
    if is_local(uri):
        return os.path.join(uri, *parts)
    return posixpath.join(uri.rstrip("/"), *parts)


def exists(uri: str, storage_options: Mapping | None = None) -> bool:
    fs, path = open_fs(uri, storage_options)
    fs.invalidate_cache(path)  # another process may have written it since our last listing
    return fs.exists(path)


def makedirs(uri: str, storage_options: Mapping | None = None) -> None:
    """Create a directory (local) or nothing-but-the-bucket check (object stores have no folders)."""
    fs, path = open_fs(uri, storage_options)
    fs.makedirs(path, exist_ok=True)


def read_bytes(uri: str, storage_options: Mapping | None = None) -> bytes:
    fs, path = open_fs(uri, storage_options)
    try:
        return fs.cat_file(path)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{uri}: no such file") from e


@contextlib.contextmanager
def atomic_open(uri: str, commit: bool = True, storage_options: Mapping | None = None) -> Iterator:
    """Open ``uri`` for binary writing; the bytes appear under ``uri`` only if the block succeeds.

    Local: a temp file in the same directory, fsynced, then ``os.replace``d. Object store: one
    streamed object upload (all-or-nothing per object); on an exception the multipart upload is
    aborted instead of completed. With ``commit=True`` the ``.done`` marker is written last.
    A local file keeps the temp file's mode, 0600 (owner read/write), whatever the umask.
    """
    fs, path = open_fs(uri, storage_options)
    if is_local(uri):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=os.path.dirname(path))
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    else:
        f = fs.open(path, "wb")
        try:
            yield f
        except BaseException:
            # Closing would *complete* the upload and publish a partial object: abort instead.
            with contextlib.suppress(Exception):
                f.discard()
            f.closed = True
            raise
        f.close()
    if commit:
        _commit(fs, path)


def atomic_write_bytes(uri: str, data: bytes, commit: bool = True, storage_options: Mapping | None = None) -> None:
    """Write ``data`` to ``uri`` atomically (see ``atomic_open``); then commit it unless told not to."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"atomic_write_bytes({uri!r}): data must be bytes, got {type(data).__name__}")
    with atomic_open(uri, commit=commit, storage_options=storage_options) as f:
        f.write(bytes(data))


def put_dir(local_dir: str, uri: str, commit: bool = True, storage_options: Mapping | None = None) -> None:
    """Upload a local directory (e.g. a checkpoint) to ``uri`` file by file, then commit it once.

    Each file is one atomic object write; the directory becomes visible to readers only through the
    marker written after the last file."""
    if not os.path.isdir(local_dir):
        raise StorageError(f"put_dir: {local_dir!r} is not a local directory")
    fs, path = open_fs(uri, storage_options)
    for root, _, files in os.walk(local_dir):
        for name in sorted(files):
            rel = os.path.relpath(os.path.join(root, name), local_dir).replace(os.sep, "/")
            with open(os.path.join(root, name), "rb") as src, atomic_open(
                join(uri, rel), commit=False, storage_options=storage_options
            ) as dst:
                shutil.copyfileobj(src, dst, 16 << 20)  # streamed: checkpoints can be GBs
    if commit:
        _commit(fs, path)


def _commit(fs, path: str) -> dict:
    fs.invalidate_cache(path)
    if fs.isdir(path):
        files = {}
        for name, info in sorted(fs.find(path, detail=True).items()):
            files[name[len(path) :].lstrip("/")] = int(info.get("size") or 0)
        body = {"kind": "directory", "files": files}
    elif fs.isfile(path):
        body = {"kind": "file", "size": int(fs.size(path))}
    else:
        raise StorageError(f"commit: nothing to commit at {path!r} (write the data first)")
    body["committed_at"] = time.time()
    data = json.dumps(body, sort_keys=True).encode()
    marker = path + MARKER_SUFFIX
    if isinstance(fs, fsspec.implementations.local.LocalFileSystem):
        fd, tmp = tempfile.mkstemp(prefix=".marker.", dir=os.path.dirname(marker))
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, marker)
    else:
        fs.pipe_file(marker, data)  # a single PUT: the marker is there entirely or not at all
    return body


def commit(uri: str, storage_options: Mapping | None = None) -> dict:
    """Mark the file or directory at ``uri`` as complete by writing ``<uri>.done`` (last!).

    Call only after every write of the entry has returned. Returns the marker's content."""
    fs, path = open_fs(uri, storage_options)
    return _commit(fs, path)


def uncommit(uri: str, storage_options: Mapping | None = None) -> None:
    """Delete the marker (first step of replacing a committed entry). No error if absent."""
    fs, path = open_fs(uri, storage_options)
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(path + MARKER_SUFFIX)
    fs.invalidate_cache(path + MARKER_SUFFIX)


def is_committed(uri: str, storage_options: Mapping | None = None) -> bool:
    """True when both the entry and its ``.done`` marker exist."""
    fs, path = open_fs(uri, storage_options)
    fs.invalidate_cache(path)
    fs.invalidate_cache(fs._parent(path))
    return fs.exists(path + MARKER_SUFFIX) and fs.exists(path)


def list_committed(prefix: str, suffix: str = "", storage_options: Mapping | None = None) -> list[str]:
    """Sorted locations of the committed entries directly under ``prefix`` (one level, no markers).

    ``suffix`` filters names (e.g. ``".parquet"``). A missing prefix lists as empty."""
    fs, path = open_fs(prefix, storage_options)
    fs.invalidate_cache(path)  # listings are cached by s3fs; a writer elsewhere may have committed
    try:
        names = fs.ls(path, detail=False)
    except FileNotFoundError:
        return []
    names = {n.rstrip("/") for n in names}
    committed = []
    for name in sorted(names):
        if name.endswith(MARKER_SUFFIX) or not name.endswith(suffix):
            continue
        if name + MARKER_SUFFIX in names:
            committed.append(_to_uri(prefix, fs, name))
    return committed


def list_shards(path: str, suffix: str = ".parquet", recursive: bool = False,
                storage_options: Mapping | None = None) -> tuple[list[str], list[str]]:
    """``(shards, uncommitted)``: the shard files (``*suffix``) under ``path``, the one listing every stage
    uses (the trainer's index, the evaluation's training-text reader, the flows' reports).

    ``path`` is a folder (one level, or every level with ``recursive``) or one shard file; local path or
    URI (the S3 endpoint of the environment applies). Commit rule: when any ``<shard>.done`` marker is
    present, only committed shards are listed and the others come back as ``uncommitted`` (a writer
    still busy, or one that crashed); a folder without any marker (shards written by a tool that does
    not use the protocol, e.g. ``grain.testing.fixtures.write_fixture_shards``) lists every shard. Both lists are
    sorted caller-facing locations (plain paths stay plain, URIs keep their protocol). A missing ``path``
    raises FileNotFoundError naming it."""
    fs, root = open_fs(path, storage_options)
    fs.invalidate_cache(root)  # listings are cached by s3fs; a writer elsewhere may have committed
    if not fs.exists(root):
        raise FileNotFoundError(f"{path}: not found (no shard file or folder there)")
    if fs.isfile(root):
        return [_to_uri(path, fs, root)], []
    found = fs.find(root) if recursive else fs.ls(root, detail=False)
    names = {str(n).rstrip("/") for n in found}
    files = sorted(n for n in names if n.endswith(suffix) and not posixpath.basename(n).startswith("."))
    if not any(n.endswith(suffix + MARKER_SUFFIX) for n in names):
        return [_to_uri(path, fs, n) for n in files], []
    done = [n for n in files if n + MARKER_SUFFIX in names]
    pending = [n for n in files if n + MARKER_SUFFIX not in names]
    return [_to_uri(path, fs, n) for n in done], [_to_uri(path, fs, n) for n in pending]
