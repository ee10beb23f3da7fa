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
at test time: no binaries are committed. Extend ``bad_cases`` to add cases.

``build_bad_input_corpus(root, extended=True)`` adds the reliability suite's shards (tests/reliability):
``00003.tar`` with truncated and CRC-corrupt PNGs, a 16-bit greyscale PNG, an animated GIF, a 1 MB
caption and a ``../x.jpg`` member; ``00004.parquet`` whose image column has the wrong type (int64);
``00005.tar`` and ``00006.parquet``, empty shards. A shard that cannot be read row by row is one
``input_error`` row keyed ``<shard>/unreadable`` (annotators/stages.read_shards_batch).
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

from grain.common.schema import FLAG_MISSING_SOURCE_CAPTION, FLAG_UNDECODABLE_SOURCE_CAPTION

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


def png_16bit(width: int = 96, height: int = 64) -> bytes:
    """A 16-bit greyscale PNG (PIL mode I;16): a horizontal ramp over the full 0..65535 range."""
    ramp = np.linspace(0, 65535, width, dtype=np.float64)[None, :].repeat(height, 0).astype(np.uint16)
    return encode(Image.fromarray(ramp), "PNG")


def animated_gif(width: int = 80, height: int = 60, frames: int = 3) -> bytes:
    """An animated GIF of ``frames`` solid frames (the decoder keeps the first)."""
    ims = [Image.new("RGB", (width, height), (80 * i, 120, 200 - 60 * i)) for i in range(frames)]
    buf = io.BytesIO()
    ims[0].save(buf, format="GIF", save_all=True, append_images=ims[1:], duration=50, loop=0)
    return buf.getvalue()


def extended_cases(photo: Image.Image) -> list[tuple[str, bytes | None, bytes | str | None, Expected]]:
    """The reliability suite's extra image-level cases (same tuple layout as ``bad_cases``)."""
    from grain.common.schema import FLAG_TRUNCATED_SOURCE_CAPTION

    w, h = photo.size
    png = encode(photo.convert("RGB"), "PNG")
    corrupt = bytearray(png)
    corrupt[30] ^= 0xFF  # IHDR's CRC (bytes 29-32) no longer matches its data
    return [
        ("truncated_png", png[: len(png) // 2], "A truncated PNG.", Expected("decode_error")),
        ("corrupt_png_crc", bytes(corrupt), "A PNG with a bad header CRC.", Expected("decode_error")),
        ("png_16bit", png_16bit(96, 64), "A 16-bit grey ramp.", Expected("ok", size=(96, 64))),
        ("animated_gif", animated_gif(80, 60), "An animated GIF.", Expected("ok", size=(80, 60))),
        ("caption_1mb", encode(photo), "a very long caption " * 52429,  # ≈ 1 MB of alt-text
         Expected("ok", flags=(FLAG_TRUNCATED_SOURCE_CAPTION,), size=(w, h))),
    ]


def _write_extended_shards(root: str, corpus: "BadInputCorpus", photo: Image.Image) -> None:
    """``00003.tar`` (extended cases + an escaping member), ``00004.parquet`` (wrong schema),
    ``00005.tar`` and ``00006.parquet`` (empty)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = os.path.join(root, "00003.tar")
    tb = _TarBuilder(path)
    for i, (name, data, cap, exp) in enumerate(extended_cases(photo)):
        key = f"00003{i:04d}"
        ext = "gif" if name == "animated_gif" else "png" if "png" in name else "jpg"
        tb.add(f"{key}.{ext}", data)
        tb.add(f"{key}.txt", cap.encode())
        corpus.expected[key] = exp
    idx = tb.add("../x.jpg", encode(photo))  # a path-traversal member: never extracted, an input_error row
    corpus.expected[f"00003/unsafe-member-{idx:06d}"] = Expected("input_error")
    tb.close()
    corpus.shards.append(path)
    # Wrong schema: an image column of the wrong type. The reader cannot read it row by row: the whole
    # shard becomes one input_error row naming it. (A parquet with no image column at all is refused
    # before the run starts: readers.discover_shards raises ReaderError naming the file.)
    path = os.path.join(root, "00004.parquet")
    pq.write_table(pa.table({"key": ["000040000", "000040001"], "jpg": pa.array([1, 2], pa.int64()),
                             "txt": ["wrong type", "wrong type"]}), path)
    corpus.expected["00004/unreadable"] = Expected("input_error")
    corpus.shards.append(path)
    path = os.path.join(root, "00005.tar")
    tarfile.open(path, "w").close()  # an empty tar: an empty, committed output shard
    corpus.shards.append(path)
    path = os.path.join(root, "00006.parquet")
    schema = pa.schema([("key", pa.string()), ("jpg", pa.binary()), ("txt", pa.string())])
    pq.write_table(schema.empty_table(), path)
    corpus.shards.append(path)


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


def build_bad_input_corpus(root: str, n_good: int = 20, max_side: int = 256, extended: bool = False) -> BadInputCorpus:
    """Write ``00000.tar`` (+ img2dataset listing ``00000.parquet``), ``00001.tar`` and ``00002.parquet``
    (parquet output format, column ``jpg``) under ``root``; return the shards and the expected rows.
    ``extended``: also the reliability suite's shards ``00003``–``00006`` (module docstring)."""
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
    if extended:
        _write_extended_shards(root, corpus, photos[1][1])
    return corpus
