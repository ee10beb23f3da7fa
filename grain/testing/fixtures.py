"""Valid annotated shards from synthetic images, for tests, benchmarks and the trainer before real
annotation output exists.

Each image shows 0–3 coloured rectangles or discs on a noisy background; each shape is one box
labelled "a <colour> <shape>", so the boxes are exact. Rows follow ``grain.common.schema``.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field

import numpy as np

from grain.common.schema import (FLAG_NO_BOXES, descriptions_and_index, empty_row, error_row, to_table, validate_table,
                                 write_table)

_COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
}


@dataclass
class FixtureSpec:
    """What ``write_fixture_shards`` makes. Sizes in pixels; ``max_objects`` ≤ 5 keeps every box trainable."""

    num_shards: int = 2
    rows_per_shard: int = 8
    width: int = 96
    height: int = 80
    max_objects: int = 3
    min_objects: int = 0
    seed: int = 0
    error_rows_per_shard: int = 0  # extra rows with status decode_error, for skip/count tests
    extra_flags: list = field(default_factory=list)


def synthetic_sample(rng: np.random.Generator, width: int, height: int, n_objects: int) -> tuple:
    """One synthetic image: (PNG bytes, caption, descriptions, normalised xyxy boxes, scores)."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(rng.integers(90, 140, size=(height, width, 3), dtype=np.uint8))
    draw = ImageDraw.Draw(img)
    names = list(_COLOURS)
    descs, boxes = [], []
    for _ in range(n_objects):
        colour = names[int(rng.integers(len(names)))]
        w = int(rng.integers(width // 5, width // 2))
        h = int(rng.integers(height // 5, height // 2))
        x1 = int(rng.integers(0, width - w))
        y1 = int(rng.integers(0, height - h))
        shape = "square" if rng.random() < 0.5 else "disc"
        if shape == "square":
            draw.rectangle([x1, y1, x1 + w - 1, y1 + h - 1], fill=_COLOURS[colour])
        else:
            draw.ellipse([x1, y1, x1 + w - 1, y1 + h - 1], fill=_COLOURS[colour])
        descs.append(f"a {colour} {shape}")
        boxes.append([x1 / width, y1 / height, (x1 + w) / width, (y1 + h) / height])
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    caption = " and ".join(descs) if descs else "a grey noisy background"
    scores = sorted((float(s) for s in rng.uniform(0.35, 0.99, size=len(boxes))), reverse=True)
    return buf.getvalue(), caption, descs, boxes, scores


def write_fixture_shards(out_dir: str, spec: FixtureSpec | None = None, **overrides) -> list[str]:
    """Write ``spec.num_shards`` valid Parquet shards of synthetic samples into ``out_dir``; return their paths.

    Descriptions are de-duplicated per image (schema: one entry per distinct text), and each box
    points at its text through ``box_desc_index``. Deterministic for a given spec.
    """
    spec = spec or FixtureSpec()
    for k, v in overrides.items():
        setattr(spec, k, v)
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    paths = []
    for s in range(spec.num_shards):
        rows = []
        for r in range(spec.rows_per_shard):
            key = f"{s:05d}{r:04d}"
            n = int(rng.integers(spec.min_objects, spec.max_objects + 1))
            png, caption, descs, boxes, scores = synthetic_sample(rng, spec.width, spec.height, n)
            uniq, box_desc_index = descriptions_and_index(descs)
            row = empty_row(key, f"fixture-{s:05d}.tar::{key}.png")
            row.update(
                image=png,
                image_width=spec.width,
                image_height=spec.height,
                source_caption=caption,
                mllm_caption=f"an image showing {caption}",
                descriptions=uniq,
                boxes=boxes,
                box_scores=scores,
                box_desc_index=box_desc_index,
                flags=list(spec.extra_flags) + ([] if boxes else [FLAG_NO_BOXES]),
                mllm_model="fixture",
                detector_model="fixture",
            )
            rows.append(row)
        for e in range(spec.error_rows_per_shard):
            key = f"{s:05d}e{e:03d}"
            rows.append(error_row(key, f"fixture-{s:05d}.tar::{key}.jpg", "decode_error", "fixture: truncated JPEG"))
        path = os.path.join(out_dir, f"fixture-{s:05d}.parquet")
        table = to_table(rows)
        validate_table(table, where=path)
        write_table(table, path)
        paths.append(path)
    return paths
