"""Pure preprocessing and collation (no Ray): shard rows → samples → training batches.

One frame for every box (docs/method.md §1.4): every stage decodes with ``decode_image`` (pixel limit,
EXIF orientation applied, RGB). Boxes arrive as normalised xyxy in that decoded frame; the
squash-resize to S×S keeps normalised coordinates, so only xyxy → cxcywh is needed.

A *sample* is ``{"image": Tensor[3,S,S], "caption": str, "descriptions": list[str],
"boxes_xyxy": [[x1,y1,x2,y2], ...], "box_desc": [int, ...]}`` (optionally ``"box_scores"``,
``"key"``). ``make_batch(samples, cfg)`` gives::

    images              [B, 3, S, S] float32, ImageNet-normalised
    captions            [B, context_length] long
    target_boxes        [M, 4] float32, normalised cxcywh (≤ max_target_boxes per image, by score)
    target_image        [M] long, image index of each target box (non-decreasing)
    target_desc_tokens  [M, desc_context_length] long, the description of each target box
    target_text_id      [M] long, equal ids ⇔ identical description text (within the batch)
    keys                list[str] (when samples carry "key")
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from grain import box_ops
from grain.config import ModelConfig
from grain.tokenizer import tokenize

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_MAX_PIXELS = 40_000_000  # 40 MP: far above web images, far below a decompression bomb


class ImageDecodeError(ValueError):
    """Bytes that are not a decodable image. ``status`` is the shard schema's error status."""

    status = "decode_error"


class ImageTooLarge(ImageDecodeError):
    """An image over the pixel limit (a decompression bomb or an unreasonably large original)."""

    status = "too_large"


class ImageTooSmall(ImageDecodeError):
    """A decodable image below the minimum side (e.g. a 1×1 tracking pixel)."""

    status = "too_small"


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = 1, name: str = "image") -> Image.Image:
    """Decode ``data`` the one way every stage does: pixel limit checked *before* the pixels are
    read, EXIF orientation applied (``ImageOps.exif_transpose``), converted to RGB.

    Raises ImageTooLarge (w·h > max_pixels), ImageTooSmall (a side < min_side) or ImageDecodeError
    (anything else); messages name ``name``.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
        raise ImageDecodeError(f"{name}: no image bytes ({type(data).__name__}, {len(data) if data is not None else 0} bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size  # from the header: no pixel data decoded yet
            if w * h > max_pixels:
                raise ImageTooLarge(f"{name}: {w}×{h} = {w * h} pixels exceeds the limit of {max_pixels}")
            img.load()
            img = ImageOps.exif_transpose(img)
            if img.mode.startswith("I;16"):
                # 16-bit greyscale: PIL's convert("RGB") clips at 255 (a white image); keep the top 8 bits.
                img = Image.fromarray((np.asarray(img).astype(np.uint16) >> 8).astype(np.uint8), "L")
            img = img.convert("RGB")
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageTooLarge(f"{name}: {e}") from e
    except Exception as e:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError, ...)
        raise ImageDecodeError(f"{name}: cannot decode image ({type(e).__name__}: {e})") from e
    if min(img.size) < min_side:
        raise ImageTooSmall(f"{name}: {img.size[0]}×{img.size[1]} has a side below {min_side} pixels")
    return img


def preprocess_image(image: Image.Image | bytes, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """PIL image or encoded bytes → Tensor[3, size, size]: squash-resize (aspect not kept) bicubic,
    ImageNet mean/std (docs/method.md §4.1). Bytes go through ``decode_image``."""
    if not isinstance(image, Image.Image):
        image = decode_image(image, max_pixels=max_pixels)
    elif image.mode != "RGB":
        image = image.convert("RGB")
    image = image.resize((size, size), Image.Resampling.BICUBIC)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x - mean) / std


def use_alt_text(seed: int, epoch: int, key: str, alt_text_prob: float = 0.5) -> bool:
    """The caption draw of docs/method.md §4.2 as a pure function of (seed, epoch, key): stable across processes
    and resumes (Python's ``hash`` is salted per process; a global RNG would depend on load order)."""
    h = hashlib.blake2b(f"{int(seed)}/{int(epoch)}/{key}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2.0**64 < alt_text_prob


def choose_caption(row: Mapping, seed: int = 0, epoch: int = 0, alt_text_prob: float = 0.5) -> str | None:
    """docs/method.md §4.2: the alt-text or the MLLM caption, drawn per (seed, epoch, key) with P(alt-text) =
    ``alt_text_prob`` (0.5: 50/50 each time a sample is loaded); whichever exists when only one does
    (stripped); None when neither does."""
    alt = (row.get("source_caption") or "").strip()
    mllm = (row.get("mllm_caption") or "").strip()
    if alt and mllm:
        return alt if use_alt_text(seed, epoch, row.get("key"), alt_text_prob) else mllm
    return alt or mllm or None


def top_boxes(boxes, scores, desc_index, k: int) -> tuple[list, list]:
    """The ``k`` highest-scoring boxes (normalised xyxy, unchanged) and their description indices.

    Shards store boxes sorted by score; sorting again (stable, descending) is correct for any writer.
    Raises ValueError when the three lists differ in length."""
    boxes, scores, desc_index = boxes or [], scores or [], desc_index or []
    if not (len(boxes) == len(scores) == len(desc_index)):
        raise ValueError(f"boxes/box_scores/box_desc_index lengths differ: {len(boxes)}, {len(scores)}, {len(desc_index)}")
    order = sorted(range(len(boxes)), key=lambda i: -float(scores[i]))[: max(0, k)]
    return [[float(c) for c in boxes[i]] for i in order], [int(desc_index[i]) for i in order]


def sample_from_row(row: Mapping, cfg: ModelConfig, *, seed: int = 0, epoch: int = 0, alt_text_prob: float = 0.5,
                    max_pixels: int = DEFAULT_MAX_PIXELS) -> dict:
    """An ok shard row (``grain.common.schema``) → a training sample: image decoded (``decode_image``) and
    squash-resized to ``cfg.image_size``, caption drawn by ``choose_caption(row, seed, epoch)``, the
    top-``cfg.max_target_boxes`` boxes by score (``top_boxes``). The one row → sample of the project
    (the trainer, the benchmarks and the tests use it).

    Raises ValueError naming the key for a row that is not ok, has no caption at all, or whose image
    does not decode (``ImageDecodeError`` is a ValueError)."""
    key = row.get("key")
    if row.get("status", "ok") != "ok":
        raise ValueError(f"row {key!r} has status {row.get('status')!r}: only ok rows are samples")
    caption = choose_caption(row, seed, epoch, alt_text_prob)
    if caption is None:
        raise ValueError(f"row {key!r}: neither source_caption nor mllm_caption is present")
    image = decode_image(row.get("image"), max_pixels=max_pixels, name=f"row {key!r}")
    boxes, box_desc = top_boxes(row.get("boxes"), row.get("box_scores"), row.get("box_desc_index"), cfg.max_target_boxes)
    return {
        "key": key,
        "image": preprocess_image(image, cfg.image_size),
        "caption": caption,
        "descriptions": list(row.get("descriptions") or []),
        "boxes_xyxy": boxes,
        "box_desc": box_desc,
    }


def make_batch(samples: Sequence[Mapping], cfg: ModelConfig) -> dict:
    """Collate samples (see the module docstring) into a batch for ``GrainModel.forward`` and ``GrainLoss``.

    Boxes beyond ``cfg.max_target_boxes`` are dropped (highest ``box_scores`` kept when given, else
    the first ones: shard rows are sorted by score). One target entry per box, even when two boxes
    share a description; ``target_text_id`` marks identical texts across the whole batch.
    """
    if not samples:
        raise ValueError("make_batch: empty list of samples")
    images, captions = [], []
    boxes, owners, texts = [], [], []
    for i, s in enumerate(samples):
        where = f"sample {i} (key={s.get('key')!r})"
        img = s["image"]
        if not isinstance(img, torch.Tensor) or tuple(img.shape) != (3, cfg.image_size, cfg.image_size):
            shape = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
            raise ValueError(f"make_batch: {where} image must be a Tensor[3, {cfg.image_size}, {cfg.image_size}], got {shape}")
        images.append(img)
        captions.append(s.get("caption") or "")
        b, idx, descs = list(s.get("boxes_xyxy") or []), list(s.get("box_desc") or []), list(s.get("descriptions") or [])
        if len(b) != len(idx):
            raise ValueError(f"make_batch: {where} has {len(b)} boxes but {len(idx)} box_desc entries")
        order = list(range(len(b)))
        if s.get("box_scores") is not None:
            scores = list(s["box_scores"])
            order.sort(key=lambda k: -scores[k])  # stable: ties keep the row's order
        for k in order[: cfg.max_target_boxes]:
            if not 0 <= idx[k] < len(descs):
                raise ValueError(f"make_batch: {where} box {k} points at description {idx[k]} of {len(descs)}")
            if len(b[k]) != 4:
                raise ValueError(f"make_batch: {where} box {k} is {b[k]!r}, expected [x1, y1, x2, y2]")
            boxes.append([float(c) for c in b[k]])
            owners.append(i)
            texts.append(descs[idx[k]])
    xyxy = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4).clamp(0.0, 1.0)
    text_ids: dict[str, int] = {}
    batch = {
        "images": torch.stack(images).float(),
        "captions": tokenize(captions, cfg.context_length),
        "target_boxes": box_ops.box_xyxy_to_cxcywh(xyxy),
        "target_image": torch.tensor(owners, dtype=torch.long),
        "target_desc_tokens": tokenize(texts, cfg.desc_context_length),
        "target_text_id": torch.tensor([text_ids.setdefault(t, len(text_ids)) for t in texts], dtype=torch.long),
    }
    if all("key" in s for s in samples):
        batch["keys"] = [s["key"] for s in samples]
    return batch
