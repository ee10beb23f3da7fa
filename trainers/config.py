"""Typed training configuration: YAML run file → ``TrainConfig`` → the builders in ``trainers/``.

A run file is either a flat training config or a pipeline run file with a ``train:`` section (other
stages keep their own sections beside it). ``--set key=value`` overrides use dotted keys
(``optim.lr=1e-3``, ``model.kind=clip``); values are parsed as YAML scalars.

Profiles map to the shipped run files: ``tiny`` → ``configs/tiny-cpu.yaml`` (2 CPU workers, the tiny
GRAIN preset), ``paper`` → ``configs/vit-b-16-cc12m.yaml`` (the release recipe, METHOD.md §4).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from grain.safety import refuse_test_hooks

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
PROFILES = {"tiny": "tiny-cpu.yaml", "paper": "vit-b-16-cc12m.yaml"}


@dataclass
class DataSettings:
    """How annotated shards become batches (METHOD.md §1, §4)."""

    path: str = ""  # directory or fsspec URI (s3://…) holding annotated *.parquet shards
    alt_text_prob: float = 0.5  # P(alt-text) when both captions exist; else the MLLM caption
    shuffle_window: int = 8  # row groups whose rows are shuffled together (bounded memory, see plan.py)
    decode_threads: int = 4  # PIL decode + resize threads per worker
    prefetch_batches: int = 2  # decoded batches queued ahead of the step
    image_size: int | None = None  # None: the model preset's image size


@dataclass
class OptimSettings:
    """AdamW + per-step schedule of the release (METHOD.md §4)."""

    lr: float = 1e-3  # peak learning rate
    warmup_start_lr: float = 1e-6  # linear warm-up starts here
    min_lr: float = 1e-5  # cosine ends here
    warmup_epochs: float = 1.0  # warm-up length in epochs (converted to steps)
    warmup_steps: int | None = None  # overrides warmup_epochs when set
    weight_decay: float = 0.1  # none on biases, norms, logit scale (GrainModel.param_groups)
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    grad_clip: float | None = None  # max global grad norm; None: no clipping


@dataclass
class TrainConfig:
    """Everything one training run needs. ``batch_size`` is per worker (global = batch_size × workers)."""

    output: str = ""  # run directory or URI: run.json, metrics.jsonl, tensorboard/, final.pt, ray/
    model: dict = field(default_factory=lambda: {"preset": "tiny", "kind": "grain"})  # preset + ModelConfig overrides
    loss: dict = field(default_factory=dict)  # LossConfig overrides (lambda_box, lambda_rd, ...)
    data: DataSettings = field(default_factory=DataSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    epochs: int = 1  # the schedule spans all epochs; max_steps only stops early (resumable)
    batch_size: int = 8
    seed: int = 0
    max_steps: int | None = None  # stop after this global step (a checkpoint is written there)
    workers: int = 2  # Ray Train workers
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    torch_threads: int | None = None  # CPU training: intra-op threads per worker (None: max(1, cpus_per_worker))
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16
    checkpoint_every: int = 100  # steps between Ray checkpoints (and always at the last step)
    keep_checkpoints: int = 2
    log_every: int = 1  # steps between metric reports (report() is a barrier across workers)
    max_failures: int = 0  # FailureConfig: worker-group restarts from the latest checkpoint
    run_name: str | None = None  # RunConfig name; default: the output folder's name
    storage_path: str | None = None  # RunConfig storage; default: <output>/ray
    ray_address: str | None = None  # None: start/join per ray.init defaults ("auto" to join a cluster)
    find_unused_parameters: bool = False  # GrainLoss keeps region heads in the graph on box-less ranks (zero-valued terms)
    # Chaos test: the last rank raises once before this step (local output). A test hook: refused from
    # run files and overrides unless GRAIN_ALLOW_TEST_HOOKS=1 (grain/safety.py).
    debug_fail_at_step: int | None = None
    log_sample_keys: bool = False  # write <output>/sample_keys/rank<r>.jsonl (resume tests, audits)

    def validate(self) -> "TrainConfig":
        if not self.data.path:
            raise ValueError("training config: data.path (--data) is required")
        if not self.output:
            raise ValueError("training config: output (--output) is required")
        for name in ("epochs", "batch_size", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"training config: {name} must be >= 1, got {getattr(self, name)}")
        if self.workers < 0:
            raise ValueError(f"training config: workers must be >= 0, got {self.workers}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"training config: precision must be auto|fp32|bf16, got {self.precision!r}")
        if self.model.get("kind", "grain") not in ("grain", "clip"):
            raise ValueError(f"training config: model.kind must be grain|clip, got {self.model.get('kind')!r}")
        if not 0.0 <= self.data.alt_text_prob <= 1.0:
            raise ValueError(f"training config: data.alt_text_prob must be in [0, 1], got {self.data.alt_text_prob}")
        return self

    def to_dict(self) -> dict:
        d = asdict(self)
        d["optim"]["betas"] = list(self.optim.betas)
        return d

    def model_config(self):
        """The ``grain.config.ModelConfig`` of this run (preset + overrides)."""
        from grain.config import ModelConfig

        m = dict(self.model)
        preset = m.pop("preset", "tiny")
        return ModelConfig.preset(preset, **m)

    def loss_config(self):
        from grain.config import LossConfig

        return LossConfig(**self.loss)


def _build(cls, data: dict, where: str):
    """Dataclass ``cls`` from a dict; unknown keys are an error naming ``where``."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")
    kwargs = {}
    for name, value in data.items():
        if name == "data":
            value = _build(DataSettings, value, f"{where}.data")
        elif name == "optim":
            value = _build(OptimSettings, value, f"{where}.optim")
            value.betas = tuple(float(b) for b in value.betas)
        kwargs[name] = value
    return cls(**kwargs)


def _deep_set(d: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    cur = d
    for p in parts[:-1]:
        nxt = cur.get(p)
        if nxt is None:
            nxt = cur[p] = {}
        if not isinstance(nxt, dict):
            raise ValueError(f"--set {dotted}: {p!r} is not a section")
        cur = nxt
    cur[parts[-1]] = value


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_run_file(path: str | os.PathLike) -> dict:
    """The training section of a run file (a top-level ``train:`` section, else the whole file)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"training run file not found: {p}")
    doc = yaml.safe_load(p.read_text()) or {}
    if not isinstance(doc, dict):
        raise ValueError(f"{p}: a run file must be a YAML mapping")
    section = doc.get("train", doc)
    if not isinstance(section, dict):
        raise ValueError(f"{p}: the 'train' section must be a mapping")
    return section


def profile_file(profile: str) -> Path:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose from {sorted(PROFILES)}")
    return CONFIG_DIR / PROFILES[profile]


def _scalar(raw: str):
    """A YAML scalar, with numbers YAML 1.1 leaves as strings (``5e-4``, no dot) made floats."""
    if not raw.strip():
        return None
    value = yaml.safe_load(raw)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


TEST_HOOK_KEYS = ("debug_fail_at_step",)  # refused from run files / overrides (grain/safety.py)


def parse_set(items: list[str]) -> dict:
    """``["optim.lr=1e-3", "model.kind=clip"]`` → nested dict (values parsed as YAML scalars)."""
    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        _deep_set(out, key.strip(), _scalar(raw))
    return out


def load_config(
    path: str | os.PathLike | None = None,
    profile: str | None = None,
    overrides: dict | None = None,
    sets: list[str] | None = None,
) -> TrainConfig:
    """Profile file, then ``path``, then ``overrides`` (a nested dict), then ``--set`` items, merged in that order."""
    data: dict = {}
    sources = [(profile_file(profile), read_run_file(profile_file(profile))) if profile else None,
               (str(path), read_run_file(path)) if path else None,
               ("overrides", overrides) if overrides else None, ("--set", parse_set(sets)) if sets else None]
    for where, layer in filter(None, sources):
        if isinstance(layer, dict):  # test hooks are named by the source that sets them
            refuse_test_hooks({k: layer.get(k) for k in TEST_HOOK_KEYS}, where)
        data = _merge(data, layer)
    return _build(TrainConfig, data, str(path or profile or "<config>"))


def from_dict(d: dict) -> TrainConfig:
    """Inverse of ``TrainConfig.to_dict`` (used by checkpoints and the Prefect flow)."""
    return _build(TrainConfig, d, "<dict>")


def replace(cfg: TrainConfig, **changes) -> TrainConfig:
    return dataclasses.replace(cfg, **changes)
