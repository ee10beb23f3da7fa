"""Grounded corpus for the GRAIN-vs-CLIP benchmark: real object images composited with exact boxes.

Each training image is a square canvas (a plain colour or a crop of one of scikit-image's bundled
photographs) with 2–4 real objects pasted at random scale and position: emoji (one style, e.g.
Google) and Tux Paint cut-outs (real photographs on transparent backgrounds). Because we paste
the objects, every box is exact: the tight box of the pasted sprite's opaque pixels.

Rows follow the annotation stage's shard schema (``grain.common.schema``), so the trainer reads them
unchanged:

    source_caption   names of all objects: "a dog face, a red apple and a taxi"
    mllm_caption     the same objects in another order and phrasing ("a picture of ...")
    descriptions     one per object: "<name>: <keyword>, <keyword>, ..." (CLDR keywords for emoji,
                     the stamp's category for Tux Paint), deduplicated within the row
    boxes            normalised xyxy in the canvas (the decoded image), one per object
    box_scores       1.0 for every box (exact boxes; the trainer keeps the top 5 = all of them)
    box_desc_index   index of each box's description

Evaluation folders drawn the same way are built by ``evaluation.grounded_evalsets``.

Everything is a pure function of the seeds given: the same call writes byte-identical shards.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
from dataclasses import asdict, dataclass

from PIL import Image

from grain.box_ops import iou
from grain.common.runconfig import STRICT_KEYS
from grain.common.storage import atomic_open

FORMAT_VERSION = "2"  # bump when the drawing or the encoding changes: cached corpora rebuild
SPRITE_MAX_SIDE = 96  # px: sprites are cached at most this big; canvases are ~128 px
MAX_SOURCE_PIXELS = 4096 * 4096  # decode bound for package PNGs (decompression-bomb guard)
TUXPAINT_DIR = "/usr/share/tuxpaint/stamps"
# scikit-image's bundled photographs used as backgrounds (no download; files ship in the wheel).
# Photos with a main subject that is also an emoji class (the cat "chelsea", the horse) are left out.
BACKGROUND_FILES = ("astronaut.png", "brick.png", "camera.png", "coffee.png", "coins.png", "grass.png",
                    "gravel.png", "hubble_deep_field.jpg", "moon.png", "page.png", "rocket.jpg", "text.png")


@dataclass(frozen=True)
class ObjectSpec:
    """One pasteable object. ``path``: PNG with alpha; ``label``: class key for emoji (None for stamps)."""

    name: str  # "dog face"
    description: str  # "dog face: animal, pet, puppy"
    path: str
    source: str  # "emoji-google" | "tuxpaint"
    label: str | None = None


@dataclass
class CorpusSpec:
    """How the training corpus is drawn (a ``corpus:`` section of the bench config)."""

    __pydantic_config__ = STRICT_KEYS

    images: int = 4000  # rows written
    canvas: int = 128  # canvas side in px (training squash-resizes to the model's image size)
    min_objects: int = 2  # objects per canvas, at least
    max_objects: int = 4  # objects per canvas, at most
    min_scale: float = 0.22  # object's longer side as a fraction of the canvas side
    max_scale: float = 0.45  # largest object side as a fraction of the canvas side
    max_overlap: float = 0.15  # reject placements whose IoU with a placed object exceeds this
    photo_background_prob: float = 0.5  # else a plain light colour
    tuxpaint_prob: float = 0.2  # chance that an object slot holds a Tux Paint cut-out
    shard_size: int = 500  # rows per Parquet shard
    row_group_size: int = 100  # small row groups: the trainer shuffles within windows of groups
    seed: int = 1234  # drawing seed of the corpus

    def __post_init__(self):
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(f"corpus: need 1 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}")
        if not 0 < self.min_scale <= self.max_scale <= 1:
            raise ValueError(f"corpus: need 0 < min_scale <= max_scale <= 1, got {self.min_scale}, {self.max_scale}")
        if self.images < 1 or self.canvas < 16:
            raise ValueError(f"corpus: images must be >= 1 and canvas >= 16 px, got {self.images}, {self.canvas}")

    @classmethod
    def from_dict(cls, d: dict) -> "CorpusSpec":
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"corpus: unknown key(s) {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**d)


# ---------------------------------------------------------------------------------------------
# Sprites and backgrounds
# ---------------------------------------------------------------------------------------------

_SPRITES: dict[str, Image.Image] = {}


def load_sprite(path: str, max_side: int = SPRITE_MAX_SIDE) -> Image.Image:
    """RGBA sprite cropped to its opaque pixels, longer side ≤ ``max_side``; cached per process."""
    key = f"{path}|{max_side}"
    if key in _SPRITES:
        return _SPRITES[key]
    with Image.open(path) as im:
        w, h = im.size  # header only: check the bound before decoding pixels
        if w * h > MAX_SOURCE_PIXELS:
            raise ValueError(f"{path}: {w}×{h} exceeds the sprite pixel limit {MAX_SOURCE_PIXELS}")
        rgba = im.convert("RGBA")
    bbox = rgba.getchannel("A").point(lambda a: 255 if a > 16 else 0).getbbox()
    if bbox is None:
        raise ValueError(f"{path}: fully transparent image, nothing to paste")
    rgba = rgba.crop(bbox)
    rgba.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    _SPRITES[key] = rgba
    return rgba


def load_backgrounds() -> list[Image.Image]:
    """scikit-image's bundled photographs as RGB images (those present in this installation)."""
    import skimage

    root = os.path.join(os.path.dirname(skimage.__file__), "data")
    out = []
    for f in BACKGROUND_FILES:
        p = os.path.join(root, f)
        if os.path.exists(p):
            with Image.open(p) as im:
                out.append(im.convert("RGB"))
    if not out:
        raise FileNotFoundError(f"{root}: none of the background photos {BACKGROUND_FILES} found (pip install scikit-image)")
    return out


def make_canvas(rng: random.Random, size: int, photos: list[Image.Image], photo_prob: float) -> Image.Image:
    """A plain light colour, or a random square crop of a photo (dimmed towards white so objects stay visible)."""
    if photos and rng.random() < photo_prob:
        photo = photos[rng.randrange(len(photos))]
        side = rng.randint(min(photo.size) // 3, min(photo.size))
        x0, y0 = rng.randint(0, photo.width - side), rng.randint(0, photo.height - side)
        crop = photo.crop((x0, y0, x0 + side, y0 + side)).resize((size, size), Image.Resampling.BILINEAR)
        return Image.blend(crop, Image.new("RGB", (size, size), (255, 255, 255)), rng.uniform(0.2, 0.5))
    return Image.new("RGB", (size, size), tuple(rng.randint(170, 255) for _ in range(3)))


# ---------------------------------------------------------------------------------------------
# Object sources and the class split
# ---------------------------------------------------------------------------------------------

def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def class_split(keys: list[str], holdout_frac: float, seed: int) -> tuple[list[str], list[str]]:
    """(seen, held-out) class keys: a seeded shuffle, the first ``holdout_frac`` held out. Sorted."""
    if not 0.0 <= holdout_frac < 1.0:
        raise ValueError(f"holdout_frac must be in [0, 1), got {holdout_frac}")
    order = sorted(keys)
    random.Random(seed).shuffle(order)
    k = round(len(order) * holdout_frac)
    return sorted(order[k:]), sorted(order[:k])


def emoji_objects(infos, style: str, max_keywords: int = 4) -> list[ObjectSpec]:
    """``evaluation.emoji.EmojiInfo`` list → objects in ``style``; description = name + CLDR keywords
    (the same keywords, via ``descriptors_for``, that the evaluation uses as class descriptors)."""
    from evaluation.emoji import descriptors_for

    out = []
    for e in infos:
        if style not in e.images:
            raise ValueError(f"emoji {e.key} ({e.name}) has no {style!r} image")
        kws = descriptors_for(e)[:max_keywords]
        desc = f"{e.name}: {', '.join(kws)}" if kws else e.name
        out.append(ObjectSpec(e.name, desc, e.images[style], f"emoji-{style}", e.key))
    return out


def tuxpaint_objects(root: str = TUXPAINT_DIR, exclude_words: set[str] = frozenset(), max_words: int = 5) -> list[ObjectSpec]:
    """Tux Paint PNG stamps with a short caption. Name = caption without article and full stop
    ("A Magellanic penguin." → "magellanic penguin"); description = name + the stamp's category folders.
    Stamps whose name shares a word with ``exclude_words`` (held-out class names) are left out, so
    held-out classes never appear in training images or text. Empty list when Tux Paint is absent."""
    out = []
    if not os.path.isdir(root):
        return out
    for dirpath, _, files in sorted(os.walk(root)):
        for f in sorted(files):
            if not f.endswith(".png") or f.endswith(("_mirror.png", "_flip.png")):
                continue
            txt = os.path.join(dirpath, f[:-4] + ".txt")
            if not os.path.exists(txt):
                continue
            with open(txt, encoding="utf-8", errors="replace") as fh:
                first = fh.readline().strip()
            name = re.sub(r"^(a|an|the)\s+", "", first.rstrip(".!").strip(), flags=re.I).lower()
            if not name or len(name.split()) > max_words or not re.fullmatch(r"[a-z0-9 '\-]+", name):
                continue
            if words(name) & exclude_words:
                continue
            cats = [c for c in os.path.relpath(dirpath, root).split(os.sep) if c != "."]
            out.append(ObjectSpec(name, f"{name}: {', '.join(cats)}" if cats else name, os.path.join(dirpath, f), "tuxpaint"))
    unique = {}
    for o in out:  # one stamp per name: the caption is the only label
        unique.setdefault(o.name, o)
    return list(unique.values())


# ---------------------------------------------------------------------------------------------
# Composition
# ---------------------------------------------------------------------------------------------

def compose(objects: list[ObjectSpec], rng: random.Random, canvas: Image.Image, min_scale: float,
            max_scale: float, max_overlap: float = 0.15, tries: int = 30) -> list[list[float]]:
    """Paste ``objects`` onto ``canvas`` (in place). Returns one box per object: normalised xyxy
    [x1, y1, x2, y2] in the canvas frame, the exact extent of the pasted sprite.

    Each object's longer side is ``uniform(min_scale, max_scale)`` × canvas side; its position is
    uniform inside the canvas, redrawn up to ``tries`` times while its IoU with an earlier object
    exceeds ``max_overlap`` (the last draw is kept; later objects may occlude earlier ones a little).
    """
    size = canvas.width
    boxes: list[list[float]] = []
    for obj in objects:
        sprite = load_sprite(obj.path)
        longer = max(2, round(rng.uniform(min_scale, max_scale) * size))
        f = longer / max(sprite.size)
        w, h = max(1, round(sprite.width * f)), max(1, round(sprite.height * f))
        for _ in range(tries):
            x, y = rng.randint(0, size - w), rng.randint(0, size - h)
            box = [x / size, y / size, (x + w) / size, (y + h) / size]
            if all(iou(box, b) <= max_overlap for b in boxes):
                break
        scaled = sprite.resize((w, h), Image.Resampling.LANCZOS)
        canvas.paste(scaled, (x, y), mask=scaled.getchannel("A"))
        boxes.append(box)
    return boxes


def with_article(name: str) -> str:
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def caption_for(names: list[str]) -> str:
    """["dog face", "apple", "taxi"] → "a dog face, an apple and a taxi"."""
    parts = [with_article(n) for n in names]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


JPEG_QUALITY = 92  # JPEG like web images; ~3× smaller than PNG, so a 4000-image corpus stays ~25 MB


def jpeg_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def corpus_row(index: int, objects: list[ObjectSpec], spec: CorpusSpec, rng: random.Random,
               photos: list[Image.Image]) -> dict:
    """One schema row (see the module docstring) with ``objects`` composited on a fresh canvas."""
    from grain.common.schema import descriptions_and_index, empty_row

    canvas = make_canvas(rng, spec.canvas, photos, spec.photo_background_prob)
    boxes = compose(objects, rng, canvas, spec.min_scale, spec.max_scale, spec.max_overlap)
    descriptions, box_desc_index = descriptions_and_index([o.description for o in objects])
    names = [o.name for o in objects]
    shuffled = names[:]
    rng.shuffle(shuffled)
    row = empty_row(f"g{index:07d}", f"grounded-corpus::{index}")
    row.update(
        image=jpeg_bytes(canvas), image_width=spec.canvas, image_height=spec.canvas,
        source_caption=caption_for(names), mllm_caption=f"a picture of {caption_for(shuffled)}.",
        descriptions=descriptions, boxes=boxes, box_scores=[1.0] * len(boxes),
        box_desc_index=box_desc_index,
        mllm_model="grounded-corpus (names and keywords)", detector_model="grounded-corpus (exact paste boxes)",
    )
    return row


def draw_objects(rng: random.Random, spec: CorpusSpec, emoji: list[ObjectSpec], stamps: list[ObjectSpec]) -> list[ObjectSpec]:
    """2–4 distinct objects: each slot a Tux Paint stamp with ``tuxpaint_prob``, else an emoji."""
    n = rng.randint(spec.min_objects, spec.max_objects)
    chosen: list[ObjectSpec] = []
    while len(chosen) < n:
        pool = stamps if stamps and rng.random() < spec.tuxpaint_prob else emoji
        o = pool[rng.randrange(len(pool))]
        if all(o.name != c.name for c in chosen):  # two identical names would make the caption ambiguous
            chosen.append(o)
    return chosen


def spec_digest(*parts) -> str:
    blob = json.dumps(parts, sort_keys=True, default=lambda o: asdict(o) if hasattr(o, "__dataclass_fields__") else str(o))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_corpus(out_dir: str, spec: CorpusSpec, emoji: list[ObjectSpec], stamps: list[ObjectSpec],
                 progress: bool = True) -> dict:
    """Write ``spec.images`` rows as validated shards ``train-NNNNN.parquet`` under ``out_dir``.

    Skips the work when ``out_dir/corpus.json`` records the same spec and object lists. Returns that
    manifest (spec, digest, counts, per-class object counts).
    """
    if not emoji:
        raise ValueError("build_corpus: no emoji objects to draw from")
    counts: dict[str, int] = {}

    def rows():
        rng = random.Random(spec.seed)
        photos = load_backgrounds()
        for i in range(spec.images):
            objs = draw_objects(rng, spec, emoji, stamps)
            for o in objs:
                counts[o.name] = counts.get(o.name, 0) + 1
            yield corpus_row(i, objs, spec, rng, photos)

    return write_shards(out_dir, spec_digest(FORMAT_VERSION, spec, emoji, stamps), rows(), spec.images, spec.shard_size,
                        spec.row_group_size, {"spec": asdict(spec), "emoji_objects": len(emoji),
                                              "tuxpaint_objects": len(stamps), "object_counts": counts},
                        desc="grounded corpus", progress=progress)


def write_shards(out_dir: str, digest: str, rows, n: int, shard_size: int, row_group_size: int, manifest: dict,
                 desc: str = "corpus", progress: bool = True) -> dict:
    """Write the ``n`` schema rows of the iterable ``rows`` as validated shards ``train-NNNNN.parquet`` of
    ``shard_size`` rows (each written to a temporary name, then renamed), then ``corpus.json`` = ``manifest``
    + digest + files. When ``corpus.json`` already records ``digest``, nothing is drawn (``rows`` is not
    iterated) and that manifest is returned."""
    from tqdm import tqdm

    import pyarrow.parquet as pq

    from grain.common.schema import SCHEMA, to_table, validate_table

    manifest_path = os.path.join(out_dir, "corpus.json")
    if os.path.exists(manifest_path):
        with open(manifest_path, encoding="utf-8") as f:
            old = json.load(f)
        if old.get("digest") == digest:
            return old
    os.makedirs(out_dir, exist_ok=True)
    for f in os.listdir(out_dir):
        if f.endswith(".parquet"):
            os.remove(os.path.join(out_dir, f))
    batch, files = [], []
    for i, row in enumerate(tqdm(rows, total=n, desc=desc, unit="img", disable=not progress)):
        batch.append(row)
        if len(batch) == shard_size or i == n - 1:
            table = to_table(batch)
            validate_table(table, where=f"{desc} shard {len(files)}")
            path = os.path.join(out_dir, f"train-{len(files):05d}.parquet")
            with atomic_open(path, commit=False) as fh:
                pq.write_table(table.replace_schema_metadata(SCHEMA.metadata), fh, row_group_size=row_group_size)
            files.append(os.path.basename(path))
            batch = []
    out = {"digest": digest, **{k: asdict(v) if hasattr(v, "__dataclass_fields__") else v for k, v in manifest.items()},
           "files": files}
    with open(manifest_path, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1)
    return out


__all__ = ["CorpusSpec", "ObjectSpec", "build_corpus", "caption_for", "compose",
           "class_split", "corpus_row", "draw_objects", "emoji_objects", "load_backgrounds", "load_sprite",
           "make_canvas", "tuxpaint_objects", "write_shards"]
