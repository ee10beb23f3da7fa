"""Can the region decoder learn to localise from a frozen image tower? (bench grounding diagnostic)

Takes the `grain bench grounding` corpus, computes the ViT tokens once with a frozen image tower (a
GRAIN checkpoint's, or the same architecture at random init), and trains a fresh ``RegionDecoder`` +
box head (the checkpoint's config) on the matched box loss alone (L1 + (1 − GIoU), matched by
5·L1 + 2·(−GIoU), as in training) — no L_ic, no L_rd, no gradient into the tower. Reports, on the
last corpus shard (never trained on here), matched 1 − GIoU against the best image-independent box set
(``grounding_boxes.best_constant``, same rows, same process) and the spread of the boxes across images.

A ratio well under 1 means boxes can be learnt from that memory with this decoder in that many steps;
≈ 1 means the decoder collapses to a fixed layout even when localisation is all it is asked to do.

Optimiser: the run file's (``--config``, default configs/bench-grounding.yaml, section ``train.optim``):
AdamW with its lr, betas, weight decay (none on biases and norms) and gradient clipping, linear warm-up
from ``warmup_start_lr`` over ``warmup_steps`` then cosine to ``min_lr`` over ``--steps``, per step
(``trainers.optim.lr_at``, as in training); ``--lr``/``--grad-clip``/``--warmup-steps`` override it.
A random-init tower is the run file's ``train.model`` (preset + overrides). Also printed: the position
probe (``grounding_boxes.position_probe``: R² of each patch's x, y read linearly from the decoder memory
values) before training, and after it with ``--train-tower``.

    python benchmarks/decoder_probe.py --bench $GRAIN_CACHE/bench-grounding --tower random-init --steps 2000
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bench_grounding import DEFAULT_CONFIG, load_bench_config  # noqa: E402
from benchmarks.grounding_boxes import best_constant, matched_losses, patch_labels, position_probe  # noqa: E402
from grain.common import storage  # noqa: E402
from grain.checkpoint import load_checkpoint  # noqa: E402
from grain.config import MEMORY_POS, VISION_POS, ModelConfig  # noqa: E402
from grain.data import make_batch, sample_from_row  # noqa: E402
from grain.matcher import HungarianMatcher  # noqa: E402
from grain.model import build_model  # noqa: E402
from grain.common.schema import read_table  # noqa: E402
from trainers.config import OptimSettings  # noqa: E402
from trainers.optim import lr_at  # noqa: E402


def encode(tower, cfg, rows, keep_images: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """rows → (tokens [N, T, W] — or the preprocessed images [N, 3, S, S] with ``keep_images`` —,
    target boxes [M, 4] cxcywh, target image [M])."""
    toks, boxes, owners = [], [], []
    for i in range(0, len(rows), 64):
        batch = make_batch([sample_from_row(r, cfg) for r in rows[i: i + 64]], cfg)
        if keep_images:
            toks.append(batch["images"])
        else:
            with torch.no_grad():
                toks.append(tower.image_tokens(batch["images"]))
        boxes.append(batch["target_boxes"])
        owners.append(batch["target_image"] + i)
    return torch.cat(toks), torch.cat(boxes), torch.cat(owners)


def oracle_tokens(tb: torch.Tensor, timg: torch.Tensor, n: int, cfg) -> torch.Tensor:
    """Memory that spells out the answer: per patch, half the channels say "inside an object box" and
    the other half are a one-hot of the patch's position (CLS all zero) → [n, 1 + grid², vision_width]."""
    grid = cfg.image_size // cfg.patch_size
    w = cfg.vision_width
    if w < 2 * grid * grid:
        raise SystemExit(f"--tower oracle needs vision_width ≥ {2 * grid * grid}")
    inside = patch_labels({"target_boxes": tb, "target_image": timg}, n, grid).float()  # [n, P]
    tok = torch.zeros(n, 1 + grid * grid, w)
    tok[:, 1:, : grid * grid] = inside.unsqueeze(-1).expand(-1, -1, grid * grid)
    tok[:, 1:, grid * grid: 2 * grid * grid] = torch.eye(grid * grid)
    return tok


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", required=True, help="a `grain bench grounding` output folder (its corpus/)")
    ap.add_argument("--tower", default="random-init",
                    help="random-init (the run file's train.model, e.g. the tiny preset), oracle (tokens that say "
                         "which patches are inside a box, and "
                         "where they are: a check of the decoder and matcher themselves) or a checkpoint path")
    ap.add_argument("--memory-pos", choices=MEMORY_POS, default=None, help="override decoder_memory_pos")
    ap.add_argument("--vision-pos", choices=VISION_POS, default=None,
                    help="random-init tower only: override vision_pos_embed (the ViT's positional embedding)")
    ap.add_argument("--config", default=str(DEFAULT_CONFIG), help="bench run file: train.optim and train.model")
    ap.add_argument("--image-size", type=int, default=None,
                    help="random-init/oracle only: the tiny preset at this input size (e.g. 128: a 16×16 grid)")
    ap.add_argument("--train-tower", action="store_true",
                    help="train the image tower too (same lr), box loss only: can the tower learn to localise?")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=None, help="peak lr (default: the run file's)")
    ap.add_argument("--grad-clip", type=float, default=None, help="max grad norm, 0 = none (default: the run file's)")
    ap.add_argument("--warmup-steps", type=int, default=None, help="default: the run file's")
    ap.add_argument("--train-rows", type=int, default=3500)
    ap.add_argument("--seed", type=int, default=0)
    return ap


@dataclass
class Schedule:
    """The run file's optimiser settings with the command line's overrides applied."""

    optim: OptimSettings
    peak: float
    clip: float
    warmup: int

    @classmethod
    def from_run(cls, run: dict, args) -> Schedule:
        optim = OptimSettings(**{k: tuple(v) if k == "betas" else v for k, v in run.get("optim", {}).items()})
        return cls(optim=optim,
                   peak=optim.lr if args.lr is None else args.lr,
                   clip=optim.grad_clip if args.grad_clip is None else args.grad_clip,
                   warmup=int(optim.warmup_steps or 0) if args.warmup_steps is None else args.warmup_steps)

    def lr(self, step: int, total: int) -> float:
        o = self.optim
        return lr_at(step, total_steps=total, warmup_steps=self.warmup, peak=self.peak, start=o.warmup_start_lr,
                     final=o.min_lr)

    def describe(self) -> str:
        o = self.optim
        return (f"AdamW lr {self.peak:g} (warm-up {self.warmup} from {o.warmup_start_lr:g}, cosine to {o.min_lr:g}), "
                f"wd {o.weight_decay:g}, clip {self.clip or 'none'}")


def _tower(ap, args, run: dict):
    """The image tower (eval mode) and the config of the decoder to train → (tower, cfg)."""
    if args.tower in ("random-init", "oracle"):
        model = dict(run.get("model", {"preset": "tiny"}))
        over = {k: v for k, v in model.items() if k not in ("preset", "kind")}
        over.update({"image_size": args.image_size} if args.image_size else {})
        over.update({"vision_pos_embed": args.vision_pos} if args.vision_pos else {})
        cfg = ModelConfig.preset(model.get("preset", "tiny"), **over)
        tower = build_model(cfg).eval()
    else:
        if args.image_size or args.vision_pos:
            ap.error("--image-size and --vision-pos apply to random-init/oracle towers only")
        tower, cfg, _ = load_checkpoint(args.tower)
        tower.eval()
    if args.train_tower and args.tower == "oracle":
        ap.error("--train-tower needs a real tower (random-init or a checkpoint)")
    if args.memory_pos:
        cfg = ModelConfig.from_dict({**cfg.to_dict(), "decoder_memory_pos": args.memory_pos})
    return tower, cfg


def _rows(args, shards: list[str]) -> tuple[list[dict], list[dict]]:
    """Train rows (all shards but the last, at most ``--train-rows``) and val rows (the last shard)."""
    train_rows = [r for p in shards[:-1] for r in read_table(p).to_pylist()][: args.train_rows]
    return train_rows, read_table(shards[-1]).to_pylist()


def _encoded(args, tower, cfg, train_rows: list[dict], val_rows: list[dict]) -> tuple[tuple, tuple]:
    """The rows encoded → (train, val), each (tokens or images [N, ...], target boxes [M, 4], target image [M])."""
    tok, tb, timg = encode(tower, cfg, train_rows, keep_images=args.train_tower)
    vtok, vtb, vtimg = encode(tower, cfg, val_rows, keep_images=args.train_tower)
    if args.tower == "oracle":
        tok, vtok = oracle_tokens(tb, timg, len(tok), cfg), oracle_tokens(vtb, vtimg, len(vtok), cfg)
    return (tok, tb, timg), (vtok, vtb, vtimg)


def _adamw(named: list, sched: Schedule) -> torch.optim.AdamW:
    """GrainModel.param_groups' rule: no decay on < 2-dim parameters. The projections get no gradient
    here (AdamW skips them)."""
    o = sched.optim
    return torch.optim.AdamW([{"params": [p for _, p in named if p.ndim >= 2], "weight_decay": o.weight_decay},
                              {"params": [p for _, p in named if p.ndim < 2], "weight_decay": 0.0}],
                             lr=sched.peak, betas=tuple(o.betas), eps=o.eps)


@dataclass
class Probe:
    """A fresh decoder (and, with ``train_tower``, the tower) trained on the box loss of the encoded rows."""

    dec: torch.nn.Module
    tower: torch.nn.Module
    train_tower: bool
    train: tuple  # (tokens [N, T, W] or images, boxes [M, 4], image of each box [M])
    val: tuple
    matcher: HungarianMatcher

    def memory(self, x: torch.Tensor) -> torch.Tensor:
        return self.tower.image_tokens(x) if self.train_tower else x

    def evaluate(self):
        """Val predictions [N_val, Q, 4] and their matched losses."""
        vtok, vtb, vtimg = self.val
        self.dec.eval()
        self.tower.eval()
        with torch.no_grad():
            pred = torch.cat([self.dec(self.memory(vtok[i: i + 128]))["pred_boxes"] for i in range(0, len(vtok), 128)])
        self.dec.train()
        self.tower.train(self.train_tower)
        return pred, {k: float(v) for k, v in matched_losses(pred, vtb, vtimg, self.matcher).items()}

    def pos_r2(self) -> float:
        vtok = self.val[0]
        with torch.no_grad():
            mem = torch.cat([self.dec.memory_values(self.memory(vtok[i: i + 128]))[:, 1:]
                             for i in range(0, len(vtok), 128)])
        return position_probe(mem, int(0.8 * len(mem)))

    def best_constant_losses(self) -> dict:
        """Matched losses of the best image-independent box set on the val rows."""
        _, vtb, vtimg = self.val
        pred, _ = self.evaluate()
        const = best_constant(vtb, vtimg, pred.shape[0], pred.shape[1], pred.mean(0))
        return {k: float(v) for k, v in matched_losses(const.unsqueeze(0).expand_as(pred), vtb, vtimg, self.matcher).items()}

    def batch(self, idx: torch.Tensor, by_image: list[list[int]]):
        """Tokens of images ``idx`` [B] → (memory input [B, ...], their boxes [M, 4], box → position in idx [M])."""
        tok, tb, timg = self.train
        sel = [j for i in idx.tolist() for j in by_image[i]]
        remap = {int(i): k for k, i in enumerate(idx.tolist())}
        return tok[idx], tb[sel], torch.tensor([remap[int(timg[j])] for j in sel], dtype=torch.long)


def _train(probe: Probe, opt, params: list, sched: Schedule, args, order: torch.Tensor, base: dict) -> None:
    """``args.steps`` AdamW steps on random batches, a val line 8 times and at the end."""
    tok, _, timg = probe.train
    n, b = tok.shape[0], args.batch_size
    by_image = [[] for _ in range(n)]
    for j, i in enumerate(timg.tolist()):
        by_image[i].append(j)
    for step in range(1, args.steps + 1):
        idx = order[(step * b) % n: (step * b) % n + b]
        if len(idx) < b:
            order = torch.randperm(n)
            idx = order[:b]
        x, btb, bimg = probe.batch(idx, by_image)
        for g in opt.param_groups:
            g["lr"] = sched.lr(step - 1, args.steps)
        m = matched_losses(probe.dec(probe.memory(x))["pred_boxes"], btb, bimg, probe.matcher)
        loss = m["l1"] + m["1-giou"]
        opt.zero_grad()
        loss.backward()
        if sched.clip:
            torch.nn.utils.clip_grad_norm_(params, sched.clip)
        opt.step()
        if step % max(1, args.steps // 8) == 0 or step == args.steps:
            pred, v = probe.evaluate()
            print(f"{step:>6} {float(loss.detach()):>10.3f} {v['1-giou']:>10.3f} {v['1-giou'] / base['1-giou']:>15.2f} "
                  f"{float(pred.std(0).mean()):>8.3f}", flush=True)


def main(argv=None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    corpus = os.path.join(args.bench, "corpus")
    shards = storage.list_shards(corpus)[0] if os.path.isdir(corpus) else []
    if len(shards) < 2:
        ap.error(f"{args.bench}: needs at least 2 corpus shards")
    run = load_bench_config(args.config)["train"]
    sched = Schedule.from_run(run, args)
    tower, cfg = _tower(ap, args, run)
    train_rows, val_rows = _rows(args, shards)
    t0 = time.perf_counter()
    train, val = _encoded(args, tower, cfg, train_rows, val_rows)
    print(f"tokens: {tuple(train[0].shape)} train, {tuple(val[0].shape)} val ({time.perf_counter() - t0:.0f} s); "
          f"tower {args.tower}{' (trained here)' if args.train_tower else ' (frozen)'}, "
          f"{cfg.image_size // cfg.patch_size}² grid, memory_pos {cfg.decoder_memory_pos}, "
          f"vision_pos {cfg.vision_pos_embed}; {sched.describe()}")
    dec = build_model(cfg).decoder  # a fresh decoder exactly as GrainModel builds it
    if dec is None:
        ap.error(f"{args.tower}: a CLIP-baseline checkpoint has no region decoder")
    named = list(dec.named_parameters()) + (list(tower.visual.named_parameters()) if args.train_tower else [])
    named = [(k, p) for k, p in named if p.requires_grad]  # a sincos2d table is frozen
    opt = _adamw(named, sched)
    probe = Probe(dec=dec, tower=tower, train_tower=args.train_tower, train=train, val=val, matcher=HungarianMatcher())
    order = torch.randperm(train[0].shape[0])  # the first batch order, drawn right after the decoder's init
    print(f"position probe (R² of a patch's x, y from the decoder memory values), before training: {probe.pos_r2():.3f}")
    base = probe.best_constant_losses()
    print(f"val: {len(val_rows)} rows, {val[1].shape[0]} boxes; best image-independent boxes 1-GIoU {base['1-giou']:.3f}")
    print(f"{'step':>6} {'train loss':>10} {'val 1-GIoU':>10} {'/ best-constant':>15} {'box std':>8}")
    t0 = time.perf_counter()
    _train(probe, opt, [p for _, p in named], sched, args, order, base)
    print(f"({time.perf_counter() - t0:.0f} s; target box std across images {float(val[1].std(0).mean()):.3f})")
    if args.train_tower:
        print(f"position probe after training: {probe.pos_r2():.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
