"""The bench config of `grain bench grounding`, typed: sections ``bench``, ``classes``, ``corpus``,
``eval`` (this file and evaluation.grounded_corpus.CorpusSpec) and ``train`` (a TrainConfig section,
validated by trainers/config.py's rules when the file is loaded).

Loading, ``--set section.key=value`` parsing, coercion and error messages are grain/common/runconfig.py's, the
same for every stage; ``grain config show bench`` lists every key. ``load_bench_config`` returns the
settings as plain mappings of the keys the file and overrides set (typed values), so the prepared-corpus
digest of an unchanged file stays the same.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from evaluation.grounded_corpus import CorpusSpec
from grain.common.runconfig import STRICT_KEYS, ConfigError, Layer, load, merge
from grain.common.safety import refuse_test_hooks
from trainers.config import TEST_HOOK_KEYS, TrainConfig, run_checks


@dataclass
class BenchSection:
    """Which runs the benchmark makes."""

    __pydantic_config__ = STRICT_KEYS

    seeds: list[int] = field(default_factory=lambda: [0])  # training seeds (init + sample order)
    arms: list[Literal["clip", "grain"]] = field(default_factory=lambda: ["clip", "grain"])  # the compared arms
    torch_threads: int | None = None  # this process's torch threads (evaluation); None = library default


@dataclass
class ClassesSection:
    """Which emoji classes are seen in training and which are held out."""

    __pydantic_config__ = STRICT_KEYS

    subsets: list[str] = field(default_factory=lambda: ["animals", "food"])  # evaluation.emoji SUBSETS
    limit_per_subset: int | None = None  # first N classes (by code point) of each subset; None = all
    train_style: str = "google"  # the only emoji style seen in training
    holdout_frac: float = 0.25  # classes never in training images or training text
    split_seed: int = 0  # seed of the seen/held-out split
    tuxpaint: bool = True  # real cut-out photographs as extra training objects
    tuxpaint_limit: int | None = None  # at most this many Tux Paint objects; None = all


@dataclass
class ClutterSection:
    """``<style>-<split>-clutter`` sets: a small target among larger distractors that are not in the set's
    label space (Tux Paint cut-outs; for ``-unseen`` sets also seen-class emoji of the same style)."""

    __pydantic_config__ = STRICT_KEYS

    per_class_seen: int = 3  # canvases per class of a -seen-clutter set (196 classes → 588 images)
    per_class_unseen: int = 8  # canvases per class of an -unseen-clutter set (65 classes → 520 images)
    target_min_scale: float = 0.15  # the target's longer side / canvas side
    target_max_scale: float = 0.25  # the target's largest longer side / canvas side
    distractors: list[int] = field(default_factory=lambda: [2, 3])  # [min, max] distractors per canvas
    distractor_min_scale: float = 0.22  # a distractor's longer side / canvas side, at least
    distractor_max_scale: float = 0.4  # ... at most
    seed: int = 98  # placement seed (its own, so adding clutter sets leaves the other sets unchanged)


@dataclass
class EvalSection:
    """The evaluation sets and how both arms are scored (fixed before any result is seen)."""

    __pydantic_config__ = STRICT_KEYS

    sets: list[str] = field(default_factory=list)  # <style>-<seen|unseen>: single-object canvases; -clutter
    # suffix: a small target among distractors (see ClutterSection)
    heldout_sets: list[str] = field(default_factory=list)  # the sets whose numbers the summary leads with
    per_class: int = 2  # canvases per class and set
    seed: int = 0  # placement seed of the evaluation canvases
    canvas: int | None = None  # canvas side in px; None = corpus.canvas
    min_scale: float = 0.3  # object's longer side as a fraction of the canvas side
    max_scale: float = 0.6  # largest object side as a fraction of the canvas side
    photo_background_prob: float | None = None  # None = corpus.photo_background_prob
    templates: list[str] | None = None  # prompt templates ("{}" = class name); None = the defaults
    alphas: list[float] = field(default_factory=lambda: [1.0, 0.5])  # fusion α (GRAIN only); α = 1: descriptors
    primary_variant: str = "descriptors"  # the closing GRAIN − CLIP number compares this variant
    batch_size: int = 64  # evaluation batch size
    device: str = "cpu"  # torch device of the evaluation
    clutter: ClutterSection = field(default_factory=ClutterSection)  # the -clutter sets
    # Localisation of every GRAIN checkpoint on multi-object canvases never trained on (the training
    # corpus's spec, another seed): matched 1 − GIoU / best image-independent boxes (grounding_boxes.py).
    localisation_canvases: int = 512  # unseen multi-object canvases for the localisation figure; 0: not measured
    localisation_seed: int = 4321  # drawing seed of those canvases (the corpus spec otherwise)
    # A GRAIN arm whose mean ratio is above this is "not grounded": its zero-shot rows are marked so.
    grounded_max_ratio: float = 0.85


@dataclass
class BenchConfig:
    """One `grain bench grounding` configuration."""

    __pydantic_config__ = STRICT_KEYS

    bench: BenchSection = field(default_factory=BenchSection)
    classes: ClassesSection = field(default_factory=ClassesSection)
    corpus: CorpusSpec = field(default_factory=CorpusSpec)
    eval: EvalSection = field(default_factory=EvalSection)
    train: dict = field(default_factory=dict)  # TrainConfig keys (trainers/config.py); model.kind is set per arm


def parse_set_name(name: str) -> tuple[str, str]:
    """``"twitter-unseen"`` or ``"twitter-unseen-clutter"`` → ("twitter", "unseen"); ValueError naming the
    set otherwise (``is_clutter`` tells the two kinds apart)."""
    from evaluation.emoji import STYLES

    style, _, split = name.partition("-")
    if split.endswith("-clutter"):
        split = split[: -len("-clutter")]
    if style not in STYLES or split not in ("seen", "unseen"):
        raise ValueError(f"eval set {name!r}: expected <style>-<seen|unseen>[-clutter] with style in {STYLES}")
    return style, split


def is_clutter(name: str) -> bool:
    """A ``-clutter`` set: a small target among distractors (EvalSection.clutter)."""
    return name.endswith("-clutter")


def bench_checks(cfg: BenchConfig) -> list[tuple[str, str]]:
    out = []
    if cfg.train.get("model", {}).get("kind") not in (None, "grain"):
        out.append(("train.model.kind", "is set per arm; leave it out or set it to grain"))
    for name in cfg.eval.sets:
        try:
            parse_set_name(name)
        except ValueError as e:
            out.append(("eval.sets", str(e)))
    c = cfg.eval.clutter
    if len(c.distractors) != 2 or not 0 <= c.distractors[0] <= c.distractors[1]:
        out.append(("eval.clutter.distractors", f"expected [min, max] with 0 ≤ min ≤ max, got {c.distractors}"))
    extra = sorted(set(cfg.eval.heldout_sets) - set(cfg.eval.sets))
    if extra:
        out.append(("eval.heldout_sets", f"{extra} are not in eval.sets"))
    return out


def _present(typed: dict, raw: dict) -> dict:
    """The typed values of the keys ``raw`` sets (recursively)."""
    return {k: _present(typed[k], v) if isinstance(v, dict) and isinstance(typed.get(k), dict) else typed.get(k, v)
            for k, v in raw.items()}


def load_bench_config(path: str | os.PathLike, sets: list[str] | None = None, schema: type = None,
                      checks=None) -> dict:
    """The bench YAML with ``--set section.key=value`` overrides applied, validated against ``schema``
    (default ``BenchConfig`` with ``bench_checks``; its ``train`` section by the trainer's own rules); a dict
    of sections (the keys given, typed) plus ``_path``. Errors name the key, the value and the file or flag."""
    schema, checks = (BenchConfig, bench_checks) if schema is None else (schema, checks)
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"bench config not found: {p}")
    layers = [Layer.from_file(p), *Layer.from_sets(sets)]
    cfg = load(schema, layers, checks)
    train_layers = [Layer(layer.data["train"], layer.source) for layer in layers if isinstance(layer.data.get("train"), dict)]
    for layer in train_layers:
        refuse_test_hooks({k: layer.data.get(k) for k in TEST_HOOK_KEYS}, layer.source)
    load(TrainConfig, train_layers, run_checks, prefix="train.")  # the trainer's own rules, named with their source
    raw: dict = {}
    for layer in layers:
        raw = merge(raw, layer.data)
    out = _present(dataclasses.asdict(cfg), raw)
    out["train"] = raw.get("train", {})
    for s in schema.__dataclass_fields__:
        out.setdefault(s, {})
    out["_path"] = str(p)
    return out


__all__ = ["BenchConfig", "BenchSection", "ClassesSection", "ClutterSection", "is_clutter", "parse_set_name", "ConfigError", "EvalSection", "load_bench_config"]
