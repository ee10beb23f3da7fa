"""Does a GRAIN recipe localise? One GRAIN run with the full objective, scored on rows it never trained on.

Trains the GRAIN arm of a bench config (``train_config_for``: the bench's run file, ``--set`` overrides as
in `grain bench grounding`) on the first ``--train-shards`` shards of a prepared bench corpus, then prints
``benchmarks/grounding_boxes.py``'s figures on the corpus's last shard (held out): boxes / best fixed
layout, spread, probes. The evidence table of docs/bench-grounding.md ("The deviations that make it localise") was made so:

    grain bench grounding --prepare-only --output /tmp/pos-work/bench --set corpus.images=2000
    python -m benchmarks.localise_probe --bench /tmp/pos-work/bench --output /tmp/exp/NAME --set train.epochs=16

with the shipped config (96 px, two-stage queries, conv heads, sine_kv: the kept row, 0.58); the other rows
add e.g. ``--set train.model.image_size=64 --set train.model.proposal_head=mlp`` (per-token heads).
"""

from __future__ import annotations

import argparse
import os
import time


def main(argv: list[str] | None = None) -> int:
    from benchmarks.bench_grounding import DEFAULT_CONFIG, load_bench_config, train_config_for

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", required=True, help="a prepared `grain bench grounding` output (its corpus/ is used)")
    ap.add_argument("--output", required=True, help="folder for this run (runs/grain-seed<S>/train, boxes.json)")
    ap.add_argument("--config", default=str(DEFAULT_CONFIG))
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--train-shards", type=int, default=3, help="train on the first N corpus shards (default 3)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    cfg = load_bench_config(args.config, args.sets)
    corpus = os.path.abspath(os.path.join(args.bench, "corpus"))
    shards = sorted(f for f in os.listdir(corpus) if f.endswith(".parquet"))
    if len(shards) <= args.train_shards:
        ap.error(f"{corpus}: {len(shards)} shards; need more than --train-shards {args.train_shards} (the last is held out)")
    data = os.path.join(args.output, "train-data")
    os.makedirs(data, exist_ok=True)
    for s in shards[: args.train_shards]:
        if not os.path.exists(os.path.join(data, s)):
            os.symlink(os.path.join(corpus, s), os.path.join(data, s))
    link = os.path.join(args.output, "corpus")  # grounding_boxes reads <bench>/corpus, last shard
    if not os.path.exists(link):
        os.symlink(corpus, link)
    out = os.path.join(args.output, "runs", f"grain-seed{args.seed}", "train")
    t0 = time.time()
    if not os.path.exists(os.path.join(out, "final.pt")):
        from trainers.run import run_training

        run_training(train_config_for(cfg, "grain", args.seed, data, out))
    print(f"[probe] trained in {time.time() - t0:.0f} s", flush=True)
    from benchmarks import grounding_boxes

    return grounding_boxes.main(["--bench", args.output, "--json", os.path.join(args.output, "boxes.json")])


if __name__ == "__main__":
    raise SystemExit(main())
