"""Box conversions and GIoU invariants (normalised cxcywh / xyxy)."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from grain import box_ops


def _random_xyxy(n, gen):
    a = torch.rand(n, 2, 2, generator=gen)
    lo, hi = a.min(dim=1).values, a.max(dim=1).values
    return torch.cat([lo, hi], dim=-1)  # [n, 4] valid xyxy in [0, 1]


def test_round_trips():
    gen = torch.Generator().manual_seed(0)
    xyxy = _random_xyxy(50, gen)
    assert torch.allclose(box_ops.box_cxcywh_to_xyxy(box_ops.box_xyxy_to_cxcywh(xyxy)), xyxy, atol=1e-6)
    cxcywh = box_ops.box_xyxy_to_cxcywh(xyxy)
    assert torch.allclose(box_ops.box_xyxy_to_cxcywh(box_ops.box_cxcywh_to_xyxy(cxcywh)), cxcywh, atol=1e-6)
    assert torch.equal(box_ops.box_xyxy_to_cxcywh(torch.tensor([0.1, 0.2, 0.5, 0.8])), torch.tensor([0.3, 0.5, 0.4, 0.6]))


def test_giou_identical_is_one_and_disjoint_negative():
    gen = torch.Generator().manual_seed(1)
    b = _random_xyxy(20, gen)
    assert torch.allclose(box_ops.generalized_box_iou(b, b).diag(), torch.ones(20), atol=1e-5)
    assert torch.allclose(box_ops.elementwise_generalized_box_iou(b, b), torch.ones(20), atol=1e-5)
    a = torch.tensor([[0.0, 0.0, 0.1, 0.1]])
    c = torch.tensor([[0.9, 0.9, 1.0, 1.0]])
    g = box_ops.generalized_box_iou(a, c)
    assert g.item() < -0.9  # far apart, tiny boxes: GIoU → −1


@settings(max_examples=80, deadline=None)
@given(st.lists(st.floats(0, 1, allow_nan=False), min_size=8, max_size=8))
def test_giou_bounded(coords):
    t = torch.tensor(coords).view(2, 2, 2)
    lo, hi = t.min(dim=1).values, t.max(dim=1).values
    boxes = torch.cat([lo, hi], dim=-1)  # two boxes, possibly degenerate (zero width/height)
    g = box_ops.generalized_box_iou(boxes, boxes)
    e = box_ops.elementwise_generalized_box_iou(boxes, boxes.flip(0))
    assert torch.isfinite(g).all() and torch.isfinite(e).all()
    assert (g >= -1 - 1e-6).all() and (g <= 1 + 1e-6).all()
    assert torch.allclose(e, g.flip(1).diag(), atol=1e-6)


def test_iou_known_value():
    a = torch.tensor([[0.0, 0.0, 0.5, 0.5]])
    b = torch.tensor([[0.25, 0.25, 0.75, 0.75]])
    iou, _ = box_ops.box_iou(a, b)
    assert abs(iou.item() - 0.0625 / (0.25 + 0.25 - 0.0625)) < 1e-6
    # the plain-float IoU of the corpus builders: the same value, 0 for disjoint or empty boxes
    assert abs(box_ops.iou(a[0].tolist(), b[0].tolist()) - iou.item()) < 1e-6
    assert box_ops.iou([0, 0, 0.1, 0.1], [0.5, 0.5, 0.6, 0.6]) == 0.0 and box_ops.iou([0, 0, 0, 0], [0, 0, 0, 0]) == 0.0


def test_nms_per_label_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(60, 2, generator=g) * 0.7
    boxes = torch.cat([xy, xy + 0.05 + torch.rand(60, 2, generator=g) * 0.3], 1)
    scores, labels = torch.rand(60, generator=g), torch.randint(0, 3, (60,), generator=g)
    keep = box_ops.nms_per_label(boxes, scores, labels, 0.4).tolist()
    assert scores[keep].tolist() == sorted(scores[keep].tolist(), reverse=True)
    iou, _ = box_ops.box_iou(boxes, boxes)
    for i in range(60):  # every dropped box overlaps a kept, higher-scoring box of its own label
        if i not in keep:
            assert any(labels[k] == labels[i] and iou[i, k] > 0.4 and scores[k] >= scores[i] for k in keep)
    for a in keep:  # no two kept boxes of one label overlap above the threshold
        assert not any(b != a and labels[a] == labels[b] and iou[a, b] > 0.4 for b in keep)
