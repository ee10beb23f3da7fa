"""The per-batch stages of the annotation job: pure ``pyarrow.Table → pyarrow.Table`` callables.

    read_shards_batch   shard descriptors → records (readers.py), one row per input record
    decode_batch        bounded decode (grain.data.decode_image: EXIF-oriented RGB, pixel limit)
    DescribeStage       MLLM descriptions + caption (annotators.describer.Describer, vLLM) — an actor
    GroundStage         OWLv2 boxes for the descriptions (annotators.grounder.Grounder) — an actor

They know nothing of Ray (pipeline.py wires them with ``map_batches``), so each is testable alone.
Every stage keeps every row: a row that fails gets an error ``status``/``error`` and passes through
the later stages untouched. Batches use ``INTERMEDIATE_SCHEMA`` explicitly (never inferred: an
all-null or all-empty column would otherwise change type between blocks).

The decoded image travels as raw RGB bytes (``rgb``: H·W·3 uint8, row-major, ``image_width`` ×
``image_height``) so both models see exactly the pixels decode_batch produced, decoded once; the
Grounder drops it. Boxes here are normalised xyxy in that decoded frame (METHOD.md §1).
"""

from __future__ import annotations

import inspect
import json
import logging
import os

import pyarrow as pa

from annotators.readers import InputShard, read_shard, record

log = logging.getLogger(__name__)

INTERMEDIATE_SCHEMA = pa.schema([
    ("shard", pa.string()), ("shard_rows", pa.int64()),
    ("key", pa.string()), ("source", pa.string()), ("url", pa.string()), ("image", pa.binary()),
    ("source_caption", pa.string()), ("flags", pa.list_(pa.string())),
    ("status", pa.string()), ("error", pa.string()),
    ("image_width", pa.int32()), ("image_height", pa.int32()), ("rgb", pa.binary()),
    ("mllm_caption", pa.string()), ("descriptions", pa.list_(pa.string())), ("generated_tokens", pa.int64()),
    ("boxes", pa.list_(pa.list_(pa.float32()))), ("box_scores", pa.list_(pa.float32())),
    ("box_desc_index", pa.list_(pa.int32())),
])
_LISTS = ("flags", "descriptions", "boxes", "box_scores", "box_desc_index")


def to_batch(rows: list[dict]) -> pa.Table:
    cols = {}
    for name in INTERMEDIATE_SCHEMA.names:
        vals = [r.get(name) for r in rows]
        cols[name] = [[] if v is None else v for v in vals] if name in _LISTS else vals
    return pa.Table.from_pydict(cols, schema=INTERMEDIATE_SCHEMA)


def read_shards_batch(batch: pa.Table, limits: dict) -> pa.Table:
    """Rows ``{"shard": json InputShard}`` → every record of those shards, tagged with shard and count."""
    out = []
    for item in batch.column("shard").to_pylist():
        shard = InputShard(**json.loads(item))
        try:
            recs = read_shard(shard, max_image_bytes=limits["max_image_bytes"],
                              max_caption_chars=limits["max_caption_chars"], max_json_bytes=limits["max_json_bytes"])
        except Exception as e:  # unreadable shard: one error row says so, the run goes on
            recs = [record(f"{shard.name}/unreadable", shard.path, status="input_error",
                           error=f"cannot read shard {shard.path}: {type(e).__name__}: {e}")]
        for r in recs:
            r.update(shard=shard.name, shard_rows=len(recs))
        out += recs
    return to_batch(out)


def decode_batch(batch: pa.Table, max_image_pixels: int, min_image_side: int) -> pa.Table:
    """Decode ok rows once (bounded); failures → decode_error / too_large / too_small rows."""
    from grain.data import ImageTooLarge, ImageTooSmall, decode_image

    rows = batch.to_pylist()
    for r in rows:
        if r["status"] != "ok":
            continue
        try:
            img = decode_image(r["image"], max_pixels=max_image_pixels, min_side=min_image_side, name=r["source"])
        except ImageTooLarge as e:
            r.update(status="too_large", error=str(e))
        except ImageTooSmall as e:
            r.update(status="too_small", error=str(e))
        except Exception as e:  # ImageDecodeError and anything PIL did not wrap
            r.update(status="decode_error", error=str(e))
        else:
            r.update(image_width=img.width, image_height=img.height, rgb=img.tobytes())
    return to_batch(rows)


def rgb_image(row: dict):
    from PIL import Image

    return Image.frombytes("RGB", (row["image_width"], row["image_height"]), row["rgb"])


def _field(obj, name, default=None):
    """Outputs may be dataclasses or dicts: read either."""
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _build(cls, model: str, kwargs: dict):
    """Construct ``cls(model, **kwargs)`` passing only the keyword arguments it accepts."""
    params = inspect.signature(cls).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return cls(model, **kwargs)
    return cls(model, **{k: v for k, v in kwargs.items() if k in params})


def _engine_dead(e: BaseException) -> bool:
    """vLLM's engine process died: the actor must restart (Ray re-runs the batch), not mark rows failed."""
    return any("EngineDead" in type(x).__name__ for x in (e, e.__cause__, e.__context__) if x is not None)


class _ModelStage:
    """Common actor logic: thread count, fault injection for reliability tests, engine-death exit."""

    def __init__(self, threads: int | None, inject: dict | None):
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.inject = inject or {}

    def _maybe_crash(self, rows: list[dict]) -> None:
        """Test aid: kill this actor process once (marker file) when a batch holds ``crash_key``."""
        key, marker = self.inject.get("crash_key"), self.inject.get("crash_marker")
        if key and marker and any(r["key"] == key for r in rows) and not os.path.exists(marker):
            open(marker, "w").close()
            log.warning("fault injection: killing actor pid %d on key %s", os.getpid(), key)
            os._exit(1)

    def _failing(self, row: dict) -> bool:
        return row["key"] in set(self.inject.get("fail_keys", ()))


class DescribeStage(_ModelStage):
    """MLLM stage (METHOD.md §1 step 1): fills ``mllm_caption``, ``descriptions``, ``generated_tokens``."""

    def __init__(self, model: str, family: str, describer_kwargs: dict, max_descriptions: int = 10,
                 threads: int | None = None, inject: dict | None = None):
        super().__init__(threads, inject)
        from annotators.describer import Describer

        self.describer = _build(Describer, model, {"family": family, **describer_kwargs})
        self.max_descriptions = max_descriptions

    def _describe(self, images: list) -> list:
        try:
            return list(self.describer.describe(images))
        except Exception as e:
            if _engine_dead(e):
                log.error("MLLM engine died (%s): exiting so Ray restarts this actor and retries the batch", e)
                os._exit(1)
            if len(images) == 1:
                return [{"error": f"{type(e).__name__}: {e}"}]
            return [self._describe([im])[0] for im in images]  # isolate the failing image(s)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        self._maybe_crash(rows)
        todo = [r for r in rows if r["status"] == "ok"]
        for r in [r for r in todo if self._failing(r)]:
            r.update(status="model_error", error="MLLM call failed: injected fault (run.inject.fail_keys)")
        todo = [r for r in todo if r["status"] == "ok"]
        outs = self._describe([rgb_image(r) for r in todo]) if todo else []
        for r, o in zip(todo, outs):
            err = _field(o, "error")
            if err:
                r.update(status="model_error", error=f"MLLM call failed: {err}")
                continue
            descs = [d for d in (_field(o, "descriptions") or []) if isinstance(d, str) and d.strip()]
            r.update(mllm_caption=_field(o, "caption") or None,
                     descriptions=list(dict.fromkeys(descs))[: self.max_descriptions],
                     generated_tokens=int(_field(o, "num_generated_tokens") or 0))
        return to_batch(rows)


class GroundStage(_ModelStage):
    """Detector stage (METHOD.md §1 step 2): fills ``boxes`` (normalised xyxy), ``box_scores``,
    ``box_desc_index``, sorted by score, at most ``max_boxes``; drops ``rgb``."""

    def __init__(self, model: str, grounder_kwargs: dict, max_boxes: int = 50, threads: int | None = None,
                 inject: dict | None = None):
        super().__init__(threads, inject)
        from annotators.grounder import Grounder

        self.grounder = _build(Grounder, model, grounder_kwargs)
        self.max_boxes = max_boxes

    def _ground(self, images: list, descriptions: list) -> list:
        try:
            return list(self.grounder.ground(images, descriptions))
        except Exception as e:
            if len(images) == 1:
                return [{"error": f"{type(e).__name__}: {e}"}]
            return [self._ground([im], [d])[0] for im, d in zip(images, descriptions)]

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        self._maybe_crash(rows)
        todo = [r for r in rows if r["status"] == "ok" and r["descriptions"]]
        outs = self._ground([rgb_image(r) for r in todo], [r["descriptions"] for r in todo]) if todo else []
        for r, o in zip(todo, outs):
            if _field(o, "error"):
                r.update(status="model_error", error=f"detector call failed: {_field(o, 'error')}")
                continue
            boxes = [[min(max(float(c), 0.0), 1.0) for c in b] for b in (_field(o, "boxes_xyxy_norm") or [])]
            scores = [float(s) for s in (_field(o, "scores") or [])]
            index = [int(i) for i in (_field(o, "desc_index") or [])]
            if not (len(boxes) == len(scores) == len(index)):
                r.update(status="model_error", error=f"detector returned {len(boxes)} boxes, {len(scores)} scores, {len(index)} labels")
                continue
            order = sorted(range(len(boxes)), key=lambda k: -scores[k])[: self.max_boxes]
            r.update(boxes=[boxes[k] for k in order], box_scores=[scores[k] for k in order],
                     box_desc_index=[index[k] for k in order])
        for r in rows:
            r["rgb"] = None  # the driver needs no pixels
        return to_batch(rows)
