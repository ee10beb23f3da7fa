"""Overhead of the Ray Data annotation pipeline against a bare loop over the same models.

    python benchmarks/annotate_overhead.py [--images 64] [--shards 8] [--batch-size 8] [--size bench]

Same models (``grain models build-tiny --size bench``: sized so a bare call costs ≥ 50 ms per image on
CPU), same batch size, same describer settings (the tiny profile's: structured outputs on, so the
MLLM writes bullets and the grounder runs on every image), same decode.

- Bare: decode_image → Describer.describe → Grounder.ground, batch by batch in this process; the
  first batch is a warm-up and is not timed.
- Pipeline: ``run_annotation`` (read → decode → describer/grounder actor pools → per-shard commit)
  in steady state: ``summary["timing"]`` (annotators/timing.py) counts the rows whose describer batch
  started after the first describer batch ended, over the time from then to the last shard commit,
  so engine start-up is excluded and the window ends only when the last row is committed.

Prints images/s of each, the ratio (goal ≥ 0.9) and where the time goes: per-image busy time of
decode, describer, grounder (bare vs inside the actors, which includes Arrow ↔ Python conversion),
each model stage's busy share of the window, the waits between stages (queueing + transfer) and the
driver's write time.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
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


def bare_loop(cfg, root: str) -> dict:
    from annotators.describer import Describer
    from annotators.grounder import Grounder
    from annotators.readers import discover_shards, read_shard
    from grain.data import decode_image

    recs = [r for s in discover_shards([root]) for r in read_shard(s)]
    bs = cfg.run.batch_size
    d = Describer(cfg.models.mllm, **describer_kwargs(cfg))
    g = Grounder(cfg.models.detector, threshold=cfg.models.box_threshold, batch_size=bs, device="cpu")
    t = {"decode": 0.0, "describe": 0.0, "ground": 0.0}
    done = described = boxes = 0
    for start in range(0, len(recs), bs):
        chunk = recs[start:start + bs]
        t0 = time.perf_counter()
        imgs = [decode_image(r["image"]) for r in chunk]
        t1 = time.perf_counter()
        outs = d.describe(imgs)
        t2 = time.perf_counter()
        gouts = g.ground(imgs, [o.descriptions for o in outs])
        t3 = time.perf_counter()
        if start == 0:
            continue  # warm-up batch
        t["decode"] += t1 - t0
        t["describe"] += t2 - t1
        t["ground"] += t3 - t2
        done += len(chunk)
        described += sum(bool(o.descriptions) for o in outs)
        boxes += sum(len(o.boxes_xyxy_norm) for o in gouts)
    d.close()
    total = sum(t.values())
    return {"images": done, "seconds": round(total, 3), "images_per_s": done / total,
            "with_descriptions": described, "boxes": boxes,
            "per_image_ms": {k: round(1000 * v / done, 2) for k, v in t.items()}}


def pipeline(cfg, root: str, out: str) -> dict:
    from annotators.pipeline import run_annotation

    cfg.input, cfg.output = [root], out
    s = run_annotation(cfg)
    return {"images": s["rows"], "counts": s["counts"], "total_seconds_incl_start": s["seconds"], **s["timing"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--size", default="bench", choices=["bench", "tiny"], help="model size (bench: ≥ 50 ms/img)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="annotation config override for both arms, e.g. run.threads_per_actor=2")
    p.add_argument("--also-set", action="append", default=[], metavar="KEY=VALUE",
                   help="run the pipeline a second time with these extra overrides (same process, same load), "
                        "e.g. --also-set run.describer_cpu_bind=0 --also-set 'run.grounder_cpu_affinity=[1]'")
    p.add_argument("--skip-bare", action="store_true", help="pipeline only")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from annotators.config import load_config
    from grain.testing.tiny_models import ensure_tiny_models

    names = ["llava-bench", "owlv2-bench"] if args.size == "bench" else ["llava", "owlv2"]
    built = ensure_tiny_models(names)
    cfg = load_config(profile="tiny", overrides=[f"run.batch_size={args.batch_size}", "run.progress=false", *args.set])
    cfg.models.mllm, cfg.models.detector = built[names[0]], built[names[1]]
    with tempfile.TemporaryDirectory(prefix="grain-bench-") as tmp:
        root = os.path.join(tmp, "in")
        os.makedirs(root)
        build_corpus(root, args.images, args.shards)
        bare = None if args.skip_bare else bare_loop(cfg, root)
        pipe = pipeline(cfg, root, os.path.join(tmp, "out"))
        variant = None
        if args.also_set:
            cfg2 = load_config(profile="tiny", overrides=[f"run.batch_size={args.batch_size}", "run.progress=false",
                                                          *args.set, *args.also_set])
            cfg2.models.mllm, cfg2.models.detector = cfg.models.mllm, cfg.models.detector
            variant = pipeline(cfg2, root, os.path.join(tmp, "out2"))
    print(json.dumps({"bare": bare, "pipeline": pipe, "pipeline_variant": variant}, indent=1))
    pm = pipe.get("per_image_ms", {})
    if bare:
        b = bare["per_image_ms"]
        print(f"bare loop : {bare['images_per_s']:.2f} images/s  (per image: decode {b['decode']:.0f} ms, "
              f"describe {b['describe']:.0f} ms, ground {b['ground']:.0f} ms; {bare['with_descriptions']} of "
              f"{bare['images']} with descriptions, {bare['boxes']} boxes)")
    print(f"pipeline  : {pipe.get('steady_images_per_s', 0):.2f} images/s steady ({pipe.get('steady_rows')} images in "
          f"{pipe.get('window_s')} s, {pipe.get('window_batches')} describer batches)")
    print(f"  per image inside the actors: decode {pm.get('decode')} ms, describe {pm.get('describe')} ms, "
          f"ground {pm.get('ground')} ms, driver write {pm.get('driver_write')} ms")
    print(f"  busy share of the window: {pipe.get('busy_fraction')}; mean waits (ms): {pipe.get('wait_ms')}")
    if bare:
        print(f"ratio     : {pipe.get('steady_images_per_s', 0) / bare['images_per_s']:.2f}x bare (goal >= 0.9)")
    if variant:
        vm = variant.get("per_image_ms", {})
        print(f"variant {args.also_set}: {variant.get('steady_images_per_s', 0):.2f} images/s steady "
              f"(describe {vm.get('describe')} ms, ground {vm.get('ground')} ms per image; busy {variant.get('busy_fraction')})"
              + (f" = {variant.get('steady_images_per_s', 0) / bare['images_per_s']:.2f}x bare" if bare else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
