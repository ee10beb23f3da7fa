"""`grain annotate`: annotate img2dataset shards with MLLM descriptions + OWLv2 boxes (Ray Data).

    grain annotate --input /data/cc3m --output /data/cc3m-annotated --profile tiny
    grain annotate --input s3://bucket/cc12m --output s3://bucket/cc12m-grain --profile paper --ray-address auto
    python -m annotators.cli --input shards/ --output out/ --set run.batch_size=4 --set run.max_shards=2
    grain annotate --input cc12m.tsv --output /data/cc12m-annotated    # a URL list: downloaded first

A URL list (``.tsv``/``.csv``/``.txt``[.gz] or a Parquet of url + caption, as CC12M ships it) is
filtered by annotators/url_guard.py (http(s) only; loopback, private, link-local/metadata, multicast and
reserved addresses refused, unless ``--allow-private-urls``), downloaded with img2dataset (its own
environment) into ``<output>-download``, and annotated from there, as the annotate-cc12m flow does;
refused URLs become ``download_error`` rows with the reason.

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
                   help="a .tar/.parquet shard, a folder of shards, an image folder (local or s3://...), or a local "
                        "URL list (.tsv/.csv/.txt/.parquet with url + caption: downloaded first) (repeatable)")
    p.add_argument("--output", required=True, metavar="DIR", help="output folder (local or s3://...)")
    p.add_argument("--profile", choices=PROFILES, default="tiny", help="model profile (default: tiny)")
    p.add_argument("--config", metavar="FILE", help="YAML run file applied over the profile")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override a config field, e.g. run.batch_size=8 (repeatable; `grain config show annotate` lists every "
                        "key with its type, default and meaning)")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="join an existing Ray cluster (e.g. 127.0.0.1:6380 or auto); default: a local Ray. A cluster in "
                        "token mode (the local stack's, every KubeRay one) needs RAY_AUTH_MODE=token and the token "
                        "(RAY_AUTH_TOKEN_PATH=FILE or RAY_AUTH_TOKEN): `grain stack status` prints the stack's")
    p.add_argument("--dashboard", action="store_true",
                   help="serve the Ray dashboard (127.0.0.1) of the local Ray started for this run (default: off)")
    p.add_argument("--allow-private-urls", action="store_true",
                   help="URL lists: also fetch loopback/private-range addresses (your own corpus server); "
                        "link-local (cloud metadata), multicast and reserved addresses stay refused")
    p.add_argument("--url-col", default="url", help="URL lists: the URL column (default: url)")
    p.add_argument("--caption-col", default="caption", help="URL lists: the caption column (default: caption)")
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


def resolve_inputs(inputs: list[str], output: str, url_col: str = "url", caption_col: str = "caption",
                   allow_private: bool = False) -> list[str]:
    """``--input`` values with each URL list replaced by its download folder ``<output>-download[-N]``
    (URL guard + img2dataset, annotators/img2dataset_env.py); other inputs are returned unchanged."""
    from annotators.img2dataset_env import download_url_list, is_url_list

    out, lists = [], [i for i in inputs if is_url_list(i)]
    for path in inputs:
        if path not in lists:
            out.append(path)
            continue
        n = lists.index(path)
        folder = f"{output.rstrip('/')}-download" + (f"-{n}" if n else "")
        tars = download_url_list(path, folder, url_col=url_col, caption_col=caption_col,
                                 allow_private=allow_private or None, log_path=None)
        print(f"grain annotate: {path}: {len(tars)} shards downloaded into {folder}", file=sys.stderr)
        out.append(folder)
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = list(args.overrides)
    try:
        cfg = load_config(profile=args.profile, path=args.config, overrides=overrides)
    except ConfigError as e:
        print(f"grain annotate: {e}", file=sys.stderr)
        return 2
    cfg.output = args.output
    try:
        cfg.input = resolve_inputs(args.input, args.output, args.url_col, args.caption_col, args.allow_private_urls)
    except (ValueError, OSError, RuntimeError) as e:
        print(f"grain annotate: {e}", file=sys.stderr)
        return 2
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
