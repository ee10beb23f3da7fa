"""Overhead of the Ray Data annotation pipeline against bare loops over the same models.

    python -m benchmarks.annotate_overhead [--images 64] [--shards 8] [--batch-size 8] [--size bench] [--json F]

Same models (``grain models build-tiny --size bench``: sized so a bare call costs ≥ 50 ms per image on
CPU), same batch size, same describer settings (the tiny profile's: structured outputs on, so the
MLLM writes bullets and the grounder runs on every image), same decode. Two bare baselines share one
Describer and one Grounder, loaded once; the first batch warms both and is not timed in either:

- Bare serial: decode_image → Describer.describe → Grounder.ground, batch by batch in this process.
- Bare overlapped: the same calls on two threads, as the pipeline's two actor pools run them: a
  describer thread (decode + describe) feeds a grounder thread through a queue bounded at
  ``--queue-depth`` batches. The grounder thread takes the CPUs and torch threads the pipeline gives
  its grounder actor (``run.grounder_cpu_affinity``, ``run.threads_per_actor``; ``pin_cpus`` pins the
  calling thread only, on Linux), so both models run side by side on the same cores. Against the
  serial loop alone the pipeline would be credited with the overlap itself.
- Pipeline: ``run_annotation`` (read → decode → describer/grounder actor pools → per-shard commit)
  in steady state: ``summary["timing"]`` (annotators/timing.py) counts the rows whose describer batch
  started after the first describer batch ended, over the time from then to the last shard commit,
  so engine start-up is excluded and the window ends only when the last row is committed.

Prints images/s of each, the pipeline's ratio against each baseline (goal ≥ 0.9 against the
overlapped one) and where the time goes: per-image busy time of decode, describer, grounder (bare vs
inside the actors, which includes Arrow ↔ Python conversion), each model stage's busy share of the
window, the waits between stages (queueing + transfer) and the driver's write time.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import tempfile
import threading
import time


def build_corpus(root: str, images: int, shards: int) -> None:
    import io
    import tarfile

    from annotators.badinputs import encode, good_photos

    photos = good_photos(20, max_side=320)
    per = images // shards
    for s in range(shards):
        with tarfile.open(os.path.join(root, f"{s:05d}.tar"), "w") as tar:
            for i in range(per):
                name, img, cap = photos[(s * per + i) % len(photos)]
                for ext, data in (("jpg", encode(img)), ("txt", cap.encode())):
                    info = tarfile.TarInfo(f"{s:05d}{i:04d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


def describer_kwargs(cfg) -> dict:
    """The Describer settings run_annotation uses (pipeline.build_dataset), from the same config."""
    m = cfg.models
    return dict(family=m.mllm_family, max_new_tokens=m.max_new_tokens, max_descriptions=m.max_descriptions,
                enforce_eager=m.enforce_eager, max_model_len=m.max_model_len, structured_output=m.structured_output,
                structured_output_backend=m.structured_output_backend, caption_max_chars=m.caption_max_chars,
                description_max_chars=m.description_max_chars)


def load_batches(root: str, batch_size: int) -> list[list[dict]]:
    from annotators.readers import discover_shards, read_shard

    recs = [r for s in discover_shards([root]) for r in read_shard(s)]
    return [recs[i:i + batch_size] for i in range(0, len(recs), batch_size)]


def _summary(t: dict, done: int, seconds: float, described: int, boxes: int) -> dict:
    return {"images": done, "seconds": round(seconds, 3), "images_per_s": done / seconds,
            "with_descriptions": described, "boxes": boxes,
            "per_image_ms": {k: round(1000 * v / done, 2) for k, v in t.items()}}


def bare_serial(d, g, batches: list) -> dict:
    """decode → describe → ground, batch after batch on this thread; ``batches[0]`` is the untimed warm-up."""
    from grain.data import decode_image

    t = {"decode": 0.0, "describe": 0.0, "ground": 0.0}
    done = described = boxes = 0
    for i, chunk in enumerate(batches):
        t0 = time.perf_counter()
        imgs = [decode_image(r["image"]) for r in chunk]
        t1 = time.perf_counter()
        outs = d.describe(imgs)
        t2 = time.perf_counter()
        gouts = g.ground(imgs, [o.descriptions for o in outs])
        t3 = time.perf_counter()
        if i == 0:
            continue  # warm-up batch
        t["decode"] += t1 - t0
        t["describe"] += t2 - t1
        t["ground"] += t3 - t2
        done += len(chunk)
        described += sum(bool(o.descriptions) for o in outs)
        boxes += sum(len(o.boxes_xyxy_norm) for o in gouts)
    return _summary(t, done, sum(t.values()), described, boxes)


def bare_overlapped(d, g, batches: list, grounder_cpus=None, threads: int | None = None, depth: int = 2) -> dict:
    """The serial loop's calls on two threads: decode + describe feeding ground through a queue of at most
    ``depth`` batches; the grounder thread pinned to ``grounder_cpus`` with ``threads`` torch threads (None:
    one per pinned CPU), as the pipeline's grounder actor. Timed over ``batches[1:]`` (as ``bare_serial``),
    wall time from the first decode to the last box."""
    import torch

    from annotators.stages import pin_cpus
    from grain.data import decode_image

    q: queue.Queue = queue.Queue(maxsize=depth)
    t = {"decode": 0.0, "describe": 0.0, "ground": 0.0}
    counts, errors = {"done": 0, "described": 0, "boxes": 0}, []

    def describer():
        try:
            for chunk in batches[1:]:
                t0 = time.perf_counter()
                imgs = [decode_image(r["image"]) for r in chunk]
                t1 = time.perf_counter()
                outs = d.describe(imgs)
                t["decode"] += t1 - t0
                t["describe"] += time.perf_counter() - t1
                q.put((imgs, outs))
        except BaseException as e:  # noqa: BLE001 - re-raised on the main thread
            errors.append(e)
        finally:
            q.put(None)

    def grounder():
        n = threads or len(pin_cpus(grounder_cpus))
        if n:
            torch.set_num_threads(n)
        while (item := q.get()) is not None:
            if errors:
                continue  # drain, so the describer thread is never blocked on a full queue
            try:
                imgs, outs = item
                t0 = time.perf_counter()
                gouts = g.ground(imgs, [o.descriptions for o in outs])
                t["ground"] += time.perf_counter() - t0
                counts["done"] += len(imgs)
                counts["described"] += sum(bool(o.descriptions) for o in outs)
                counts["boxes"] += sum(len(o.boxes_xyxy_norm) for o in gouts)
            except BaseException as e:  # noqa: BLE001 - re-raised on the main thread
                errors.append(e)

    torch_threads = torch.get_num_threads()
    workers = [threading.Thread(target=f, name=f"bare-{f.__name__}") for f in (describer, grounder)]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall = time.perf_counter() - t0
    torch.set_num_threads(torch_threads)
    if errors:
        raise errors[0]
    out = _summary(t, counts["done"], wall, counts["described"], counts["boxes"])
    out["queue_depth"] = depth
    return out


def bare_loops(cfg, root: str, depth: int) -> dict:
    """Both bare baselines on one Describer and one Grounder, loaded once; the serial loop's first batch
    warms both, and each loop times the same batches (all but the first)."""
    from annotators.describer import Describer
    from annotators.grounder import Grounder

    batches = load_batches(root, cfg.run.batch_size)
    d = Describer(cfg.models.mllm, **describer_kwargs(cfg))
    g = Grounder(cfg.models.detector, threshold=cfg.models.box_threshold, batch_size=cfg.run.batch_size, device="cpu")
    try:
        serial = bare_serial(d, g, batches)
        overlapped = bare_overlapped(d, g, batches, cfg.run.grounder_cpu_affinity, cfg.run.threads_per_actor, depth)
    finally:
        d.close()
    return {"serial": serial, "overlapped": overlapped}


def pipeline(cfg, root: str, out: str) -> dict:
    from annotators.pipeline import run_annotation

    cfg.input, cfg.output = [root], out
    s = run_annotation(cfg)
    return {"images": s["rows"], "counts": s["counts"], "total_seconds_incl_start": s["seconds"], **s["timing"]}


def ratios(bare: dict | None, pipe: dict, variant: dict | None = None) -> dict:
    """images/s of the pipeline (and of the variant) over each bare baseline's, and the overlap's own gain."""
    if not bare:
        return {}
    serial, overlapped = bare["serial"]["images_per_s"], bare["overlapped"]["images_per_s"]
    out = {"overlapped_vs_serial": overlapped / serial}
    for name, run in (("pipeline", pipe), ("variant", variant)):
        if run:
            ips = run.get("steady_images_per_s", 0)
            out[f"{name}_vs_serial"], out[f"{name}_vs_overlapped"] = ips / serial, ips / overlapped
    return out


def report(res: dict, also_set: list) -> None:
    bare, pipe, variant, r = res["bare"], res["pipeline"], res["pipeline_variant"], res["ratios"]
    pm = pipe.get("per_image_ms", {})
    for name in ("serial", "overlapped") if bare else ():
        b = bare[name]["per_image_ms"]
        print(f"bare {name:<10}: {bare[name]['images_per_s']:.2f} images/s  (busy per image: decode {b['decode']:.0f} ms, "
              f"describe {b['describe']:.0f} ms, ground {b['ground']:.0f} ms; {bare[name]['with_descriptions']} of "
              f"{bare[name]['images']} with descriptions, {bare[name]['boxes']} boxes)")
    print(f"pipeline       : {pipe.get('steady_images_per_s', 0):.2f} images/s steady ({pipe.get('steady_rows')} images in "
          f"{pipe.get('window_s')} s, {pipe.get('window_batches')} describer batches)")
    print(f"  per image inside the actors: decode {pm.get('decode')} ms, describe {pm.get('describe')} ms, "
          f"ground {pm.get('ground')} ms, driver write {pm.get('driver_write')} ms")
    print(f"  busy share of the window: {pipe.get('busy_fraction')}; mean waits (ms): {pipe.get('wait_ms')}")
    if r:
        print(f"ratio          : {r['pipeline_vs_overlapped']:.2f}x bare overlapped (goal >= 0.9), "
              f"{r['pipeline_vs_serial']:.2f}x bare serial; overlapped/serial {r['overlapped_vs_serial']:.2f}x")
    if variant:
        vm = variant.get("per_image_ms", {})
        print(f"variant {also_set}: {variant.get('steady_images_per_s', 0):.2f} images/s steady "
              f"(describe {vm.get('describe')} ms, ground {vm.get('ground')} ms per image; busy {variant.get('busy_fraction')})"
              + (f" = {r['variant_vs_overlapped']:.2f}x bare overlapped, {r['variant_vs_serial']:.2f}x serial" if r else ""))


def _config(args, extra: list, models: tuple[str, str] | None = None):
    from annotators.config import load_config

    cfg = load_config(profile="tiny", overrides=[f"run.batch_size={args.batch_size}", "run.progress=false",
                                                 *args.set, *extra])
    if models:
        cfg.models.mllm, cfg.models.detector = models
    return cfg


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--size", default="bench", choices=["bench", "tiny"], help="model size (bench: ≥ 50 ms/img)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="annotation config override for every arm, e.g. run.threads_per_actor=2")
    p.add_argument("--also-set", action="append", default=[], metavar="KEY=VALUE",
                   help="run the pipeline a second time with these extra overrides (same process, same load), "
                        "e.g. --also-set run.describer_cpu_bind=0 --also-set 'run.grounder_cpu_affinity=[1]'")
    p.add_argument("--queue-depth", type=int, default=2, help="batches between the overlapped loop's two threads")
    p.add_argument("--skip-bare", action="store_true", help="pipeline only")
    p.add_argument("--json", help="also write the results (with command, commit, date, hardware) here")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from benchmarks.provenance import provenance, write_results
    from grain.testing.tiny_models import ensure_tiny_models

    names = ["llava-bench", "owlv2-bench"] if args.size == "bench" else ["llava", "owlv2"]
    built = ensure_tiny_models(names)
    models = built[names[0]], built[names[1]]
    cfg = _config(args, [], models)
    with tempfile.TemporaryDirectory(prefix="grain-bench-") as tmp:
        root = os.path.join(tmp, "in")
        os.makedirs(root)
        build_corpus(root, args.images, args.shards)
        bare = None if args.skip_bare else bare_loops(cfg, root, args.queue_depth)
        pipe = pipeline(cfg, root, os.path.join(tmp, "out"))
        variant = pipeline(_config(args, args.also_set, models), root, os.path.join(tmp, "out2")) if args.also_set else None
    res = {**provenance("benchmarks.annotate_overhead", argv), "images": args.images, "batch_size": args.batch_size,
           "size": args.size, "bare": bare, "pipeline": pipe, "pipeline_variant": variant,
           "ratios": ratios(bare, pipe, variant)}
    print(json.dumps(res, indent=1))
    report(res, args.also_set)
    if args.json:
        write_results(args.json, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
