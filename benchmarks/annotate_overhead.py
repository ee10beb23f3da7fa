"""Overhead of the Ray Data annotation pipeline against a bare loop over the same models.

    python benchmarks/annotate_overhead.py [--images 48] [--shards 6] [--batch-size 8] [--size bench]

Same models (``grain models build-tiny --size bench``: sized so a bare call costs ≥ 50 ms per image on
CPU), same batch size, same decode. Bare: decode_image → Describer.describe → Grounder.ground, in this
process. Pipeline: ``run_annotation`` (read → decode → actor pools → per-shard commit). Both in
steady state (engine start excluded): the bare loop after a warm-up batch; the pipeline as rows per
shard over the median gap between consecutive shard commits (manifest.json). Prints images/s of
each, the ratio (goal ≥ 0.9) and where the bare time goes.
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


def bare_loop(paths: dict, root: str, batch_size: int, max_new_tokens: int) -> dict:
    from annotators.describer import Describer
    from annotators.grounder import Grounder
    from annotators.readers import discover_shards, read_shard
    from grain.data import decode_image

    recs = [r for s in discover_shards([root]) for r in read_shard(s)]
    d = Describer(paths["mllm"], max_new_tokens=max_new_tokens, enforce_eager=True, max_model_len=2048)
    g = Grounder(paths["detector"], threshold=0.3, batch_size=batch_size)
    t = {"decode": 0.0, "describe": 0.0, "ground": 0.0}
    done = 0
    for start in range(0, len(recs), batch_size):
        chunk = recs[start:start + batch_size]
        t0 = time.perf_counter()
        imgs = [decode_image(r["image"]) for r in chunk]
        t1 = time.perf_counter()
        outs = d.describe(imgs)
        t2 = time.perf_counter()
        g.ground(imgs, [o.descriptions for o in outs])
        t3 = time.perf_counter()
        if start == 0:
            continue  # warm-up batch
        t["decode"] += t1 - t0
        t["describe"] += t2 - t1
        t["ground"] += t3 - t2
        done += len(chunk)
    d.close()
    total = sum(t.values())
    return {"images": done, "seconds": total, "images_per_s": done / total, **{f"{k}_s_per_img": v / done for k, v in t.items()}}


def pipeline(paths: dict, root: str, out: str, batch_size: int, max_new_tokens: int) -> dict:
    from annotators.config import load_config
    from annotators.pipeline import run_annotation

    cfg = load_config(profile="tiny", overrides=[f"run.batch_size={batch_size}", f"models.max_new_tokens={max_new_tokens}",
                                                  "run.progress=false"])
    cfg.models.mllm, cfg.models.detector = paths["mllm"], paths["detector"]
    cfg.input, cfg.output = [root], out
    summary = run_annotation(cfg)
    shards = json.load(open(os.path.join(out, "manifest.json")))["shards"]
    # Shard commit times: rows queue up while the engines start and then flush in a burst, so the
    # steady rate is rows per shard over the *median* gap between consecutive commits.
    times = sorted(v["seconds_since_start"] for v in shards.values())
    gaps = sorted(b - a for a, b in zip(times, times[1:]))
    median_gap = gaps[len(gaps) // 2] if gaps else float("nan")
    per_shard = summary["rows"] / max(1, len(times))
    return {"images": summary["rows"], "median_seconds_per_shard": median_gap,
            "images_per_s": per_shard / median_gap if median_gap else float("nan"),
            "total_seconds_incl_start": summary["seconds"], "counts": summary["counts"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=48)
    p.add_argument("--shards", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--size", default="bench", choices=["bench", "tiny"], help="model size (bench: ≥ 50 ms/img)")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from annotators.tiny_models import ensure_tiny_models

    names = ["llava-bench", "owlv2-bench"] if args.size == "bench" else ["llava", "owlv2"]
    built = ensure_tiny_models(names)
    paths = {"mllm": built[names[0]], "detector": built[names[1]]}
    with tempfile.TemporaryDirectory(prefix="grain-bench-") as tmp:
        root = os.path.join(tmp, "in")
        os.makedirs(root)
        build_corpus(root, args.images, args.shards)
        bare = bare_loop(paths, root, args.batch_size, args.max_new_tokens)
        pipe = pipeline(paths, root, os.path.join(tmp, "out"), args.batch_size, args.max_new_tokens)
    ratio = pipe["images_per_s"] / bare["images_per_s"]
    print(json.dumps({"bare": bare, "pipeline": pipe}, indent=1))
    print(f"bare loop : {bare['images_per_s']:.2f} images/s  (decode {bare['decode_s_per_img']*1e3:.0f} ms, "
          f"describe {bare['describe_s_per_img']*1e3:.0f} ms, ground {bare['ground_s_per_img']*1e3:.0f} ms per image)")
    print(f"pipeline  : {pipe['images_per_s']:.2f} images/s  (steady state: median shard-commit gap "
          f"{pipe['median_seconds_per_shard']:.2f} s for {pipe['images'] // max(1, args.shards)} images)")
    print(f"ratio     : {ratio:.2f}x bare (goal >= 0.9)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
