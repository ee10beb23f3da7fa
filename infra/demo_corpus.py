"""Demo corpus: real captioned images from Debian packages, written in img2dataset's output layout.

    grain demo-corpus [--output DIR] [--limit N] [--shard-size K] [--seed S]

Sources (docs/../ATTRIBUTIONS.md has the licences):
- Tux Paint stamps (``tuxpaint-stamps-default``): PNG/SVG stamps, caption = first line of the
  stamp's ``.txt`` ("A Magellanic penguin.").
- Openclipart (``openclipart-svg``): SVGs, caption = the RDF ``dc:title``, after dropping generic
  titles ("Clipart by …", "Part of the Flat Icon Collection", titles shared by many files) and the
  ``shapes``/``computer``/``unsorted`` folders. Rendered with cairosvg in its default *safe* mode
  (no external fetches, no XML entities); files that fail to render are skipped and counted.

Transparent images are composited on white, downscaled to ≤ ``MAX_SIDE`` px and stored as JPEG.
Rendered images are cached under ``$GRAIN_CACHE/demo-corpus-cache`` so rebuilding a slice is fast.

Output, the same as img2dataset's ``--output_format webdataset`` so the demo takes CC12M's path:
``00000.tar`` (members ``KEY.jpg``, ``KEY.txt``, ``KEY.json``), ``00000.parquet`` (per-sample
metadata) and ``00000_stats.json`` per shard; keys are ``SSSSSIIII`` (shard, index in shard).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import re
import tarfile
import time
from collections import Counter
from dataclasses import dataclass

from grain.common.cache import grain_cache
from grain.common.storage import atomic_open

TUXPAINT_DIR = "/usr/share/tuxpaint/stamps"
OPENCLIPART_DIR = "/usr/share/openclipart/svg"
OPENCLIPART_SKIP_DIRS = ("shapes", "computer", "unsorted")
MAX_SIDE = 384  # px: enough for OWLv2-base's 960 upsampling to be meaningful, small on disk
MAX_PIXELS = 4096 * 4096  # decoding bound for the package PNGs (decompression-bomb guard)
_GENERIC_TITLE = re.compile(
    r"clipart by|part of|collection|theme|icon|svg|untitled|submission|various|symbol|^\W*$", re.I
)


@dataclass
class Item:
    """One source image: where it is on disk, its caption, and which package it came from."""

    path: str
    caption: str
    source: str  # "tuxpaint" | "openclipart"


def default_output() -> str:
    return os.path.join(grain_cache(), "demo-corpus")


def _cache_dir() -> str:
    return os.path.join(grain_cache(), "demo-corpus-cache")


def tuxpaint_items(root: str = TUXPAINT_DIR) -> list[Item]:
    """Stamps that have an image (PNG preferred over SVG) and a caption in their ``.txt``."""
    items = []
    for dirpath, _, files in os.walk(root):
        names = set(files)
        for f in sorted(files):
            if not f.endswith(".txt"):
                continue
            stem = f[:-4]
            img = next((stem + e for e in (".png", ".svg") if stem + e in names), None)
            if img is None:
                continue
            with open(os.path.join(dirpath, f), encoding="utf-8", errors="replace") as fh:
                caption = fh.readline().strip()
            if caption:
                items.append(Item(os.path.join(dirpath, img), caption, "tuxpaint"))
    return items


def _svg_title(path: str) -> str | None:
    with open(path, encoding="utf-8", errors="ignore") as fh:
        head = fh.read(200_000)  # the RDF block sits near the top; bounded read
    m = re.search(r"<dc:title>(.*?)</dc:title>", head, re.S)
    return m.group(1).strip() if m else None


def clean_title(title: str) -> str:
    """'red_flower_01' → 'Red flower.'; keeps the words, drops numbering and separators."""
    t = re.sub(r"[_\-]+", " ", title)
    t = re.sub(r"\s+\d+[a-z]?$", "", t.strip())
    t = re.sub(r"\s+", " ", t).strip(" .")
    return (t[:1].upper() + t[1:] + ".") if t else ""


def openclipart_items(root: str = OPENCLIPART_DIR, max_title_repeats: int = 3) -> list[Item]:
    """Openclipart SVGs with a usable ``dc:title`` (see module docstring for the filter)."""
    found = []
    for dirpath, dirs, files in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel.split(os.sep)[0] in OPENCLIPART_SKIP_DIRS:
            dirs[:] = []
            continue
        for f in sorted(files):
            if f.endswith(".svg"):
                path = os.path.join(dirpath, f)
                title = _svg_title(path)
                if title:
                    found.append((path, title))
    counts = Counter(t.lower() for _, t in found)
    items = []
    for path, title in found:
        if counts[title.lower()] > max_title_repeats or _GENERIC_TITLE.search(title):
            continue
        caption = clean_title(title)
        if len(re.sub(r"[^A-Za-z]", "", caption)) >= 3:
            items.append(Item(path, caption, "openclipart"))
    return items


def render(item: Item) -> bytes:
    """The item as JPEG bytes: transparent areas on white, longest side ≤ MAX_SIDE (cached)."""
    from PIL import Image

    st = os.stat(item.path)
    digest = hashlib.sha256(f"{item.path}|{st.st_mtime_ns}|{st.st_size}|{MAX_SIDE}".encode()).hexdigest()[:24]
    cached = os.path.join(_cache_dir(), digest[:2], digest + ".jpg")
    if os.path.exists(cached):
        with open(cached, "rb") as fh:
            return fh.read()
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    if item.path.endswith(".svg"):
        import cairosvg

        with open(item.path, "rb") as fh:
            svg = fh.read()
        # Safe mode (unsafe=False, the default): no external resources, no entity expansion.
        png = cairosvg.svg2png(bytestring=svg, output_width=MAX_SIDE)
        img = Image.open(io.BytesIO(png))
    else:
        img = Image.open(item.path)
    img.load()
    rgba = img.convert("RGBA")
    rgba.thumbnail((MAX_SIDE, MAX_SIDE))
    canvas = Image.new("RGB", rgba.size, (255, 255, 255))
    canvas.paste(rgba, mask=rgba.getchannel("A"))
    buf = io.BytesIO()
    canvas.save(buf, format="JPEG", quality=90)
    data = buf.getvalue()
    with atomic_open(cached, commit=False) as fh:
        fh.write(data)
    return data


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # reproducible shards
    tar.addfile(info, io.BytesIO(data))


def write_shards(items: list[Item], output: str, shard_size: int, show_progress: bool = True) -> dict:
    """Render ``items`` and write img2dataset-style shards into ``output``; return a summary dict."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image
    from tqdm import tqdm

    os.makedirs(output, exist_ok=True)
    failed: Counter = Counter()
    written = 0
    n_shards = (len(items) + shard_size - 1) // shard_size
    bar = tqdm(total=len(items), desc="demo corpus", unit="img", disable=not show_progress)
    for s in range(n_shards):
        chunk = items[s * shard_size : (s + 1) * shard_size]
        start = time.time()
        rows = []
        shard = os.path.join(output, f"{s:05d}.tar")
        with atomic_open(shard, commit=False) as fh, tarfile.open(fileobj=fh, mode="w") as tar:
            for i, item in enumerate(chunk):
                bar.update(1)
                key = f"{s:05d}{i:04d}"
                try:
                    jpg = render(item)
                    w, h = Image.open(io.BytesIO(jpg)).size
                except Exception as e:  # noqa: BLE001 - a broken package file is skipped and counted
                    failed[type(e).__name__] += 1
                    continue
                meta = {
                    "url": "file://" + item.path,
                    "caption": item.caption,
                    "key": key,
                    "status": "success",
                    "error_message": None,
                    "width": w,
                    "height": h,
                    "original_width": w,
                    "original_height": h,
                    "sha256": hashlib.sha256(jpg).hexdigest(),
                    "source": item.source,
                }
                _add_member(tar, f"{key}.jpg", jpg)
                _add_member(tar, f"{key}.txt", item.caption.encode())
                _add_member(tar, f"{key}.json", json.dumps(meta).encode())
                rows.append(meta)
        cols = {k: [r[k] for r in rows] for k in ("key", "url", "caption", "status", "error_message", "width", "height")}
        table = pa.Table.from_pydict(cols, schema=pa.schema([
            ("key", pa.string()), ("url", pa.string()), ("caption", pa.string()), ("status", pa.string()),
            ("error_message", pa.string()), ("width", pa.int64()), ("height", pa.int64()),
        ]))
        pq.write_table(table, os.path.join(output, f"{s:05d}.parquet"))
        stats = {
            "count": len(chunk),
            "successes": len(rows),
            "failed_to_download": 0,
            "failed_to_resize": len(chunk) - len(rows),
            "duration": time.time() - start,
            "status_dict": {"success": len(rows)},
        }
        with open(os.path.join(output, f"{s:05d}_stats.json"), "w") as fh:
            json.dump(stats, fh, indent=2)
        written += len(rows)
    bar.close()
    return {"output": output, "shards": n_shards, "samples": written, "render_failures": dict(failed)}


def collect_items(seed: int = 0, limit: int | None = None) -> list[Item]:
    """All usable items of both packages, shuffled deterministically, first ``limit`` kept."""
    items = tuxpaint_items() + openclipart_items()
    if not items:
        raise FileNotFoundError(
            f"no demo images found under {TUXPAINT_DIR} or {OPENCLIPART_DIR}: run "
            "`apt-get install -y --no-install-recommends tuxpaint-stamps-default openclipart-svg`"
        )
    random.Random(seed).shuffle(items)
    return items[:limit] if limit else items


def build_corpus(output: str, limit: int | None = None, shard_size: int = 256, seed: int = 0,
                 show_progress: bool = True) -> dict:
    """Build (or rebuild) the corpus in ``output``; stale shards of an earlier, larger build are removed."""
    if shard_size < 1:
        raise ValueError(f"--shard-size must be ≥ 1, got {shard_size}")
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be ≥ 1, got {limit}")
    items = collect_items(seed, limit)
    summary = write_shards(items, output, shard_size, show_progress)
    keep = {f"{s:05d}{ext}" for s in range(summary["shards"]) for ext in (".tar", ".parquet", "_stats.json")}
    for f in os.listdir(output):
        if re.fullmatch(r"\d{5}(\.tar|\.parquet|_stats\.json)", f) and f not in keep:
            os.remove(os.path.join(output, f))
    summary["sources"] = dict(Counter(i.source for i in items))
    with open(os.path.join(output, "corpus.json"), "w") as fh:
        json.dump({**summary, "limit": limit, "seed": seed, "shard_size": shard_size}, fh, indent=2)
    return summary


def ensure_corpus(output: str, limit: int | None, shard_size: int = 256, seed: int = 0) -> dict:
    """Build the corpus unless ``output`` already holds one built with the same settings."""
    try:
        with open(os.path.join(output, "corpus.json")) as fh:
            info = json.load(fh)
        if (info.get("limit"), info.get("seed"), info.get("shard_size")) == (limit, seed, shard_size):
            return info
    except (OSError, ValueError):
        pass
    return build_corpus(output, limit, shard_size, seed)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="grain demo-corpus", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default=default_output(), help="output folder (default: %(default)s)")
    p.add_argument("--limit", type=int, default=None, help="keep the first N images after a seeded shuffle")
    p.add_argument("--shard-size", type=int, default=256, help="samples per shard (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="shuffle seed (default: %(default)s)")
    args = p.parse_args(argv)
    try:
        summary = build_corpus(args.output, args.limit, args.shard_size, args.seed)
    except (FileNotFoundError, ValueError) as e:
        print(f"grain demo-corpus: {e}")
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
