"""Metrics on fixed scores/embeddings: hand-computed values and brute-force references."""

import numpy as np
import pytest
import torch

from evaluation.metrics import classification_metrics, retrieval_metrics, subset_accuracy, topk_correct


def test_topk_by_hand_three_classes():
    # 4 samples, 3 classes; rankings written out by hand.
    scores = torch.tensor([
        [0.9, 0.1, 0.0],  # label 0: rank 1
        [0.5, 0.4, 0.6],  # label 1: rank 3
        [0.2, 0.7, 0.3],  # label 2: rank 2
        [0.1, 0.2, 0.8],  # label 2: rank 1
    ])
    labels = torch.tensor([0, 1, 2, 2])
    assert topk_correct(scores, labels, 1).tolist() == [True, False, False, True]
    assert topk_correct(scores, labels, 2).tolist() == [True, False, True, True]
    m = classification_metrics(scores, labels, ks=(1, 2, 5))
    assert m["acc1"] == pytest.approx(0.5)
    assert m["acc2"] == pytest.approx(0.75)
    assert m["acc5"] == pytest.approx(1.0)  # k clipped to C=3
    # per class top-1: class0 1/1, class1 0/1, class2 1/2 → mean 0.5
    assert m["mean_per_class_recall"] == pytest.approx(0.5)


def test_subset_accuracy_ranks_over_all_classes():
    scores = torch.tensor([[0.9, 0.1, 0.0], [0.5, 0.4, 0.6], [0.1, 0.2, 0.8]])
    labels = torch.tensor([0, 1, 2])
    unseen = torch.tensor([False, True, True])
    s = subset_accuracy(scores, labels, unseen, ks=(1,))
    assert s["acc1"] == pytest.approx(0.5) and s["n"] == 2 and s["classes"] == 2
    seen = subset_accuracy(scores, labels, ~unseen, ks=(1,))
    assert seen["acc1"] == 1.0 and seen["n"] == 1
    assert np.isnan(subset_accuracy(scores, labels, torch.zeros(3, dtype=torch.bool))["acc1"])


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="labels must lie"):
        topk_correct(torch.zeros(2, 3), torch.tensor([0, 3]), 1)
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        topk_correct(torch.zeros(2, 3), torch.tensor([0]), 1)


def _brute_force(img, txt, t2i, k):
    img = img / np.linalg.norm(img, axis=1, keepdims=True)
    txt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
    sim = img @ txt.T
    i2t = []
    for i in range(len(img)):
        order = sorted(range(len(txt)), key=lambda j: -sim[i, j])[:k]
        i2t.append(any(t2i[j] == i for j in order))
    t2i_hits = []
    for j in range(len(txt)):
        order = sorted(range(len(img)), key=lambda i: -sim[i, j])[:k]
        t2i_hits.append(t2i[j] in order)
    return np.mean(i2t), np.mean(t2i_hits)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_retrieval_matches_brute_force_with_several_captions(seed):
    rng = np.random.default_rng(seed)
    n, per = 12, [1, 2, 3]
    t2i = np.array([i for i in range(n) for _ in range(per[i % 3])])
    img = rng.normal(size=(n, 8))
    txt = img[t2i] + rng.normal(scale=1.5, size=(len(t2i), 8))  # noisy captions: recall strictly between 0 and 1
    got = retrieval_metrics(img, txt, t2i, ks=(1, 5, 10))
    for k in (1, 5, 10):
        i2t, t2i_r = _brute_force(img, txt, t2i, k)
        assert got[f"text_retrieval_recall@{k}"] == pytest.approx(i2t)
        assert got[f"image_retrieval_recall@{k}"] == pytest.approx(t2i_r)
    assert got["n_texts"] == len(t2i)


def test_retrieval_perfect_embeddings():
    img = torch.eye(5)
    got = retrieval_metrics(img, img[[0, 0, 1, 2, 3, 4]], [0, 0, 1, 2, 3, 4], ks=(1,))
    assert got["text_retrieval_recall@1"] == 1.0 and got["image_retrieval_recall@1"] == 1.0
