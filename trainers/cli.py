"""``grain train``: pretrain GRAIN (or the CLIP-only baseline) on annotated shards with Ray Train.

Examples::

    grain train --data shards/ --output runs/tiny --profile tiny            # 2 CPU workers, tiny preset
    grain train --data shards/ --output runs/clip --profile tiny --baseline # CLIP-only baseline
    grain train --data s3://bucket/annotated --output s3://bucket/runs/b16 \\
        --config configs/vit-b-16-cc12m.yaml --ray-address auto             # the paper's recipe
    grain train ... --set optim.lr=5e-4 --set epochs=2 --max-steps 100     # overrides

Rerunning the same command continues from the latest checkpoint under ``<output>/ray/<run name>``.
Also runnable as ``python -m trainers.cli``.
"""

from __future__ import annotations

import argparse
import json
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="grain train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="directory or URI (s3://…) of annotated Parquet shards (else the run file's data.path)")
    p.add_argument("--output", help="run directory or URI: run.json, metrics, final.pt, checkpoints (else the run file's output)")
    p.add_argument("--profile", choices=["tiny", "paper"], help="base run file: tiny → configs/tiny-cpu.yaml, paper → configs/vit-b-16-cc12m.yaml")
    p.add_argument("--config", help="run file (YAML; a `train:` section or a flat training config), applied after --profile")
    p.add_argument("--baseline", action="store_true", help="train the CLIP-only baseline (model.kind=clip: no decoder, L_ic only)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value by dotted key, e.g. optim.lr=1e-4 (repeatable; `grain config show train` "
                        "lists every key)")
    p.add_argument("--workers", type=int, help="Ray Train workers (0: in-process, no Ray)")
    p.add_argument("--gpu", action="store_true", help="one GPU per worker (NCCL, bf16 autocast)")
    p.add_argument("--ray-address", help="Ray cluster address (e.g. auto, ray://host:10001); default: a local cluster. "
                        "A cluster in token mode needs RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH (or RAY_AUTH_TOKEN): "
                        "`grain stack status` prints the local stack's")
    p.add_argument("--max-steps", type=int, help="stop after this global step (resumable: the schedule spans all epochs)")
    p.add_argument("--epochs", type=int, help="epochs (defines the schedule length)")
    p.add_argument("--batch-size", type=int, help="batch size per worker")
    p.add_argument("--run-name", help="Ray run name (default: the output folder's name); same name = resume")
    p.add_argument("--print-config", action="store_true", help="print the merged config as JSON and exit")
    return p


def config_from_args(args: argparse.Namespace):
    from trainers.config import load_config

    over: dict = {}
    if args.data:
        over["data"] = {"path": args.data}
    if args.output:
        over["output"] = args.output
    for name in ("workers", "max_steps", "epochs", "batch_size", "run_name", "ray_address"):
        v = getattr(args, name)
        if v is not None:
            over[name] = v
    if args.gpu:
        over["use_gpu"] = True
    if args.baseline:
        over["model"] = {"kind": "clip"}
    return load_config(args.config, profile=args.profile or (None if args.config else "tiny"), overrides=over, sets=args.sets,
                       source="command-line flags")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args).validate()
    except (ValueError, FileNotFoundError) as e:
        print(f"grain train: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    from trainers.index import DataError
    from trainers.run import run_training

    try:
        result = run_training(cfg)
    except DataError as e:  # unusable training data: one line naming it (docs/reliability.md), no traceback
        print(f"grain train: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: result[k] for k in ("output", "final_checkpoint", "steps", "samples_seen", "skipped_rows")}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
