"""`grain ground` on held-out clutter canvases of a `grain bench grounding` output, for the README.

The canvases are chosen by rule, not by result: image ``0.jpg`` of the first ``--n`` class folders (sorted)
of ``--set``. For each, the GRAIN checkpoint grounds the class name (``evaluation.embed.ground_to_png``, the
code behind `grain ground`); the true target box (recorded by the set's builder) is drawn dashed in white.
One PNG per canvas plus a strip of all of them.

    python -m benchmarks.ground_examples --bench /tmp/bench13 --checkpoint runs/grain-seed0/train/final.pt \
        --set google-unseen-clutter --n 3 --output docs/img
"""

from __future__ import annotations

import argparse
import json
import os


def _dashed_box(draw, box, size, color=(255, 255, 255), dash=6):
    x1, y1, x2, y2 = (c * size for c in box)
    for a, b, horizontal, fixed in ((x1, x2, True, y1), (x1, x2, True, y2), (y1, y2, False, x1), (y1, y2, False, x2)):
        t = a
        while t < b:
            e = min(t + dash, b)
            draw.line([(t, fixed), (e, fixed)] if horizontal else [(fixed, t), (fixed, e)], fill=color, width=2)
            t += 2 * dash


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bench", required=True, help="a `grain bench grounding` output folder")
    ap.add_argument("--checkpoint", default="runs/grain-seed0/train/final.pt", help="relative to --bench, or absolute")
    ap.add_argument("--set", default="google-unseen-clutter", help="a -clutter evaluation set of the bench")
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--output", required=True, help="folder for the PNGs")
    args = ap.parse_args(argv)
    from PIL import Image, ImageDraw

    from evaluation.embed import ground_to_png

    root = os.path.join(args.bench, "eval-sets", args.set)
    meta_path = os.path.join(root, ".bench-set.json")
    if not os.path.exists(meta_path):
        ap.error(f"{root}: not a prepared clutter set (no .bench-set.json)")
    with open(meta_path, encoding="utf-8") as f:
        truth = json.load(f).get("target_boxes", {})
    with open(os.path.join(root, "classes.json"), encoding="utf-8") as f:
        classes = json.load(f)
    ckpt = args.checkpoint if os.path.isabs(args.checkpoint) else os.path.join(args.bench, args.checkpoint)
    os.makedirs(args.output, exist_ok=True)
    tiles = []
    for folder in sorted(classes)[: args.n]:
        image = os.path.join(root, folder, "0.jpg")
        out = os.path.join(args.output, f"ground-{args.set}-{folder}.png")
        found = ground_to_png(ckpt, image, [classes[folder]], out)
        tile = Image.open(out).convert("RGB")
        if f"{folder}/0.jpg" in truth:
            _dashed_box(ImageDraw.Draw(tile), truth[f"{folder}/0.jpg"], tile.width)
        tile.save(out)
        tiles.append(tile)
        g = found[0]
        print(f"{classes[folder]!r}: query {g['query']}, cosine {g['score']:.3f}, box {[round(c, 3) for c in g['box_xyxy']]}, "
              f"true box {truth.get(f'{folder}/0.jpg')} → {out}")
    strip = Image.new("RGB", (sum(t.width for t in tiles) + 8 * (len(tiles) - 1), max(t.height for t in tiles)), "white")
    x = 0
    for t in tiles:
        strip.paste(t, (x, 0))
        x += t.width + 8
    path = os.path.join(args.output, f"ground-{args.set}.png")
    strip.save(path)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
