"""Hungarian matching of predicted region boxes to target boxes (docs/method.md §3.2), after DETR's matcher.

Per image, cost[q, t] = cost_l1 · ‖pred_q − tgt_t‖₁ (cxcywh) + cost_giou · (−GIoU(pred_q, tgt_t));
boxes only (the descriptions play no part).

Two exact solvers of the same assignment problem:
- GRAIN's sizes (Q = 5 queries, ≤ 5 targets per image) are tiny, so the default solves every image
  at once on the model's device by enumerating all injective target → query maps (P(Q, T) ≤ 720
  for Q ≤ 6): one batched gather + argmin, no host round trip per image. On an H200 the scipy
  loop below cost ~9 ms of a ~160 ms step at batch 128 (benchmarks/gpu_train_step.py --breakdown).
- Otherwise (more queries, or more targets than queries in an image), scipy's
  ``linear_sum_assignment`` per image on CPU, as DETR and the release do.
Both return an optimal assignment; they can differ only between assignments of exactly equal cost.
"""

from __future__ import annotations

import itertools

import torch
from scipy.optimize import linear_sum_assignment

_MAX_ENUM_QUERIES = 6  # P(6, 6) = 720 candidate maps per image; beyond that use scipy


def _injective_maps(q: int, t: int, device) -> torch.Tensor:
    """All injective maps from t target slots to q queries: long [P(q, t), t] (query of each slot)."""
    return torch.tensor(list(itertools.permutations(range(q), t)), dtype=torch.long, device=device).view(-1, t)

from grain import box_ops


class HungarianMatcher:
    """Matches Q predictions per image to that image's targets (≤ Q of them are matched)."""

    def __init__(self, cost_l1: float = 5.0, cost_giou: float = 2.0):
        self.cost_l1 = cost_l1
        self.cost_giou = cost_giou

    def cost_matrix(self, pred: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """pred [N, 4], tgt [M, 4], normalised cxcywh → cost [N, M] (float32)."""
        pred, tgt = pred.float(), tgt.float()
        l1 = torch.cdist(pred, tgt, p=1)
        giou = box_ops.generalized_box_iou(box_ops.box_cxcywh_to_xyxy(pred), box_ops.box_cxcywh_to_xyxy(tgt))
        return self.cost_l1 * l1 - self.cost_giou * giou

    @torch.no_grad()
    def __call__(
        self, pred_boxes: torch.Tensor, target_boxes: torch.Tensor, target_image: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Match a batch.

        Args:
            pred_boxes: [B, Q, 4] normalised cxcywh.
            target_boxes: [M, 4] normalised cxcywh, all images' targets concatenated.
            target_image: [M] long, the image index of each target (images may have none).

        Returns:
            ``(batch_idx, query_idx, target_idx)``, each a long tensor [K] on ``pred_boxes.device``
            (K = Σ_images min(Q, targets of the image)), ordered by image then query; ``target_idx``
            indexes ``target_boxes``.
        """
        if pred_boxes.dim() != 3 or pred_boxes.shape[-1] != 4:
            raise ValueError(f"pred_boxes must be [B, Q, 4] cxcywh, got {tuple(pred_boxes.shape)}")
        if target_boxes.dim() != 2 or target_boxes.shape[-1] != 4 or target_image.shape != target_boxes.shape[:1]:
            raise ValueError(
                f"target_boxes must be [M, 4] with target_image [M], got {tuple(target_boxes.shape)} and {tuple(target_image.shape)}"
            )
        b, q = pred_boxes.shape[:2]
        dev = pred_boxes.device
        empty = torch.zeros(0, dtype=torch.long, device=dev)
        if target_boxes.shape[0] == 0:
            return empty, empty, empty.clone()
        owner = target_image.cpu()
        if owner.min() < 0 or owner.max() >= b:
            raise ValueError(f"target_image has indices outside [0, {b})")
        counts = torch.bincount(owner, minlength=b)
        if q <= _MAX_ENUM_QUERIES and int(counts.max()) <= q:
            return self._match_enumerate(pred_boxes, target_boxes, target_image.to(dev), counts.to(dev))
        return self._match_scipy(pred_boxes, target_boxes, owner)

    def _match_enumerate(self, pred_boxes, target_boxes, owner, counts):
        """Exact batched assignment by enumeration (see the module docstring); same output contract."""
        b, q = pred_boxes.shape[:2]
        dev = pred_boxes.device
        m = target_boxes.shape[0]
        t = int(counts.max())
        # slot of each target within its image (targets may come in any image order)
        order = torch.argsort(owner, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.empty_like(owner)
        slot[order] = torch.arange(m, device=dev) - starts[owner[order]]
        padded = target_boxes.new_zeros(b, t, 4).float()
        padded[owner, slot] = target_boxes.float()
        valid = torch.zeros(b, t, dtype=torch.bool, device=dev)
        valid[owner, slot] = True
        tgt_index = torch.full((b, t), -1, dtype=torch.long, device=dev)
        tgt_index[owner, slot] = torch.arange(m, device=dev)
        # block-diagonal costs only: [B, Q, T]
        cost = self._pair_costs(pred_boxes, padded)
        maps = _injective_maps(q, t, dev)  # [P, T]
        slots = torch.arange(t, device=dev)
        per_map = cost[:, maps, slots]  # [B, P, T]: cost of putting slot s on query maps[p, s]
        total = (per_map * valid[:, None, :]).sum(-1)  # [B, P]; empty slots cost nothing
        best = maps[total.argmin(dim=1)]  # [B, T]
        bi = torch.arange(b, device=dev)[:, None].expand(b, t)[valid]
        qi = best[valid]
        ti = tgt_index[valid]
        key = torch.argsort(bi * q + qi)  # order by image, then query (the scipy path's order)
        return bi[key], qi[key], ti[key]

    def _pair_costs(self, pred_boxes: torch.Tensor, padded: torch.Tensor) -> torch.Tensor:
        """pred [B, Q, 4], padded targets [B, T, 4] (cxcywh) → cost [B, Q, T] within each image."""
        pred, tgt = pred_boxes.float(), padded.float()
        l1 = (pred[:, :, None, :] - tgt[:, None, :, :]).abs().sum(-1)
        p = box_ops.box_cxcywh_to_xyxy(pred)[:, :, None, :]
        g = box_ops.box_cxcywh_to_xyxy(tgt)[:, None, :, :]
        giou = box_ops.elementwise_generalized_box_iou(*torch.broadcast_tensors(p, g))
        return self.cost_l1 * l1 - self.cost_giou * giou

    def _match_scipy(self, pred_boxes, target_boxes, owner):
        """scipy's Hungarian solver per image on CPU (DETR's way); same output contract."""
        b, q = pred_boxes.shape[:2]
        dev = pred_boxes.device
        cost = self.cost_matrix(pred_boxes.reshape(b * q, 4), target_boxes).view(b, q, -1).cpu()
        out_b, out_q, out_t = [], [], []
        for i in range(b):
            cols = torch.nonzero(owner == i).flatten()
            if cols.numel() == 0:
                continue
            rows, c = linear_sum_assignment(cost[i][:, cols].numpy())
            out_b.append(torch.full((len(rows),), i, dtype=torch.long))
            out_q.append(torch.as_tensor(rows, dtype=torch.long))
            out_t.append(cols[torch.as_tensor(c, dtype=torch.long)])
        return torch.cat(out_b).to(dev), torch.cat(out_q).to(dev), torch.cat(out_t).to(dev)
