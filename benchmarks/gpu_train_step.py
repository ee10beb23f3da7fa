"""One GRAIN training step on one device: samples/s, MFU against the chip's peak and a measured matmul rate, peak memory.

    PYTHONPATH=. python benchmarks/gpu_train_step.py                        # vit-b-16, bf16, cuda, batch 128
    PYTHONPATH=. python benchmarks/gpu_train_step.py --batch-size 64 --steps 10 --warmup 3
    PYTHONPATH=. python benchmarks/gpu_train_step.py --preset tiny --device cpu --steps 3   # CI smoke run

Self-contained on purpose: it imports only grain.config / grain.model / grain.losses (+ torch,
open_clip, scipy), never Ray, Prefect, vLLM or trainers/, so it runs on a bare GPU machine with
``PYTHONPATH=.``. Inputs are synthetic: random images, random caption tokens (77, EOT at a random
position), ``boxes_per_image`` random boxes per image with random description tokens (their length
``--desc-len``, ≤ 32, as the trainer trims them), so the matcher and L_rd do real work.

FLOPs per step are counted by ``torch.utils.flop_counter.FlopCounterMode`` on one forward+backward
(matmuls and attention; elementwise ops are not counted, so MFU is a slight underestimate). MFU is
reported twice: ``mfu`` against the chip's datasheet dense peak (``CHIP_PEAK_TFLOPS``, looked up by
device name, or ``--peak-tflops``; on a CPU only with the flag, else null) and ``mfu_vs_matmul``
against a rate measured here, a large square matmul in the step's dtype. The second alone flatters:
a chip that runs matmuls below its datasheet peak makes the step look closer to its ceiling.
The last line is a one-line summary for logs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

SOT_ID, EOT_ID = 49406, 49407  # open_clip BPE specials (grain.tokenizer); EOT has the largest id

# Datasheet dense (no sparsity) peak TFLOP/s by device-name substring and step dtype. "fp32" is the
# TF32 tensor-core rate: this script turns TF32 on for fp32 matmuls. More specific names come first
# ("H100 PCIe" before "H100"); an unknown chip gets no chip MFU unless --peak-tflops is given.
CHIP_PEAK_TFLOPS = (
    ("H200", {"bf16": 989.0, "fp32": 494.7}),
    ("H100 PCIe", {"bf16": 756.0, "fp32": 378.0}),
    ("H100", {"bf16": 989.0, "fp32": 494.7}),
    ("A100", {"bf16": 312.0, "fp32": 156.0}),
    ("L40S", {"bf16": 362.0, "fp32": 183.0}),
    ("L4", {"bf16": 121.0, "fp32": 60.0}),
)


def chip_peak_tflops(device_name: str, dtype: str, override: float | None = None) -> tuple[float | None, str]:
    """(peak TFLOP/s, where it came from) for ``device_name`` in ``dtype`` ("bf16" | "fp32")."""
    if override is not None:
        return float(override), "--peak-tflops"
    if device_name != "cpu":  # a CPU's peak depends on cores, clocks and SIMD width: only with the flag
        for name, peaks in CHIP_PEAK_TFLOPS:
            if name in device_name and dtype in peaks:
                return peaks[dtype], f"datasheet dense peak of {name} ({dtype})"
    return None, "unknown: pass --peak-tflops"


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def synthetic_batch(cfg, batch_size: int, boxes_per_image: int, desc_len: int, device, gen: torch.Generator) -> dict:
    """A ``grain.data.make_batch``-shaped batch of random data (see the module docstring)."""

    def tokens(n, length):
        t = torch.zeros(n, length, dtype=torch.long)
        lens = torch.randint(3, length + 1, (n,), generator=gen)
        for i, L in enumerate(lens.tolist()):
            t[i, 0] = SOT_ID
            t[i, 1:L - 1] = torch.randint(1, 49000, (L - 2,), generator=gen)
            t[i, L - 1] = EOT_ID
        return t

    m = batch_size * boxes_per_image
    wh = torch.rand(m, 2, generator=gen) * 0.5 + 0.05
    cxcy = wh / 2 + torch.rand(m, 2, generator=gen) * (1 - wh)
    return {
        "images": torch.randn(batch_size, 3, cfg.image_size, cfg.image_size, generator=gen).to(device),
        "captions": tokens(batch_size, cfg.context_length).to(device),
        "target_boxes": torch.cat([cxcy, wh], 1).to(device),  # normalised cxcywh inside [0, 1]
        "target_image": torch.arange(batch_size).repeat_interleave(boxes_per_image).to(device),
        "target_desc_tokens": tokens(m, desc_len).to(device),
        "target_text_id": torch.randint(0, max(1, m // 2), (m,), generator=gen).to(device),  # some repeats
    }


def matmul_peak(device, dtype, n: int, reps: int) -> float:
    """Measured FLOP/s of an n×n @ n×n matmul in ``dtype`` (best of ``reps``)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    _sync(device)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def _median_time(fn, device, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    ts = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        _sync(device)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def breakdown(model, loss_fn, batch, device, dtype, use_autocast, steps, warmup) -> dict:
    """Milliseconds of each part, forward + backward, inputs detached so only that part runs."""

    def ac():
        return torch.autocast(device_type=device.type, dtype=dtype, enabled=use_autocast)

    def fb(fn):
        def run():
            with ac():
                y = fn()
            y = y if isinstance(y, dict) else {"y": y}
            sum(v.float().sum() for v in y.values() if isinstance(v, torch.Tensor) and v.requires_grad).backward()
        return run

    with torch.no_grad(), ac():
        tokens = model.image_tokens(batch["images"])
        outs = model(batch)
    leaves = {k: (v.detach().float().requires_grad_(True) if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
              for k, v in outs.items()}
    parts = {
        "image tower": fb(lambda: model.image_tokens(batch["images"])),
        "text tower: captions": fb(lambda: model.encode_text(batch["captions"])),
        "text tower: descriptions": fb(lambda: model.encode_text(batch["target_desc_tokens"])),
    }
    if model.decoder is not None:
        parts["region decoder"] = fb(lambda: model.decoder(tokens.detach().requires_grad_(True)))
        parts["Hungarian matching"] = lambda: loss_fn.matcher(outs["pred_boxes"].float(), batch["target_boxes"], batch["target_image"])
    parts["losses (incl. matching)"] = lambda: loss_fn(leaves, batch)["loss"].backward()
    return {k: 1e3 * _median_time(fn, device, steps, warmup) for k, fn in parts.items()}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="vit-b-16", choices=["vit-b-16", "tiny"])
    p.add_argument("--kind", default="grain", choices=["grain", "clip"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["bf16", "fp32"], help="autocast dtype (default: bf16 on cuda, fp32 on cpu)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--boxes-per-image", type=int, default=5)
    p.add_argument("--desc-len", type=int, default=16, help="description token length (≤ 32)")
    p.add_argument("--matmul-n", type=int, default=None, help="size of the peak-rate matmul (default 8192 cuda, 1024 cpu)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="chip peak TFLOP/s for MFU (default: datasheet table by device name; required on CPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model first")
    p.add_argument("--breakdown", action="store_true", help="also time each part (forward + backward) in isolation")
    p.add_argument("--json", help="also write the results to this JSON file")
    return p, p.parse_args(argv)


def count_flops(model, loss_fn, batch, device, dtype, use_autocast: bool) -> int:
    """FLOPs of one uncompiled forward + backward (FlopCounterMode); leaves the gradients set."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        with torch.autocast(device_type=device.type, dtype=dtype, enabled=use_autocast):
            losses = loss_fn(model(batch), batch)
        losses["loss"].backward()
    return fc.get_total_flops()


def timed_steps(step, device, steps: int, warmup: int) -> tuple[float, dict]:
    """(median step seconds, the last step's losses); CUDA peak memory counted from the first timed step."""
    for _ in range(warmup):
        step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        losses = step()
        _sync(device)
        times.append(time.perf_counter() - t)
    if not torch.isfinite(losses["loss"]):
        raise FloatingPointError(f"non-finite loss {float(losses['loss'])}")
    return statistics.median(times), losses


def rates(args, device, dtype, flops: int, t_step: float) -> dict:
    """Samples/s, achieved TFLOP/s and MFU against the chip's datasheet peak and a measured matmul rate."""
    peak_mem = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    n = args.matmul_n or (8192 if device.type == "cuda" else 1024)
    peak = matmul_peak(device, dtype, n, reps=5 if device.type == "cuda" else 2)
    achieved = flops / t_step  # FLOP/s
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    dtype_name = str(dtype).replace("torch.", "").replace("bfloat16", "bf16").replace("float32", "fp32")
    chip_peak, chip_source = chip_peak_tflops(device_name, dtype_name, args.peak_tflops)
    return {
        "preset": args.preset, "kind": args.kind, "device": str(device), "device_name": device_name,
        "dtype": str(dtype).replace("torch.", ""), "batch_size": args.batch_size, "compile": args.compile,
        "step_s": t_step, "samples_per_s": args.batch_size / t_step, "flops_per_step": flops,
        "achieved_tflops": achieved / 1e12, "matmul_peak_tflops": peak / 1e12, "mfu_vs_matmul": achieved / peak,
        "chip_peak_tflops": chip_peak, "chip_peak_source": chip_source,
        "mfu": achieved / (chip_peak * 1e12) if chip_peak else None,
        "peak_mem_gib": peak_mem / 2**30,
    }


def main(argv=None) -> int:
    p, args = parse_args(argv)
    from grain.config import LossConfig, ModelConfig
    from grain.losses import GrainLoss
    from grain.model import build_model

    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    cfg = ModelConfig.preset(args.preset, kind=args.kind)
    if not 2 <= args.desc_len <= cfg.desc_context_length:
        p.error(f"--desc-len must be in [2, {cfg.desc_context_length}]")
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    loss_fn = GrainLoss(LossConfig())
    opt = torch.optim.AdamW(model.param_groups(0.1), lr=1e-4, betas=(0.9, 0.98), eps=1e-8,
                            fused=device.type == "cuda")
    fwd_model = torch.compile(model) if args.compile else model
    batch = synthetic_batch(cfg, args.batch_size, args.boxes_per_image, args.desc_len, device,
                            torch.Generator().manual_seed(0))
    use_autocast = dtype != torch.float32

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=dtype, enabled=use_autocast):
            losses = loss_fn(fwd_model(batch), batch)
        losses["loss"].backward()
        opt.step()
        return losses

    flops = count_flops(model, loss_fn, batch, device, dtype, use_autocast)
    opt.zero_grad(set_to_none=True)
    t_step, losses = timed_steps(step, device, args.steps, args.warmup)
    res = {**rates(args, device, dtype, flops, t_step), "loss": float(losses["loss"].detach()), "torch": torch.__version__}
    if args.breakdown:
        res["breakdown_ms"] = breakdown(model, loss_fn, batch, device, dtype, use_autocast, args.steps, args.warmup)
        for k, v in res["breakdown_ms"].items():
            print(f"  {k:<28} {v:8.2f} ms  {100 * v / (t_step * 1e3):5.1f} % of the step")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    chip_mfu = "n/a (no chip peak: --peak-tflops)" if res["mfu"] is None else \
        f"{100 * res['mfu']:.1f} % of {res['chip_peak_tflops']:.4g} TFLOP/s chip peak"
    print(f"gpu_train_step {res['preset']}/{res['kind']} on {res['device_name']} {res['dtype']} batch {args.batch_size}: "
          f"{res['samples_per_s']:.1f} samples/s ({t_step * 1e3:.1f} ms/step), "
          f"{res['achieved_tflops']:.3g} TFLOP/s → MFU {chip_mfu}, {100 * res['mfu_vs_matmul']:.1f} % of "
          f"{res['matmul_peak_tflops']:.3g} measured matmul; peak memory {res['peak_mem_gib']:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
