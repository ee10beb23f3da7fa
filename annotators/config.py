"""The annotation run config: YAML run file → typed dataclasses, plus ``--set a.b=value`` overrides.

    cfg = load_config(profile="tiny", path="configs/annotate-tiny.yaml", overrides=["run.batch_size=8"])

Profiles (docs/ARCHITECTURE.md): ``tiny`` uses the locally built random-weight checkpoints
(``models.mllm: tiny``), ``paper`` the real model ids (METHOD.md §1). A run file only needs the
fields it changes; unknown keys are an error that names the key.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field

import yaml

from grain.safety import TestHookRefused, refuse_test_hooks

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
PROFILES = ("tiny", "paper")


@dataclass
class ModelsConfig:
    """Which models annotate, and how they are called (METHOD.md §1)."""

    mllm: str = "tiny"  # "tiny" → ensure_tiny_models()'s LLaVA; else a hub id or a local dir
    mllm_family: str = "llava"  # prompt format of the MLLM ("llava", "qwen2_vl", ...)
    detector: str = "tiny"  # "tiny" → the tiny OWLv2; else a hub id or a local dir
    # Hub commit (40 hex digits) to load ``mllm`` / ``detector`` at; None = the hub's default branch, which
    # can change under a running project. The paper profile pins both (docs/reliability.md, "Pinned
    # models"); ignored for "tiny" and local dirs. Override with --set models.mllm_revision=<sha>.
    mllm_revision: str | None = None
    detector_revision: str | None = None
    max_new_tokens: int = 256  # MLLM generation budget per image (descriptions + caption)
    # vLLM structured outputs: generation constrained to the prompt's layout (prompts.answer_regex), so
    # the parser always finds a caption and ≥ 1 bullet; off = free generation (the release's behaviour).
    structured_output: bool = False
    structured_output_backend: str = "guidance"  # vLLM backend: guidance (llguidance) | xgrammar | auto
    caption_max_chars: int = 300  # regex bound on the caption line (structured_output only)
    description_max_chars: int = 80  # regex bound on each bullet (structured_output only)
    max_descriptions: int = 10  # METHOD.md §1: at most 10 descriptions per image
    box_threshold: float = 0.3  # METHOD.md §1: keep boxes whose best description score > 0.3
    max_boxes: int = 50  # stored per image, sorted by score; the trainer takes the top 5
    nms_iou: float | None = None  # per-description NMS; None = off (the release has none)
    enforce_eager: bool = True  # vLLM: skip torch.compile (17 s vs 33 s start on CPU)
    max_model_len: int = 4096  # vLLM context length
    gpu_memory_utilization: float | None = None  # vLLM, GPU only (None: vLLM's default)
    # Passed to the vLLM engine as is: refused unless GRAIN_ALLOW_TEST_HOOKS=1 (grain/safety.py).
    extra_engine_args: dict = field(default_factory=dict)


@dataclass
class LimitsConfig:
    """Input safety limits. An image over a limit becomes an error row, never a crash."""

    max_image_pixels: int = 50_000_000  # decoded width*height; above: status too_large (bombs)
    max_image_bytes: int = 32 * 1024 * 1024  # encoded size; above: status too_large
    min_image_side: int = 8  # decoded min(width, height) below this: status too_small
    max_caption_chars: int = 4000  # longer alt-text is cut and flagged
    max_json_bytes: int = 1 << 20  # img2dataset KEY.json sidecars larger than this are ignored


@dataclass
class RunConfig:
    """How the Ray Data job is shaped. CPU fractions matter on small nodes (docs: STACK.md, Ray)."""

    batch_size: int = 8  # images per model call (same for the MLLM and the detector)
    describer_actors: int = 1  # max actors in the Describer pool (min 1)
    grounder_actors: int = 1  # max actors in the Grounder pool (min 1)
    describer_cpus: float = 0.5  # per Describer actor; fractional so read/decode tasks still run
    grounder_cpus: float = 0.5
    describer_gpus: float = 0.0  # >0 on GPU clusters
    grounder_gpus: float = 0.0
    task_cpus: float = 0.25  # per read/decode task
    decode_batch_size: int = 16
    # Restarts of each model actor after an engine/process death; Ray Data retries the batch that was
    # running. Bounded by the stage itself (Ray Data's own default is unbounded): no endless loop.
    max_restarts: int = 3
    max_shards: int | None = None  # process at most this many pending shards, then stop (chunking)
    threads_per_actor: int | None = None  # torch threads in each model actor; None = library default
    # CPU-only nodes: keep the two model stages off each other's cores so they run at once. vLLM's
    # engine binds its threads to describer_cpu_bind (VLLM_CPU_OMP_THREADS_BIND syntax, e.g. "0" or "0-5";
    # None = vLLM's auto binding); the grounder actor pins itself to grounder_cpu_affinity (CPU ids, or
    # "auto" = the last CPU, which vLLM's auto binding leaves free; its torch threads = their count).
    # None = no pinning (GPU nodes).
    describer_cpu_bind: str | None = None
    grounder_cpu_affinity: list | None = None
    ray_address: str | None = None  # None: local Ray (or the one already initialised); else a cluster
    ray_num_cpus: int | None = None  # CPUs of a local Ray started here (None = all)
    ray_dashboard: bool = False  # a local Ray started here serves its dashboard (127.0.0.1) only when true
    progress: bool = True  # tqdm bar (rows done / total)
    # Fault injection for reliability tests only: {"fail_keys": [key, ...]} makes those rows' MLLM call
    # fail (→ model_error); {"crash_key": key, "crash_marker": path, "crash_stage": "describe"|"ground"}
    # kills that stage's model actor once; {"describe_delay_s": s} makes every MLLM batch take at least s
    # seconds (a slow model: tests that must act while a run is still busy). Refused unless the
    # environment has GRAIN_ALLOW_TEST_HOOKS=1 (grain/safety.py).
    inject: dict = field(default_factory=dict)


@dataclass
class AnnotateConfig:
    """One annotation run: input shards → one annotated Parquet shard per input shard in ``output``."""

    input: list = field(default_factory=list)  # paths: tar/parquet files or folders of shards/images
    output: str = ""  # output folder (manifest.json + NNNNN.parquet)
    profile: str = "tiny"
    models: ModelsConfig = field(default_factory=ModelsConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class ConfigError(ValueError):
    """A run file or override is invalid; the message names the key and the file."""


def check_test_hooks(cfg: AnnotateConfig, where: str) -> None:
    """ConfigError naming the key when ``cfg`` sets a test hook (run.inject, models.extra_engine_args)
    and the environment does not allow test hooks (grain/safety.py)."""
    try:
        refuse_test_hooks({"run.inject": cfg.run.inject, "models.extra_engine_args": cfg.models.extra_engine_args},
                          where)
    except TestHookRefused as e:
        raise ConfigError(str(e)) from None


def _coerce(value, tp, where: str):
    """Check/convert a YAML value against a dataclass field type (str, int, float, bool, Optional, dict, list)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if tp is list or origin is list:
        if isinstance(value, str):
            return [value]
        if isinstance(value, (list, tuple)):
            return list(value)
        raise ConfigError(f"{where}: expected a list, got {value!r}")
    if tp is dict or origin is dict:
        if isinstance(value, dict):
            return dict(value)
        raise ConfigError(f"{where}: expected a mapping, got {value!r}")
    return value


def _merge(obj, data: dict, where: str) -> None:
    """Merge a nested mapping into dataclass ``obj`` in place, type-checking every leaf."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {sorted(names)})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _merge(current, value, f"{where}.{key}")
        else:
            setattr(obj, key, _coerce(value, hints[key], f"{where}.{key}"))


def apply_override(cfg: AnnotateConfig, item: str) -> None:
    """Apply one ``a.b=value`` override; the value is parsed as YAML (``8``, ``true``, ``null``, ``[a, b]``)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. run.batch_size=8")
    dotted, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item!r}: value is not valid YAML ({e})") from None
    nested: dict = {}
    node = nested
    parts = dotted.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    _merge(cfg, nested, f"--set {dotted}")


def load_config(profile: str | None = None, path: str | None = None, overrides: typing.Sequence[str] = ()) -> AnnotateConfig:
    """Build a config: dataclass defaults ← ``configs/annotate-<profile>.yaml`` ← ``path`` ← overrides."""
    cfg = AnnotateConfig()
    files = []
    if profile is not None:
        if profile not in PROFILES:
            raise ConfigError(f"--profile {profile!r}: expected one of {PROFILES}")
        files.append(os.path.join(CONFIG_DIR, f"annotate-{profile}.yaml"))
    if path is not None:
        files.append(path)
    for f in files:
        if not os.path.isfile(f):
            raise ConfigError(f"config file {f!r} does not exist")
        with open(f, encoding="utf-8") as fh:
            try:
                data = yaml.safe_load(fh) or {}
            except yaml.YAMLError as e:
                raise ConfigError(f"{f}: not valid YAML ({e})") from None
        _merge(cfg, data, f)
        check_test_hooks(cfg, f)
    if profile is not None:
        cfg.profile = profile
    for item in overrides:
        apply_override(cfg, item)
        check_test_hooks(cfg, f"--set {item.split('=', 1)[0]}")
    return cfg
