"""Readers for image-text shards as img2dataset leaves them, plus image folders with caption sidecars.

Layouts (img2dataset's writers, `output_format=webdataset|parquet`):

- **webdataset**: ``00000.tar`` holding ``KEY.jpg`` + ``KEY.txt`` (alt-text) + ``KEY.json`` (meta: url,
  status, ...) for each *successful* download, next to ``00000.parquet`` (the shard's listing: one row
  per input URL, including failed ones, no image bytes) and ``00000_stats.json``. Failed downloads
  exist only in the listing: they become ``download_error`` rows, so every URL is accounted for.
- **parquet**: ``00000.parquet`` with columns ``key``, ``jpg`` (image bytes, null on failure),
  ``txt`` (alt-text), ``url``, ``status``, ``error_message``, width/height ...
- **folder**: ``name.jpg`` + ``name.txt`` files in one folder (small corpora); the folder is one shard.

Every input record yields exactly one *record* dict (``RECORD_FIELDS``); records that cannot be
annotated carry an error ``status`` and an ``error`` reason instead of being dropped. Reading is safe:
tar members are never extracted to disk (``grain.common.webdataset``, the project's one tar reader); a member
whose name is absolute or contains ``..``, and links/devices, become ``input_error`` records; images over
the byte limit are not read into memory.
Paths may be local or fsspec URIs (``s3://...``, see ``grain.common.storage``).
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import tarfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from grain.common.schema import (
    FLAG_MISSING_SOURCE_CAPTION,
    FLAG_TRUNCATED_SOURCE_CAPTION,
    FLAG_UNDECODABLE_SOURCE_CAPTION,
)
from grain.common.storage import join, open_fs
from grain.common.webdataset import iter_members

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
RECORD_FIELDS = ("key", "source", "url", "image", "source_caption", "flags", "status", "error")
# Output names must be plain file names (no separators, no leading dot): see writer.safe_output_name.
_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ReaderError(ValueError):
    """An input path or shard cannot be used at all; the message names it."""


@dataclass(frozen=True)
class InputShard:
    """One input shard. ``name`` is the output stem: ``00000.tar`` → ``00000`` → ``00000.parquet``."""

    path: str  # local path or fsspec URI of the tar / parquet file / folder
    format: str  # "webdataset" | "parquet" | "folder"
    name: str
    listing: str | None = None  # img2dataset's per-shard parquet listing next to a tar, if any

    def to_dict(self) -> dict:
        return asdict(self)


def record(key: str, source: str, *, image=None, url=None, caption=None, flags=(), status="ok", error=None) -> dict:
    """One reader record (``RECORD_FIELDS``). ``status``/``error`` follow grain.common.schema.STATUSES."""
    return {
        "key": key,
        "source": source,
        "url": url,
        "image": image,
        "source_caption": caption,
        "flags": list(flags),
        "status": status,
        "error": error,
    }


def decode_caption(raw, max_chars: int = 4000) -> tuple[str | None, list[str]]:
    """Alt-text bytes/str → (text or None, flags). Non-UTF-8 bytes are decoded with U+FFFD and flagged;
    missing/blank gives None + ``missing_source_caption``; text over ``max_chars`` is cut and flagged."""
    flags: list[str] = []
    if raw is None:
        return None, [FLAG_MISSING_SOURCE_CAPTION]
    if isinstance(raw, (bytes, bytearray, memoryview)):
        raw = bytes(raw)
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            text = raw.decode("utf-8", errors="replace")
            flags.append(FLAG_UNDECODABLE_SOURCE_CAPTION)
    else:
        text = str(raw)
    text = text.replace("\x00", " ").strip()
    if not text:
        return None, flags + [FLAG_MISSING_SOURCE_CAPTION]
    if len(text) > max_chars:
        text = text[:max_chars]
        flags.append(FLAG_TRUNCATED_SOURCE_CAPTION)
    return text, flags


# ------------------------------------------------------------------------------------------------
# discovery
# ------------------------------------------------------------------------------------------------


def _shard_name(path: str) -> str:
    base = posixpath.basename(path.rstrip("/"))
    stem = base
    for suffix in (".tar.gz", ".tgz", ".tar", ".parquet"):
        if base.endswith(suffix):
            stem = base[: -len(suffix)]
            break
    if not _NAME_OK.match(stem):
        raise ReaderError(f"input shard {path!r}: name {stem!r} cannot name an output shard (use [A-Za-z0-9._-])")
    return stem


def _parquet_has_images(fs, path: str) -> bool:
    import pyarrow.parquet as pq

    with fs.open(path, "rb") as f:
        names = pq.ParquetFile(f).schema_arrow.names
    return any(c in names for c in ("jpg", "image", "png", "webp"))


def discover_shards(inputs: Iterable[str]) -> list[InputShard]:
    """Input paths (tar / parquet files, folders of shards, image folders) → sorted InputShards.

    Raises ReaderError naming the path when it does not exist, holds nothing readable, or when two
    shards would write the same output name."""
    shards: list[InputShard] = []
    for uri in inputs:
        fs, path = open_fs(uri)
        proto = "" if "://" not in uri else uri.split("://", 1)[0] + "://"
        if not fs.exists(path):
            raise ReaderError(f"--input {uri!r} does not exist")
        if fs.isdir(path):
            entries = sorted(fs.ls(path, detail=False))
            files = [e for e in entries if fs.isfile(e)]
            tars = [e for e in files if e.endswith((".tar", ".tar.gz", ".tgz"))]
            tar_stems = {_shard_name(t): t for t in tars}
            for t in tars:
                stem = _shard_name(t)
                listing = posixpath.join(posixpath.dirname(t), stem + ".parquet")
                shards.append(InputShard(proto + t, "webdataset", stem, proto + listing if listing in files else None))
            for p in (e for e in files if e.endswith(".parquet")):
                stem = _shard_name(p)
                if stem in tar_stems:
                    continue  # img2dataset's listing of a tar shard, read with it
                if not _parquet_has_images(fs, p):
                    raise ReaderError(f"{proto + p}: parquet without an image column ('jpg') and no matching .tar")
                shards.append(InputShard(proto + p, "parquet", stem))
            if not tars and not any(e.endswith(".parquet") for e in files):
                if any(e.rsplit(".", 1)[-1].lower() in IMAGE_EXTS for e in files):
                    shards.append(InputShard(uri.rstrip("/"), "folder", _shard_name(path)))
                else:
                    raise ReaderError(f"--input {uri!r}: no .tar, .parquet or image files found")
        elif path.endswith((".tar", ".tar.gz", ".tgz")):
            stem = _shard_name(path)
            listing = posixpath.join(posixpath.dirname(path), stem + ".parquet")
            shards.append(InputShard(uri, "webdataset", stem, proto + listing if fs.exists(listing) else None))
        elif path.endswith(".parquet"):
            if not _parquet_has_images(fs, path):
                raise ReaderError(f"{uri}: parquet without an image column ('jpg')")
            shards.append(InputShard(uri, "parquet", _shard_name(path)))
        else:
            raise ReaderError(f"--input {uri!r}: expected a .tar/.parquet file or a folder")
    seen: dict[str, str] = {}
    for s in shards:
        if s.name in seen:
            raise ReaderError(f"input shards {seen[s.name]!r} and {s.path!r} would both write {s.name}.parquet")
        seen[s.name] = s.path
    return sorted(shards, key=lambda s: s.name)


# ------------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------------


def read_shard(shard: InputShard, max_image_bytes: int = 32 << 20, max_caption_chars: int = 4000,
               max_json_bytes: int = 1 << 20) -> list[dict]:
    """All records of one shard, in input order, keys unique within the shard."""
    readers = {"webdataset": _read_tar, "parquet": _read_parquet, "folder": _read_folder}
    if shard.format not in readers:
        raise ReaderError(f"{shard.path}: unknown shard format {shard.format!r}")
    recs = readers[shard.format](shard, max_image_bytes, max_caption_chars, max_json_bytes)
    return _dedupe_keys(recs)


def _dedupe_keys(recs: list[dict]) -> list[dict]:
    """A repeated key keeps its first record; later ones become input_error rows under a suffixed key."""
    seen: dict[str, int] = {}
    out = []
    for r in recs:
        n = seen.get(r["key"], 0)
        seen[r["key"]] = n + 1
        if n:
            r = record(f"{r['key']}#dup{n}", r["source"], url=r["url"], status="input_error",
                       error=f"duplicate key {r['key']!r} in the shard (first occurrence kept)")
        out.append(r)
    return out


def _read_tar(shard: InputShard, max_image_bytes: int, max_caption_chars: int, max_json_bytes: int) -> list[dict]:
    fs, path = open_fs(shard.path)
    base = posixpath.basename(path)
    groups: dict[str, dict] = {}  # key → {"image": (ext, bytes) | error, "txt": bytes, "json": dict, "member": name}
    order: list = []  # keys, and ready-made error records, in input order
    try:
        with fs.open(path, "rb") as fobj:
            for m in iter_members(fobj):
                i, src = m.index, f"{base}::{m.name}"
                if m.unsafe:
                    order.append(record(f"{shard.name}/unsafe-member-{i:06d}", f"{base}::{m.name!r}",
                                        status="input_error", error=f"unsafe tar member name {m.name!r}: {m.unsafe}; not read"))
                    continue
                if m.kind == "dir":
                    continue
                if m.kind != "file":  # symlink, hard link, device, fifo: never followed
                    kind = "link" if m.kind == "link" else "special file"
                    order.append(record(f"{shard.name}/unsafe-member-{i:06d}", src, status="input_error",
                                        error=f"tar member {m.name!r} is a {kind}; not read"))
                    continue
                key, ext = m.key, m.ext
                if key not in groups:
                    groups[key] = {"member": m.name}
                    order.append(key)
                g = groups[key]
                if ext in IMAGE_EXTS:
                    if "image" in g:
                        continue  # a second image for the same key: the first one wins
                    if m.size > max_image_bytes:
                        g["image"] = ("too_large", f"{m.size} bytes > max_image_bytes={max_image_bytes}")
                    else:
                        g["image"] = (ext, m.read())
                    g["member"] = m.name
                elif ext == "txt":
                    g["txt"] = m.read(max_caption_chars * 4 + 4)
                elif ext == "json" and m.size <= max_json_bytes:
                    try:
                        meta = json.loads(m.read())
                        g["json"] = meta if isinstance(meta, dict) else {}
                    except (ValueError, UnicodeDecodeError):
                        g["json"] = {}
    except (tarfile.TarError, EOFError, OSError) as e:
        # A corrupt/truncated tar: keep what was read, and one row that says the rest is unreadable.
        order.append(record(f"{shard.name}/unreadable-tail", base, status="input_error",
                            error=f"tar shard is corrupt or truncated after {len(order)} entries: {e}"))
    recs = []
    for item in order:
        if isinstance(item, dict):
            recs.append(item)
            continue
        g = groups[item]
        meta = g.get("json", {})
        url = meta.get("url") if isinstance(meta.get("url"), str) else None
        raw_caption = g.get("txt", meta.get("caption") if isinstance(meta.get("caption"), str) else None)
        caption, flags = decode_caption(raw_caption, max_caption_chars)
        src = f"{base}::{g['member']}"
        img = g.get("image")
        if img is None:
            recs.append(record(item, src, url=url, caption=caption, flags=flags, status="input_error",
                               error="no image member for this key"))
        elif img[0] == "too_large":
            recs.append(record(item, src, url=url, caption=caption, flags=flags, status="too_large", error=img[1]))
        else:
            recs.append(record(item, src, image=img[1], url=url, caption=caption, flags=flags))
    if shard.listing:
        recs += _listing_records(shard, {r["key"] for r in recs}, max_caption_chars)
    return recs


def _listing_records(shard: InputShard, present: set, max_caption_chars: int) -> list[dict]:
    """img2dataset's per-shard listing: URLs that failed to download (absent from the tar) → error rows."""
    import pyarrow.parquet as pq

    fs, path = open_fs(shard.listing)
    with fs.open(path, "rb") as f:
        table = pq.read_table(f)
    cols = set(table.column_names)
    if "key" not in cols:
        return []
    out = []
    base = posixpath.basename(path)
    for i, row in enumerate(table.select([c for c in ("key", "url", "caption", "status", "error_message") if c in cols]).to_pylist()):
        key = row.get("key")
        if not key or key in present:
            continue
        status = row.get("status") or "unknown"
        caption, flags = decode_caption(row.get("caption"), max_caption_chars)
        if status == "success":
            out.append(record(str(key), f"{base}::row{i}", url=row.get("url"), caption=caption, flags=flags,
                              status="input_error", error="listed as downloaded by img2dataset but missing from the tar"))
        else:
            out.append(record(str(key), f"{base}::row{i}", url=row.get("url"), caption=caption, flags=flags,
                              status="download_error", error=f"img2dataset: {status}: {row.get('error_message') or 'no detail'}"))
    return out


def _read_parquet(shard: InputShard, max_image_bytes: int, max_caption_chars: int, _json: int) -> list[dict]:
    import pyarrow.parquet as pq

    fs, path = open_fs(shard.path)
    base = posixpath.basename(path)
    recs = []
    with fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        names = pf.schema_arrow.names
        img_col = next(c for c in ("jpg", "image", "png", "webp") if c in names)
        cap_col = next((c for c in ("txt", "caption") if c in names), None)
        wanted = [c for c in ("key", img_col, cap_col, "url", "status", "error_message") if c and c in names]
        i = 0
        for batch in pf.iter_batches(batch_size=256, columns=wanted):
            for row in batch.to_pylist():
                key = row.get("key")
                key = str(key) if key not in (None, "") else f"{shard.name}-{i:07d}"
                src = f"{base}::row{i}"
                i += 1
                img = row.get(img_col)
                if isinstance(img, dict):  # Hugging Face datasets layout: {"bytes": ..., "path": ...}
                    img = img.get("bytes")
                caption, flags = decode_caption(row.get(cap_col) if cap_col else None, max_caption_chars)
                url = row.get("url")
                status = row.get("status")
                if img is None:
                    if status and status != "success":
                        origin = "URL guard" if status == "url_refused" else "img2dataset"  # annotators/url_guard.py
                        recs.append(record(key, src, url=url, caption=caption, flags=flags, status="download_error",
                                           error=f"{origin}: {status}: {row.get('error_message') or 'no detail'}"))
                    else:
                        recs.append(record(key, src, url=url, caption=caption, flags=flags, status="input_error",
                                           error=f"no image bytes in column {img_col!r}"))
                elif len(img) > max_image_bytes:
                    recs.append(record(key, src, url=url, caption=caption, flags=flags, status="too_large",
                                       error=f"{len(img)} bytes > max_image_bytes={max_image_bytes}"))
                else:
                    recs.append(record(key, src, image=bytes(img), url=url, caption=caption, flags=flags))
    return recs


def _read_folder(shard: InputShard, max_image_bytes: int, max_caption_chars: int, _json: int) -> list[dict]:
    fs, path = open_fs(shard.path)
    local = shard.path == path or "://" not in shard.path
    recs = []
    for entry in sorted(fs.ls(path, detail=False)):
        name = posixpath.basename(entry)
        stem, _, ext = name.rpartition(".")
        if ext.lower() not in IMAGE_EXTS or not stem:
            continue
        src = f"{shard.name}::{name}"
        if local and os.path.islink(entry):
            target = os.path.realpath(entry)
            if os.path.commonpath([target, os.path.realpath(path)]) != os.path.realpath(path):
                recs.append(record(stem, src, status="input_error", error=f"{name} is a symlink out of the folder; not read"))
                continue
        txt = join(shard.path, stem + ".txt") if "://" not in shard.path else shard.path.rstrip("/") + f"/{stem}.txt"
        tfs, tpath = open_fs(txt)
        raw = None
        if tfs.exists(tpath):
            with tfs.open(tpath, "rb") as f:
                raw = f.read(max_caption_chars * 4 + 4)
        caption, flags = decode_caption(raw, max_caption_chars)
        size = fs.size(entry)
        if size > max_image_bytes:
            recs.append(record(stem, src, caption=caption, flags=flags, status="too_large",
                               error=f"{size} bytes > max_image_bytes={max_image_bytes}"))
            continue
        with fs.open(entry, "rb") as f:
            recs.append(record(stem, src, image=f.read(), caption=caption, flags=flags))
    return recs
