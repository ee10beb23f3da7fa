"""Metrics on score matrices: top-k accuracy, per-subset accuracy, retrieval recall@k.

Everything here takes plain tensors (or arrays) of *scores* or *embeddings*, so it is testable with
fixed embeddings and knows nothing about models. Key names follow clip_benchmark's JSON
(``acc1``, ``acc5``, ``mean_per_class_recall``, ``image_retrieval_recall@k``,
``text_retrieval_recall@k``); values are fractions in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _as_tensor(x, dtype=None) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(x)
    return t.to(dtype) if dtype is not None else t


def topk_correct(scores, labels, k: int) -> torch.Tensor:
    """Bool[N]: whether ``labels[i]`` is among the ``k`` highest ``scores[i]`` (k clipped to C).

    scores: [N, C] (any real scores, higher = better); labels: [N] class indices in [0, C).
    Ties are broken by ``torch.topk`` (lowest index first in practice); fixed-embedding tests avoid ties.
    """
    scores = _as_tensor(scores, torch.float32)
    labels = _as_tensor(labels, torch.long)
    if scores.ndim != 2 or labels.ndim != 1 or scores.shape[0] != labels.shape[0]:
        raise ValueError(f"scores must be [N, C] and labels [N]; got {tuple(scores.shape)} and {tuple(labels.shape)}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= scores.shape[1]):
        raise ValueError(f"labels must lie in [0, {scores.shape[1]}); got range [{labels.min()}, {labels.max()}]")
    k = max(1, min(int(k), scores.shape[1]))
    top = scores.topk(k, dim=1).indices  # [N, k]
    return (top == labels[:, None]).any(dim=1)


def classification_metrics(scores, labels, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """``{"acc1", "acc5", "mean_per_class_recall", "n"}`` for scores [N, C] and labels [N].

    ``mean_per_class_recall`` averages top-1 accuracy over the classes that have ≥ 1 sample.
    """
    scores = _as_tensor(scores, torch.float32)
    labels = _as_tensor(labels, torch.long)
    out: dict[str, float] = {}
    for k in ks:
        out[f"acc{k}"] = float(topk_correct(scores, labels, k).float().mean()) if labels.numel() else float("nan")
    out["mean_per_class_recall"] = mean_per_class_recall(scores, labels)
    out["n"] = int(labels.numel())
    return out


def mean_per_class_recall(scores, labels) -> float:
    """Top-1 recall per class, averaged over the classes present in ``labels``."""
    scores = _as_tensor(scores, torch.float32)
    labels = _as_tensor(labels, torch.long)
    if not labels.numel():
        return float("nan")
    correct = topk_correct(scores, labels, 1).float()
    present = labels.unique()
    return float(torch.stack([correct[labels == c].mean() for c in present]).mean())


def subset_accuracy(scores, labels, class_mask, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Accuracy over the samples whose true class has ``class_mask[c]`` True (e.g. unseen classes).

    The ranking is still over *all* C classes: a sample of an unseen class competes with the seen
    ones. class_mask: Bool[C]. Returns ``{"acc1", "acc5", "n", "classes"}`` (nan when empty).
    """
    scores = _as_tensor(scores, torch.float32)
    labels = _as_tensor(labels, torch.long)
    class_mask = _as_tensor(class_mask, torch.bool)
    if class_mask.shape != (scores.shape[1],):
        raise ValueError(f"class_mask must be [C={scores.shape[1]}], got {tuple(class_mask.shape)}")
    keep = class_mask[labels]
    out = {}
    for k in ks:
        hit = topk_correct(scores, labels, k)[keep]
        out[f"acc{k}"] = float(hit.float().mean()) if hit.numel() else float("nan")
    out["n"] = int(keep.sum())
    out["classes"] = int(class_mask.sum())
    return out


def retrieval_metrics(image_embed, text_embed, text_to_image, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall@k both ways for N images and M ≥ N captions (several captions per image allowed).

    image_embed: [N, D], text_embed: [M, D] (normalised here: cosine similarity);
    text_to_image: [M] index of the image each caption belongs to.
    - ``text_retrieval_recall@k`` (image → text): fraction of images with ≥ 1 of their captions
      among the k most similar captions.
    - ``image_retrieval_recall@k`` (text → image): fraction of captions whose image is among the
      k most similar images.
    k is clipped to the number of candidates.
    """
    img = torch.nn.functional.normalize(_as_tensor(image_embed, torch.float32), dim=-1)
    txt = torch.nn.functional.normalize(_as_tensor(text_embed, torch.float32), dim=-1)
    t2i = _as_tensor(text_to_image, torch.long)
    n, m = img.shape[0], txt.shape[0]
    if t2i.shape != (m,) or (m and (t2i.min() < 0 or t2i.max() >= n)):
        raise ValueError(f"text_to_image must be [M={m}] with indices in [0, {n})")
    sim = img @ txt.T  # [N, M]
    positive = torch.zeros(n, m, dtype=torch.bool)
    positive[t2i, torch.arange(m)] = True
    out: dict[str, float] = {}
    for k in ks:
        ki = min(k, m)
        top_txt = sim.topk(ki, dim=1).indices  # [N, ki]
        out[f"text_retrieval_recall@{k}"] = float(positive.gather(1, top_txt).any(dim=1).float().mean())
        kt = min(k, n)
        top_img = sim.T.topk(kt, dim=1).indices  # [M, kt]
        out[f"image_retrieval_recall@{k}"] = float((top_img == t2i[:, None]).any(dim=1).float().mean())
    out["n_images"], out["n_texts"] = n, m
    return out
