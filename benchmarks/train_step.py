"""GRAIN vs CLIP-only training step, one process, same towers and batch (CPU by default).

    python benchmarks/train_step.py                       # vit-b-16 preset, batch 4 (minutes on 2 cores)
    python benchmarks/train_step.py --preset tiny --batch-size 8 --steps 3

Prints, measured in this process:
- step time (forward + GrainLoss + backward + AdamW) of GRAIN and of the CLIP baseline, and their
  ratio (goal ≤ 1.3);
- a breakdown by part, each timed in isolation (forward + backward): image tower, text tower on the
  captions (77 tokens), text tower on the descriptions (trimmed to the batch's longest description,
  ≤ desc_context_length = 32, as the trainer does; not padded to 77), region decoder, Hungarian
  matching (no grad), the losses;
- the share of matching + loss bookkeeping in the GRAIN step (goal ≤ 5 %);
- data-path throughput (Parquet row → decode → squash-resize → tokenise → collate, the trainer's own
  code with its decode threads) over training consumption (goal ≥ 3×).
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


def make_data(tmp: str, preset_cfg, batch_size: int, width: int, height: int, decode_threads: int, n_batches: int):
    """Fixture shards → (first batch, data-path samples/s measured over ``n_batches`` batches)."""
    from grain.testing.fixtures import FixtureSpec, write_fixture_shards
    from trainers.index import build_index
    from grain.data import sample_from_row
    from trainers.samples import BatchStream, ShardReader, collate_trimmed

    n_rows = batch_size * n_batches
    write_fixture_shards(tmp, FixtureSpec(num_shards=1, rows_per_shard=n_rows, width=width, height=height,
                                          min_objects=3, max_objects=5, seed=0))
    index = build_index(tmp)
    rows = index.groups[0][2]
    plan = [np.stack([np.zeros(batch_size, int), np.zeros(batch_size, int), rows[i * batch_size:(i + 1) * batch_size]], 1)
            for i in range(n_batches)]

    def run():
        reader = ShardReader(index.root, index.files)  # fresh: the Parquet read is part of the path
        stream = BatchStream(plan, reader,
                             to_sample=lambda r: sample_from_row(r, preset_cfg),
                             collate=lambda s: collate_trimmed(s, preset_cfg), threads=decode_threads, prefetch=2)
        out = [b for b, _, _ in stream]
        stream.close()
        return out

    run()  # warm: tokenizer load, imports
    t = time.perf_counter()
    batches = run()
    return batches[0], n_rows / (time.perf_counter() - t)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="vit-b-16", choices=["vit-b-16", "tiny"])
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=3, help="timed repetitions (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    p.add_argument("--decode-threads", type=int, default=os.cpu_count())
    p.add_argument("--image-size", default="320x240", help="synthetic source images WxH (decoded, then squashed)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from grain.config import LossConfig, ModelConfig
    from grain.losses import GrainLoss
    from grain.model import build_model

    cfg_g = ModelConfig.preset(args.preset, kind="grain")
    cfg_c = ModelConfig.preset(args.preset, kind="clip")
    w, h = (int(v) for v in args.image_size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        batch, data_sps = make_data(tmp, cfg_g, args.batch_size, w, h, args.decode_threads, n_batches=max(3, args.steps + 1))
    loss_fn = GrainLoss(LossConfig())
    grain, clip = build_model(cfg_g), build_model(cfg_c)
    clip.visual.transformer.load_state_dict(grain.visual.transformer.state_dict())  # same towers
    clip.text.load_state_dict(grain.text.state_dict())
    opts = {id(m): torch.optim.AdamW(m.param_groups(0.1), lr=1e-4, betas=(0.9, 0.98), eps=1e-8) for m in (grain, clip)}

    def step(model):
        opt = opts[id(model)]
        out = model(batch)
        loss = loss_fn(out, batch)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    # Interleaved (GRAIN, CLIP, GRAIN, ...) so a load change on a shared machine hits both alike.
    for _ in range(args.warmup):
        step(grain)
        step(clip)
    tg, tc = [], []
    for _ in range(args.steps):
        for model, acc in ((grain, tg), (clip, tc)):
            t = time.perf_counter()
            step(model)
            acc.append(time.perf_counter() - t)
    t_grain, t_clip = statistics.median(tg), statistics.median(tc)

    # ---- parts, each forward + backward in isolation (inputs detached so nothing else runs) ----
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
    parts = {
        "image tower": _timeit(fb(lambda: grain.image_tokens(images)), args.steps, args.warmup),
        f"text tower, {caps.shape[0]} captions × {caps.shape[1]} tok": _timeit(fb(lambda: grain.encode_text(caps)), args.steps, args.warmup),
        f"text tower, {descs.shape[0]} descriptions × {descs.shape[1]} tok": _timeit(fb(lambda: grain.encode_text(descs)), args.steps, args.warmup),
        "region decoder": _timeit(fb(lambda: grain.decoder(tokens.detach().requires_grad_(True))), args.steps, args.warmup),
    }
    t_match = _timeit(lambda: loss_fn.matcher(outs["pred_boxes"], batch["target_boxes"], batch["target_image"]), args.steps, args.warmup)
    t_loss = _timeit(lambda: loss_fn(leaves, batch)["loss"].backward(), args.steps, args.warmup)
    parts["Hungarian matching"] = t_match
    parts["losses (incl. matching)"] = t_loss
    train_sps = args.batch_size / t_grain

    print(f"train_step benchmark: preset {args.preset}, batch {args.batch_size}, {torch.get_num_threads()} threads, "
          f"{batch['target_boxes'].shape[0]} target boxes, device cpu")
    print(f"  GRAIN step {t_grain * 1e3:9.1f} ms   CLIP step {t_clip * 1e3:9.1f} ms   ratio {t_grain / t_clip:.3f} (goal ≤ 1.3)")
    print("  breakdown (forward + backward each, isolated):")
    for k, v in parts.items():
        print(f"    {k:<42} {v * 1e3:9.1f} ms  {100 * v / t_grain:5.1f} % of the GRAIN step")
    share = t_loss / t_grain
    print(f"  matching + loss bookkeeping: {100 * share:.2f} % of the GRAIN step (goal ≤ 5 %)")
    print(f"  data path {data_sps:.1f} samples/s ({args.decode_threads} decode threads) vs training {train_sps:.1f} samples/s: "
          f"{data_sps / train_sps:.1f}× (goal ≥ 3×)")
    print(f"SUMMARY ratio={t_grain / t_clip:.3f} bookkeeping_share={share:.4f} data_over_train={data_sps / train_sps:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
