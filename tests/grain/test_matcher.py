"""HungarianMatcher: optimal (brute force), batched = per image, empty targets."""

import itertools

import torch

from grain import box_ops
from grain.matcher import HungarianMatcher


def _rand_cxcywh(shape, gen):
    c = torch.rand(*shape, 2, generator=gen) * 0.6 + 0.2
    wh = torch.rand(*shape, 2, generator=gen) * 0.3 + 0.05
    return torch.cat([c, wh], dim=-1)


def _brute_force_cost(cost):
    """Minimum total cost over every injective assignment of targets (cols) to queries (rows)."""
    q, m = cost.shape
    return min(sum(cost[perm[j], j].item() for j in range(m)) for perm in itertools.permutations(range(q), m))


def test_matches_brute_force_optimum():
    gen = torch.Generator().manual_seed(0)
    matcher = HungarianMatcher(cost_l1=5.0, cost_giou=2.0)
    for trial in range(30):
        q, m = 5, int(torch.randint(1, 6, (1,), generator=gen))
        pred = _rand_cxcywh((1, q), gen)
        tgt = _rand_cxcywh((m,), gen)
        bi, qi, ti = matcher(pred, tgt, torch.zeros(m, dtype=torch.long))
        cost = matcher.cost_matrix(pred[0], tgt)
        assert len(set(qi.tolist())) == m and sorted(ti.tolist()) == list(range(m))
        got = cost[qi, ti].sum().item()
        assert abs(got - _brute_force_cost(cost)) < 1e-4, trial


def test_cost_definition():
    pred = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    tgt = torch.tensor([[0.4, 0.5, 0.2, 0.4]])
    giou = box_ops.generalized_box_iou(box_ops.box_cxcywh_to_xyxy(pred), box_ops.box_cxcywh_to_xyxy(tgt))
    expected = 5 * (0.1 + 0.0 + 0.0 + 0.2) - 2 * giou
    assert torch.allclose(HungarianMatcher().cost_matrix(pred, tgt), expected, atol=1e-6)


def test_batched_equals_per_image_and_empty_images():
    gen = torch.Generator().manual_seed(1)
    matcher = HungarianMatcher()
    counts = [3, 0, 5, 1, 0, 2]
    pred = _rand_cxcywh((len(counts), 5), gen)
    tgt = _rand_cxcywh((sum(counts),), gen)
    owner = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    bi, qi, ti = matcher(pred, tgt, owner)
    assert len(bi) == sum(counts)
    start = 0
    for i, n in enumerate(counts):
        sel = bi == i
        if n == 0:
            assert not sel.any()
            continue
        _, q1, t1 = matcher(pred[i : i + 1], tgt[start : start + n], torch.zeros(n, dtype=torch.long))
        assert torch.equal(qi[sel], q1) and torch.equal(ti[sel], t1 + start)
        start += n


def test_no_targets_at_all():
    bi, qi, ti = HungarianMatcher()(torch.rand(3, 5, 4), torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert bi.numel() == qi.numel() == ti.numel() == 0


def test_batched_enumeration_equals_scipy_and_falls_back():
    """The batched enumeration solver and scipy's Hungarian solver reach the same optimal cost per
    image (random batches with 0–Q targets per image, targets in shuffled image order); an image
    with more targets than queries goes through scipy."""
    gen = torch.Generator().manual_seed(7)
    matcher = HungarianMatcher()
    for trial in range(20):
        counts = torch.randint(0, 6, (8,), generator=gen)
        pred = _rand_cxcywh((8, 5), gen)
        owner = torch.repeat_interleave(torch.arange(8), counts)
        owner = owner[torch.randperm(len(owner), generator=gen)]
        tgt = _rand_cxcywh((len(owner),), gen)
        fast = matcher(pred, tgt, owner)
        ref = matcher._match_scipy(pred, tgt, owner)
        assert len(fast[0]) == len(ref[0]) == len(owner)
        assert torch.equal(fast[0], ref[0])  # ordered by image
        for i in range(8):
            cost = matcher.cost_matrix(pred[i], tgt)
            f, r = fast[0] == i, ref[0] == i
            assert abs(cost[fast[1][f], fast[2][f]].sum() - cost[ref[1][r], ref[2][r]].sum()) < 1e-4, trial
            assert torch.equal(fast[1][f], torch.sort(fast[1][f]).values)  # then by query
    # 7 targets on one image > Q = 5: Hungarian matches 5 of them (scipy path)
    bi, qi, ti = matcher(_rand_cxcywh((1, 5), gen), _rand_cxcywh((7,), gen), torch.zeros(7, dtype=torch.long))
    assert len(bi) == 5 and len(set(qi.tolist())) == 5 and len(set(ti.tolist())) == 5
