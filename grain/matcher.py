"""Hungarian matching of predicted region boxes to target boxes (METHOD.md §3), after DETR's matcher.

Per image, cost[q, t] = cost_l1 · ‖pred_q − tgt_t‖₁ (cxcywh) + cost_giou · (−GIoU(pred_q, tgt_t));
boxes only (the descriptions play no part). Solved with scipy's ``linear_sum_assignment`` on CPU.
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment

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
        # One cost computation for the whole batch (as DETR), then one assignment per image.
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
