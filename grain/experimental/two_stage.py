"""Two-stage region queries (``ModelConfig.region_queries="two_stage"``; docs/method.md §6): Deformable
DETR's query selection with CenterNet's one-cell-per-object targets, instead of the paper's learned queries.

Shapes: B images, P = g² patch cells (CLS excluded), d decoder width, Q region queries, M target boxes.

    every patch token scores "an object is centred in this cell"     logits     [B, P]
    and proposes a box as logit offsets from its cell's anchor        box_logits [B, P, 4] cxcywh
    the Q best local maxima (3×3 peaks) start the region queries:     content = their memory tokens,
                                                                      boxes = refinements of their proposals
    proposal_head "mlp": each token alone (a linear score, a 2-layer MLP box); "conv": CenterNet's
    3×3 conv → ReLU → 1×1 conv over the grid, so a cell reads its 8 neighbours directly.
    trained by ``proposal_losses`` (weight ``LossConfig.lambda_proposal``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from grain import box_ops
from grain.dist import all_reduce_sum
from grain.layers import MLP


def cell_anchor_logits(grid: int) -> torch.Tensor:
    """[grid², 4] inverse-sigmoid cxcywh anchors: each patch cell's centre (row-major, like the ViT's
    patch tokens), width and height two cells (clamped below 1)."""
    c = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid
    cy, cx = torch.meshgrid(c, c, indexing="ij")
    side = torch.full_like(cx, min(2.0 / grid, 0.9))
    anchors = torch.stack((cx, cy, side, side), dim=-1).reshape(grid * grid, 4)
    return torch.log(anchors / (1 - anchors))


class ConvHead(nn.Module):
    """CenterNet's output head over the patch grid: [B, d, g, g] → [B, g², out] (3×3 conv, ReLU, 1×1 conv), so
    each cell's output reads its 3 × 3 neighbourhood directly."""

    def __init__(self, dim: int, out: int):
        super().__init__()
        self.layers = nn.ModuleList((nn.Conv2d(dim, dim, 3, padding=1), nn.Conv2d(dim, out, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers[1](F.relu(self.layers[0](x)))
        return x.flatten(2).transpose(1, 2)


def proposal_heads(dim: int, head: str) -> tuple[nn.Module, nn.Module]:
    """(score head, box head) for ``proposal_head`` ``head``, initialised so the boxes start at the anchors
    and every score at the focal-loss prior 0.01 (RetinaNet)."""
    if head == "conv":
        score, box = ConvHead(dim, 1), ConvHead(dim, 4)
        last_score = score.layers[-1]
    else:
        score, box = nn.Linear(dim, 1), MLP(dim, dim, 4)
        last_score = score
    nn.init.zeros_(box.layers[-1].weight)
    nn.init.zeros_(box.layers[-1].bias)
    nn.init.constant_(last_score.bias, -math.log(99.0))
    return score, box


def propose(memory: torch.Tensor, score_head: nn.Module, box_head: nn.Module, anchor_logits: torch.Tensor,
            head: str, num_queries: int) -> dict[str, torch.Tensor]:
    """Proposals from the memory's patch tokens, memory [B, 1 + P, d] (CLS first): ``logits`` [B, P],
    ``box_logits`` / ``boxes`` [B, P, 4] (cxcywh before / after the sigmoid), ``selected`` [B, Q]: the Q
    highest-scoring local maxima of the score map (3×3 max-pool peaks, CenterNet), then the best
    remaining cells when fewer than Q peaks exist."""
    patches = memory[:, 1:]
    g = int(round(patches.shape[1] ** 0.5))
    if head == "conv":
        patches = patches.transpose(1, 2).reshape(patches.shape[0], -1, g, g)  # [B, d, g, g]
    logits = score_head(patches).squeeze(-1)  # [B, P]
    box_logits = anchor_logits.to(memory.dtype) + box_head(patches)
    with torch.no_grad():
        score = logits.detach().float().view(-1, 1, g, g)
        peak = F.max_pool2d(score, 3, stride=1, padding=1) == score
        rank = torch.where(peak, score, score - 1e4).flatten(1)  # peaks first, then the rest by score
        selected = rank.topk(num_queries, dim=1).indices
    return {"logits": logits, "box_logits": box_logits, "boxes": box_logits.sigmoid(), "selected": selected}


def start_queries(memory: torch.Tensor, prop: dict, tgt: torch.Tensor, num_queries: int) -> tuple:
    """The selected cells start the region queries: tgt [B, Q + 1, d] (zeros) → (tgt with the selected
    memory tokens as the Q region queries' content, the image query still zero; reference box logits
    [B, Q, 4] the region boxes refine; the proposal outputs for the loss)."""
    idx = prop["selected"]  # [B, Q] patch indices
    content = torch.gather(memory[:, 1:], 1, idx[..., None].expand(-1, -1, memory.shape[-1]))
    tgt = torch.cat((content, tgt[:, num_queries:]), dim=1)
    # Refinements of the selected proposals; the proposals themselves learn from their own loss only.
    ref = torch.gather(prop["box_logits"], 1, idx[..., None].expand(-1, -1, 4)).detach()
    return tgt, ref, {"proposal_logits": prop["logits"], "proposal_boxes": prop["boxes"]}


def proposal_losses(logits: torch.Tensor, boxes: torch.Tensor, tb: torch.Tensor, timg: torch.Tensor) -> dict:
    """logits [B, P], boxes [B, P, 4] cxcywh over a g × g grid (P = g²), target boxes tb [M, 4] cxcywh of
    images timg [M], trained as CenterNet trains its heads:

    - score: penalty-reduced focal loss (α 2, β 4) against a heat map holding, per cell, the largest
      ``exp(−d² / 2σ²)`` over its image's targets (d: cell distance to the cell of the target's centre,
      σ = 1 cell), so the centre cell is the positive and its neighbours are only mildly negative;
    - box: L1 + (1 − GIoU) of the proposals of every cell within one cell of a target's centre cell
      (the 3 × 3 block), averaged over the block: a peak one cell off still carries a trained box.

    Both / the global target count (≥ 1) → ``loss_prop_cls``, ``loss_prop_l1``, ``loss_prop_giou``."""
    num = all_reduce_sum(torch.tensor(float(tb.shape[0]), device=logits.device)).clamp(min=1.0)
    g = int(round(logits.shape[1] ** 0.5))
    if g * g != logits.shape[1]:
        raise ValueError(f"proposal logits cover {logits.shape[1]} cells: not a square patch grid")
    col = (tb[:, 0].float() * g).long().clamp(0, g - 1)
    row = (tb[:, 1].float() * g).long().clamp(0, g - 1)
    r = torch.arange(g, device=logits.device)
    d2 = (r.view(1, g, 1) - row.view(-1, 1, 1)) ** 2 + (r.view(1, 1, g) - col.view(-1, 1, 1)) ** 2  # [M, g, g]
    gauss = torch.exp(-d2.float() / 2).flatten(1)  # σ = 1 cell
    heat = torch.zeros_like(logits, dtype=torch.float32)
    if tb.shape[0]:
        heat = heat.scatter_reduce(0, timg[:, None].expand(-1, g * g), gauss, reduce="amax", include_self=True)
    x = logits.float()
    p = x.sigmoid().clamp(1e-4, 1 - 1e-4)
    pos = heat >= 1.0 - 1e-6
    focal = torch.where(pos, -((1 - p) ** 2) * torch.log(p), -((1 - heat) ** 4) * (p**2) * torch.log(1 - p))
    block = (d2 <= 2).flatten(1)  # [M, P]: the 3 × 3 cells around each target's centre cell
    mi, ci = block.nonzero(as_tuple=True)
    src = boxes[timg[mi], ci].float()  # [K, 4]; empty when no boxes (zero gradients, graph kept)
    tgt = tb[mi].float()
    w = 1.0 / block.sum(1).float()[mi]  # each target's block counts once
    giou = box_ops.elementwise_generalized_box_iou(box_ops.box_cxcywh_to_xyxy(src), box_ops.box_cxcywh_to_xyxy(tgt))
    keep = boxes.float().sum() * 0  # the box branch stays in the graph on ranks without boxes
    return {"loss_prop_cls": focal.sum() / num, "loss_prop_l1": ((src - tgt).abs().sum(1) * w).sum() / num + keep,
            "loss_prop_giou": ((1 - giou) * w).sum() / num}
