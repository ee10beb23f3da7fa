"""Zero-shot scores from fixed embeddings: hand-computed values, a perfect model, fusion."""

import math

import pytest
import torch

from evaluation import scoring
from evaluation.metrics import classification_metrics


def test_class_vector_is_mean_of_normalised_prompts():
    # class 0 prompts: (2,0) and (0,3) → normalised (1,0),(0,1) → mean (.5,.5) → unit (1/√2, 1/√2)
    v = scoring.class_vectors([torch.tensor([[2.0, 0.0], [0.0, 3.0]]), torch.tensor([[0.0, -5.0]])])
    assert v[0].tolist() == pytest.approx([1 / math.sqrt(2), 1 / math.sqrt(2)])
    assert v[1].tolist() == pytest.approx([0.0, -1.0])


def test_three_class_toy_by_hand():
    # Class vectors along the axes of R^3; images chosen so cosines are easy to write down.
    classes = scoring.class_vectors([torch.eye(3)[c:c + 1] * 4 for c in range(3)])
    images = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.2, 1.0]])
    s = scoring.global_scores(images, classes)
    r2 = 1 / math.sqrt(2)
    expected = [[1, 0, 0], [r2, r2, 0], [0, 0.2 / math.sqrt(1.04), 1 / math.sqrt(1.04)]]
    for row, exp in zip(s.tolist(), expected):
        assert row == pytest.approx(exp, abs=1e-6)
    # labels 0, 1, 2: image 1 ties classes 0/1 → topk picks index 0 → wrong; others right.
    m = classification_metrics(s, torch.tensor([0, 2, 2]), ks=(1, 2))
    assert m["acc1"] == pytest.approx(2 / 3) and m["acc2"] == pytest.approx(2 / 3)


def test_perfect_model_scores_100_percent():
    torch.manual_seed(0)
    C, N, D = 7, 21, 16
    prompts = [torch.randn(4, D) for _ in range(C)]
    vecs = scoring.class_vectors(prompts)
    labels = torch.arange(N) % C
    images = vecs[labels] * 3.0  # image embedding = its class vector (scaled: cosine ignores it)
    m = classification_metrics(scoring.global_scores(images, vecs), labels)
    assert m["acc1"] == 1.0 and m["acc5"] == 1.0 and m["mean_per_class_recall"] == 1.0


def test_region_score_is_mean_over_queries_of_max_over_descriptors():
    # 1 image, 2 queries; class 0 has descriptors e0, e1; class 1 has e2.
    reg = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    descs = [torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]), torch.tensor([[0.0, 0.0, 1.0]])]
    s = scoring.region_scores(reg, descs)
    assert s[0].tolist() == pytest.approx([1.0, 0.0])  # class 0: mean(max(1,0), max(0,1)) = 1
    descs2 = [torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[1.0, 1.0, 0.0]])]
    s2 = scoring.region_scores(reg, descs2)
    assert s2[0, 0] == pytest.approx(0.5)  # queries: 1 and 0
    assert s2[0, 1] == pytest.approx(1 / math.sqrt(2))
    with pytest.raises(RuntimeError, match="class 1"):
        scoring.region_scores(reg, [descs[0], torch.zeros(0, 3)])


def test_fusion_weights():
    g, r = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert scoring.fuse(g, r, 1.0).tolist() == [[1.0, 0.0]]
    assert scoring.fuse(g, r, 0.0).tolist() == [[0.0, 1.0]]
    assert scoring.fuse(g, r, 0.25)[0].tolist() == pytest.approx([0.25, 0.75])
    assert scoring.fuse(g, None, 1.0) is g
    with pytest.raises(ValueError, match="region"):
        scoring.fuse(g, None, 0.5)
    with pytest.raises(ValueError, match="alpha"):
        scoring.fuse(g, r, 1.5)
