"""Two-stage region queries (``ModelConfig.region_queries="two_stage"``; docs/method.md §6, off by default):
per-patch proposals, peak selection, refinement, and the CenterNet-style proposal loss."""

from __future__ import annotations

import pytest
import torch

from grain.config import LossConfig, ModelConfig
from grain.decoder import RegionDecoder
from grain.experimental.two_stage import proposal_losses
from grain.losses import GrainLoss
from grain.model import build_model


def _decoder(**kw) -> RegionDecoder:
    return RegionDecoder(vision_width=16, embed_dim=8, num_queries=3, dim=16, layers=2, heads=2, ffn_dim=32,
                         dropout=0.0, grid=4, region_queries="two_stage", **kw)


def _batch(b: int, boxes: list[list[float]], images: list[int]) -> dict:
    """A random training batch of b 64-px images and captions, with these target boxes (one description each)."""
    caps = torch.randint(1, 300, (b, 8))
    caps[:, -1] = 49407  # EOT
    desc = torch.randint(1, 300, (len(boxes), 6))
    desc[:, -1] = 49407
    return {"images": torch.randn(b, 3, 64, 64), "captions": caps, "target_desc_tokens": desc,
            "target_boxes": torch.tensor(boxes), "target_image": torch.tensor(images),
            "target_text_id": torch.arange(len(boxes))}


def test_queries_start_at_the_score_maps_peaks_and_refine_their_proposals():
    """The score map's Q best local maxima are selected (a cell next to a higher one is not), the region
    queries start from those cells' memory tokens, and the boxes are the selected proposals refined by
    the box head (exactly the proposals when the head outputs zero)."""
    torch.manual_seed(0)
    dec = _decoder().eval()
    with torch.no_grad():  # score = memory feature 0
        dec.proposal_score.weight.zero_()
        dec.proposal_score.weight[0, 0] = 1.0
        dec.proposal_score.bias.zero_()
    memory = torch.randn(1, 17, 16) * 0.01
    score = torch.zeros(16)
    score[[5, 6, 15, 12]] = torch.tensor([3.0, 2.9, 2.0, 1.0])  # 6 is next to 5: not a peak
    memory[0, 1:, 0] = score
    prop = dec.proposals(memory)
    assert prop["selected"][0].tolist() == [5, 15, 12]
    assert prop["logits"].shape == (1, 16) and prop["boxes"].shape == (1, 16, 4)
    # Untrained proposal boxes are the cells' anchors: centre of the cell, two cells wide.
    assert prop["boxes"][0, 5].tolist() == pytest.approx([0.375, 0.375, 0.5, 0.5], abs=1e-5)
    with torch.no_grad():
        last = dec.box_head.layers[-1]
        last.weight.zero_(), last.bias.zero_()
    tokens = torch.randn(2, 17, 16)
    with torch.no_grad():
        out = dec(tokens)
        p = dec.proposals(dec.memory_values(tokens))
    sel = torch.gather(p["boxes"], 1, p["selected"][..., None].expand(-1, -1, 4))
    assert torch.allclose(out["pred_boxes"], sel, atol=1e-6)
    assert set(out) >= {"pred_boxes", "region_embed", "image_embed", "proposal_logits", "proposal_boxes"}


def test_default_model_is_unchanged_and_two_stage_trains_every_parameter():
    """The default (learned queries, docs/method.md §2.2) has no proposal heads and no proposal outputs; a two-stage
    GRAIN model's loss has the proposal terms and gives every parameter a gradient (the DDP contract)."""
    plain = build_model(ModelConfig.preset("tiny"))
    assert not any(k.startswith("decoder.proposal") for k in plain.state_dict())
    with pytest.raises(ValueError, match="region_queries"):
        ModelConfig.preset("tiny", region_queries="anchors")
    with pytest.raises(ValueError, match="num_region_queries"):
        ModelConfig.preset("tiny", region_queries="two_stage", num_region_queries=65)
    torch.manual_seed(0)
    m = build_model(ModelConfig.preset("tiny", region_queries="two_stage"))
    batch = _batch(3, [[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.3]], [0, 2])
    losses = GrainLoss(LossConfig(lambda_proposal=2.0))(m(batch), batch)
    assert {"loss_prop_cls", "loss_prop_l1", "loss_prop_giou"} <= set(losses)
    rest = losses["loss_ic"] + 1.5 * (losses["loss_l1"] + losses["loss_giou"]) + losses["loss_rd"]
    prop = losses["loss_prop_cls"] + losses["loss_prop_l1"] + losses["loss_prop_giou"]
    assert float(losses["loss"].detach()) == pytest.approx(float((rest + 2.0 * prop).detach()), rel=1e-5)
    losses["loss"].backward()
    assert [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None] == []


def test_proposal_loss_targets_the_centre_cell_and_its_block():
    """Heat-map focal loss: lowest when the score peaks at the target's centre cell; box loss zero when the
    3 × 3 block around that cell proposes the target box, positive when a cell of the block does not;
    cells outside the block are not regressed. Finite (box terms 0) without targets."""
    g = 4
    tb = torch.tensor([[0.6, 0.35, 0.3, 0.2]])  # centre cell: row 1, col 2 → 6
    timg = torch.tensor([0])
    boxes = tb.view(1, 1, 4).expand(1, g * g, 4).clone()

    def cls_loss(peak: int) -> float:
        logits = torch.full((1, g * g), -6.0)
        logits[0, peak] = 6.0
        return float(proposal_losses(logits, boxes, tb, timg)["loss_prop_cls"])

    assert cls_loss(6) < 0.01 < cls_loss(5) < cls_loss(15)
    logits = torch.zeros(1, g * g)
    assert float(proposal_losses(logits, boxes, tb, timg)["loss_prop_l1"]) == pytest.approx(0, abs=1e-6)
    off_block, in_block = boxes.clone(), boxes.clone()
    off_block[0, 15] = torch.tensor([0.1, 0.1, 0.1, 0.1])  # row 3, col 3: outside the block
    in_block[0, 1] = torch.tensor([0.1, 0.1, 0.1, 0.1])  # row 0, col 1: inside
    assert float(proposal_losses(logits, off_block, tb, timg)["loss_prop_l1"]) == pytest.approx(0, abs=1e-6)
    assert float(proposal_losses(logits, in_block, tb, timg)["loss_prop_l1"]) > 0.05
    empty = proposal_losses(logits, boxes, tb[:0], timg[:0])
    assert all(torch.isfinite(v) for v in empty.values()) and float(empty["loss_prop_l1"]) == 0.0


def test_conv_proposal_heads_read_the_three_by_three_neighbourhood():
    """``proposal_head="conv"`` (CenterNet's heads): a cell's score and box change when a neighbouring patch
    token changes and not when one two cells away does (the ``mlp`` head reads its own token only); the
    untrained boxes are the anchors; a two-stage model with conv heads gives every parameter a gradient
    and keeps the mlp head's state-dict keys out."""
    torch.manual_seed(0)
    for head in ("conv", "mlp"):
        dec = _decoder(proposal_head=head).eval()
        with torch.no_grad():
            for p in dec.proposal_box.parameters():  # undo the zero init of the last layer
                p.normal_(0, 0.2)
        memory = torch.randn(1, 17, 16)
        base = dec.proposals(memory)
        changed = set()
        for cell in range(16):
            m2 = memory.clone()
            m2[0, 1 + cell] += 1.0
            out = dec.proposals(m2)
            if not torch.allclose(out["box_logits"][0, 5], base["box_logits"][0, 5]) or not torch.allclose(
                    out["logits"][0, 5], base["logits"][0, 5]):
                changed.add(cell)
        # cell 5 is (row 1, col 1) of the 4 × 4 grid: its 3 × 3 block is {0, 1, 2, 4, 5, 6, 8, 9, 10}
        assert changed == ({0, 1, 2, 4, 5, 6, 8, 9, 10} if head == "conv" else {5}), head
    fresh = _decoder(proposal_head="conv")
    p = fresh.proposals(torch.randn(2, 17, 16))
    assert torch.allclose(p["box_logits"], fresh.anchor_logits.expand(2, -1, -1))
    with pytest.raises(ValueError, match="proposal_head"):
        ModelConfig.preset("tiny", region_queries="two_stage", proposal_head="deep")
    m = build_model(ModelConfig.preset("tiny", region_queries="two_stage", proposal_head="conv"))
    assert "decoder.proposal_score.layers.0.weight" in m.state_dict()
    batch = _batch(2, [[0.3, 0.3, 0.2, 0.2]], [1])
    GrainLoss(LossConfig())(m(batch), batch)["loss"].backward()
    assert [n for n, q in m.named_parameters() if q.requires_grad and q.grad is None] == []
