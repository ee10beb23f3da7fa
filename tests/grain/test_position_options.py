"""Position options (deviations from the release, docs/method.md §6; off by default): ``decoder_memory_pos="sine_kv"``
(2-D sine on the decoder memory's keys and values) and ``vision_pos_embed="sincos2d"`` (MAE's fixed 2-D
sin-cos position in the ViT, for both kinds)."""

from __future__ import annotations

import math

import pytest
import torch

from grain.config import ModelConfig
from grain.decoder import RegionDecoder
from grain.experimental.memory_pos import sine_pos_2d
from grain.model import build_model


def _decoder(memory_pos: str = "none") -> RegionDecoder:
    return RegionDecoder(vision_width=16, embed_dim=8, num_queries=2, dim=16, layers=2, heads=2, ffn_dim=32,
                         dropout=0.0, memory_pos=memory_pos, grid=3)


def test_sine_kv_puts_position_in_the_values():
    """With "sine_kv" the values the queries read carry position: permuting the patch tokens changes the
    boxes, and so does it with the keys frozen to "none"'s (the difference from "sine", keys only);
    with "none" a permutation changes nothing. No new parameters or state-dict keys."""
    torch.manual_seed(0)
    plain, kv, k_only = _decoder(), _decoder("sine_kv"), _decoder("sine")
    assert plain.state_dict().keys() == kv.state_dict().keys() == k_only.state_dict().keys()
    kv.load_state_dict(plain.state_dict())
    k_only.load_state_dict(plain.state_dict())
    tokens = torch.randn(2, 10, 16)
    perm = torch.cat([torch.tensor([0]), 1 + torch.randperm(9, generator=torch.Generator().manual_seed(1))])
    with torch.no_grad():
        a, b = plain(tokens)["pred_boxes"], plain(tokens[:, perm])["pred_boxes"]
        c, d = kv(tokens)["pred_boxes"], kv(tokens[:, perm])["pred_boxes"]
        e = k_only(tokens)["pred_boxes"]
        values = kv.memory_values(tokens)
    assert torch.allclose(a, b, atol=1e-5)  # "none": blind to patch order
    assert not torch.allclose(c, d, atol=1e-3)  # "sine_kv": position matters
    assert not torch.allclose(c, e, atol=1e-3)  # and differs from keys-only
    base = plain.memory_norm(plain.memory_proj(tokens))
    assert torch.allclose(values - base, sine_pos_2d(3, 16).expand_as(values), atol=1e-5)  # the values carry the table
    assert torch.allclose(plain.memory_values(tokens), base)
    assert torch.allclose(k_only.memory_values(tokens), base)  # "sine": values position-free
    with pytest.raises(ValueError, match="positions"):
        kv(torch.randn(1, 5, 16))
    with pytest.raises(ValueError, match="grid"):
        RegionDecoder(vision_width=16, embed_dim=8, dim=16, heads=2, memory_pos="sine_kv")


def test_sincos2d_matches_mae_formula_is_frozen_and_per_patch():
    """MAE's get_2d_sincos_pos_embed (written out for one patch): the first half of the width encodes the
    column (x), the second the row (y), each as [sin(p·ω_k) for k] + [cos(p·ω_k) for k] with
    ω_k = 10000^(−k/(W/4)); CLS row zero. Same state-dict keys as "learned"; not trainable."""
    cfg = ModelConfig.preset("tiny", vision_pos_embed="sincos2d")
    m = build_model(cfg)
    pe = m.visual.positional_embedding
    w, grid = cfg.vision_width, cfg.image_size // cfg.patch_size
    assert pe.shape == (1 + grid * grid, w) and not pe.requires_grad
    assert torch.all(pe[0] == 0)
    r, c = 2, 5  # row y = 2, column x = 5
    q = w // 4
    om = [10000 ** (-k / q) for k in range(q)]
    want = ([math.sin(c * o) for o in om] + [math.cos(c * o) for o in om]
            + [math.sin(r * o) for o in om] + [math.cos(r * o) for o in om])
    assert torch.allclose(pe[1 + r * grid + c], torch.tensor(want), atol=1e-5)
    assert len({tuple(row.tolist()) for row in pe[1:]}) == grid * grid  # differs per patch
    # same keys and shapes as the default; the learned table is small (std width^-0.5), this one is not
    ref = build_model(ModelConfig.preset("tiny"))
    assert {k: v.shape for k, v in ref.state_dict().items()} == {k: v.shape for k, v in m.state_dict().items()}
    assert pe[1:].norm(dim=1).mean() > 4 * ref.visual.positional_embedding[1:].norm(dim=1).mean()
    grouped = {id(p) for g in m.param_groups(0.1) for p in g["params"]}
    assert id(pe) not in grouped  # neither trained nor decayed
    decayed = {id(p) for p in ref.param_groups(0.1)[0]["params"]}
    assert id(ref.visual.positional_embedding) in decayed  # "learned" (the release): decayed
    with pytest.raises(ValueError, match="vision_pos_embed"):
        ModelConfig.preset("tiny", vision_pos_embed="rope")


@pytest.mark.parametrize("kind", ["grain", "clip"])
def test_sincos2d_unchanged_by_an_optimizer_step_both_kinds(kind, small_batch):
    torch.manual_seed(0)
    m = build_model(ModelConfig.preset("tiny", kind=kind, vision_pos_embed="sincos2d",
                                       decoder_memory_pos="sine_kv" if kind == "grain" else "none"))
    before = m.visual.positional_embedding.detach().clone()
    patch_before = m.visual.conv1.weight.detach().clone()
    opt = torch.optim.AdamW(m.param_groups(0.1), lr=1e-2)  # the trainer's groups (trainers.optim)
    out = m(small_batch)
    loss = out["image_embed"].pow(2).mean() + out["text_embed"].pow(2).mean()
    if kind == "grain":
        loss = loss + out["pred_boxes"].sum()
    loss.backward()
    assert m.visual.positional_embedding.grad is None
    opt.step()
    assert torch.equal(m.visual.positional_embedding, before)
    assert not torch.equal(m.visual.conv1.weight, patch_before)  # the rest trains


def test_defaults_and_old_configs_unchanged():
    """Presets keep the release's positions (learned ViT position, no memory position), and a config dict saved before
    these options existed still loads (to those defaults)."""
    for name in ("tiny", "vit-b-16"):
        cfg = ModelConfig.preset(name)
        assert (cfg.vision_pos_embed, cfg.decoder_memory_pos) == ("learned", "none")
    old = ModelConfig.preset("tiny").to_dict()
    del old["vision_pos_embed"]
    assert ModelConfig.from_dict(old).vision_pos_embed == "learned"
    keys = set(build_model(ModelConfig.preset("tiny")).state_dict())
    assert "visual.positional_embedding" in keys and not any("memory_pos" in k for k in keys)
    opt = build_model(ModelConfig.preset("tiny", vision_pos_embed="sincos2d", decoder_memory_pos="sine_kv"))
    opt = set(opt.state_dict())
    assert opt == keys
    with torch.device("meta"):
        meta = build_model(ModelConfig.preset("vit-b-16", vision_pos_embed="sincos2d", decoder_memory_pos="sine_kv"))
    assert meta.visual.positional_embedding.shape == (197, 768)
