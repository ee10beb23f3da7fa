"""Pictures for the Prefect UI: box overlays of annotated rows (PNG files).

Presentation only: boxes are drawn as stored in the shards (normalised xyxy in the decoded image,
grain/common/schema.py). Training curves are drawn by the trainer itself (``loss_curves.png``).
"""

from __future__ import annotations

import io
import os

_PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
            (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40)]
MAX_PIXELS = 50_000_000  # decoding bound for shard images: annotators.config's limits.max_image_pixels default


def pick_rows(shards: list[str], n: int) -> list[dict]:
    """Up to ``n`` ok rows, those with boxes first, read from annotated Parquet shards in order."""
    import pyarrow.parquet as pq

    with_boxes, without = [], []
    cols = ["key", "image", "source_caption", "mllm_caption", "descriptions", "boxes", "box_scores",
            "box_desc_index", "status"]
    from grain.common import storage

    for uri in shards:
        fs, path = storage.pyarrow_fs(uri)  # local path or object-store URI
        for row in pq.read_table(path, filesystem=fs, columns=cols).to_pylist():
            if row["status"] != "ok" or not row["image"]:
                continue
            (with_boxes if row["boxes"] else without).append(row)
        if len(with_boxes) >= n:
            break
    return (with_boxes + without)[:n]


TOP_BOXES = 5  # the trainer's targets per image (ModelConfig.max_target_boxes); shards keep up to 50


def draw_overlay(row: dict, max_side: int = 448, top: int = TOP_BOXES) -> bytes:
    """PNG of the row's image with its ``top`` best boxes (xyxy normalised → pixels) and their labels.

    Boxes are stored sorted by score (grain/common/schema.py); the first ``top`` are what training uses.
    The image is decoded the one way every stage does (grain.data.decode_image: ``MAX_PIXELS`` checked
    from the header before any pixel is decoded, EXIF orientation = the shards' frame); an image over
    the limit raises grain.data.ImageTooLarge naming the row's key."""
    from PIL import ImageDraw

    from grain.data import decode_image

    img = decode_image(row["image"], max_pixels=MAX_PIXELS, name=f"row {row.get('key')}")
    img.thumbnail((max_side, max_side))
    w, h = img.size
    draw = ImageDraw.Draw(img)
    descs = row.get("descriptions") or []
    triples = list(zip(row["boxes"] or [], row["box_scores"] or [], row["box_desc_index"] or []))
    triples.sort(key=lambda t: -t[1])  # already sorted in shards; cheap insurance for hand-made rows
    for i, (box, score, d) in enumerate(triples[:top]):
        colour = _PALETTE[i % len(_PALETTE)]
        x1, y1, x2, y2 = box[0] * w, box[1] * h, box[2] * w, box[3] * h
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=2)
        label = f"{descs[d] if 0 <= d < len(descs) else '?'} {score:.2f}"[:40]
        draw.rectangle([x1, y1, x1 + 6 * len(label) + 4, y1 + 12], fill=colour)
        draw.text((x1 + 2, y1), label, fill=(255, 255, 255))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _cell(text) -> str:
    return str(text if text is not None else "").replace("|", "\\|").replace("\n", " ")[:160]


def overlay_markdown(rows: list[dict], folder: str, link) -> str:
    """Write one PNG per row into ``folder``; markdown with the images (``link(name)`` → URL) and texts."""
    parts = ["# Annotation samples", "", f"The {TOP_BOXES} best boxes above the detector threshold (the trainer's targets), "
             "labelled with their description and score."]
    from grain.data import ImageDecodeError

    for row in rows:
        name = f"{row['key']}.png"
        n = len(row["boxes"] or [])
        try:
            png = draw_overlay(row)
        except ImageDecodeError as e:  # one undrawable image must not lose the report
            parts += ["", f"### `{row['key']}` — not drawn: {_cell(str(e))}"]
            continue
        with open(os.path.join(folder, name), "wb") as fh:
            fh.write(png)
        parts += ["", f"### `{row['key']}` — {min(n, TOP_BOXES)} of {n} boxes shown", "", f"![{row['key']}]({link(name)})", "",
                  f"- alt-text: {_cell(row['source_caption'])}", f"- MLLM caption: {_cell(row['mllm_caption'])}",
                  f"- descriptions: {_cell('; '.join(row['descriptions'] or []))}"]
    if not rows:
        parts.append("\n_No ok rows to show._")
    return "\n".join(parts)
