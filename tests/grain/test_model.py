"""GrainModel: shapes, both kinds, meta device, bf16 autocast, gradients, text length, param groups."""

import math

import pytest
import torch

from grain.config import ModelConfig
from grain.losses import GrainLoss
from grain.model import build_model
from grain.tokenizer import tokenize
from tests.grain.conftest import seeded_model


def test_tiny_shapes_grain(tiny_cfg, tiny_batch):
    m = seeded_model(tiny_cfg).eval()
    out = m(tiny_batch)
    b, q, d, mt = len(tiny_batch["images"]), tiny_cfg.num_region_queries, tiny_cfg.embed_dim, len(tiny_batch["target_boxes"])
    assert out["image_embed"].shape == (b, d) and out["text_embed"].shape == (b, d)
    assert out["region_embed"].shape == (b, q, d) and out["pred_boxes"].shape == (b, q, 4)
    assert out["desc_embed"].shape == (mt, d)
    assert ((out["pred_boxes"] > 0) & (out["pred_boxes"] < 1)).all()
    assert abs(out["logit_scale"].item() - 1 / 0.07) < 1e-3
    tokens = m.image_tokens(tiny_batch["images"])
    assert tokens.shape == (b, tiny_cfg.num_image_tokens, tiny_cfg.vision_width)


def test_global_embedding_is_image_query_not_cls(tiny_cfg, tiny_batch):
    m = seeded_model(tiny_cfg).eval()
    with torch.no_grad():
        out = m.encode_image(tiny_batch["images"][:2])
        m.decoder.image_proj.mul_(2.0)  # W_i scales the global embedding, nothing else
        out2 = m.encode_image(tiny_batch["images"][:2])
    assert torch.allclose(out2["image_embed"], 2 * out["image_embed"], atol=1e-5)
    assert torch.allclose(out2["region_embed"], out["region_embed"])
    assert m.visual.proj is None  # the ViT's CLS projection is not part of GRAIN


def test_clip_kind(small_batch):
    tiny_batch = small_batch
    cfg = ModelConfig.preset("tiny", kind="clip")
    m = seeded_model(cfg)
    out = m(tiny_batch)
    assert out["region_embed"] is None and out["pred_boxes"] is None and m.decoder is None
    assert out["desc_embed"].shape == (0, cfg.embed_dim)
    losses = GrainLoss()(out, tiny_batch)
    assert losses["loss_l1"].item() == losses["loss_rd"].item() == 0.0
    losses["loss"].backward()
    assert all(p.grad is not None for p in m.parameters())


def test_text_length_does_not_change_embedding(tiny_cfg):
    m = seeded_model(tiny_cfg).eval()
    texts = ["a red square", "a small blue disc on a grey background"]
    with torch.no_grad():
        short, full = m.encode_text(tokenize(texts, 32)), m.encode_text(tokenize(texts, 77))
    assert torch.allclose(short, full, atol=1e-5)
    with pytest.raises(ValueError, match="context_length"):
        m.encode_text(torch.zeros(1, 78, dtype=torch.long))


def test_bad_image_shape_is_named(tiny_cfg):
    with pytest.raises(ValueError, match=r"\[B, 3, 64, 64\]"):
        seeded_model(tiny_cfg).encode_image(torch.zeros(1, 3, 32, 32))


def test_gradients_reach_every_parameter(tiny_cfg, small_batch):
    tiny_batch = small_batch
    m = seeded_model(tiny_cfg)
    assert len(tiny_batch["target_boxes"]) > 0
    loss = GrainLoss()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    # At initialisation the decoder's targets are zeros and every bias is 0, so the first layer's
    # self-attention (values = LayerNorm(0) = 0) has an exactly-zero gradient, as in DETR. One step
    # makes the biases non-zero; from then on every parameter must get a non-zero gradient.
    loss(m(tiny_batch), tiny_batch)["loss"].backward()
    assert all(p.grad is not None for p in m.parameters())
    opt.step()
    opt.zero_grad()
    loss(m(tiny_batch), tiny_batch)["loss"].backward()
    # LayerNorm(0) = its bias whatever its gain: layer 0's norm1 gain never gets a gradient (DETR too).
    structural_zero = {"decoder.layers.0.norm1.weight"}
    missing = [
        n for n, p in m.named_parameters() if n not in structural_zero and (p.grad is None or not p.grad.abs().sum() > 0)
    ]
    assert not missing, missing


def test_meta_device_build_vit_b_16():
    with torch.device("meta"):
        m = build_model(ModelConfig.preset("vit-b-16"))
    assert all(p.device.type == "meta" for p in m.parameters())
    n = sum(p.numel() for p in m.parameters())
    assert 150e6 < n < 200e6  # ViT-B/16 (~86M) + text (~63M) + decoder (~25M)
    assert m.cfg.num_image_tokens == 197


def test_bf16_autocast_cpu(tiny_cfg, small_batch):
    tiny_batch = small_batch
    m = seeded_model(tiny_cfg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = GrainLoss()(m(tiny_batch), tiny_batch)
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


def test_logit_scale_clamped(tiny_cfg):
    m = seeded_model(tiny_cfg)
    with torch.no_grad():
        m.logit_scale.fill_(10.0)
    assert abs(m.scale().item() - 100.0) < 1e-3
    assert math.isclose(ModelConfig().logit_scale_init, math.log(1 / 0.07))


def test_param_groups_split(tiny_cfg):
    m = seeded_model(tiny_cfg)
    decay, no_decay = m.param_groups(0.1)
    names = {id(p): n for n, p in m.named_parameters()}
    nd = {names[id(p)] for p in no_decay["params"]}
    assert "logit_scale" in nd and all(p.ndim >= 2 for p in decay["params"])
    assert any(n.endswith("bias") for n in nd) and no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(m.parameters()))


def test_config_round_trip_and_errors():
    cfg = ModelConfig.preset("tiny", kind="clip")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"nonsense: unknown key 'nonsense' \(from ModelConfig\)"):
        ModelConfig.from_dict({"nonsense": 1})
    # Coerced as run files are (a benchmark's raw YAML, numpy numbers): "1e-1" stays a string in PyYAML.
    import numpy as np

    lax = ModelConfig.preset("tiny", decoder_layers=np.int64(3), decoder_dropout="1e-1", vision_qk_norm=1, embed_dim=128.0)
    assert (lax.decoder_layers, lax.decoder_dropout, lax.vision_qk_norm, lax.embed_dim) == (3, 0.1, True, 128)
    assert type(lax.decoder_layers) is int and type(lax.embed_dim) is int
    with pytest.raises(ValueError, match=r"decoder_layers: expected int, got 2.5 \(from ModelConfig\)"):
        ModelConfig.preset("tiny", decoder_layers=2.5)
    with pytest.raises(ValueError, match="vision_qk_norm: expected bool"):
        ModelConfig.preset("tiny", vision_qk_norm="maybe")
    with pytest.raises(ValueError, match="preset"):
        ModelConfig.preset("vit-z")
    with pytest.raises(ValueError, match="kind"):
        ModelConfig(kind="blip")


def test_repeated_descriptions_encoded_once_same_result(tiny_cfg, tiny_batch):
    m = seeded_model(tiny_cfg).eval()
    ids = tiny_batch["target_text_id"]
    assert len(ids.unique()) < len(ids)  # the fixture repeats descriptions
    with torch.no_grad():
        deduped = m(tiny_batch)["desc_embed"]
        full = m.encode_text(tiny_batch["target_desc_tokens"])
    assert torch.allclose(deduped, full, atol=1e-5)


def test_sine_memory_pos_matches_detr_and_changes_only_keys():
    """decoder_memory_pos="sine": DETR's PositionEmbeddingSine(normalize=True) values (written out here
    from DETR's formula for one position), zero for CLS, no new parameters or state-dict keys, and the
    decoder output now depends on where a token sits (with "none" a permutation of patches changes nothing)."""
    from grain.decoder import RegionDecoder
    from grain.experimental.memory_pos import sine_pos_2d

    pe = sine_pos_2d(4, 8)
    assert pe.shape == (17, 8) and torch.all(pe[0] == 0)
    # token 1 + 2*4 + 3 is row y=2, column x=3; DETR: embed = (index+1)/(n+eps)*2π, dim_t = 10000**(2*(i//2)/4)
    y, x = 3 / 4 * 2 * math.pi, 4 / 4 * 2 * math.pi
    want = [math.sin(y), math.cos(y), math.sin(y / 100), math.cos(y / 100),
            math.sin(x), math.cos(x), math.sin(x / 100), math.cos(x / 100)]
    assert torch.allclose(pe[1 + 2 * 4 + 3], torch.tensor(want), atol=1e-5)
    with pytest.raises(ValueError, match="divisible by 4"):
        sine_pos_2d(4, 6)

    torch.manual_seed(0)
    plain = RegionDecoder(vision_width=16, embed_dim=8, num_queries=2, dim=16, layers=2, heads=2, ffn_dim=32,
                          dropout=0.0)
    sine = RegionDecoder(vision_width=16, embed_dim=8, num_queries=2, dim=16, layers=2, heads=2, ffn_dim=32,
                         dropout=0.0, memory_pos="sine", grid=3)
    assert plain.state_dict().keys() == sine.state_dict().keys()
    sine.load_state_dict(plain.state_dict())
    tokens = torch.randn(2, 10, 16)
    perm = torch.cat([torch.tensor([0]), 1 + torch.randperm(9, generator=torch.Generator().manual_seed(1))])
    with torch.no_grad():
        a, b = plain(tokens), plain(tokens[:, perm])
        c, d = sine(tokens), sine(tokens[:, perm])
    assert torch.allclose(a["pred_boxes"], b["pred_boxes"], atol=1e-5)  # "none": blind to patch order
    assert not torch.allclose(c["pred_boxes"], d["pred_boxes"], atol=1e-3)  # "sine": position matters
    assert not torch.allclose(a["pred_boxes"], c["pred_boxes"], atol=1e-3)
    with pytest.raises(ValueError, match="positions"):
        sine(torch.randn(1, 5, 16))
    with pytest.raises(ValueError, match="decoder_memory_pos"):
        ModelConfig.preset("tiny", decoder_memory_pos="learned")
    m = build_model(ModelConfig.preset("tiny", decoder_memory_pos="sine"))
    grid = m.cfg.image_size // m.cfg.patch_size
    assert m.decoder.memory_pos_table.shape == (1 + grid * grid, m.cfg.decoder_dim)
