"""Bad-input generator: img2dataset-style shards mixing real photos with every kind of broken input.

    corpus = build_bad_input_corpus("/tmp/corpus")      # 2 webdataset tars (+ listing) + 1 parquet
    corpus.shards        # input paths, in shard order
    corpus.expected      # key -> Expected(status, flags, size): what the annotate run must write

Good images are scikit-image's bundled photos (astronaut, chelsea, coffee, rocket, ...), scaled so
their longer side is at most ``max_side`` px, with a hand-written caption each. Bad inputs: truncated
JPEG, zero bytes, not an image, 1×1 PNG, a PNG whose header declares 30000×30000 (tiny on disk: a
decompression bomb), and valid-but-unusual images (CMYK JPEG, palette PNG, alpha PNG, grayscale,
EXIF-rotated JPEG); plus record-level faults: missing caption, non-UTF-8 caption, tar members named
``../x.jpg`` / ``/abs.jpg`` / a symlink, a key with a caption but no image, a failed download listed
only in img2dataset's per-shard parquet, and a parquet row without bytes. Everything is generated
at test time: no binaries are committed. Extend ``BAD_CASES`` to add cases (reliability issue).
"""

from __future__ import annotations

import io
import json
import os
import struct
import tarfile
import zlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from grain.schema import FLAG_MISSING_SOURCE_CAPTION, FLAG_UNDECODABLE_SOURCE_CAPTION

# (skimage.data function, caption). All bundled with scikit-image: no download.
GOOD_IMAGES = [
    ("astronaut", "An astronaut in a white spacesuit holding a helmet in front of a flag."),
    ("chelsea", "A tabby cat looking to the side."),
    ("coffee", "A cup of coffee on a saucer with a spoon."),
    ("rocket", "A rocket on its launch pad under a blue sky."),
    ("camera", "A black and white photo of a man with a camera on a tripod."),
    ("horse", "A black silhouette of a horse."),
    ("hubble_deep_field", "Galaxies in the deep field of the Hubble telescope."),
    ("immunohistochemistry", "A microscope image of stained tissue."),
    ("logo", "The scikit-image logo on a transparent background."),
    ("colorwheel", "A colour wheel with every hue."),
    ("brick", "A brick wall texture."),
    ("grass", "A close-up of green grass."),
    ("gravel", "Grey gravel on the ground."),
    ("moon", "The surface of the moon with craters."),
    ("page", "A scanned page of printed text."),
    ("text", "Printed text on a page."),
    ("retina", "A photograph of the back of a human eye."),
    ("clock", "A wall clock on a wall."),
    ("coins", "Old coins on a table."),
    ("cell", "A cell seen under a microscope."),
]


@dataclass
class Expected:
    """What the annotate run must write for one key: status, flags it must carry, decoded (w, h)."""

    status: str
    flags: tuple = ()
    size: tuple | None = None


@dataclass
class BadInputCorpus:
    root: str
    shards: list = field(default_factory=list)
    expected: dict = field(default_factory=dict)


def _to_pil(arr: np.ndarray, max_side: int) -> Image.Image:
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    img = Image.fromarray(arr)
    if img.mode not in ("RGB", "L", "RGBA"):
        img = img.convert("RGB")
    img.thumbnail((max_side, max_side))
    return img


def good_photos(n: int = 20, max_side: int = 256) -> list[tuple[str, Image.Image, str]]:
    """(name, PIL image, caption) for the first ``n`` bundled photos."""
    import skimage.data

    return [(name, _to_pil(getattr(skimage.data, name)(), max_side), cap) for name, cap in GOOD_IMAGES[:n]]


def encode(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG" and img.mode in ("RGBA", "P", "LA"):
        img = img.convert("RGB")
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A PNG whose header declares width×height RGB pixels but whose file is ~100 bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def exif_rotated_jpeg(img: Image.Image) -> bytes:
    """A JPEG stored landscape with EXIF Orientation=6 (display rotated 90° clockwise)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(img.convert("RGB"), "JPEG", exif=exif.tobytes())


def bad_cases(photo: Image.Image) -> list[tuple[str, bytes | None, bytes | str | None, Expected]]:
    """(name, image bytes, caption, expected) for the image-level cases, built from one good photo."""
    w, h = photo.size
    jpeg = encode(photo)
    cmyk = encode(photo.convert("RGB").convert("CMYK"), "JPEG")
    small = photo.convert("RGB").resize((max(8, w // 2), max(8, h // 2)))
    return [
        ("truncated_jpeg", jpeg[: len(jpeg) // 2], "A truncated photo.", Expected("decode_error")),
        ("zero_bytes", b"", "An empty file.", Expected("decode_error")),
        ("not_an_image", b"<html><body>404 Not Found</body></html>", "Not an image.", Expected("decode_error")),
        ("one_pixel", encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"), "A single pixel.", Expected("too_small")),
        ("bomb_png", png_bomb(), "A decompression bomb.", Expected("too_large")),
        ("cmyk_jpeg", cmyk, "A CMYK photo.", Expected("ok", size=(w, h))),
        ("palette_png", encode(photo.convert("RGB").convert("P", palette=Image.ADAPTIVE), "PNG"), "A palette photo.",
         Expected("ok", size=(w, h))),
        ("alpha_png", encode(photo.convert("RGBA"), "PNG"), "A photo with an alpha channel.", Expected("ok", size=(w, h))),
        ("grayscale_jpeg", encode(photo.convert("L")), "A grey photo.", Expected("ok", size=(w, h))),
        ("exif_rotated", exif_rotated_jpeg(small), "A rotated photo.", Expected("ok", size=(small.height, small.width))),
        ("missing_caption", jpeg, None, Expected("ok", flags=(FLAG_MISSING_SOURCE_CAPTION,), size=(w, h))),
        ("non_utf8_caption", jpeg, b"caf\xe9 au lait \xff\xfe", Expected("ok", flags=(FLAG_UNDECODABLE_SOURCE_CAPTION,), size=(w, h))),
    ]


class _TarBuilder:
    """Writes webdataset members and tracks the member index (unsafe-member keys are index-based)."""

    def __init__(self, path: str):
        self.tar = tarfile.open(path, "w")
        self.index = 0

    def add(self, name: str, data: bytes) -> int:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = 0
        self.tar.addfile(info, io.BytesIO(data))
        self.index += 1
        return self.index - 1

    def add_symlink(self, name: str, target: str) -> int:
        info = tarfile.TarInfo(name)
        info.type = tarfile.SYMTYPE
        info.linkname = target
        self.tar.addfile(info)
        self.index += 1
        return self.index - 1

    def add_sample(self, key: str, image: bytes | None, caption, url: str) -> None:
        if image is not None:
            self.add(f"{key}.jpg", image)
        if caption is not None:
            self.add(f"{key}.txt", caption if isinstance(caption, bytes) else caption.encode())
        self.add(f"{key}.json", json.dumps({"key": key, "url": url, "status": "success"}).encode())

    def close(self) -> None:
        self.tar.close()


def build_bad_input_corpus(root: str, n_good: int = 20, max_side: int = 256) -> BadInputCorpus:
    """Write ``00000.tar`` (+ img2dataset listing ``00000.parquet``), ``00001.tar`` and ``00002.parquet``
    (parquet output format, column ``jpg``) under ``root``; return the shards and the expected rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(root, exist_ok=True)
    photos = good_photos(n_good, max_side)
    cases = bad_cases(photos[1][1])
    corpus = BadInputCorpus(root)
    # Spread good photos over three shards; bad cases alternate between them.
    per_shard: list[list] = [[], [], []]
    for i, (name, img, cap) in enumerate(photos):
        per_shard[i % 3].append((name, encode(img, "PNG" if img.mode == "RGBA" else "JPEG"), cap,
                                 Expected("ok", size=img.size)))
    for i, case in enumerate(cases):
        # The non-UTF-8 caption must sit in a tar (parquet ``txt`` is already a string).
        per_shard[0 if case[0] == "non_utf8_caption" else i % 3].append(case)
    per_shard[2].append(next(c for c in cases if c[0] == "missing_caption"))  # null ``txt`` in parquet too

    for s in (0, 1):
        path = os.path.join(root, f"{s:05d}.tar")
        tb = _TarBuilder(path)
        listing = []
        for i, (name, data, cap, exp) in enumerate(per_shard[s]):
            key = f"{s:05d}{i:04d}"
            tb.add_sample(key, data, cap, f"https://example.com/{name}.jpg")
            corpus.expected[key] = exp
            listing.append({"key": key, "url": f"https://example.com/{name}.jpg", "status": "success", "error_message": None})
        n = len(per_shard[s])
        if s == 0:
            # A URL img2dataset failed to fetch: only in the listing, not in the tar.
            key = f"{s:05d}{n:04d}"
            listing.append({"key": key, "url": "https://example.com/gone.jpg", "status": "failed_to_download",
                            "error_message": "HTTP Error 404: Not Found"})
            corpus.expected[key] = Expected("download_error")
            pq.write_table(pa.Table.from_pylist(listing), os.path.join(root, f"{s:05d}.parquet"))
        else:
            jpeg = encode(photos[0][1])
            for bad_name in ("../escape.jpg", "/abs/escape.jpg", "sub/../../escape2.jpg"):
                idx = tb.add(bad_name, jpeg)
                corpus.expected[f"{s:05d}/unsafe-member-{idx:06d}"] = Expected("input_error")
            idx = tb.add_symlink(f"{s:05d}{n:04d}.jpg", "/etc/passwd")
            corpus.expected[f"{s:05d}/unsafe-member-{idx:06d}"] = Expected("input_error")
            key = f"{s:05d}{n + 1:04d}"  # caption and json, no image member
            tb.add(f"{key}.txt", b"A caption without its image.")
            corpus.expected[key] = Expected("input_error")
        tb.close()
        corpus.shards.append(path)

    rows = []
    for i, (name, data, cap, exp) in enumerate(per_shard[2]):
        key = f"00002{i:04d}"
        rows.append({"key": key, "jpg": data, "txt": cap.decode("utf-8", "replace") if isinstance(cap, bytes) else cap,
                     "url": f"https://example.com/{name}.jpg", "status": "success", "error_message": None})
        exp = exp if not isinstance(cap, bytes) else Expected("ok", size=exp.size)  # parquet txt is already str
        corpus.expected[key] = exp
    key = f"00002{len(rows):04d}"
    rows.append({"key": key, "jpg": None, "txt": "gone", "url": "https://example.com/timeout.jpg",
                 "status": "failed_to_download", "error_message": "timeout"})
    corpus.expected[key] = Expected("download_error")
    schema = pa.schema([("key", pa.string()), ("jpg", pa.binary()), ("txt", pa.string()), ("url", pa.string()),
                        ("status", pa.string()), ("error_message", pa.string())])
    path = os.path.join(root, "00002.parquet")
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    corpus.shards.append(path)
    return corpus
