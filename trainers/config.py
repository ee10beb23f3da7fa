"""Typed training configuration: YAML run file → ``TrainConfig`` → the builders in ``trainers/``.

A run file is either a flat training config or a pipeline run file with a ``train:`` section (other
stages keep their own sections beside it). ``--set key=value`` overrides use dotted keys
(``optim.lr=1e-3``, ``model.kind=clip``). Loading, coercion and error messages are grain/common/runconfig.py's,
shared by every stage; ``model`` and ``loss`` are checked against grain.config's ModelConfig/LossConfig
when the file is loaded. ``grain config show train`` lists every key.

Profiles map to the shipped run files: ``tiny`` → ``configs/tiny-cpu.yaml`` (2 CPU workers, the tiny
GRAIN preset), ``paper`` → ``configs/vit-b-16-cc12m.yaml`` (the release recipe, docs/method.md §4.4).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from grain.config import PRESETS, LossConfig, ModelConfig
from grain.common.runconfig import STRICT_KEYS, ConfigError, Layer, load
from grain.common.safety import refuse_test_hooks

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
PROFILES = {"tiny": "tiny-cpu.yaml", "paper": "vit-b-16-cc12m.yaml"}


@dataclass
class DataSettings:
    """How annotated shards become batches (docs/method.md §4)."""

    __pydantic_config__ = STRICT_KEYS

    path: str = ""  # directory or fsspec URI (s3://…) holding annotated *.parquet shards
    alt_text_prob: float = 0.5  # P(alt-text) when both captions exist; else the MLLM caption
    shuffle_window: int = 8  # row groups whose rows are shuffled together (bounded memory, see plan.py)
    decode_threads: int = 4  # PIL decode + resize threads per worker
    prefetch_batches: int = 2  # decoded batches queued ahead of the step
    image_size: int | None = None  # None: the model preset's image size


@dataclass
class OptimSettings:
    """AdamW + per-step schedule of the release (docs/method.md §4.4)."""

    __pydantic_config__ = STRICT_KEYS

    lr: float = 1e-3  # peak learning rate
    warmup_start_lr: float = 1e-6  # linear warm-up starts here
    min_lr: float = 1e-5  # cosine ends here
    warmup_epochs: float = 1.0  # warm-up length in epochs (converted to steps)
    warmup_steps: int | None = None  # overrides warmup_epochs when set
    weight_decay: float = 0.1  # none on biases, norms, logit scale (GrainModel.param_groups)
    betas: tuple[float, float] = (0.9, 0.98)  # AdamW (β1, β2)
    eps: float = 1e-8  # AdamW epsilon
    grad_clip: float | None = None  # max global grad norm; None: no clipping


@dataclass
class TrainConfig:
    """Everything one training run needs. ``batch_size`` is per worker (global = batch_size × workers)."""

    __pydantic_config__ = STRICT_KEYS

    output: str = ""  # run directory or URI: run.json, metrics.jsonl, tensorboard/, final.pt, ray/
    model: dict = field(default_factory=lambda: {"preset": "tiny", "kind": "grain"})  # preset + ModelConfig overrides
    loss: dict = field(default_factory=dict)  # LossConfig overrides (lambda_box, lambda_rd, ...)
    data: DataSettings = field(default_factory=DataSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    epochs: int = 1  # the schedule spans all epochs; max_steps only stops early (resumable)
    batch_size: int = 8  # per worker
    seed: int = 0  # init and sample order
    max_steps: int | None = None  # stop after this global step (a checkpoint is written there)
    workers: int = 2  # Ray Train workers
    use_gpu: bool = False  # one GPU per worker (NCCL, bf16 autocast)
    cpus_per_worker: float = 1.0  # Ray resources of each worker
    torch_threads: int | None = None  # CPU training: intra-op threads per worker (None: max(1, cpus_per_worker))
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16
    checkpoint_every: int = 100  # steps between Ray checkpoints (and always at the last step)
    keep_checkpoints: int = 2  # Ray checkpoints kept (the newest)
    log_every: int = 1  # steps between metric reports (report() is a barrier across workers)
    max_failures: int = 0  # FailureConfig: worker-group restarts from the latest checkpoint
    run_name: str | None = None  # RunConfig name; default: the output folder's name
    storage_path: str | None = None  # RunConfig storage; default: <output>/ray
    ray_address: str | None = None  # None: start/join per ray.init defaults ("auto" to join a cluster)
    find_unused_parameters: bool = False  # GrainLoss keeps region heads in the graph on box-less ranks (zero-valued terms)
    # Chaos test: the last rank raises once before this step (local output). A test hook: refused from
    # run files and overrides unless GRAIN_ALLOW_TEST_HOOKS=1 (grain/common/safety.py).
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


def run_checks(cfg: TrainConfig) -> list[tuple[str, str]]:
    """Value checks made when a config is loaded: ``[(dotted key, message)]`` (named with their source)."""
    out = []
    for name in ("epochs", "batch_size", "checkpoint_every", "log_every", "keep_checkpoints"):
        if getattr(cfg, name) < 1:
            out.append((name, f"must be >= 1, got {getattr(cfg, name)!r}"))
    if cfg.workers < 0:
        out.append(("workers", f"must be >= 0, got {cfg.workers!r}"))
    if not 0.0 <= cfg.data.alt_text_prob <= 1.0:
        out.append(("data.alt_text_prob", f"must be in [0, 1], got {cfg.data.alt_text_prob!r}"))
    if cfg.model.get("kind", "grain") not in ("grain", "clip"):
        out.append(("model.kind", f"must be grain|clip, got {cfg.model.get('kind')!r}"))
    if cfg.model.get("preset", "tiny") not in PRESETS:
        out.append(("model.preset", f"unknown model preset {cfg.model.get('preset')!r}; choose one of {sorted(PRESETS)}"))
    return out


def _typed_sections(cfg: TrainConfig, layers: list[Layer]) -> TrainConfig:
    """``model`` / ``loss`` overrides validated against grain.config's ModelConfig / LossConfig, with the
    source of each key, and stored with their types (``model.vision_width=3e2`` → 300)."""
    preset = cfg.model.get("preset", "tiny")
    for name, cls, base in (("model", ModelConfig, {**PRESETS[preset], "name": preset}), ("loss", LossConfig, {})):
        over = {k: v for k, v in getattr(cfg, name).items() if k != "preset"}
        section = [Layer({k: v for k, v in layer.data[name].items() if k != "preset"}, layer.source)
                   for layer in layers if isinstance(layer.data.get(name), dict)]
        try:
            typed = load(cls, [Layer(base, "defaults"), *section], prefix=f"{name}.")
        except ValueError as e:  # __post_init__'s cross-field checks (ModelConfig) are ValueErrors too
            raise ConfigError(str(e) if isinstance(e, ConfigError) else f"{name}: {e}") from None
        setattr(cfg, name, {**getattr(cfg, name), **{k: getattr(typed, k) for k in over}})
    return cfg


def profile_file(profile: str) -> Path:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose from {sorted(PROFILES)}")
    return CONFIG_DIR / PROFILES[profile]


TEST_HOOK_KEYS = ("debug_fail_at_step",)  # refused from run files / overrides (grain/common/safety.py)


def load_config(
    path: str | os.PathLike | None = None,
    profile: str | None = None,
    overrides: dict | None = None,
    sets: list[str] | None = None,
    source: str = "overrides",
) -> TrainConfig:
    """Profile file, then ``path``, then ``overrides`` (a nested/dotted mapping named ``source`` in
    errors), then ``--set`` items, merged in that order and validated (grain/common/runconfig.py)."""
    layers = []
    if profile:
        layers.append(Layer.from_file(profile_file(profile), "train"))
    if path:
        if not Path(path).is_file():
            raise FileNotFoundError(f"training run file not found: {path}")
        layers.append(Layer.from_file(path, "train"))
    if overrides:
        layers.append(Layer.from_overrides(overrides, source))
    layers += Layer.from_sets(sets)
    for layer in layers:  # test hooks are named by the source that sets them
        where = "--set" if layer.source.startswith("--set ") else layer.source
        refuse_test_hooks({k: layer.data.get(k) for k in TEST_HOOK_KEYS}, where)
    return _typed_sections(load(TrainConfig, layers, run_checks), layers)


def from_dict(d: dict) -> TrainConfig:
    """Inverse of ``TrainConfig.to_dict`` (used by checkpoints and the Prefect flow)."""
    layers = [Layer(d, "<dict>")]
    return _typed_sections(load(TrainConfig, layers, run_checks), layers)


__all__ = ["CONFIG_DIR", "PROFILES", "ConfigError", "DataSettings", "OptimSettings", "TrainConfig", "from_dict",
           "load_config"]
