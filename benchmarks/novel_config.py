"""The bench config of `grain bench novel-concepts`, typed: sections ``bench`` (as `grain bench grounding`),
``concepts`` (the class grammar's counts: benchmarks/concepts.py), ``corpus`` (benchmarks/novel_corpus.py's
NovelCorpusSpec), ``eval`` (this file) and ``train`` (a TrainConfig section, checked by the trainer's rules).

Evaluation sets are named ``<split>-<rendering>[-clutter]``: split ``seen`` (trained classes), ``novel``
(the result) or ``dev`` (a second group of never-trained classes for validating the recipe: tuning may look
at it, never at ``novel``); rendering ``flat`` (the training rendering) or ``soft`` (never in training);
``-clutter``: the creature small among 2–3 cut-outs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from benchmarks.bench_config import BenchSection, load_bench_config
from benchmarks.creatures import RENDERINGS
from benchmarks.novel_corpus import NovelCorpusSpec
from grain.common.runconfig import STRICT_KEYS

SET_SPLITS = ("seen", "novel", "dev")


@dataclass
class ConceptsSection:
    """How many classes of each split, and how many differ from another only by binding."""

    __pydantic_config__ = STRICT_KEYS

    seen: int = 48  # trained classes
    novel: int = 24  # never-trained classes: the result
    dev: int = 12  # never-trained classes for validation (recipe choices), disjoint from novel
    novel_seen_swaps: int = 6  # novel classes = a seen class with two parts' colours swapped
    novel_binding_pairs: int = 4  # pairs of novel classes that differ only by such a swap
    dev_seen_swaps: int = 2  # dev classes = a seen class with two parts' colours swapped
    dev_binding_pairs: int = 2  # pairs of dev classes that differ only by such a swap
    min_parts: int = 3  # parts per class, at least (head and body always)
    max_parts: int = 5  # parts per class, at most
    seed: int = 11  # the grammar's seed (classes and names)
    tuxpaint_limit: int | None = None  # at most this many Tux Paint cut-outs as distractors; None = all


@dataclass
class GoalsSection:
    """What the summary checks (fixed with the sets, before any result is seen)."""

    __pydantic_config__ = STRICT_KEYS

    min_gain: float = 10.0  # GRAIN − CLIP top-1 (primary variant) on every novel set, points
    min_fusion_gain: float = 2.0  # the best fusion α < 1 over GRAIN's primary variant, points
    names_margin: float = 3.0  # `names` on novel sets within this many points of chance, both arms
    max_localisation: float = 0.6  # GRAIN boxes / best fixed layout, every seed


@dataclass
class NovelEvalSection:
    """The evaluation sets and how both arms are scored."""

    __pydantic_config__ = STRICT_KEYS

    sets: list[str] = field(default_factory=list)  # <seen|novel|dev>-<flat|soft>[-clutter]
    per_class: dict[str, int] = field(default_factory=lambda: {"seen": 11, "novel": 21, "dev": 42})  # images per class
    seed: int = 99  # placement seed of the evaluation canvases
    canvas: int | None = None  # canvas side in px; None = corpus.canvas
    single_scale: list[float] = field(default_factory=lambda: [0.55, 0.85])  # creature's longer side / canvas side
    clutter_scale: list[float] = field(default_factory=lambda: [0.32, 0.42])  # creature's longer side in a -clutter set
    clutter_distractors: list[int] = field(default_factory=lambda: [2, 3])  # [min, max] cut-outs in a -clutter set
    distractor_scale: list[float] = field(default_factory=lambda: [0.3, 0.45])  # cut-out's longer side / canvas side
    photo_background_prob: float | None = None  # None = corpus.photo_background_prob
    templates: list[str] | None = None  # prompt templates ("{}" = class name); None = the defaults
    alphas: list[float] = field(default_factory=lambda: [1.0, 0.5, 0.0])  # fusion α (GRAIN only); α = 1: descriptors
    primary_variant: str = "descriptors"  # GRAIN − CLIP compares this variant of both arms
    batch_size: int = 64  # evaluation batch size
    device: str = "cpu"  # torch device of the evaluation
    localisation_canvases: int = 512  # training-like canvases never trained on (another seed); 0: not measured
    localisation_seed: int = 4321  # their drawing seed
    goals: GoalsSection = field(default_factory=GoalsSection)


@dataclass
class NovelBenchConfig:
    """One `grain bench novel-concepts` configuration."""

    __pydantic_config__ = STRICT_KEYS

    bench: BenchSection = field(default_factory=BenchSection)
    concepts: ConceptsSection = field(default_factory=ConceptsSection)
    corpus: NovelCorpusSpec = field(default_factory=NovelCorpusSpec)
    eval: NovelEvalSection = field(default_factory=NovelEvalSection)
    train: dict = field(default_factory=dict)  # TrainConfig keys (trainers/config.py); model.kind is set per arm


def parse_novel_set(name: str) -> tuple[str, str, bool]:
    """``"novel-soft-clutter"`` → ("novel", "soft", True); ValueError naming the set otherwise."""
    parts = name.split("-")
    clutter = parts[-1] == "clutter"
    if clutter:
        parts = parts[:-1]
    if len(parts) != 2 or parts[0] not in SET_SPLITS or parts[1] not in RENDERINGS:
        raise ValueError(f"eval set {name!r}: expected <{'|'.join(SET_SPLITS)}>-<{'|'.join(RENDERINGS)}>[-clutter]")
    return parts[0], parts[1], clutter


def novel_checks(cfg: NovelBenchConfig) -> list[tuple[str, str]]:
    out = []
    if cfg.train.get("model", {}).get("kind") not in (None, "grain"):
        out.append(("train.model.kind", "is set per arm; leave it out or set it to grain"))
    for name in cfg.eval.sets:
        try:
            split, _, _ = parse_novel_set(name)
        except ValueError as e:
            out.append(("eval.sets", str(e)))
            continue
        if split not in cfg.eval.per_class:
            out.append(("eval.per_class", f"has no entry for {split!r} (set {name})"))
    for key in ("single_scale", "clutter_scale", "distractor_scale", "clutter_distractors"):
        v = getattr(cfg.eval, key)
        if len(v) != 2 or not 0 <= v[0] <= v[1]:
            out.append((f"eval.{key}", f"expected [min, max] with 0 ≤ min ≤ max, got {v}"))
    if not cfg.eval.alphas or cfg.eval.alphas[0] != 1.0:
        out.append(("eval.alphas", "must start with 1.0 (the descriptors row)"))
    return out


def load_novel_config(path: str | os.PathLike, sets: list[str] | None = None) -> dict:
    """The bench YAML with ``--set section.key=value`` overrides applied and validated (bench_config's loader)."""
    return load_bench_config(path, sets, schema=NovelBenchConfig, checks=novel_checks)


__all__ = ["ConceptsSection", "GoalsSection", "NovelBenchConfig", "NovelEvalSection", "load_novel_config", "parse_novel_set"]
