"""Training rows and evaluation folders of `grain bench novel-concepts` (classes: ``benchmarks.concepts``,
drawing: ``benchmarks.creatures``).

A training row is one canvas (a plain colour or a dimmed crop of a bundled photograph) with 1–2 seen
creatures and 0–2 real cut-outs (Tux Paint stamps) as distractors, in the annotation shard schema
(``grain.common.schema``), written as the real pipeline would:

    source_caption   the alt-text names the classes: "a photo of a bodum and a magellanic penguin"
    mllm_caption     dense: every part and its attributes, in varying order and phrasing ("a creature
                     with a round red head, a body that is square, blue and striped and long green legs,
                     beside a magellanic penguin.")
    descriptions     one per part ("a round red head"), one per distractor ("a magellanic penguin"), in a
                     random order, at most 10 (the annotation stage's cap)
    boxes            the exact box of each part and distractor (normalised xyxy in the canvas)
    box_scores       a simulated detector's confidence, uniform in [0.5, 1): the trainer's top-5 by score
                     is a different subset of parts from row to row

Evaluation folders (ImageFolder layout of ``evaluation.evalsets``: classes.json, descriptors.json) hold one
creature per canvas, large (``single``) or small among 2–3 cut-outs (``clutter``); their ``.bench-set.json``
records every image's object box and each part's box and description.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

from PIL import Image

from benchmarks.concepts import Concept
from benchmarks.creatures import RENDERINGS, render
from evaluation.grounded_corpus import (FORMAT_VERSION, ObjectSpec, caption_for, compose, jpeg_bytes, make_canvas,
                                        spec_digest, with_article)
from evaluation.grounded_evalsets import build_image_folder, least_overlap_position
from grain.common.runconfig import STRICT_KEYS

NOVEL_FORMAT = "1"  # bump when the drawing or the text changes: cached corpora and sets rebuild
INTROS = ("a creature with {}", "an animal that has {}", "a small beast with {}", "a strange creature having {}")
PAIR_JOINS = ("{}, and {}", "{}, next to {}", "two creatures: {}; and {}")


@dataclass
class NovelCorpusSpec:
    """How the training corpus is drawn (the ``corpus:`` section of the novel-concepts bench config)."""

    __pydantic_config__ = STRICT_KEYS

    images: int = 4000  # rows written
    canvas: int = 128  # canvas side in px (training squash-resizes to the model's image size)
    creatures: list[int] = field(default_factory=lambda: [1, 2])  # [min, max] seen creatures per canvas
    creature_scale: list[float] = field(default_factory=lambda: [0.4, 0.75])  # creature's longer side / canvas side
    distractors: list[int] = field(default_factory=lambda: [0, 2])  # [min, max] Tux Paint cut-outs per canvas
    distractor_scale: list[float] = field(default_factory=lambda: [0.2, 0.4])  # cut-out's longer side / canvas side
    max_overlap: float = 0.15  # creatures are placed where they overlap earlier objects least (≤ this if possible)
    photo_background_prob: float = 0.5  # else a plain light colour
    rendering: str = "flat"  # benchmarks.creatures RENDERINGS: the one training rendering
    shard_size: int = 500  # rows per Parquet shard
    row_group_size: int = 100  # small row groups: the trainer shuffles within windows of groups
    seed: int = 1234  # drawing seed

    def __post_init__(self):
        for name in ("creatures", "distractors", "creature_scale", "distractor_scale"):
            lo, hi = getattr(self, name) if len(getattr(self, name)) == 2 else (1, 0)
            if not 0 <= lo <= hi:
                raise ValueError(f"corpus.{name}: expected [min, max] with 0 ≤ min ≤ max, got {getattr(self, name)}")
        if self.creatures[0] < 1:
            raise ValueError(f"corpus.creatures: every canvas needs a creature, got {self.creatures}")
        if self.rendering not in RENDERINGS:
            raise ValueError(f"corpus.rendering: {self.rendering!r} is not one of {RENDERINGS}")


def _join_and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def creature_phrase(c: Concept, rng: random.Random, compact: bool = False) -> str:
    """The creature as a dense caption says it: parts in a random order, each in a random phrasing."""
    parts = list(c.parts)
    rng.shuffle(parts)
    said = [p.phrases()[0] if compact else rng.choice(p.phrases()) for p in parts]
    return rng.choice(INTROS).format(_join_and(said))


def dense_caption(creatures: list[Concept], distractors: list[str], rng: random.Random, max_tokens: int = 75) -> str:
    """The MLLM caption of a canvas. When it would pass ``max_tokens`` BPE tokens, the compact phrasing (the
    descriptions themselves) is used, then the distractors are left out, as a caption model's length limit would."""
    from grain.tokenizer import get_tokenizer

    state = rng.getstate()
    for compact, with_distractors in ((False, True), (True, True), (True, False)):
        rng.setstate(state)  # every attempt draws the same orders
        phrases = [creature_phrase(c, rng, compact) for c in creatures]
        text = phrases[0] if len(phrases) == 1 else rng.choice(PAIR_JOINS).format(*phrases)
        if distractors and with_distractors:
            text += ", beside " + caption_for(distractors)
        text += "."
        if len(get_tokenizer().encode(text)) <= max_tokens:
            break
    return text


def _paste(canvas: Image.Image, sprite: Image.Image, placed: list[list[float]], rng: random.Random) -> list[float]:
    x, y, box = least_overlap_position(sprite.width, sprite.height, canvas.width, placed, rng)
    canvas.paste(sprite, (x, y), mask=sprite.getchannel("A"))
    return box


def draw_creature(canvas: Image.Image, c: Concept, scale: float, placed: list[list[float]], rng: random.Random,
                  rendering: str, textures: list[Image.Image]) -> tuple[list[float], list[tuple[str, list[float]]]]:
    """Render ``c`` with its longer side ``scale`` × canvas side and paste it where it overlaps ``placed`` least;
    returns (object box, [(part description, part box), ...]), boxes normalised xyxy in the canvas."""
    size = canvas.width
    sprite, parts = render(c, max(8, round(scale * size)), rng, rendering, textures)
    box = _paste(canvas, sprite, placed, rng)
    x0, y0 = box[0] * size, box[1] * size
    return box, [(p.description(), [min(1.0, max(0.0, v)) for v in
                                    ((x0 + b[0]) / size, (y0 + b[1]) / size, (x0 + b[2]) / size, (y0 + b[3]) / size)])
                 for p, b in parts]


def training_row(index: int, seen: list[Concept], stamps: list[ObjectSpec], spec: NovelCorpusSpec, rng: random.Random,
                 photos: list[Image.Image], textures: list[Image.Image]) -> dict:
    """One schema row (see the module docstring)."""
    from grain.common.schema import MAX_DESCRIPTIONS, descriptions_and_index, empty_row

    canvas = make_canvas(rng, spec.canvas, photos, spec.photo_background_prob)
    creatures = rng.sample(seen, rng.randint(*spec.creatures))
    others = rng.sample(stamps, min(len(stamps), rng.randint(*spec.distractors))) if stamps else []
    placed = compose(others, rng, canvas, *spec.distractor_scale, spec.max_overlap)  # cut-outs first, creatures on top
    found: list[tuple[str, list[float]]] = [(with_article(o.name), b) for o, b in zip(others, placed)]
    for c in creatures:
        box, parts = draw_creature(canvas, c, rng.uniform(*spec.creature_scale), placed, rng, spec.rendering, textures)
        placed.append(box)
        found += parts
    rng.shuffle(found)  # the order a caption model would list things in; it keeps at most MAX_DESCRIPTIONS
    kept = list(dict.fromkeys(d for d, _ in found))[:MAX_DESCRIPTIONS]
    scored = sorted(((rng.uniform(0.5, 1.0), d, b) for d, b in found if d in kept), key=lambda t: -t[0])  # by score
    descriptions, box_desc_index = descriptions_and_index([d for _, d, _ in scored])
    names = [c.name for c in creatures] + [o.name for o in others]
    row = empty_row(f"n{index:07d}", f"novel-concepts::{index}")
    row.update(
        image=jpeg_bytes(canvas), image_width=spec.canvas, image_height=spec.canvas,
        source_caption=f"a photo of {caption_for(names)}", mllm_caption=dense_caption(creatures, [o.name for o in others], rng),
        descriptions=descriptions, boxes=[b for _, _, b in scored], box_scores=[s for s, _, _ in scored],
        box_desc_index=box_desc_index,
        mllm_model="novel-concepts (part grammar)", detector_model="novel-concepts (exact part boxes)",
    )
    return row


def load_textures() -> list[Image.Image]:
    """Greyscale versions of the bundled background photographs: brightness textures for part fills."""
    from evaluation.grounded_corpus import load_backgrounds

    return [p.convert("L") for p in load_backgrounds()]


def build_corpus(out_dir: str, spec: NovelCorpusSpec, seen: list[Concept], stamps: list[ObjectSpec],
                 progress: bool = True) -> dict:
    """Write ``spec.images`` rows as validated shards ``train-NNNNN.parquet`` under ``out_dir``; skipped when
    ``out_dir/corpus.json`` records the same inputs. Returns that manifest."""
    from evaluation.grounded_corpus import load_backgrounds, write_shards

    digest = spec_digest(FORMAT_VERSION, NOVEL_FORMAT, spec, seen, stamps)
    photos, textures = load_backgrounds(), load_textures()
    rng = random.Random(spec.seed)
    rows = (training_row(i, seen, stamps, spec, rng, photos, textures) for i in range(spec.images))
    return write_shards(out_dir, digest, rows, spec.images, spec.shard_size, spec.row_group_size,
                        {"spec": spec, "seen_classes": len(seen), "tuxpaint_objects": len(stamps)},
                        desc="novel-concepts corpus", progress=progress)


@dataclass
class SetSpec:
    """One evaluation folder: its classes, rendering and layout."""

    classes: list[Concept]
    rendering: str
    clutter: bool
    per_class: int
    seed: int
    canvas: int
    scale: tuple[float, float]  # the creature's longer side / canvas side
    distractors: tuple[int, int] = (0, 0)  # clutter: [min, max] cut-outs
    distractor_scale: tuple[float, float] = (0.3, 0.45)
    photo_prob: float = 0.5


def build_eval_set(out_dir: str, s: SetSpec, stamps: list[ObjectSpec]) -> str:
    """The ImageFolder set of ``s`` (rebuilt only when its inputs change). Descriptors = each class's part
    descriptions; ``.bench-set.json``'s ``image_info`` holds each image's parts ``[[description, box], ...]``."""
    if s.clutter and not stamps:
        raise ValueError(f"{out_dir}: a clutter set needs Tux Paint cut-outs as distractors (apt-get install tuxpaint-stamps-default)")
    digest = spec_digest(FORMAT_VERSION, NOVEL_FORMAT, s, stamps if s.clutter else [])
    by_name = {c.name: c for c in s.classes}
    objects = [ObjectSpec(c.name, "; ".join(c.descriptions()), "", "creature", label=f"c{i:02d}") for i, c in enumerate(s.classes)]
    textures = load_textures()

    def draw(o: ObjectSpec, rng: random.Random, img: Image.Image):
        placed = []
        if s.clutter:
            others = [rng.choice(stamps) for _ in range(rng.randint(*s.distractors))]
            placed = compose(others, rng, img, *s.distractor_scale)
        box, parts = draw_creature(img, by_name[o.name], rng.uniform(*s.scale), placed, rng, s.rendering, textures)
        return box, {"parts": [[d, [round(v, 4) for v in b]] for d, b in parts]}

    return build_image_folder(out_dir, digest, objects, {c.name: c.descriptions() for c in s.classes}, s.per_class,
                              s.seed, s.canvas, s.photo_prob, draw, {"kind": "clutter" if s.clutter else "single",
                                                                     "rendering": s.rendering})


__all__ = ["NovelCorpusSpec", "SetSpec", "build_corpus", "build_eval_set", "creature_phrase", "dense_caption",
           "draw_creature", "training_row"]
