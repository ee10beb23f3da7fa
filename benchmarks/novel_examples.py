"""`grain ground --per-region` on novel-class images of a `grain bench novel-concepts` output, for the README.

Images are chosen by rule, not by result: ``0.jpg`` of the first ``--n`` class folders (sorted) of ``--set``.
Each region box of the GRAIN checkpoint is drawn with the description it matches best among every part
description of the set's classes (``evaluation.embed.match_regions``, the code behind
``grain ground --per-region``); the true part boxes (recorded by the set's builder) are dashed in white.
One PNG per image plus a strip of all of them.

    python -m benchmarks.novel_examples --bench DIR [--checkpoint runs/grain-seed0/train/final.pt] \\
        [--set novel-flat] [--n 3] --output docs/img
"""

from __future__ import annotations

import argparse
import json
import os


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bench", required=True, help="a `grain bench novel-concepts` output folder")
    ap.add_argument("--checkpoint", default="runs/grain-seed0/train/final.pt", help="relative to --bench, or absolute")
    ap.add_argument("--set", default="novel-flat", help="an evaluation set of the bench")
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--output", required=True, help="folder for the PNGs")
    args = ap.parse_args(argv)
    from PIL import Image, ImageDraw

    from benchmarks.ground_examples import _dashed_box, strip
    from evaluation.embed import ground_to_png

    root = os.path.join(args.bench, "eval-sets", args.set)
    meta_path = os.path.join(root, ".bench-set.json")
    if not os.path.exists(meta_path):
        ap.error(f"{root}: not a prepared novel-concepts set (no .bench-set.json)")
    with open(meta_path, encoding="utf-8") as f:
        info = json.load(f).get("image_info", {})
    with open(os.path.join(root, "classes.json"), encoding="utf-8") as f:
        classes = json.load(f)
    with open(os.path.join(root, "descriptors.json"), encoding="utf-8") as f:
        texts = sorted({d for ds in json.load(f).values() for d in ds})
    ckpt = args.checkpoint if os.path.isabs(args.checkpoint) else os.path.join(args.bench, args.checkpoint)
    os.makedirs(args.output, exist_ok=True)
    tiles = []
    for folder in sorted(classes)[: args.n]:
        key = f"{folder}/0.jpg"
        out = os.path.join(args.output, f"ground-{args.set}-{folder}.png")
        found = ground_to_png(ckpt, os.path.join(root, key), texts, out, per_region=True)
        tile = Image.open(out).convert("RGB")
        for _, box in info.get(key, {}).get("parts", []):
            _dashed_box(ImageDraw.Draw(tile), box, tile.width, dash=4)
        tile.save(out)
        tiles.append(tile)
        truth = [d for d, _ in info.get(key, {}).get("parts", [])]
        print(f"{classes[folder]} (true parts: {'; '.join(truth)}):")
        for g in found:
            mark = "own part" if g["text"] in truth else "other class's part"
            print(f"  query {g['query']}: {g['text']!r} ({g['score']:.3f}, {mark}), box {[round(c, 3) for c in g['box_xyxy']]}")
    path = os.path.join(args.output, f"ground-{args.set}.png")
    strip(tiles).save(path)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
