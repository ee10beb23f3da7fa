"""`grain annotate`: annotate img2dataset shards with MLLM descriptions + OWLv2 boxes (Ray Data).

    grain annotate --input /data/cc3m --output /data/cc3m-annotated --profile tiny
    grain annotate --input s3://bucket/cc12m --output s3://bucket/cc12m-grain --profile paper --ray-address auto
    python -m annotators.cli --input shards/ --output out/ --set run.batch_size=4 --set run.max_shards=2

Re-running the same command resumes: committed shards are skipped, unfinished ones are redone.
Exit codes: 0 done (every pending shard written), 3 stopped early by run.max_shards, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys

from annotators.config import PROFILES, ConfigError, load_config


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="grain annotate",
        description="Annotate image-text shards (img2dataset webdataset .tar or parquet, or an image folder with "
                    ".txt captions): one annotated Parquet shard per input shard, plus manifest.json. "
                    "Re-running the same command resumes.",
        epilog="Config precedence: defaults < configs/annotate-<profile>.yaml < --config < --set. "
               "Example: --set run.batch_size=4 --set models.box_threshold=0.25",
    )
    p.add_argument("--input", action="append", required=True, metavar="PATH",
                   help="a .tar/.parquet shard, a folder of shards, or an image folder; local or s3://... (repeatable)")
    p.add_argument("--output", required=True, metavar="DIR", help="output folder (local or s3://...)")
    p.add_argument("--profile", choices=PROFILES, default="tiny", help="model profile (default: tiny)")
    p.add_argument("--config", metavar="FILE", help="YAML run file applied over the profile")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override a config field, e.g. run.batch_size=8 (repeatable)")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="join an existing Ray cluster (e.g. 127.0.0.1:6380 or auto); default: a local Ray. A cluster in "
                        "token mode (the local stack's, every KubeRay one) needs RAY_AUTH_MODE=token and the token "
                        "(RAY_AUTH_TOKEN_PATH=FILE or RAY_AUTH_TOKEN): `grain stack status` prints the stack's")
    p.add_argument("--dashboard", action="store_true",
                   help="serve the Ray dashboard (127.0.0.1) of the local Ray started for this run (default: off)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    return p


def format_summary(s: dict) -> str:
    counts = s.get("counts", {})
    errors = {k: v for k, v in counts.items() if k != "ok"}
    lines = [
        f"shards: {s['shards_written']} written, {s['shards_skipped']} already done, {s['shards_left']} left "
        f"(of {s['shards_total']})",
        f"rows:   {s['rows']} processed — ok {counts.get('ok', 0)}, errors {sum(errors.values())}"
        + (" (" + ", ".join(f"{k} {v}" for k, v in sorted(errors.items())) + ")" if errors else ""),
        f"speed:  {s['images_per_s']:.2f} images/s, {s['tokens_per_s']:.1f} generated tokens/s "
        f"({s['generated_tokens']} tokens, {s['seconds']:.1f} s incl. start-up)"
        + (f"; steady state {s['steady_images_per_s']:.2f} images/s" if s.get("steady_images_per_s") else ""),
        f"output: {s['output']} (manifest.json)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = list(args.overrides)
    try:
        cfg = load_config(profile=args.profile, path=args.config, overrides=overrides)
    except ConfigError as e:
        print(f"grain annotate: {e}", file=sys.stderr)
        return 2
    cfg.input = list(args.input)
    cfg.output = args.output
    if args.ray_address:
        cfg.run.ray_address = args.ray_address
    if args.no_progress:
        cfg.run.progress = False
    if args.dashboard:
        cfg.run.ray_dashboard = True
    from annotators.pipeline import run_annotation
    from annotators.readers import ReaderError

    try:
        summary = run_annotation(cfg)
    except ReaderError as e:
        print(f"grain annotate: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1, default=str) if args.json else format_summary(summary))
    return 3 if summary["shards_left"] else 0


if __name__ == "__main__":
    sys.exit(main())
