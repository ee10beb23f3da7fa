"""Using a checkpoint directly: embeddings to files (`grain embed`) and grounding texts (`grain ground`).

Embedding files hold L2-normalised float32 vectors: ``.npy`` → array [N, D] (row order = input
order; the ids go to ``<out>.ids.txt``); ``.parquet`` → columns ``id`` (path or text) and
``embedding`` (list<float32>[D]); with ``regions`` also ``region_embedding`` [Q][D] and
``region_boxes`` [Q][4] (normalised xyxy in the decoded image).
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch
import torch.nn.functional as F

from evaluation.evalsets import IMAGE_EXTS, ImageRef


def _image_paths(items: list[str]) -> list[str]:
    out = []
    for it in items:
        if os.path.isdir(it):
            for d, _, files in sorted(os.walk(it)):
                out += [os.path.join(d, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTS)]
        elif os.path.isfile(it):
            out.append(it)
        else:
            raise FileNotFoundError(f"{it}: no such image file or folder")
    if not out:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTS)}) found in {items}")
    return out


def embed_to_file(checkpoint: str, output: str, images: list[str] | None = None, texts: list[str] | None = None,
                  texts_file: str | None = None, batch_size: int = 64, regions: bool = False) -> int:
    """Embed images or texts with ``checkpoint`` and write ``output`` (.npy or .parquet); return N."""
    from evaluation.runner import encode_images, encode_texts, load_model

    if not output.endswith((".npy", ".parquet")):
        raise ValueError(f"{output}: output must end in .npy or .parquet")
    if regions and not (images and output.endswith(".parquet")):
        raise ValueError("--regions needs --images and a .parquet output")
    model, _, _ = load_model(checkpoint)
    extra = {}
    if images:
        ids = _image_paths(images)
        refs = [ImageRef(where=p, path=p) for p in ids]
        enc = encode_images(model, refs, batch_size, desc="embed")
        if regions:
            if enc["region_embed"] is None:
                raise ValueError(f"{checkpoint}: a CLIP-baseline checkpoint has no region embeddings")
            extra["region_embedding"] = F.normalize(enc["region_embed"], dim=-1).numpy().tolist()
            extra["region_boxes"] = enc["region_boxes"].numpy().tolist()
        emb = enc["image_embed"]
    else:
        if texts_file:
            with open(texts_file, encoding="utf-8") as f:
                texts = [ln.rstrip("\n") for ln in f if ln.strip()]
        if not texts:
            raise ValueError("no texts to embed")
        ids, emb = list(texts), encode_texts(model, texts, batch_size)
    emb = F.normalize(emb.float(), dim=-1).numpy().astype(np.float32)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    if output.endswith(".npy"):
        np.save(output, emb)
        with open(output + ".ids.txt", "w", encoding="utf-8") as f:
            f.write("\n".join(i.replace("\n", " ") for i in ids) + "\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        cols = {"id": pa.array(ids, pa.string()), "embedding": pa.array(list(emb), pa.list_(pa.float32()))}
        for k, v in extra.items():
            cols[k] = pa.array(v, pa.list_(pa.list_(pa.float32())))
        pq.write_table(pa.table(cols), output)
    return len(ids)


@torch.no_grad()
def _region_text_similarity(model, image, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(cosine similarity [Q, T] of every region query to every text, region boxes [Q, 4] normalised xyxy)."""
    from grain import box_ops
    from grain.data import preprocess_image

    from evaluation.runner import encode_texts

    if not texts:
        raise ValueError("no texts to ground")
    out = model.encode_image(preprocess_image(image, model.cfg.image_size)[None])
    if out.get("region_embed") is None:
        raise ValueError("this checkpoint has no region decoder (CLIP baseline): nothing to ground")
    reg = F.normalize(out["region_embed"][0].float(), dim=-1)  # [Q, D]
    txt = F.normalize(encode_texts(model, texts, context_length=model.cfg.desc_context_length), dim=-1)  # [T, D]
    boxes = box_ops.box_cxcywh_to_xyxy(out["pred_boxes"][0].float()).clamp(0, 1)  # [Q, 4]
    return reg @ txt.T, boxes


def ground(model, image, texts: list[str]) -> list[dict]:
    """For each text, the region query with the highest cosine similarity to it.

    image: RGB PIL image (decoded frame). Returns per text ``{"text", "query", "score",
    "box_xyxy"}`` with the box normalised xyxy in [0, 1] of that image (the squash-resize keeps
    normalised coordinates, so no other mapping is needed).
    """
    sim, boxes = _region_text_similarity(model, image, texts)
    best = sim.argmax(dim=0)
    return [{"text": t, "query": int(q), "score": float(sim[q, i]), "box_xyxy": [float(c) for c in boxes[q]]}
            for i, (t, q) in enumerate(zip(texts, best.tolist()))]


def match_regions(model, image, texts: list[str]) -> list[dict]:
    """For each region query, the text with the highest cosine similarity to it (``ground`` the other way
    round). Returns per query ``{"text", "query", "score", "box_xyxy"}``, box as in ``ground``."""
    sim, boxes = _region_text_similarity(model, image, texts)
    best = sim.argmax(dim=1)
    return [{"text": texts[t], "query": q, "score": float(sim[q, t]), "box_xyxy": [float(c) for c in boxes[q]]}
            for q, t in enumerate(best.tolist())]


def draw_boxes(image, found: list[dict]):
    """Copy of ``image`` with each found box (normalised xyxy) outlined and labelled ``text (score)``."""
    from PIL import ImageDraw

    palette = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]
    img = image.copy()
    # Tiny images (64-px emoji) get an upscaled canvas so labels stay legible.
    scale = max(1, 320 // max(img.size))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale))
    draw = ImageDraw.Draw(img)
    w, h = img.size
    for i, g in enumerate(found):
        c = palette[i % len(palette)]
        x1, y1, x2, y2 = g["box_xyxy"]
        draw.rectangle([x1 * w, y1 * h, x2 * w, y2 * h], outline=c, width=max(2, w // 160))
        label = f"{g['text']} ({g['score']:.2f})"
        tx, ty = x1 * w + 2, max(0, y1 * h - 12)
        bbox = draw.textbbox((tx, ty), label)
        draw.rectangle(bbox, fill=c)
        draw.text((tx, ty), label, fill=(255, 255, 255))
    return img


def ground_to_png(checkpoint: str, image_path: str, texts: list[str], output: str, per_region: bool = False) -> list[dict]:
    """`grain ground`: draw each text's best region box on the image (``per_region``: every region box with its
    best text, ``match_regions``); write PNG + JSON beside it."""
    from evaluation.evalsets import decode_ref
    from evaluation.runner import load_model

    if not os.path.isfile(image_path):
        raise FileNotFoundError(f"{image_path}: no such image file")
    model, _, _ = load_model(checkpoint)
    image = decode_ref(ImageRef(where=image_path, path=image_path))
    found = (match_regions if per_region else ground)(model, image, texts)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    draw_boxes(image, found).save(output, format="PNG")
    with open(os.path.splitext(output)[0] + ".json", "w", encoding="utf-8") as f:
        json.dump({"image": image_path, "checkpoint": checkpoint, "regions": found}, f, indent=1)
    return found
