"""GrainLoss terms on hand-made outputs and on the tiny model (single process)."""

import math

import pytest
import torch
import torch.nn.functional as F

from grain.config import LossConfig
from grain.data import make_batch
from grain.losses import GrainLoss, contrastive_loss
from tests.grain.conftest import seeded_model


def _outputs_and_batch(gen, counts=(2, 0, 3), q=5, d=16, text_ids=None):
    """Random outputs whose matched regions/boxes can be set by the test; targets per image = counts."""
    b, m = len(counts), sum(counts)
    owner = torch.repeat_interleave(torch.arange(b), torch.tensor(counts))
    tb = torch.cat([torch.rand(m, 2, generator=gen) * 0.5 + 0.25, torch.rand(m, 2, generator=gen) * 0.2 + 0.1], -1)
    outputs = {
        "image_embed": torch.randn(b, d, generator=gen),
        "text_embed": torch.randn(b, d, generator=gen),
        "logit_scale": torch.tensor(100.0),
        "pred_boxes": torch.rand(b, q, 4, generator=gen) * 0.5 + 0.2,
        "region_embed": torch.randn(b, q, d, generator=gen),
        "desc_embed": torch.randn(m, d, generator=gen),
    }
    ids = torch.arange(m) if text_ids is None else torch.tensor(text_ids)
    batch = {"target_boxes": tb, "target_image": owner, "target_text_id": ids}
    return outputs, batch


def _place_targets(outputs, batch, aligned=True):
    """Put each image's targets on its first queries: boxes exact, region = its description (if aligned)."""
    slot = {}
    for t, i in enumerate(batch["target_image"].tolist()):
        qi = slot.get(i, 0)
        slot[i] = qi + 1
        outputs["pred_boxes"][i, qi] = batch["target_boxes"][t]
        if aligned:
            outputs["region_embed"][i, qi] = outputs["desc_embed"][t]


def test_box_loss_zero_for_perfect_predictions():
    gen = torch.Generator().manual_seed(0)
    outputs, batch = _outputs_and_batch(gen)
    _place_targets(outputs, batch)
    losses = GrainLoss()(outputs, batch)
    assert losses["loss_l1"].item() < 1e-6 and abs(losses["loss_giou"].item()) < 1e-5
    outputs["pred_boxes"][0, 0, 0] += 0.1  # one coordinate off by 0.1 → L1 = 0.1 / 5 targets
    assert math.isclose(GrainLoss()(outputs, batch)["loss_l1"].item(), 0.1 / 5, rel_tol=1e-4)


def test_rd_loss_lowest_when_regions_equal_descriptions():
    gen = torch.Generator().manual_seed(1)
    outputs, batch = _outputs_and_batch(gen)
    _place_targets(outputs, batch)
    best = GrainLoss()(outputs, batch)["loss_rd"].item()
    assert best < 1e-3  # scale 100, random 16-d descriptions: the positive dominates
    for k in range(5):
        perm = torch.randperm(5, generator=gen)
        if torch.equal(perm, torch.arange(5)):
            continue
        shuffled = dict(outputs, desc_embed=outputs["desc_embed"][perm])
        assert GrainLoss()(shuffled, batch)["loss_rd"].item() > best + 1.0


def test_identical_descriptions_masked_unless_release_behaviour():
    gen = torch.Generator().manual_seed(2)
    # targets 0 and 3 carry the same text (same id); their description embeddings are identical.
    outputs, batch = _outputs_and_batch(gen, text_ids=[0, 1, 2, 0, 3])
    outputs["desc_embed"][3] = outputs["desc_embed"][0]
    _place_targets(outputs, batch)
    masked = GrainLoss()(outputs, batch)["loss_rd"].item()
    release = GrainLoss(LossConfig(mask_identical_descriptions=False))(outputs, batch)["loss_rd"].item()
    assert masked < 1e-3
    # Release: the two boxes with that text each see a tied negative → CE ≈ ln 2, mean over 5 pairs.
    assert math.isclose(release, 2 * math.log(2) / 5, rel_tol=1e-3)


def test_rd_group_restricts_candidates():
    gen = torch.Generator().manual_seed(3)
    outputs, batch = _outputs_and_batch(gen, counts=(2, 3))
    _place_targets(outputs, batch, aligned=False)
    both = GrainLoss()(outputs, batch)["loss_rd"]
    per_group = GrainLoss()(outputs, batch, rd_group=torch.tensor([0, 1]))["loss_rd"]
    # By hand: image 0's regions against its own 2 descriptions, image 1's against its 3.
    r = F.normalize(torch.stack([outputs["region_embed"][0, 0], outputs["region_embed"][0, 1],
                                 outputs["region_embed"][1, 0], outputs["region_embed"][1, 1], outputs["region_embed"][1, 2]]), dim=-1)
    dsc = F.normalize(outputs["desc_embed"], dim=-1)
    logits = 100 * r @ dsc.t()
    ce0 = F.cross_entropy(logits[:2, :2], torch.tensor([0, 1]), reduction="sum")
    ce1 = F.cross_entropy(logits[2:, 2:], torch.tensor([0, 1, 2]), reduction="sum")
    assert torch.allclose(per_group, (ce0 + ce1) / 5, atol=1e-5)
    assert both.item() > per_group.item()  # more negatives, never a lower loss


def test_contrastive_loss_known_values():
    e = torch.eye(4)
    perfect = contrastive_loss(e, e, torch.tensor(100.0)).item()
    assert perfect < 1e-6
    uniform = contrastive_loss(torch.ones(4, 3), torch.ones(4, 3), torch.tensor(10.0)).item()
    assert math.isclose(uniform, math.log(4), rel_tol=1e-5)


def test_weighted_sum():
    gen = torch.Generator().manual_seed(4)
    outputs, batch = _outputs_and_batch(gen)
    cfg = LossConfig(lambda_box=2.0, lambda_rd=0.5)
    losses = GrainLoss(cfg)(outputs, batch)
    expect = losses["loss_ic"] + 2.0 * (losses["loss_l1"] + losses["loss_giou"]) + 0.5 * losses["loss_rd"]
    assert torch.allclose(losses["loss"], expect)


def test_all_losses_finite_on_batch_without_boxes(tiny_cfg, fixture_rows):
    rows = [r for r in fixture_rows if r["boxes"]][:3]
    samples = [{"image": torch.zeros(3, 64, 64), "caption": r["source_caption"], "descriptions": r["descriptions"],
                "boxes_xyxy": [], "box_desc": []} for r in rows]
    batch = make_batch(samples, tiny_cfg)
    assert batch["target_boxes"].shape == (0, 4) and batch["target_desc_tokens"].shape == (0, 32)
    m = seeded_model(tiny_cfg)
    losses = GrainLoss()(m(batch), batch)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_l1"].item() == losses["loss_giou"].item() == losses["loss_rd"].item() == 0.0
    losses["loss"].backward()
    # Even without boxes the box head and W_r get (zero) gradients: DDP needs no find_unused_parameters.
    assert m.decoder.box_head.layers[0].weight.grad is not None and m.decoder.region_proj.grad is not None


def test_loss_world_mismatch_is_an_error():
    gen = torch.Generator().manual_seed(5)
    outputs, batch = _outputs_and_batch(gen)
    with pytest.raises(RuntimeError, match="rank 1 of 2"):
        GrainLoss(rank=1, world_size=2)(outputs, batch)


def test_aux_loss_adds_per_layer_terms(tiny_cfg, small_batch):
    m = seeded_model(tiny_cfg)
    out = m(small_batch, return_intermediate=True)
    assert len(out["aux"]) == tiny_cfg.decoder_layers - 1
    plain = GrainLoss()(out, small_batch)
    aux = GrainLoss(LossConfig(aux_loss=True))(out, small_batch)
    assert {"loss_l1_0", "loss_giou_0", "loss_rd_0"} <= set(aux)
    extra = 1.5 * (aux["loss_l1_0"] + aux["loss_giou_0"]) + aux["loss_rd_0"]
    assert torch.allclose(aux["loss"], plain["loss"] + extra, atol=1e-5)
    with pytest.raises(ValueError, match="return_intermediate"):
        GrainLoss(LossConfig(aux_loss=True))(m(small_batch), small_batch)
