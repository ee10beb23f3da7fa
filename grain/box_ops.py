"""Box conversions and overlaps (after DETR's util/box_ops.py).

Formats: ``cxcywh`` = (centre x, centre y, width, height), ``xyxy`` = (x1, y1, x2, y2); both
normalised to [0, 1] inside ``grain/``. The one IoU/NMS of the project: the annotation stage's
per-description NMS (``nms_per_label``) uses ``box_iou`` too, the corpus builders ``iou`` (two plain boxes).
Every other function takes [..., 4] tensors and computes in the input dtype except the overlaps, which work
in float32 (stable under bf16 autocast).
"""

from __future__ import annotations

import torch

_EPS = 1e-7  # keeps degenerate (zero-area) boxes from dividing by zero


def box_cxcywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    """[..., 4] cxcywh → [..., 4] xyxy."""
    cx, cy, w, h = b.unbind(-1)
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


def box_xyxy_to_cxcywh(b: torch.Tensor) -> torch.Tensor:
    """[..., 4] xyxy → [..., 4] cxcywh."""
    x1, y1, x2, y2 = b.unbind(-1)
    return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), dim=-1)


def box_area(b: torch.Tensor) -> torch.Tensor:
    """[..., 4] xyxy → [...] area (0 for inverted boxes)."""
    return (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)


def _check(b: torch.Tensor, name: str) -> torch.Tensor:
    if b.shape[-1] != 4:
        raise ValueError(f"{name} must be [..., 4] xyxy boxes, got shape {tuple(b.shape)}")
    return b.float()


def box_iou(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairwise IoU of xyxy boxes a [N, 4] and b [M, 4] → (iou [N, M], union [N, M])."""
    a, b = _check(a, "a"), _check(b, "b")
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return inter / union.clamp(min=_EPS), union


def iou(a, b) -> float:
    """IoU of two xyxy boxes given as plain sequences of floats (the corpus builders place objects one by
    one). Python floats (float64) on purpose, not ``box_iou``'s float32: a placement accepted at
    ``iou <= max_overlap`` must not flip with the precision, or the built corpora would change."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def generalized_box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise GIoU of xyxy boxes a [N, 4], b [M, 4] → [N, M] in [−1, 1] (1 for identical boxes)."""
    iou, union = box_iou(a, b)
    a, b = a.float(), b.float()
    lt = torch.min(a[:, None, :2], b[None, :, :2])
    rb = torch.max(a[:, None, 2:], b[None, :, 2:])
    hull = (rb - lt).clamp(min=0).prod(-1)
    return iou - (hull - union) / hull.clamp(min=_EPS)


def elementwise_generalized_box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """GIoU of matched pairs: xyxy a [K, 4], b [K, 4] → [K] (the diagonal of ``generalized_box_iou``)."""
    a, b = _check(a, "a"), _check(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"elementwise GIoU needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    lt = torch.max(a[..., :2], b[..., :2])
    rb = torch.min(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = box_area(a) + box_area(b) - inter
    iou = inter / union.clamp(min=_EPS)
    hull = (torch.max(a[..., 2:], b[..., 2:]) - torch.min(a[..., :2], b[..., :2])).clamp(min=0).prod(-1)
    return iou - (hull - union) / hull.clamp(min=_EPS)


def nms_per_label(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou: float) -> torch.Tensor:
    """Greedy NMS within each label: xyxy ``boxes`` [N, 4], ``scores`` [N], ``labels`` [N] → kept indices
    (long [K]) sorted by descending score. A box is dropped when it overlaps a kept, higher-scoring box of
    its own label with IoU > ``iou``. Plain torch: grain/ does not import torchvision (open_clip and timm
    depend on it; on the CPU stack its CUDA wheel's native ops do not load, see infra/compat/)."""
    order = torch.argsort(scores, descending=True)
    keep: list[int] = []
    suppressed = torch.zeros(len(scores), dtype=torch.bool)
    ious, _ = box_iou(boxes, boxes)
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= (ious[i] > iou) & (labels == labels[i])
    return torch.tensor(keep, dtype=torch.long)
