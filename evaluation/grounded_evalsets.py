"""Evaluation sets drawn like the grounded corpus (``evaluation.grounded_corpus``), in the ImageFolder layout
of ``evaluation.evalsets`` (classes.json + descriptors.json):

- ``build_eval_folder``: one object per canvas;
- ``build_clutter_folder``: each class's object small among larger distractors from outside the label space.

Each folder is rebuilt only when its inputs change (``.bench-set.json`` digest).
"""

from __future__ import annotations

import json
import os
import random
import re

from PIL import Image

from evaluation.grounded_corpus import (FORMAT_VERSION, JPEG_QUALITY, ObjectSpec, compose, load_backgrounds,
                                        load_sprite, make_canvas, spec_digest)
from grain.box_ops import iou


def build_eval_folder(out_dir: str, objects: list[ObjectSpec], descriptors: dict[str, list[str]], per_class: int,
                      seed: int, canvas: int, min_scale: float, max_scale: float, photo_prob: float) -> str:
    """ImageFolder set: ``per_class`` single-object canvases per class (``<label>/<i>.jpg``),
    classes.json (folder → name) and descriptors.json (name → descriptors). Rebuilt only when its
    inputs change (``.bench-set.json`` digest)."""
    digest = spec_digest(FORMAT_VERSION, objects, descriptors, per_class, seed, canvas, min_scale, max_scale, photo_prob)

    def draw(o: ObjectSpec, rng: random.Random, img: Image.Image) -> list[float]:
        return compose([o], rng, img, min_scale, max_scale)[0]

    return build_image_folder(out_dir, digest, objects, descriptors, per_class, seed, canvas, photo_prob, draw, {})


def build_clutter_folder(out_dir: str, targets: list[ObjectSpec], distractors: list[ObjectSpec],
                         descriptors: dict[str, list[str]], per_class: int, seed: int, canvas: int,
                         target_scale: tuple[float, float], distractor_scale: tuple[float, float],
                         n_distractors: tuple[int, int], photo_prob: float) -> str:
    """ImageFolder set like ``build_eval_folder``, but each canvas holds its class's object small
    (``target_scale``) among ``n_distractors`` (inclusive range) larger objects drawn from ``distractors``
    (objects outside the set's label space). Distractors are pasted first and the target last, so the
    target is never occluded. ``.bench-set.json`` also records each image's target box (normalised xyxy)."""
    if not distractors and n_distractors[1] > 0:
        raise ValueError(f"{out_dir}: a clutter set needs distractor objects")
    digest = spec_digest(FORMAT_VERSION, "clutter", targets, distractors, descriptors, per_class, seed, canvas,
                         target_scale, distractor_scale, n_distractors, photo_prob)

    def draw(o: ObjectSpec, rng: random.Random, img: Image.Image) -> list[float]:
        others = [rng.choice(distractors) for _ in range(rng.randint(*n_distractors))]
        boxes = compose(others, rng, img, *distractor_scale)
        # The target last: placed where it overlaps the distractors least (compose's rule), never occluded.
        return _compose_after(o, boxes, rng, img, target_scale)[0]

    return build_image_folder(out_dir, digest, targets, descriptors, per_class, seed, canvas, photo_prob, draw,
                         {"kind": "clutter"})


def build_image_folder(out_dir: str, digest: str, objects: list[ObjectSpec], descriptors: dict[str, list[str]],
                  per_class: int, seed: int, canvas: int, photo_prob: float, draw, meta: dict) -> str:
    """The shared part of every builder: unless ``.bench-set.json`` holds ``digest``, draw ``per_class``
    canvases per object (``draw(obj, rng, canvas) → the object's box``, or ``(box, info)`` with a JSON-able
    ``info`` per image) into a temporary folder with classes.json, descriptors.json and the marker (``meta``
    + every image's target box, + ``image_info`` when ``draw`` gives it), then swap it in."""
    import shutil

    marker = os.path.join(out_dir, ".bench-set.json")
    if os.path.exists(marker):
        with open(marker, encoding="utf-8") as f:
            if json.load(f).get("digest") == digest:
                return out_dir
    tmp = f"{out_dir}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    rng = random.Random(seed)
    photos = load_backgrounds()
    classes, target_boxes, image_info = {}, {}, {}
    for o in objects:
        folder = re.sub(r"[^a-z0-9]+", "_", f"{o.label}_{o.name}".lower()).strip("_")[:100]
        os.makedirs(os.path.join(tmp, folder))
        classes[folder] = o.name
        for k in range(per_class):
            img = make_canvas(rng, canvas, photos, photo_prob)
            drawn = draw(o, rng, img)
            box, info = drawn if isinstance(drawn, tuple) else (drawn, None)
            img.save(os.path.join(tmp, folder, f"{k}.jpg"), quality=JPEG_QUALITY)
            target_boxes[f"{folder}/{k}.jpg"] = [round(v, 4) for v in box]
            if info is not None:
                image_info[f"{folder}/{k}.jpg"] = info
    classes = dict(sorted(classes.items()))  # label order = sorted folder order (evaluation.evalsets)
    with open(os.path.join(tmp, "classes.json"), "w", encoding="utf-8") as f:
        json.dump(classes, f, indent=1, ensure_ascii=False)
    with open(os.path.join(tmp, "descriptors.json"), "w", encoding="utf-8") as f:
        json.dump({n: descriptors[n] for n in classes.values()}, f, indent=1, ensure_ascii=False)
    with open(os.path.join(tmp, ".bench-set.json"), "w", encoding="utf-8") as f:
        json.dump({"digest": digest, "classes": len(classes), "per_class": per_class, **meta,
                   "target_boxes": target_boxes, **({"image_info": image_info} if image_info else {})}, f)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return out_dir


def least_overlap_position(w: int, h: int, size: int, placed: list[list[float]], rng: random.Random,
                           tries: int = 30) -> tuple[int, int, list[float]]:
    """Top-left pixel (x, y) and normalised xyxy box of a w×h sprite on a size×size canvas: of up to ``tries``
    uniform draws, the one whose largest IoU with the ``placed`` boxes is smallest (the first with none)."""
    best = None
    for _ in range(tries):
        x, y = rng.randint(0, size - w), rng.randint(0, size - h)
        box = [x / size, y / size, (x + w) / size, (y + h) / size]
        worst = max((iou(box, b) for b in placed), default=0.0)
        if best is None or worst < best[0]:
            best = (worst, x, y, box)
        if worst == 0.0:
            break
    return best[1], best[2], best[3]


def _compose_after(obj: ObjectSpec, placed: list[list[float]], rng: random.Random, canvas: Image.Image,
                   scale: tuple[float, float], tries: int = 30) -> list[list[float]]:
    """Paste ``obj`` on top of already ``placed`` boxes (compose's placement rule against them)."""
    size = canvas.width
    sprite = load_sprite(obj.path)
    longer = max(2, round(rng.uniform(*scale) * size))
    f = longer / max(sprite.size)
    w, h = max(1, round(sprite.width * f)), max(1, round(sprite.height * f))
    x, y, box = least_overlap_position(w, h, size, placed, rng, tries)
    scaled = sprite.resize((w, h), Image.Resampling.LANCZOS)
    canvas.paste(scaled, (x, y), mask=scaled.getchannel("A"))
    return [box]


__all__ = ["build_clutter_folder", "build_eval_folder", "build_image_folder", "least_overlap_position"]
