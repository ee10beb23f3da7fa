"""GRAIN vs CLIP-only training step, one process, same towers and batch (CPU by default).

    python -m benchmarks.train_step                       # vit-b-16 preset, batch 4 (minutes on 2 cores)
    python -m benchmarks.train_step --preset tiny --batch-size 8 --steps 3 [--json out.json]

Prints, measured in this process:
- step time (forward + GrainLoss + backward + AdamW) of GRAIN and of the CLIP baseline, and their
  ratio (goal ≤ 1.3);
- a breakdown by part, each timed in isolation (forward + backward): image tower, text tower on the
  captions (77 tokens), text tower on the descriptions (trimmed to the batch's longest description,
  ≤ desc_context_length = 32, as the trainer does; not padded to 77), region decoder, Hungarian
  matching (no grad), the losses;
- the share of matching + loss bookkeeping in the GRAIN step (goal ≤ 5 %);
- the data path running concurrently with the step: GRAIN steps fed by the trainer's own data iterator
  (``trainers.samples.BatchStream``: Parquet row → decode → squash-resize → tokenise → collate on its
  background thread and decode threads, ``prefetch`` batches ahead), samples/s of that combined loop
  over the same steps on the same batches already in memory (goal ≥ 0.95: the data path keeps up while
  it competes with the step for the cores); the two loops alternate, ``--rounds`` times each;
- for reference, the data path alone over the step alone, each with every core (≥ 3× was the goal
  when the two were timed apart; it says nothing about contention).
Batches come from synthetic annotated shards (grain.testing.fixtures.write_fixture_shards) with 3–5 boxes per
image, so matching and L_rd see realistic target counts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def _timeit(fn, steps: int, warmup: int) -> float:
    """Median seconds of ``fn()`` over ``steps`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def fixture_plan(tmp: str, batch_size: int, width: int, height: int, n_batches: int):
    """Fixture shards in ``tmp`` → (shard index, ``n_batches`` planned row batches of ``batch_size``)."""
    from grain.testing.fixtures import FixtureSpec, write_fixture_shards
    from trainers.index import build_index

    n_rows = batch_size * n_batches
    write_fixture_shards(tmp, FixtureSpec(num_shards=1, rows_per_shard=n_rows, width=width, height=height,
                                          min_objects=3, max_objects=5, seed=0))
    index = build_index(tmp)
    rows = index.groups[0][2]
    plan = [np.stack([np.zeros(batch_size, int), np.zeros(batch_size, int), rows[i * batch_size:(i + 1) * batch_size]], 1)
            for i in range(n_batches)]
    return index, plan


def batch_stream(index, plan, preset_cfg, decode_threads: int):
    """The trainer's data iterator over ``plan``, with a fresh reader (the Parquet read is part of the path)."""
    from grain.data import sample_from_row
    from trainers.samples import BatchStream, ShardReader, collate_trimmed

    return BatchStream(plan, ShardReader(index.root, index.files), to_sample=lambda r: sample_from_row(r, preset_cfg),
                       collate=lambda s: collate_trimmed(s, preset_cfg), threads=decode_threads, prefetch=2)


def timed_stream(index, plan, preset_cfg, decode_threads: int) -> tuple[list, float]:
    """Every batch of ``plan`` through the data iterator, and its samples/s (after one warm pass: tokenizer
    load, imports)."""

    def run():
        stream = batch_stream(index, plan, preset_cfg, decode_threads)
        out = [b for b, _, _ in stream]
        stream.close()
        return out

    run()
    t = time.perf_counter()
    batches = run()
    return batches, sum(len(p) for p in plan) / (time.perf_counter() - t)


def make_data(tmp: str, preset_cfg, batch_size: int, width: int, height: int, decode_threads: int, n_batches: int):
    """Fixture shards → (first batch, data-path samples/s measured over ``n_batches`` batches)."""
    batches, sps = timed_stream(*fixture_plan(tmp, batch_size, width, height, n_batches), preset_cfg, decode_threads)
    return batches[0], sps


def concurrent_data(step, batches: list, index, plan, preset_cfg, decode_threads: int, rounds: int) -> dict:
    """Seconds of ``step`` over ``batches`` already in memory (step alone) and of the same steps fed by
    the trainer's data iterator producing the same batches meanwhile (combined), alternated ``rounds``
    times so a load change on a shared machine hits both alike; medians."""
    alone, combined = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        for b in batches:
            step(b)
        alone.append(time.perf_counter() - t)
        t = time.perf_counter()
        stream = batch_stream(index, plan, preset_cfg, decode_threads)
        for b, _, _ in stream:
            step(b)
        stream.close()
        combined.append(time.perf_counter() - t)
    return {"step_alone_s": statistics.median(alone), "combined_s": statistics.median(combined),
            "batches": len(batches), "rounds": rounds, "step_alone_s_each": alone, "combined_s_each": combined}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="vit-b-16", choices=["vit-b-16", "tiny"])
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=3, help="timed repetitions (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    p.add_argument("--decode-threads", type=int, default=os.cpu_count())
    p.add_argument("--image-size", default="320x240", help="synthetic source images WxH (decoded, then squashed)")
    p.add_argument("--rounds", type=int, default=2, help="alternations of step-alone and combined loops")
    p.add_argument("--json", help="also write the results (with command, commit, date, hardware) here")
    return p.parse_args(argv)


def build_pair(preset: str):
    """GRAIN and CLIP-only models sharing their towers' weights, one AdamW each, and the loss."""
    from grain.config import LossConfig, ModelConfig
    from grain.losses import GrainLoss
    from grain.model import build_model

    grain, clip = build_model(ModelConfig.preset(preset, kind="grain")), build_model(ModelConfig.preset(preset, kind="clip"))
    clip.visual.transformer.load_state_dict(grain.visual.transformer.state_dict())  # same towers
    clip.text.load_state_dict(grain.text.state_dict())
    opts = {id(m): torch.optim.AdamW(m.param_groups(0.1), lr=1e-4, betas=(0.9, 0.98), eps=1e-8) for m in (grain, clip)}
    loss_fn = GrainLoss(LossConfig())

    def step(model, batch):
        opt = opts[id(model)]
        loss = loss_fn(model(batch), batch)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return grain, clip, loss_fn, step


def step_times(step, grain, clip, batch, steps: int, warmup: int) -> tuple[float, float]:
    """Median GRAIN and CLIP step seconds, interleaved (GRAIN, CLIP, GRAIN, ...) so a load change on a
    shared machine hits both alike."""
    for _ in range(warmup):
        step(grain, batch)
        step(clip, batch)
    tg, tc = [], []
    for _ in range(steps):
        for model, acc in ((grain, tg), (clip, tc)):
            t = time.perf_counter()
            step(model, batch)
            acc.append(time.perf_counter() - t)
    return statistics.median(tg), statistics.median(tc)


def part_times(grain, loss_fn, batch, steps: int, warmup: int) -> dict:
    """Seconds of each part, forward + backward in isolation (inputs detached so nothing else runs)."""
    images, caps, descs = batch["images"], batch["captions"], batch["target_desc_tokens"]
    with torch.no_grad():
        tokens = grain.image_tokens(images)
        outs = grain(batch)

    def fb(fn):
        def run():
            y = fn()
            (sum(v.float().sum() for v in y.values() if isinstance(v, torch.Tensor) and v.requires_grad)
             if isinstance(y, dict) else y.float().sum()).backward()
        return run

    leaves = {k: (v.detach().requires_grad_(True) if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
              for k, v in outs.items()}
    fns = {
        "image tower": fb(lambda: grain.image_tokens(images)),
        f"text tower, {caps.shape[0]} captions × {caps.shape[1]} tok": fb(lambda: grain.encode_text(caps)),
        f"text tower, {descs.shape[0]} descriptions × {descs.shape[1]} tok": fb(lambda: grain.encode_text(descs)),
        "region decoder": fb(lambda: grain.decoder(tokens.detach().requires_grad_(True))),
        "Hungarian matching": lambda: loss_fn.matcher(outs["pred_boxes"], batch["target_boxes"], batch["target_image"]),
        "losses (incl. matching)": lambda: loss_fn(leaves, batch)["loss"].backward(),
    }
    return {k: _timeit(fn, steps, warmup) for k, fn in fns.items()}


def print_report(args, res: dict) -> None:
    t_grain, t_clip, c = res["grain_step_s"], res["clip_step_s"], res["concurrent"]
    print(f"train_step benchmark: preset {args.preset}, batch {args.batch_size}, {res['torch_threads']} threads, "
          f"{res['target_boxes']} target boxes, device cpu")
    print(f"  GRAIN step {t_grain * 1e3:9.1f} ms   CLIP step {t_clip * 1e3:9.1f} ms   ratio {res['ratio']:.3f} (goal ≤ 1.3)")
    print("  breakdown (forward + backward each, isolated):")
    for k, v in res["parts_s"].items():
        print(f"    {k:<42} {v * 1e3:9.1f} ms  {100 * v / t_grain:5.1f} % of the GRAIN step")
    print(f"  matching + loss bookkeeping: {100 * res['bookkeeping_share']:.2f} % of the GRAIN step (goal ≤ 5 %)")
    print(f"  concurrent: {c['batches']} GRAIN steps fed by the data iterator ({args.decode_threads} decode threads) "
          f"{c['combined_sps']:.2f} samples/s vs the same steps alone {c['step_alone_sps']:.2f} samples/s: "
          f"{res['combined_over_step']:.3f}× (goal ≥ 0.95; median of {c['rounds']} alternations)")
    print(f"  isolated, each with every core: data path {res['data_sps']:.1f} samples/s vs training "
          f"{res['train_sps']:.1f} samples/s: {res['data_over_train']:.1f}× (no contention)")
    print(f"SUMMARY ratio={res['ratio']:.3f} bookkeeping_share={res['bookkeeping_share']:.4f} "
          f"combined_over_step={res['combined_over_step']:.3f} data_over_train={res['data_over_train']:.2f}")


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from grain.config import ModelConfig

    cfg_g = ModelConfig.preset(args.preset, kind="grain")
    w, h = (int(v) for v in args.image_size.split("x"))
    n_batches = max(3, args.steps + 1)
    with tempfile.TemporaryDirectory() as tmp:
        index, plan = fixture_plan(tmp, args.batch_size, w, h, n_batches)
        batches, data_sps = timed_stream(index, plan, cfg_g, args.decode_threads)
        batch = batches[0]
        grain, clip, loss_fn, step = build_pair(args.preset)
        t_grain, t_clip = step_times(step, grain, clip, batch, args.steps, args.warmup)
        parts = part_times(grain, loss_fn, batch, args.steps, args.warmup)
        conc = concurrent_data(lambda b: step(grain, b), batches, index, plan, cfg_g, args.decode_threads, args.rounds)
    n = conc["batches"] * args.batch_size
    conc.update(step_alone_sps=n / conc["step_alone_s"], combined_sps=n / conc["combined_s"])
    train_sps = args.batch_size / t_grain
    from benchmarks.provenance import provenance

    res = {**provenance("benchmarks.train_step", argv), "preset": args.preset, "batch_size": args.batch_size,
           "image_size": args.image_size, "torch_threads": torch.get_num_threads(), "decode_threads": args.decode_threads,
           "target_boxes": int(batch["target_boxes"].shape[0]), "grain_step_s": t_grain, "clip_step_s": t_clip,
           "ratio": t_grain / t_clip, "parts_s": parts, "bookkeeping_share": parts["losses (incl. matching)"] / t_grain,
           "concurrent": conc, "combined_over_step": conc["combined_sps"] / conc["step_alone_sps"],
           "data_sps": data_sps, "train_sps": train_sps, "data_over_train": data_sps / train_sps}
    print_report(args, res)
    if args.json:
        from benchmarks.provenance import write_results

        write_results(args.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
