"""Zero-shot scores through grain.zeroshot with fixed embeddings: by hand, a perfect model, fusion, prompts."""

import math

import pytest
import torch
import torch.nn.functional as F

from evaluation.metrics import classification_metrics
from grain import zeroshot as zs


def _ce(class_vecs, desc_vecs=None, desc_class=None):
    cv = F.normalize(torch.as_tensor(class_vecs, dtype=torch.float32), dim=-1)
    if desc_vecs is None:
        desc_vecs, desc_class = cv, list(range(len(cv)))
    return zs.ClassEmbeddings([f"c{i}" for i in range(len(cv))], cv,
                              F.normalize(torch.as_tensor(desc_vecs, dtype=torch.float32), dim=-1),
                              torch.tensor(desc_class))


def test_three_class_toy_by_hand():
    ce = _ce(torch.eye(3) * 4)
    images = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.2, 1.0]])
    s = zs.zeroshot_scores({"image_embed": images}, ce)
    r2 = 1 / math.sqrt(2)
    for row, exp in zip(s.tolist(), [[1, 0, 0], [r2, r2, 0], [0, 0.2 / math.sqrt(1.04), 1 / math.sqrt(1.04)]]):
        assert row == pytest.approx(exp, abs=1e-6)
    # image 1 ties classes 0 and 1 and its label is 2: wrong at k=1 and k=2.
    m = classification_metrics(s, torch.tensor([0, 2, 2]), ks=(1, 2))
    assert m["acc1"] == pytest.approx(2 / 3) and m["acc2"] == pytest.approx(2 / 3)


def test_perfect_model_scores_100_percent():
    torch.manual_seed(0)
    C, N = 7, 21
    ce = _ce(torch.randn(C, 16))
    labels = torch.arange(N) % C
    images = ce.class_embed[labels] * 3.0  # image embedding = its class vector
    m = classification_metrics(zs.zeroshot_scores({"image_embed": images}, ce), labels)
    assert m["acc1"] == 1.0 and m["acc5"] == 1.0 and m["mean_per_class_recall"] == 1.0


def test_region_fusion_by_hand():
    # 1 image, 2 region queries (e0, e1); class 0 descriptors {e0}, class 1 descriptors {e0+e1}.
    ce = _ce([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]], desc_vecs=[[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]], desc_class=[0, 1])
    out = {"image_embed": torch.tensor([[0.0, 0.0, 1.0]]), "region_embed": torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]])}
    s_reg = zs.region_scores(out["region_embed"], ce)[0]
    assert s_reg.tolist() == pytest.approx([0.5, 1 / math.sqrt(2)])  # mean over queries of max over descriptors
    fused = zs.zeroshot_scores(out, ce, alpha=0.25)[0]
    assert fused.tolist() == pytest.approx([0.25 + 0.75 * 0.5, 0.25 + 0.75 / math.sqrt(2)])
    with pytest.raises(ValueError, match="region"):
        zs.zeroshot_scores({"image_embed": out["image_embed"], "region_embed": None}, ce, alpha=0.5)


def test_descriptor_sentence_rule_in_prompts():
    assert zs.descriptor_sentence("a long tail") == "which is a long tail"
    assert zs.descriptor_sentence("used for cutting") == "which is used for cutting"
    assert zs.descriptor_sentence("has four legs") == "which has four legs"
    assert zs.descriptor_sentence("often red") == "which often red"
    assert zs.descriptor_sentence("antennae") == "which has antennae"
    assert zs.class_prompts("ant", ["antennae"], ["a photo of a {}."]) == ["a photo of a ant, which has antennae."]
