"""`grain ground` on held-out clutter canvases of a `grain bench grounding` output, for the README.

The canvases are chosen by rule, not by result: image ``0.jpg`` of the first ``--n`` class folders (sorted)
of ``--set``. For each, the GRAIN checkpoint grounds the class name (``evaluation.embed.ground_to_png``, the
code behind `grain ground`); the true target box (recorded by the set's builder) is drawn dashed in white.
One PNG per canvas plus a strip of all of them. ``--score`` adds ``hit_rates`` over the whole set.

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


def strip(tiles: list, gap: int = 8):
    """The tiles side by side on white, ``gap`` px apart."""
    from PIL import Image

    out = Image.new("RGB", (sum(t.width for t in tiles) + gap * (len(tiles) - 1), max(t.height for t in tiles)), "white")
    x = 0
    for t in tiles:
        out.paste(t, (x, 0))
        x += t.width + gap
    return out


def hit_rates(checkpoint: str, root: str, iou_at: float = 0.5) -> dict:
    """Over every image of a clutter set (true target boxes from ``.bench-set.json``): the fraction whose
    class name, grounded as ``evaluation.embed.ground`` (`grain ground`) does it — the region most similar to
    the name — lands on the target (IoU ≥ ``iou_at``: ``text_hit``), and the fraction where any of the Q
    region boxes does (``any_query_hit``: what the best text–region choice could reach). The gap separates
    "no region on the object" from "the text does not pick the region on it". Regions as a classifier (the
    α = 0 idea, with the bare class names): over every (region, class name of the set) pair the most similar
    one wins; ``winner_on_target``: its region lies on the target, ``winner_correct``: its name is the true
    class. One image forward and one text encoding of the set's names serve all four."""
    import torch
    import torch.nn.functional as F

    from evaluation.evalsets import decode_ref, load_evalset
    from evaluation.runner import encode_texts, load_model
    from grain import box_ops
    from grain.data import preprocess_image

    with open(os.path.join(root, ".bench-set.json"), encoding="utf-8") as f:
        truth = json.load(f)["target_boxes"]
    model, _, _ = load_model(checkpoint)
    ds = load_evalset(root)
    text_hit = any_hit = winner_on = winner_ok = 0
    with torch.no_grad():
        # as evaluation.embed.ground: names at the description length, cosine against each region
        names = F.normalize(encode_texts(model, ds.classnames, context_length=model.cfg.desc_context_length), dim=-1)
        for ref, y in zip(ds.images, ds.labels):
            gt = torch.tensor([truth[os.path.relpath(ref.path, root)]])
            out = model.encode_image(preprocess_image(decode_ref(ref), model.cfg.image_size)[None])
            boxes = box_ops.box_cxcywh_to_xyxy(out["pred_boxes"][0].float()).clamp(0, 1)
            iou = box_ops.box_iou(boxes, gt)[0][:, 0]  # [Q]
            sim = names @ F.normalize(out["region_embed"][0].float(), dim=-1).T  # [classes, Q]
            text_hit += float(iou[int(sim[y].argmax())]) >= iou_at
            any_hit += float(iou.max()) >= iou_at
            cls, q = divmod(int(sim.argmax()), sim.shape[1])
            winner_on += float(iou[q]) >= iou_at
            winner_ok += cls == y
    n = len(ds.images)
    return {"images": n, "text_hit": text_hit / n, "any_query_hit": any_hit / n, "winner_on_target": winner_on / n,
            "winner_correct": winner_ok / n, "iou_at": iou_at}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bench", required=True, help="a `grain bench grounding` output folder")
    ap.add_argument("--checkpoint", default="runs/grain-seed0/train/final.pt", help="relative to --bench, or absolute")
    ap.add_argument("--set", default="google-unseen-clutter", help="a -clutter evaluation set of the bench")
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--output", required=True, help="folder for the PNGs")
    ap.add_argument("--score", action="store_true", help="also print hit_rates over the whole set")
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
    path = os.path.join(args.output, f"ground-{args.set}.png")
    strip(tiles).save(path)
    print(f"wrote {path}")
    if args.score:
        r = hit_rates(ckpt, root)
        print(f"{args.set}, {r['images']} images: the class name's region on the target (IoU ≥ {r['iou_at']}) "
              f"{100 * r['text_hit']:.1f} %; some region on it {100 * r['any_query_hit']:.1f} %; the best (region, class "
              f"name) pair's region on it {100 * r['winner_on_target']:.1f} %, its name right {100 * r['winner_correct']:.1f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
