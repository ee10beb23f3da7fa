"""The evaluation run config: run file (``eval:`` section, else the whole file) + flags + overrides.

    cfg = load_config("configs/eval-tiny.yaml", overrides={"checkpoint": "final.pt"}, sets=["limit=50"])

Loading, ``--set`` parsing, coercion and error messages are grain/common/runconfig.py's, the same for every
stage; ``grain config show eval`` lists every key with its type, default and meaning.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from grain.common.runconfig import STRICT_KEYS, ConfigError, Layer, load


@dataclass
class EvalConfig:
    """One evaluation run. ``datasets``: folders/shards (any layout of evaluation.evalsets) or names of
    the local sets (``emoji-google-animals``, ``flags``; built on demand by evaluation.datasets)."""

    __pydantic_config__ = STRICT_KEYS

    checkpoint: str  # checkpoint file in grain.checkpoint's format (e.g. a training run's final.pt)
    datasets: list[str]  # data set folders/shards or local set names (`grain data list`)
    output: str = "eval-out"  # output folder: results.json, results.md, results.png
    alphas: list[float] = field(default_factory=lambda: [1.0, 0.75, 0.5, 0.25, 0.0])  # fusion weights α of the global score
    batch_size: int = 64  # images per forward pass
    limit: int | None = None  # at most this many images per set (round-robin over classes)
    templates: list[str] | None = None  # overrides the set's and grain.zeroshot's default templates
    captions: Literal["both", "source", "mllm"] = "both"  # annotated shards as retrieval sets: which captions
    train_manifest: str | list[str] | None = None  # training shards for the seen/unseen split
    model_name: str | None = None  # label in outputs (default: the checkpoint's file name)
    device: str = "cpu"  # torch device of the model
    build_missing: bool = True  # build a named local set when it is not built yet
    progress: bool = True  # progress bars (encoding images, class embeddings); off for quiet callers

    @classmethod
    def from_dict(cls, d: dict, source: str = "<dict>") -> "EvalConfig":
        """A validated EvalConfig from a mapping; unknown keys and wrong types name the key and ``source``."""
        return load(cls, [Layer(dict(d), source)], eval_checks)


def eval_checks(cfg: EvalConfig) -> list[tuple[str, str]]:
    out = []
    if cfg.batch_size < 1:
        out.append(("batch_size", f"must be >= 1, got {cfg.batch_size!r}"))
    if cfg.limit is not None and cfg.limit < 1:
        out.append(("limit", f"must be >= 1 or null, got {cfg.limit!r}"))
    bad = [a for a in cfg.alphas if not 0.0 <= a <= 1.0]
    if bad:
        out.append(("alphas", f"every α must be in [0, 1], got {bad}"))
    return out


def load_config(path: str | os.PathLike | None = None, overrides: Mapping | None = None,
                sets: Sequence[str] | None = None, source: str = "overrides",
                defaults: Mapping | None = None) -> EvalConfig:
    """``defaults`` (a mapping, e.g. a flow's default sets), then the run file ``path``, then ``overrides``
    (named ``source`` in errors), then ``--set`` items; validated into EvalConfig."""
    layers = [Layer(dict(defaults), "defaults")] if defaults else []
    if path:
        layers.append(Layer.from_file(path, "eval"))
    if overrides:
        layers.append(Layer.from_overrides(overrides, source))
    layers += Layer.from_sets(sets)
    return load(EvalConfig, layers, eval_checks)


__all__ = ["ConfigError", "EvalConfig", "eval_checks", "load_config"]
