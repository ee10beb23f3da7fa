"""Recipe options reach the training loop (fast, in-process, 2 steps): DETR auxiliary losses on every
decoder layer, the sine positional encodings of the decoder memory and the fixed 2-D sin-cos ViT
position (all off in the release)."""

from __future__ import annotations

import math
import os

import pytest
import torch

from grain.checkpoint import load_checkpoint
from trainers.metrics import read_metrics


def test_aux_loss_and_sine_memory_pos_train_in_process(train_shards, tmp_path):
    from trainers.cli import main

    out = str(tmp_path / "aux")
    rc = main(["--data", train_shards, "--output", out, "--profile", "tiny", "--workers", "0", "--max-steps", "2",
               "--set", "batch_size=8", "--set", "optim.warmup_steps=1", "--set", "loss.aux_loss=true",
               "--set", "model.decoder_memory_pos=sine"])
    assert rc == 0
    model, mcfg, extra = load_checkpoint(os.path.join(out, "final.pt"))
    assert mcfg.decoder_memory_pos == "sine" and extra["step"] == 2
    assert model.decoder.memory_pos_table is not None
    recs = read_metrics(os.path.join(out, "metrics.jsonl"))
    assert len(recs) == 2
    layers = mcfg.decoder_layers
    for r in recs:  # one L1 / GIoU / L_rd per earlier layer, each counted in the total
        aux = [r[f"{k}_{i}"] for i in range(layers - 1) for k in ("loss_l1", "loss_giou", "loss_rd")]
        assert all(math.isfinite(v) and v > 0 for v in aux), r
        main_terms = r["loss_ic"] + 1.5 * (r["loss_l1"] + r["loss_giou"]) + r["loss_rd"]
        aux_terms = sum(1.5 * (r[f"loss_l1_{i}"] + r[f"loss_giou_{i}"]) + r[f"loss_rd_{i}"] for i in range(layers - 1))
        assert r["loss"] == pytest.approx(main_terms + aux_terms, rel=1e-4)
    with torch.no_grad():
        assert torch.isfinite(model.decoder.memory_pos_table).all()



@pytest.mark.parametrize("kind", ["grain", "clip"])
def test_position_options_train_in_process(kind, train_shards, tmp_path):
    """vision_pos_embed=sincos2d (both kinds: a tower option) and decoder_memory_pos=sine_kv reach the
    trainer; the fixed ViT table comes out of training exactly as built (not trained, not decayed)."""
    from trainers.cli import main

    out = str(tmp_path / kind)
    sets = ["--set", "batch_size=8", "--set", "optim.warmup_steps=1", "--set", f"model.kind={kind}",
            "--set", "model.vision_pos_embed=sincos2d"]
    if kind == "grain":
        sets += ["--set", "model.decoder_memory_pos=sine_kv"]
    assert main(["--data", train_shards, "--output", out, "--profile", "tiny", "--workers", "0", "--max-steps", "2",
                 *sets]) == 0
    model, mcfg, extra = load_checkpoint(os.path.join(out, "final.pt"))
    assert (mcfg.kind, mcfg.vision_pos_embed, extra["step"]) == (kind, "sincos2d", 2)
    assert mcfg.decoder_memory_pos == ("sine_kv" if kind == "grain" else "none")
    from grain.model import build_model

    fresh = build_model(mcfg)
    assert torch.equal(model.visual.positional_embedding, fresh.visual.positional_embedding)
    assert not model.visual.positional_embedding.requires_grad
