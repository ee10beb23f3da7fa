"""The stages' own entry points, called with a run file + overrides (the only place flows touch them).

Each function loads the stage's typed config with the stage's own loader and calls the function its
``grain`` subcommand calls: ``annotators.pipeline.run_annotation(cfg)``, ``trainers.run.run_training(cfg)``,
``evaluation.runner.run_eval(cfg)`` (docs/ARCHITECTURE.md, "Stage entry points").
When the flow runs on the local stack (``RAY_ADDRESS`` set) the stage is pointed at that cluster
unless the overrides already name one. The ``overrides`` mapping reaches the stage's loader as is (no
round trip through ``--set`` strings); its errors name the source ``flow parameter overrides``.
Imports are lazy so deployments load without the stages' deps.
"""

from __future__ import annotations

from collections.abc import Mapping

from flows.common import ray_address
from grain.common.runconfig import flatten_overrides

SOURCE = "flow parameter overrides"  # how validation errors name the flow's ``overrides``


def _with_ray(overrides: Mapping | None, key: str) -> dict:
    flat = flatten_overrides(overrides)
    addr = ray_address()
    if addr and key not in flat:
        flat[key] = addr
    return flat


def annotation_config(config: str | None, overrides: Mapping | None = None):
    """``annotators.config.AnnotateConfig`` from a run file (or the tiny profile) + overrides."""
    from annotators.config import load_config

    flat = _with_ray(overrides, "run.ray_address")
    return load_config(profile=None if config else "tiny", path=config, overrides=flat, source=SOURCE)


def annotation_entry():
    """``run_annotation(cfg) -> summary``: defined in ``annotators.pipeline`` (``grain annotate`` calls it)."""
    from annotators.pipeline import run_annotation

    return run_annotation


def training_config(config: str | None, overrides: Mapping | None = None):
    """``trainers.config.TrainConfig`` from a run file (or the tiny profile) + overrides."""
    from trainers.config import load_config

    flat = _with_ray(overrides, "ray_address")
    return load_config(path=config, profile=None if config else "tiny", overrides=flat, source=SOURCE)


def training_entry():
    """``run_training(cfg) -> dict``: defined in ``trainers.run`` (``grain train`` calls it)."""
    from trainers.run import run_training

    return run_training


# Evaluation defaults when no run file is given: the local sets `infra/setup.sh` builds (DEFAULT_SETS
# of evaluation.datasets are built on demand otherwise).
EVAL_DEFAULTS = {"datasets": ["emoji-google-animals"], "limit": 200}  # 130 classes: ~1–2 min on 2 CPUs


def eval_config(config: str | None, overrides: Mapping | None = None):
    """``evaluation.config.EvalConfig`` from a run file (``eval:`` section or flat) + overrides."""
    from evaluation.config import load_config

    return load_config(config, flatten_overrides(overrides), defaults=None if config else EVAL_DEFAULTS, source=SOURCE)


def run_eval(config: str | None, overrides: Mapping | None = None) -> dict:
    """``evaluation.runner.run_eval(cfg) -> run dict`` (``grain eval`` calls it)."""
    from evaluation.runner import run_eval as entry

    return entry(eval_config(config, overrides))


def export_model(checkpoint: str, output: str) -> dict:
    """``evaluation.export.export_checkpoint`` (``grain export`` calls it): ``{file name: path}`` of the folder."""
    from evaluation.export import export_checkpoint

    return export_checkpoint(checkpoint, output)
