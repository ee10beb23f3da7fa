"""Does the region branch localise? Box diagnostics for `grain bench grounding` checkpoints.

For each GRAIN checkpoint under ``--bench`` (``runs/grain-seed*/train/final.pt``) and a fixed sample of
corpus rows (exact boxes), this prints the matched box losses (L1 on cxcywh summed over the 4
coordinates, and 1 − GIoU, each per target, matched as in training: 5·L1 + 2·(−GIoU)) for:

- ``model``: the checkpoint's predicted boxes (eval mode);
- ``model-mean``: each query's box averaged over the sampled images, i.e. the same model with the
  image taken away;
- ``best-constant``: the best image-independent set of Q boxes for these rows, fitted directly by
  gradient descent on the matched loss (an upper bound on what a decoder that ignores the image can do);
- and the spread of the model's boxes across images (std of cx, cy, w, h per query, averaged).

If ``model`` is no better than ``best-constant``, the decoder has learned a fixed layout of boxes,
not where the objects are. Ratios are printed against ``best-constant`` (same rows, same process).

Is the information there? A linear probe on the decoder's input: each patch token (ViT output, the
decoder memory before its projection) → "is this patch's centre inside an object box", logistic
regression fitted on 80 % of the rows, balanced accuracy on the other 20 %. Printed for the checkpoint,
for the same architecture at random init (what the decoder could read at step 0), and for the patch
position alone (the layout prior a fixed box set exploits).

Does position reach the decoder? A position probe: ridge regression from each patch's decoder memory
token (``RegionDecoder.memory_values``: what every cross-attention reads as values, i.e. the projected
and normalised ViT output, plus the sine table with ``decoder_memory_pos=sine_kv``) to the patch's
(x, y) centre, fitted on 80 % of the rows; R² on the other 20 % (1 = position read exactly, 0 = not
at all). The patch-in-object probe above tests content and cannot see missing position.

Where do two-stage boxes lose (``region_queries="two_stage"``)? Targets binned by how far the nearest
selected query cell is from their centre cell (0, 1, ≥ 2 cells), with each bin's matched 1 − GIoU, and
the ratio the box regression alone allows (each target's own centre-cell proposal: perfect selection).

    python benchmarks/grounding_boxes.py --bench $GRAIN_CACHE/bench-grounding [--rows 512] [--shard -1]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.provenance import write_results  # noqa: E402
from grain import box_ops  # noqa: E402
from grain.common import storage
from grain.checkpoint import load_checkpoint  # noqa: E402
from grain.data import make_batch, sample_from_row  # noqa: E402
from grain.losses import GrainLoss  # noqa: E402
from grain.matcher import HungarianMatcher  # noqa: E402
from grain.common.schema import read_table  # noqa: E402


def matched_losses(pred: torch.Tensor, tb: torch.Tensor, timg: torch.Tensor, matcher: HungarianMatcher) -> dict:
    """pred [B, Q, 4] cxcywh; targets [M, 4] → per-target L1 (4 coordinates summed) and 1 − GIoU,
    computed by the training loss itself (``GrainLoss._box_losses``) after the training matcher."""
    bi, qi, ti = matcher(pred.detach(), tb, timg)
    box = GrainLoss._box_losses(pred, tb, bi, qi, ti)
    return {"l1": box["loss_l1"], "1-giou": box["loss_giou"]}


def best_constant(tb: torch.Tensor, timg: torch.Tensor, b: int, q: int, init: torch.Tensor, steps: int = 400) -> torch.Tensor:
    """Q image-independent boxes minimising the matched loss (L1 + (1 − GIoU), as in training) on these rows."""
    matcher = HungarianMatcher()
    logit = torch.logit(init.clamp(1e-3, 1 - 1e-3)).clone().requires_grad_(True)
    opt = torch.optim.Adam([logit], lr=0.05)
    for _ in range(steps):
        pred = logit.sigmoid().unsqueeze(0).expand(b, q, 4)
        m = matched_losses(pred, tb, timg, matcher)
        loss = m["l1"] + m["1-giou"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return logit.detach().sigmoid()


def _probe(x: torch.Tensor, y: torch.Tensor, n_train: int, steps: int = 300) -> float:
    """Logistic regression x [N, P, F] → y [N, P] (bool); fit on the first n_train rows, balanced
    accuracy on the rest (class-weighted loss, so predicting the majority class scores 0.5)."""
    xt, yt, xv, yv = x[:n_train].flatten(0, 1), y[:n_train].flatten(), x[n_train:].flatten(0, 1), y[n_train:].flatten()
    mu, sd = xt.mean(0), xt.std(0) + 1e-6
    xt, xv = (xt - mu) / sd, (xv - mu) / sd
    w = torch.zeros(x.shape[-1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    pos = yt.float().mean().clamp(1e-3, 1 - 1e-3)
    weight = torch.where(yt, 0.5 / pos, 0.5 / (1 - pos))
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xt @ w + b, yt.float(), weight=weight)
        loss = loss + 1e-3 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        pred = (xv @ w + b) > 0
    return float(((pred & yv).sum() / yv.sum().clamp(min=1) + (~pred & ~yv).sum() / (~yv).sum().clamp(min=1)) / 2)


def position_probe(x: torch.Tensor, n_train: int, ridge: float = 1e-3) -> float:
    """Ridge regression x [N, P, F] (P = grid² patch tokens, row-major) → each patch's (x, y) centre in
    [0, 1]; fit on the first n_train rows (features standardised), mean R² of x and y on the rest."""
    n, p, f = x.shape
    grid = int(round(p ** 0.5))
    c = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid
    cy, cx = torch.meshgrid(c, c, indexing="ij")
    y = torch.stack((cx.flatten(), cy.flatten()), 1).unsqueeze(0).expand(n, -1, -1)  # [N, P, 2]
    xt, yt = x[:n_train].flatten(0, 1).double(), y[:n_train].flatten(0, 1)
    xv, yv = x[n_train:].flatten(0, 1).double(), y[n_train:].flatten(0, 1)
    mu, sd = xt.mean(0), xt.std(0) + 1e-6
    xt, xv = (xt - mu) / sd, (xv - mu) / sd
    ym = yt.mean(0)
    w = torch.linalg.solve(xt.T @ xt + ridge * len(xt) * torch.eye(f, dtype=xt.dtype), xt.T @ (yt - ym))
    pred = xv @ w + ym
    r2 = 1 - ((pred - yv) ** 2).sum(0) / ((yv - yv.mean(0)) ** 2).sum(0)
    return float(r2.mean())


def memory_for_probe(model, images: torch.Tensor) -> torch.Tensor:
    """images → the patch tokens of the decoder memory [N, grid², d] (the ViT's patch tokens for a CLIP
    model, which has no decoder)."""
    out = []
    with torch.no_grad():
        for i in range(0, len(images), 64):
            tok = model.image_tokens(images[i: i + 64])
            out.append((tok if model.decoder is None else model.decoder.memory_values(tok))[:, 1:])
    return torch.cat(out)


def localisation(checkpoint: str, shard: str, rows: int | None = 512) -> dict:
    """The bench's localisation figure for one GRAIN checkpoint on ``rows`` rows of ``shard`` (canvases it
    never trained on): ``ratio`` = matched 1 − GIoU of its boxes / that of the best image-independent Q
    boxes for the same rows (< 1: the boxes follow the objects), ``spread`` = std of its boxes across
    images (``target_spread``: the targets'), and both 1 − GIoU values. ``rows=None``: the whole shard."""
    torch.manual_seed(0)
    model, cfg, _ = load_checkpoint(checkpoint)
    model.eval()
    if cfg.kind != "grain":
        raise ValueError(f"{checkpoint}: a {cfg.kind!r} checkpoint has no boxes")
    table = read_table(shard).to_pylist()[:rows]
    batch = make_batch([sample_from_row(r, cfg) for r in table], cfg)
    tb, timg = batch["target_boxes"], batch["target_image"]
    with torch.no_grad():
        pred = torch.cat([model.encode_image(batch["images"][i: i + 64])["pred_boxes"] for i in range(0, len(table), 64)])
    b, q = pred.shape[:2]
    matcher = HungarianMatcher()
    constant = best_constant(tb, timg, b, q, pred.mean(0))
    base = float(matched_losses(constant.unsqueeze(0).expand(b, q, 4), tb, timg, matcher)["1-giou"])
    got = float(matched_losses(pred, tb, timg, matcher)["1-giou"])
    return {"ratio": got / base, "spread": float(pred.std(0).mean()), "target_spread": float(tb.std(0).mean()),
            "model_1-giou": got, "best_constant_1-giou": base, "rows": len(table), "targets": int(tb.shape[0])}


def selection_breakdown(model, batch: dict, pred: torch.Tensor, base_1giou: float) -> dict | None:
    """Two-stage checkpoints (``region_queries="two_stage"``) only, else None: where the matched boxes lose.
    Each target is put in a bin by how far (in cells, Chebyshev) the nearest selected query cell is from
    the cell holding the target's centre — ``centre`` (0), ``one_off`` (1), ``far`` (≥ 2) — with the bin's
    share of targets and its mean matched 1 − GIoU; ``oracle_ratio``: the proposal of each target's own
    centre cell (perfect selection, the box as proposed) / ``base_1giou``, what the box regression alone
    allows."""
    dec = model.decoder
    if dec is None or dec.region_queries != "two_stage":
        return None
    tb, timg = batch["target_boxes"], batch["target_image"]
    g = dec.grid
    with torch.no_grad():
        props = [dec.proposals(dec.memory_values(model.image_tokens(batch["images"][i: i + 64])))
                 for i in range(0, len(batch["images"]), 64)]
    selected = torch.cat([p["selected"] for p in props])
    boxes = torch.cat([p["boxes"] for p in props])
    cell = (tb[:, 1] * g).long().clamp(0, g - 1) * g + (tb[:, 0] * g).long().clamp(0, g - 1)
    bi, qi, ti = HungarianMatcher()(pred, tb, timg)
    giou = box_ops.elementwise_generalized_box_iou(box_ops.box_cxcywh_to_xyxy(pred[bi, qi]),
                                                   box_ops.box_cxcywh_to_xyxy(tb[ti]))
    loss = torch.full((tb.shape[0],), float("nan"))
    loss[ti] = 1 - giou
    sel = selected[timg]  # [M, Q]: the selected cells of each target's image
    dist = torch.maximum((sel // g - (cell // g)[:, None]).abs(), (sel % g - (cell % g)[:, None]).abs()).min(1).values
    out = {}
    for name, k in (("centre", dist == 0), ("one_off", dist == 1), ("far", dist >= 2)):
        out[name] = {"share": float(k.float().mean()), "1-giou": float(loss[k].nanmean()) if k.any() else float("nan")}
    own = box_ops.elementwise_generalized_box_iou(box_ops.box_cxcywh_to_xyxy(boxes[timg, cell]),
                                                  box_ops.box_cxcywh_to_xyxy(tb))
    out["oracle_ratio"] = float((1 - own).mean()) / base_1giou
    return out


def patch_labels(batch: dict, n: int, grid: int) -> torch.Tensor:
    """[n, grid²] bool: the patch's centre lies inside one of its image's target boxes (row-major)."""
    c = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid
    cy, cx = torch.meshgrid(c, c, indexing="ij")
    cx, cy = cx.flatten(), cy.flatten()
    out = torch.zeros(n, grid * grid, dtype=torch.bool)
    xyxy = box_ops.box_cxcywh_to_xyxy(batch["target_boxes"])
    for (x0, y0, x1, y1), i in zip(xyxy.tolist(), batch["target_image"].tolist()):
        out[i] |= (cx >= x0) & (cx <= x1) & (cy >= y0) & (cy <= y1)
    return out


def probes(model, cfg, images: torch.Tensor, labels: torch.Tensor, baselines: dict) -> tuple[dict, dict]:
    """(balanced accuracy of the patch-in-object probe on ``model``'s tokens, R² of the position probe on
    its decoder memory); the random-init and position-only baselines depend on the config alone and are
    computed once per config (``baselines``)."""
    from grain.model import build_model

    n_train = int(0.8 * len(images))
    grid = cfg.image_size // cfg.patch_size

    def on_tokens(m) -> float:
        with torch.no_grad():
            tok = torch.cat([m.image_tokens(images[i: i + 64])[:, 1:] for i in range(0, len(images), 64)])
        return _probe(tok, labels, n_train)

    key = json.dumps(cfg.to_dict(), sort_keys=True)
    if key not in baselines:
        torch.manual_seed(0)
        onehot = torch.eye(grid * grid).unsqueeze(0).expand(len(images), -1, -1)
        init = build_model(cfg).eval()
        baselines[key] = ({"random-init": on_tokens(init), "position-only": _probe(onehot, labels, n_train)},
                          {"random-init": position_probe(memory_for_probe(init, images), n_train)})
    patch, position = baselines[key]
    return ({"trained": on_tokens(model), **patch},
            {"trained": position_probe(memory_for_probe(model, images), n_train), **position})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", required=True, help="a `grain bench grounding` output folder")
    ap.add_argument("--rows", type=int, default=512, help="corpus rows to use (default 512)")
    ap.add_argument("--shard", type=int, default=-1, help="which corpus shard (index in sorted order; default the last)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    corpus = os.path.join(args.bench, "corpus")
    shards = storage.list_shards(corpus)[0] if os.path.isdir(corpus) else []
    ckpts = sorted(glob.glob(os.path.join(args.bench, "runs", "grain-seed*", "train", "final.pt")))
    if not shards or not ckpts:
        ap.error(f"{args.bench}: needs corpus/*.parquet and runs/grain-seed*/train/final.pt")
    rows = read_table(shards[args.shard]).to_pylist()[: args.rows]
    matcher = HungarianMatcher()
    results = {}
    constant = None
    baselines: dict = {}
    for path in ckpts:
        model, cfg, _ = load_checkpoint(path)
        model.eval()
        batch = make_batch([sample_from_row(r, cfg) for r in rows], cfg)
        tb, timg = batch["target_boxes"], batch["target_image"]
        with torch.no_grad():
            pred = torch.cat([model.encode_image(batch["images"][i: i + 64])["pred_boxes"] for i in range(0, len(rows), 64)])
        b, q = pred.shape[:2]
        grid = cfg.image_size // cfg.patch_size
        probe, pos_r2 = probes(model, cfg, batch["images"], patch_labels(batch, b, grid), baselines)
        if constant is None:  # same rows for every checkpoint: fit once, from the first model's mean layout
            constant = best_constant(tb, timg, b, q, pred.mean(0))
            base = {k: float(v) for k, v in matched_losses(constant.unsqueeze(0).expand(b, q, 4), tb, timg, matcher).items()}
            results["best-constant"] = base
        run = os.path.basename(os.path.dirname(os.path.dirname(path)))
        r = {
            "model": {k: float(v) for k, v in matched_losses(pred, tb, timg, matcher).items()},
            "model-mean": {k: float(v) for k, v in matched_losses(pred.mean(0, keepdim=True).expand(b, q, 4), tb, timg, matcher).items()},
            "box_std_across_images": float(pred.std(0).mean()),
            "target_std_across_images": float(tb.std(0).mean()),
            "patch_probe_balanced_accuracy": probe,
            "position_probe_r2": pos_r2,
        }
        sel = selection_breakdown(model, batch, pred, results["best-constant"]["1-giou"])
        if sel is not None:
            r["two_stage_selection"] = sel
        results[run] = r
    base = results["best-constant"]
    print(f"{len(rows)} rows of {os.path.basename(shards[args.shard])}, {int(tb.shape[0])} target boxes; "
          f"best image-independent boxes: L1 {base['l1']:.3f}, 1-GIoU {base['1-giou']:.3f}")
    print(f"{'run':<16} {'what':<11} {'L1':>6} {'1-GIoU':>7} {'1-GIoU / best-constant':>23}")
    for run, r in results.items():
        if run == "best-constant":
            continue
        for what in ("model", "model-mean"):
            m = r[what]
            print(f"{run:<16} {what:<11} {m['l1']:6.3f} {m['1-giou']:7.3f} {m['1-giou'] / base['1-giou']:23.2f}")
        print(f"{run:<16} box std across images {r['box_std_across_images']:.3f} (targets: {r['target_std_across_images']:.3f})")
        pr = r["patch_probe_balanced_accuracy"]
        print(f"{run:<16} patch-in-object probe (balanced acc.): trained tokens {pr['trained']:.3f}, "
              f"random-init tokens {pr['random-init']:.3f}, position only {pr['position-only']:.3f}")
        p2 = r["position_probe_r2"]
        print(f"{run:<16} position probe (R² of a patch's x, y from the decoder memory): trained "
              f"{p2['trained']:.3f}, random-init {p2['random-init']:.3f}")
        if "two_stage_selection" in r:
            s2 = r["two_stage_selection"]
            print(f"{run:<16} two-stage selection (nearest selected cell to a target's centre cell): " + ", ".join(
                f"{k} {s2[k]['share']:.0%} of targets (1-GIoU {s2[k]['1-giou']:.3f})" for k in ("centre", "one_off", "far"))
                + f"; each target's own-cell proposal / best-constant {s2['oracle_ratio']:.2f}")
    if args.json:
        write_results(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
