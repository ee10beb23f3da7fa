"""The stages' own entry points, called with a run file + overrides (the only place flows touch them).

Each function loads the stage's typed config with the stage's own loader and calls its entry point:
``annotators.cli.run_annotation(cfg)``, ``trainers.cli.run_training(cfg)``, ``evaluation.cli.run_eval(cfg)``.
When the flow runs on the local stack (``RAY_ADDRESS`` set) the stage is pointed at that cluster
unless the overrides already name one. Imports are lazy so deployments load without the stages' deps.
"""

from __future__ import annotations

from collections.abc import Mapping

from flows.common import as_set_items, flatten_overrides, nest, ray_address


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
    return load_config(profile=None if config else "tiny", path=config, overrides=as_set_items(flat))


def run_annotation(config: str | None, overrides: Mapping | None = None):
    from annotators.cli import run_annotation as entry

    return entry(annotation_config(config, overrides))


def training_config(config: str | None, overrides: Mapping | None = None):
    """``trainers.config.TrainConfig`` from a run file (or the tiny profile) + overrides."""
    from trainers.config import load_config

    flat = _with_ray(overrides, "ray_address")
    return load_config(path=config, profile=None if config else "tiny", overrides=nest(flat))


def training_entry():
    """``run_training(cfg) -> dict``: exported by ``trainers.cli`` per the contract, defined in ``trainers.run``."""
    import trainers.cli

    entry = getattr(trainers.cli, "run_training", None)
    if entry is None:
        from trainers.run import run_training as entry
    return entry


def run_training(config: str | None, overrides: Mapping | None = None):
    return training_entry()(training_config(config, overrides))


def eval_config(config: str | None, overrides: Mapping | None = None):
    """The evaluation stage's config from a run file (or its tiny profile) + overrides."""
    from evaluation import cli

    flat = flatten_overrides(overrides)
    return cli.load_config(path=config, profile=None if config else "tiny", overrides=nest(flat))


def run_eval(config: str | None, overrides: Mapping | None = None):
    from evaluation.cli import run_eval as entry

    return entry(eval_config(config, overrides))
