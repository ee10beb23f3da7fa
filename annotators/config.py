"""The annotation run config: YAML run file → typed dataclasses, plus ``--set a.b=value`` overrides.

    cfg = load_config(profile="tiny", path="configs/annotate-tiny.yaml", overrides=["run.batch_size=8"])

Profiles (docs/ARCHITECTURE.md): ``tiny`` uses the locally built random-weight checkpoints
(``models.mllm: tiny``), ``paper`` the real model ids (docs/method.md §1). A run file only needs the
fields it changes. Loading, ``--set`` parsing, type coercion and error messages are grain/common/runconfig.py's,
the same for every stage: an unknown key or a wrong type is an error naming the key, the value and the
file, flag or flow parameter it came from. Limits the shard schema enforces (grain/common/schema.py) are checked
here, so no setting can promise what the writer would refuse. ``grain config show annotate`` lists
every key with its type, default and meaning.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import BeforeValidator

from grain.common.runconfig import STRICT_KEYS, ConfigError, Layer, load
from grain.common.safety import TestHookRefused, refuse_test_hooks
from grain.common.schema import MAX_BOXES, MAX_DESCRIPTIONS

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
PROFILES = ("tiny", "paper")
# A single value where a list is expected (``input: /data/shards``, ``grounder_cpu_affinity: auto``) is a
# one-item list, as in every earlier run file.
OneOrList = Annotated[list, BeforeValidator(lambda v: [v] if isinstance(v, (str, int)) and not isinstance(v, bool) else v)]


@dataclass
class ModelsConfig:
    """Which models annotate, and how they are called (docs/method.md §1)."""

    __pydantic_config__ = STRICT_KEYS

    mllm: str = "tiny"  # "tiny" → ensure_tiny_models()'s LLaVA; else a hub id or a local dir
    mllm_family: str = "llava"  # prompt format of the MLLM ("llava", "qwen2_vl", ...)
    detector: str = "tiny"  # "tiny" → the tiny OWLv2; else a hub id or a local dir
    # Hub commit (40 hex digits) to load ``mllm`` / ``detector`` at; None = the hub's default branch, which
    # can change under a running project. The paper profile pins both (docs/reliability.md, "Pinned
    # models"); ignored for "tiny" and local dirs. Override with --set models.mllm_revision=<sha>.
    mllm_revision: str | None = None
    detector_revision: str | None = None  # hub commit of ``detector`` (see mllm_revision)
    max_new_tokens: int = 256  # MLLM generation budget per image (descriptions + caption)
    # vLLM structured outputs: generation constrained to the prompt's layout (prompts.answer_regex), so
    # the parser always finds a caption and ≥ 1 bullet; off = free generation (the release's behaviour).
    structured_output: bool = False
    structured_output_backend: str = "guidance"  # vLLM backend: guidance (llguidance) | xgrammar | auto
    caption_max_chars: int = 300  # regex bound on the caption line (structured_output only)
    description_max_chars: int = 80  # regex bound on each bullet (structured_output only)
    max_descriptions: int = MAX_DESCRIPTIONS  # docs/method.md §1.1: per image (prompt + parser); ≤ schema's cap
    box_threshold: float = 0.3  # docs/method.md §1.3: keep boxes whose best description score > 0.3
    max_boxes: int = MAX_BOXES  # stored per image, sorted by score (≤ the schema's cap); the trainer takes the top 5
    # OWLv2 weights/activations: bfloat16 is ≈5× faster on an H200 (annotators/grounder.py); CPU: float32.
    detector_dtype: Literal["float32", "bfloat16"] = "float32"
    nms_iou: float | None = None  # per-description NMS; None = off (the release has none)
    enforce_eager: bool = True  # vLLM: skip torch.compile (17 s vs 33 s start on CPU)
    max_model_len: int = 4096  # vLLM context length
    gpu_memory_utilization: float | None = None  # vLLM, GPU only (None: vLLM's default)
    # Passed to the vLLM engine as is: refused unless GRAIN_ALLOW_TEST_HOOKS=1 (grain/common/safety.py).
    extra_engine_args: dict = field(default_factory=dict)


@dataclass
class LimitsConfig:
    """Input safety limits. An image over a limit becomes an error row, never a crash."""

    __pydantic_config__ = STRICT_KEYS

    max_image_pixels: int = 50_000_000  # decoded width*height; above: status too_large (bombs)
    max_image_bytes: int = 32 * 1024 * 1024  # encoded size; above: status too_large
    min_image_side: int = 8  # decoded min(width, height) below this: status too_small
    max_caption_chars: int = 4000  # longer alt-text is cut and flagged
    max_json_bytes: int = 1 << 20  # img2dataset KEY.json sidecars larger than this are ignored


@dataclass
class RunConfig:
    """How the Ray Data job is shaped. CPU fractions matter on small nodes: two actors holding a whole CPU each
    on a 2-CPU node leave the read/decode tasks none, and the job stalls."""

    __pydantic_config__ = STRICT_KEYS

    batch_size: int = 8  # images per model call (same for the MLLM and the detector)
    describer_actors: int = 1  # max actors in the Describer pool (min 1)
    grounder_actors: int = 1  # max actors in the Grounder pool (min 1)
    describer_cpus: float = 0.5  # per Describer actor; fractional so read/decode tasks still run
    grounder_cpus: float = 0.5  # per Grounder actor
    describer_gpus: float = 0.0  # >0 on GPU clusters
    grounder_gpus: float = 0.0  # >0 on GPU clusters
    task_cpus: float = 0.25  # per read/decode task
    decode_batch_size: int = 16  # rows per decode task (and per block between the stages)
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
    grounder_cpu_affinity: OneOrList | None = None  # CPU ids the grounder actor pins itself to, or "auto"; None = no pinning
    ray_address: str | None = None  # None: local Ray (or the one already initialised); else a cluster
    ray_num_cpus: int | None = None  # CPUs of a local Ray started here (None = all)
    ray_dashboard: bool = False  # a local Ray started here serves its dashboard (127.0.0.1) only when true
    progress: bool = True  # tqdm bar (rows done / total)
    # Fault injection for reliability tests only: {"fail_keys": [key, ...]} makes those rows' MLLM call
    # fail (→ model_error); {"crash_key": key, "crash_marker": path, "crash_stage": "describe"|"ground"}
    # kills that stage's model actor once; {"describe_delay_s": s} makes every MLLM batch take at least s
    # seconds (a slow model: tests that must act while a run is still busy). Refused unless the
    # environment has GRAIN_ALLOW_TEST_HOOKS=1 (grain/common/safety.py).
    inject: dict = field(default_factory=dict)


@dataclass
class AnnotateConfig:
    """One annotation run: input shards → one annotated Parquet shard per input shard in ``output``."""

    __pydantic_config__ = STRICT_KEYS

    input: OneOrList = field(default_factory=list)  # paths: tar/parquet files or folders of shards/images
    output: str = ""  # output folder (manifest.json + NNNNN.parquet)
    profile: str = "tiny"  # model profile the run started from (--profile): tiny | paper
    models: ModelsConfig = field(default_factory=ModelsConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def check_test_hooks(cfg: AnnotateConfig, where: str) -> None:
    """ConfigError naming the key when ``cfg`` sets a test hook (run.inject, models.extra_engine_args)
    and the environment does not allow test hooks (grain/common/safety.py)."""
    try:
        refuse_test_hooks({"run.inject": cfg.run.inject, "models.extra_engine_args": cfg.models.extra_engine_args},
                          where)
    except TestHookRefused as e:
        raise ConfigError(str(e)) from None


def _hooks_in(layer: Layer) -> dict:
    m, r = layer.data.get("models"), layer.data.get("run")
    return {"run.inject": r.get("inject") if isinstance(r, dict) else None,
            "models.extra_engine_args": m.get("extra_engine_args") if isinstance(m, dict) else None}


def schema_checks(cfg: AnnotateConfig) -> list[tuple[str, str]]:
    """Settings the shard schema (grain/common/schema.py) or the models would refuse: ``[(key, message)]``."""
    m, out = cfg.models, []
    if not 1 <= m.max_descriptions <= MAX_DESCRIPTIONS:
        out.append(("models.max_descriptions", f"must be in [1, {MAX_DESCRIPTIONS}] (grain/common/schema.py MAX_DESCRIPTIONS), "
                                               f"got {m.max_descriptions!r}"))
    if not 1 <= m.max_boxes <= MAX_BOXES:
        out.append(("models.max_boxes", f"must be in [1, {MAX_BOXES}] (grain/common/schema.py MAX_BOXES), got {m.max_boxes!r}"))
    if not 0.0 <= m.box_threshold <= 1.0:
        out.append(("models.box_threshold", f"must be in [0, 1] (a sigmoid score), got {m.box_threshold!r}"))
    if m.nms_iou is not None and not 0.0 < m.nms_iou <= 1.0:
        out.append(("models.nms_iou", f"must be in (0, 1] or null, got {m.nms_iou!r}"))
    for key in ("max_new_tokens", "caption_max_chars", "description_max_chars", "max_model_len"):
        if getattr(m, key) < 1:
            out.append((f"models.{key}", f"must be ≥ 1, got {getattr(m, key)!r}"))
    if cfg.run.batch_size < 1:
        out.append(("run.batch_size", f"must be ≥ 1, got {cfg.run.batch_size!r}"))
    return out


def load_config(profile: str | None = None, path: str | None = None,
                overrides: typing.Sequence[str] | typing.Mapping = (), source: str = "overrides") -> AnnotateConfig:
    """Build a config: defaults ← ``configs/annotate-<profile>.yaml`` ← ``path`` ← overrides.

    ``overrides``: ``--set`` items (``["run.batch_size=8"]``) or a mapping of nested/dotted keys named
    ``source`` in errors (a flow passes its ``overrides`` parameter as ``source="flow parameter overrides"``)."""
    layers = []
    if profile is not None:
        if profile not in PROFILES:
            raise ConfigError(f"--profile {profile!r}: expected one of {PROFILES}")
        layers.append(Layer.from_file(os.path.join(CONFIG_DIR, f"annotate-{profile}.yaml")))
    if path is not None:  # a pipeline run file keeps this stage's settings under ``annotate:``
        layers.append(Layer.from_file(path, "annotate"))
    if profile is not None:  # the profile given wins over a run file's ``profile:``
        layers.append(Layer({"profile": profile}, f"--profile {profile}"))
    if isinstance(overrides, typing.Mapping):
        layers.append(Layer.from_overrides(overrides, source))
    else:
        layers += Layer.from_sets(overrides)
    for layer in layers:  # a test hook is named by the layer that sets it
        where = layer.source.split("=", 1)[0]
        try:
            refuse_test_hooks(_hooks_in(layer), where)
        except TestHookRefused as e:
            raise ConfigError(str(e)) from None
    return load(AnnotateConfig, layers, schema_checks)


__all__ = ["CONFIG_DIR", "PROFILES", "AnnotateConfig", "ConfigError", "LimitsConfig", "ModelsConfig", "RunConfig",
           "check_test_hooks", "load_config", "schema_checks"]
