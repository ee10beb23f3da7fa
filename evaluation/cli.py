"""Command lines of the evaluation stage: `grain eval`, `grain embed`, `grain ground`.

    grain eval --checkpoint CKPT --dataset PATH|NAME [--dataset ...] --output DIR [--config eval.yaml]
               [--alpha 1 0.75 0.5 0.25 0] [--batch-size 64] [--limit N] [--train-manifest M]
    grain eval --engine clip_benchmark --checkpoint CKPT|DIR --dataset ... --output DIR   (clip_benchmark's JSON)
    grain eval --compare run1/results.json run2/results.json --output DIR [--labels GRAIN CLIP]
    grain embed --checkpoint CKPT (--images PATH ... | --texts-file FILE | --text "..." ...) --output out.npy|out.parquet
    grain ground IMAGE --text "a red square" [--text ...] --checkpoint CKPT --output out.png [--per-region]
"""

from __future__ import annotations

import argparse
import json
import sys


def eval_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="grain eval", description="Zero-shot classification (names, descriptors, "
                                "region fusion), retrieval and novel-concept evaluation of a checkpoint.")
    p.add_argument("--checkpoint", help="a checkpoint (final.pt, grain.checkpoint format) or a folder written by `grain export`")
    p.add_argument("--dataset", action="append", default=None, metavar="PATH|NAME",
                   help="ImageFolder / clip_benchmark webdataset folder, annotated .parquet shards, or a local set name "
                        "(`grain data list`); repeatable")
    p.add_argument("--output", required=True, help="output folder (results.json, results.md, results.png)")
    p.add_argument("--config", help="YAML run file with EvalConfig fields (command-line flags override it)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override an EvalConfig field, e.g. limit=50 (repeatable; `grain config show eval` lists them)")
    p.add_argument("--alpha", type=float, nargs="+", help="fusion weights α of the global score (default 1 0.75 0.5 0.25 0)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--limit", type=int, help="at most N images per data set")
    p.add_argument("--train-manifest", nargs="+", help="training shards/manifest for the seen/unseen class split")
    p.add_argument("--name", help="model label in the outputs")
    p.add_argument("--compare", nargs="+", metavar="RUN_JSON", help="compare run JSONs instead: writes compare.md + compare.png")
    p.add_argument("--labels", nargs="+", help="labels of the compared runs")
    p.add_argument("--engine", choices=["grain", "clip_benchmark"], default="grain",
                   help="clip_benchmark: score the names variant and retrieval with clip_benchmark's own functions "
                        "(writes its JSON per set)")
    args = p.parse_args(argv)
    try:
        if args.compare:
            from evaluation.report import write_comparison

            out = write_comparison(args.compare, args.output, args.labels)
            print(json.dumps(out, indent=1))
            return 0
        from evaluation.config import load_config

        flags = {key: val for key, val in (
            ("checkpoint", args.checkpoint), ("datasets", args.dataset), ("output", args.output),
            ("alphas", args.alpha), ("batch_size", args.batch_size), ("limit", args.limit),
            ("train_manifest", args.train_manifest), ("model_name", args.name)) if val is not None}
        cfg = load_config(args.config, flags, args.sets, source="command-line flags")
        if args.engine == "clip_benchmark":
            from evaluation.clip_benchmark_engine import run_clip_benchmark, summary_lines as cb_lines

            print("\n".join(cb_lines(run_clip_benchmark(cfg))))
            return 0
        from evaluation.report import summary_lines
        from evaluation.runner import run_eval

        run = run_eval(cfg)
    except (ValueError, FileNotFoundError) as e:
        print(f"grain eval: {e}", file=sys.stderr)
        return 2
    for line in summary_lines(run):
        print(line)
    return 0


def embed_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="grain embed", description="Embed images or texts with a checkpoint; "
                                "writes L2-normalised float32 embeddings [N, D] as .npy or Parquet (id + embedding).")
    p.add_argument("--checkpoint", required=True, help="final.pt or a folder written by `grain export`")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", nargs="+", help="image files or folders (searched recursively)")
    src.add_argument("--text", action="append", help="a text to embed (repeatable)")
    src.add_argument("--texts-file", help="a file with one text per line")
    p.add_argument("--output", required=True, help="out.npy or out.parquet")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--regions", action="store_true", help="images: also store region embeddings [N, Q, D] and boxes (Parquet only)")
    args = p.parse_args(argv)
    try:
        from evaluation.embed import embed_to_file

        n = embed_to_file(args.checkpoint, args.output, images=args.images, texts=args.text, texts_file=args.texts_file,
                          batch_size=args.batch_size, regions=args.regions)
    except (ValueError, FileNotFoundError) as e:
        print(f"grain embed: {e}", file=sys.stderr)
        return 2
    print(f"wrote {n} embeddings to {args.output}")
    return 0


def ground_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="grain ground", description="For each text, the best-matching region query of a "
                                "GRAIN checkpoint: its box drawn on the image with the text and cosine score.")
    p.add_argument("image")
    p.add_argument("--text", action="append", required=True, help="a description to ground (repeatable)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--output", required=True, help="PNG to write (a .json with the boxes is written beside it)")
    p.add_argument("--per-region", action="store_true",
                   help="draw every region box with the text it matches best, instead of each text's best region")
    args = p.parse_args(argv)
    try:
        from evaluation.embed import ground_to_png

        found = ground_to_png(args.checkpoint, args.image, args.text, args.output, per_region=args.per_region)
    except (ValueError, FileNotFoundError) as e:
        print(f"grain ground: {e}", file=sys.stderr)
        return 2
    for g in found:
        print(f"{g['score']:+.3f}  query {g['query']}  box {['%.3f' % c for c in g['box_xyxy']]}  {g['text']}")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(eval_main())
