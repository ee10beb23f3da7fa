"""The paper's preset end to end on CPU: forward + backward at batch 2 (slow: ~176M parameters)."""

import pytest
import torch

from grain.config import ModelConfig
from grain.data import make_batch
from grain.losses import GrainLoss
from grain.model import build_model


@pytest.mark.slow
def test_vit_b_16_forward_backward_batch_2():
    cfg = ModelConfig.preset("vit-b-16")
    torch.manual_seed(0)
    m = build_model(cfg)
    samples = [
        {"image": torch.randn(3, 224, 224), "caption": "a dog on a red sofa", "descriptions": ["a brown dog", "a red sofa"],
         "boxes_xyxy": [[0.1, 0.2, 0.5, 0.9], [0.0, 0.4, 1.0, 1.0]], "box_desc": [0, 1]},
        {"image": torch.randn(3, 224, 224), "caption": "an empty street", "descriptions": [], "boxes_xyxy": [], "box_desc": []},
    ]
    batch = make_batch(samples, cfg)
    out = m(batch)
    assert out["image_embed"].shape == (2, 512) and out["region_embed"].shape == (2, 5, 512)
    assert m.image_tokens(batch["images"]).shape == (2, 197, 768)
    losses = GrainLoss()(out, batch)
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    assert m.decoder.memory_proj.weight.shape == (512, 768)
    assert m.visual.transformer.resblocks[0].attn.ln_q.weight.grad is not None  # QK-norm is on and trained
    assert all(p.grad is not None for p in m.parameters())
