"""`grain plan`: what annotating and pretraining N images will cost, from rates measured on this machine.

    grain plan --input SHARDS --images N [--epochs E] [--gpus G] [--gpu-hour-price P] --profile tiny|paper
    grain plan --input SHARDS --images N --rates gpu_suite.json ...      # rates from benchmarks/gpu_suite.py

The probe runs the real stage code on a few images of SHARDS: the annotation stage's read → decode →
describe (the configured MLLM, vLLM) → ground (the configured detector), then a few training steps of
the configured preset at its batch size (benchmarks/gpu_train_step.py, synthetic batch). Each rate is
timed after a warm-up batch, on one device (GPU 0, or this machine's CPUs without CUDA). From the rates:

    t_eff            = 1 / (1/t_d + 1/t_g)                 annotated images/s per device
    annotation GPU-h = N / (3600 · t_eff)
    training GPU-h   = E · N / (3600 · t_p)
    wall time        = GPU-h / G                           (+ start-up, weight download)
    cost             = P · (annotation GPU-h + training GPU-h)
    storage          = N · input bytes/image  +  N · (input bytes/image + annotation bytes/image)

Input bytes per image come from the shards read; annotation bytes per image from the probe's rows
(caption, descriptions, boxes). Beside each rate the table shows its ceiling on one H200 from
docs/performance.md (paper models), so a user sees how far the setup is from it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

# One H200, paper models (docs/performance.md: computed ceilings; the training figure is goal 1's rate).
CEILINGS = {
    "describer": "≈ 53 img/s at 100 tokens, ≈ 28 at 256 (H200, LLaVA-1.5-7B, prefill + decode ceiling)",
    "grounder": "≈ 885 img/s (H200, OWLv2-B/16 @ 960 px, dense bf16)",
    "train": "≈ 935–1,095 samples/s (H200, ViT-B/16 GRAIN at the CLIP-only step ÷ 1.3)",
}


def extrapolate(rates: dict, images: int, epochs: int, gpus: int, price: float | None, sizes: dict) -> dict:
    """The plan's arithmetic (module docstring) from ``rates`` (images or samples per second per device)."""
    t_d, t_g, t_p = rates["describer_images_per_s"], rates["grounder_images_per_s"], rates["train_samples_per_s"]
    t_eff = 1.0 / (1.0 / t_d + 1.0 / t_g)
    ann_h = images / (3600.0 * t_eff)
    train_h = epochs * images / (3600.0 * t_p)
    total = ann_h + train_h
    in_b = sizes.get("input_bytes_per_image")
    ann_b = sizes.get("annotation_bytes_per_image")
    out = {"images": images, "epochs": epochs, "gpus": gpus, "gpu_hour_price": price,
           "annotate_images_per_s": t_eff, "annotate_gpu_hours": ann_h, "train_gpu_hours": train_h,
           "gpu_hours": total, "annotate_wall_hours": ann_h / gpus, "train_wall_hours": train_h / gpus,
           "wall_hours": total / gpus, "cost": None if price is None else price * total,
           "input_gb": None if in_b is None else images * in_b / 1e9,
           "annotated_gb": None if in_b is None or ann_b is None else images * (in_b + ann_b) / 1e9}
    per_core = rates.get("decode_samples_per_s_per_core")
    out["decode_cores_per_gpu_3x"] = None if not per_core else 3.0 * t_p / per_core
    return out


def rates_from_suite(path: str, out_tokens: int | None = None) -> dict:
    """Rates from a ``benchmarks/gpu_suite.py`` JSON. The describer row is vLLM's run at ``out_tokens``
    (else its longest); without one, the transformers ``generate`` lower bound (``describer_hf``)."""
    try:
        with open(path) as fh:
            res = json.load(fh)
    except (OSError, ValueError) as e:
        raise SystemExit(f"grain plan: --rates {path}: cannot read a gpu_suite JSON ({e})") from None
    notes = []
    desc = _describer_rate(res, out_tokens, notes)
    try:
        grounder = float(res["grounder"]["images_per_s"])
        train = float(res["train"]["grain"]["samples_per_s"])
    except (KeyError, TypeError, ValueError) as e:
        raise SystemExit(f"grain plan: --rates {path}: no grounder.images_per_s / train.grain.samples_per_s ({e!r}); "
                         "run benchmarks/gpu_suite.py with the parts train, describer and grounder") from None
    if desc is None:
        raise SystemExit(f"grain plan: --rates {path}: no describer rate (neither describer.runs nor describer_hf.runs)")
    hw = res.get("hardware") or (res.get("ceilings") or {}).get("hw", {}).get("name") or "unknown device"
    return {"describer_images_per_s": desc, "grounder_images_per_s": grounder, "train_samples_per_s": train,
            "decode_samples_per_s_per_core": (res.get("data") or {}).get("samples_per_s_per_core"),
            "source": f"rates file {path}", "device": str(hw), "tiny": bool(res.get("tiny")), "notes": notes}


def _describer_rate(res: dict, out_tokens: int | None, notes: list) -> float | None:
    for part, label in (("describer", "vLLM"), ("describer_hf", "transformers generate: a lower bound, not vLLM")):
        runs = [r for r in ((res.get(part) or {}).get("runs") or []) if "images_per_s" in r]
        if not runs:
            continue
        pick = next((r for r in runs if r.get("out_tokens") == out_tokens), max(runs, key=lambda r: r.get("out_tokens", 0)))
        notes.append(f"describer: {label}, {pick.get('out_tokens')} output tokens")
        return float(pick["images_per_s"])
    return None


def _probe_rows(shards: list, n: int, cfg) -> tuple[list[dict], float]:
    """The first ``n`` decodable rows of ``shards`` (read and decoded by the annotation stage's own code)
    and the mean image bytes per record of the shards read."""
    import pyarrow as pa

    from annotators import stages

    limits = {"max_image_bytes": cfg.limits.max_image_bytes, "max_caption_chars": cfg.limits.max_caption_chars,
              "max_json_bytes": cfg.limits.max_json_bytes}
    rows, read_bytes, read_rows = [], 0, 0
    for s in shards:
        recs = stages.read_shards_batch(pa.table({"shard": [json.dumps(s.to_dict())]}), limits)
        dec = stages.decode_batch(recs, cfg.limits.max_image_pixels, cfg.limits.min_image_side).to_pylist()
        read_bytes += sum(len(r["image"] or b"") for r in recs.to_pylist())
        read_rows += recs.num_rows
        rows += [r for r in dec if r["status"] == "ok"]
        if len(rows) >= n:
            break
    if not rows:
        raise SystemExit(f"grain plan: --input: no decodable image in {len(shards)} shard(s)")
    return rows[:n], read_bytes / max(1, read_rows)


def _timed(stage, batches: list) -> tuple[float, list]:
    stage(batches[0])  # warm-up: engine start, compilation, first allocation
    t0, out = time.perf_counter(), []
    for b in batches:
        out += stage(b).to_pylist()
    return time.perf_counter() - t0, out


def probe_annotation(input_path: str, profile: str, n_images: int) -> dict:
    """Describer and grounder images/s on ``n_images`` of ``input_path`` through the configured models."""
    from annotators import stages
    from annotators.config import load_config
    from annotators.pipeline import describer_kwargs, grounder_kwargs, resolve_models
    from annotators.readers import discover_shards

    cfg = load_config(profile=profile)
    shards = discover_shards([input_path])
    if not shards:
        raise SystemExit(f"grain plan: --input {input_path}: no shards found (tar, parquet or image folder)")
    rows, in_bytes = _probe_rows(shards, n_images, cfg)
    models = resolve_models(cfg)
    bs = cfg.run.batch_size
    batches = [stages.to_batch(rows[i:i + bs]) for i in range(0, len(rows), bs)]
    describe = stages.DescribeStage(models["mllm"], cfg.models.mllm_family, describer_kwargs(cfg, models),
                                    max_descriptions=cfg.models.max_descriptions, threads=cfg.run.threads_per_actor)
    t_desc, described = _timed(describe, batches)
    del describe
    ground = stages.GroundStage(models["detector"], grounder_kwargs(cfg, models), max_boxes=cfg.models.max_boxes,
                                threads=cfg.run.threads_per_actor)
    t_ground, grounded = _timed(ground, [stages.to_batch(described[i:i + bs]) for i in range(0, len(described), bs)])
    ann = [len(json.dumps({k: r.get(k) for k in ("mllm_caption", "descriptions", "boxes", "box_scores", "box_desc_index")}))
           for r in grounded]
    return {"images": len(rows), "describer_images_per_s": len(rows) / t_desc, "grounder_images_per_s": len(rows) / t_ground,
            "with_descriptions": sum(1 for r in grounded if r.get("descriptions")),
            "input_bytes_per_image": in_bytes, "annotation_bytes_per_image": sum(ann) / len(ann),
            "max_new_tokens": cfg.models.max_new_tokens, "models": {"mllm": models["mllm_id"], "detector": models["detector_id"]}}


def probe_training(profile: str, steps: int, device: str) -> dict:
    """Samples/s of a few training steps of the profile's preset at its per-worker batch size."""
    from benchmarks import gpu_train_step
    from trainers.config import load_config

    cfg = load_config(profile=profile, overrides={"data.path": ".", "output": "."})
    preset = cfg.model.get("preset", "tiny")
    with tempfile.TemporaryDirectory(prefix="grain-plan-") as tmp:
        path = os.path.join(tmp, "step.json")
        gpu_train_step.main(["--preset", preset, "--kind", cfg.model.get("kind", "grain"), "--device", device,
                             "--batch-size", str(cfg.batch_size), "--steps", str(steps), "--warmup", "1", "--json", path])
        with open(path) as fh:
            step = json.load(fh)
    return {"preset": preset, "batch_size": cfg.batch_size, "steps": steps, "train_samples_per_s": step["samples_per_s"]}


def this_device() -> tuple[str, str]:
    """``(torch device, words)``: GPU 0 when CUDA is there, else this machine's CPUs."""
    import torch

    if torch.cuda.is_available():
        return "cuda", f"1 × {torch.cuda.get_device_name(0)} (GPU 0 of {torch.cuda.device_count()})"
    return "cpu", f"this machine's CPUs ({os.cpu_count()} cores), no GPU"


def _fmt(x, unit: str = "", digits: int = 2) -> str:
    if x is None:
        return "—"
    return f"{x:,.{digits}f}{unit}" if abs(x) < 1e6 else f"{x:,.0f}{unit}"


def table(rates: dict, plan: dict) -> str:
    """The plan as a fixed-width table (rates with their H200 ceilings, then the extrapolation)."""
    dev = "device" if rates.get("on_gpu") else "machine"
    rows = [("rates (per " + dev + ")", "measured", "ceiling, one H200, paper models"),
            ("describer images/s", _fmt(rates["describer_images_per_s"], digits=3), CEILINGS["describer"]),
            ("grounder images/s", _fmt(rates["grounder_images_per_s"], digits=3), CEILINGS["grounder"]),
            ("annotation images/s (both)", _fmt(plan["annotate_images_per_s"], digits=3), "1 / (1/t_d + 1/t_g)"),
            ("training samples/s", _fmt(rates["train_samples_per_s"], digits=3), CEILINGS["train"]),
            ("decode cores per GPU (3×)", _fmt(plan["decode_cores_per_gpu_3x"], digits=1), "docs/performance.md goal 4"),
            ("", "", ""),
            (f"plan: {plan['images']:,} images, {plan['epochs']} epochs, {plan['gpus']} GPU(s)", "", ""),
            ("annotation GPU-hours", _fmt(plan["annotate_gpu_hours"]), f"wall {_fmt(plan['annotate_wall_hours'])} h"),
            ("training GPU-hours", _fmt(plan["train_gpu_hours"]), f"wall {_fmt(plan['train_wall_hours'])} h"),
            ("total GPU-hours", _fmt(plan["gpu_hours"]), f"wall {_fmt(plan['wall_hours'])} h on {plan['gpus']} GPU(s)"),
            ("cost", _fmt(plan["cost"]), "at --gpu-hour-price" if plan["cost"] is not None else "give --gpu-hour-price"),
            ("storage: input shards GB", _fmt(plan["input_gb"]), "from the shards read"),
            ("storage: annotated shards GB", _fmt(plan["annotated_gb"]), "images + annotations")]
    w0, w1 = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
    lines = [f"{a.ljust(w0)}  {b.rjust(w1)}  {c}".rstrip() for a, b, c in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="grain plan", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="img2dataset shards (tar / parquet / folder) the probe reads")
    p.add_argument("--images", type=int, required=True, help="images of the corpus to plan for (e.g. 12000000)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the profile's run file)")
    p.add_argument("--gpus", type=int, default=1, help="GPUs the run gets (wall time = GPU-hours / G; default 1)")
    p.add_argument("--gpu-hour-price", type=float, default=None, help="price of one GPU-hour (cost = price × GPU-hours)")
    p.add_argument("--profile", choices=["tiny", "paper"], required=True, help="models and preset to probe")
    p.add_argument("--rates", default=None, help="take the rates from a benchmarks/gpu_suite.py JSON instead of probing")
    p.add_argument("--probe-images", type=int, default=32, help="images the probe annotates (default: %(default)s)")
    p.add_argument("--probe-steps", type=int, default=3, help="timed training steps of the probe (default: %(default)s)")
    p.add_argument("--json", default=None, help="also write rates and plan to this JSON file ('-': stdout)")
    return p


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    for name in ("images", "gpus", "probe_images", "probe_steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(args, name)}")
    if args.epochs is not None and args.epochs < 1:
        p.error(f"--epochs must be ≥ 1, got {args.epochs}")
    if not os.path.exists(args.input):
        p.error(f"--input {args.input}: no such file or folder")
    from trainers.config import load_config

    epochs = args.epochs or load_config(profile=args.profile, overrides={"data.path": ".", "output": "."}).epochs
    probe = probe_annotation(args.input, args.profile, args.probe_images) if not args.rates else None
    if args.rates:
        rates = rates_from_suite(args.rates, out_tokens=None)
        rates["on_gpu"] = not rates["tiny"]
        sizes = _input_sizes(args.input, args.profile)
    else:
        device, words = this_device()
        rates = {**{k: probe[k] for k in ("describer_images_per_s", "grounder_images_per_s")},
                 **probe_training(args.profile, args.probe_steps, device),
                 "source": f"probe of {probe['images']} images of {args.input}", "device": words, "on_gpu": device == "cuda",
                 "notes": [] if device == "cuda" else
                 ["no GPU: the rates and 'GPU-hours' below describe this machine (machine-hours), not a GPU"]}
        sizes = {k: probe[k] for k in ("input_bytes_per_image", "annotation_bytes_per_image")}
    plan = extrapolate(rates, args.images, epochs, args.gpus, args.gpu_hour_price, sizes)
    out = {"profile": args.profile, "rates": rates, "probe": probe, "plan": plan, "created": time.time()}
    print(f"grain plan ({args.profile} profile): rates from {rates['source']} on {rates['device']}")
    for note in rates.get("notes", []):
        print(f"  note: {note}")
    print(table(rates, plan))
    if args.json == "-":
        print(json.dumps(out, indent=1, default=str))
    elif args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1, default=str)
        print(f"[plan] JSON: {args.json}")
    return 0


def _input_sizes(input_path: str, profile: str) -> dict:
    """Input bytes per image from the first shard (no models run); annotation bytes unknown without a probe."""
    from annotators.config import load_config
    from annotators.readers import discover_shards

    shards = discover_shards([input_path])
    if not shards:
        return {}
    _, in_bytes = _probe_rows(shards[:1], 1 << 30, load_config(profile=profile))
    return {"input_bytes_per_image": in_bytes}


if __name__ == "__main__":
    sys.exit(main())
