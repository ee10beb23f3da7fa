"""Run files, overrides, the optimizer/schedule and one training step on a batch with no boxes (fast)."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from grain.common.runconfig import Layer, merge
from trainers.config import CONFIG_DIR, PROFILES, load_config
from trainers.optim import build_optimizer, build_scheduler, lr_at


@pytest.mark.parametrize("name", sorted(PROFILES.values()))
@pytest.mark.parametrize("kind", ["grain", "clip"])
def test_every_shipped_run_file_builds_its_model_on_meta(name, kind):
    from grain.model import build_model

    cfg = load_config(CONFIG_DIR / name, overrides={"model": {"kind": kind}, "data": {"path": "x"}, "output": "y"}).validate()
    mcfg = cfg.model_config()
    with torch.device("meta"):
        model = build_model(mcfg)
    n = sum(p.numel() for p in model.parameters())
    assert mcfg.kind == kind and n > 1e5
    groups = model.param_groups(cfg.optim.weight_decay)
    no_decay = {id(p) for p in groups[1]["params"]}
    assert id(model.logit_scale) in no_decay and groups[1]["weight_decay"] == 0.0
    if name == "vit-b-16-cc12m.yaml":
        assert (cfg.batch_size, cfg.workers, cfg.epochs, cfg.precision, cfg.optim.lr) == (128, 16, 35, "bf16", 1e-3)
        assert mcfg.image_size == 224 and mcfg.vision_width == 768 and cfg.optim.betas == (0.9, 0.98)


def parse_set(items: list[str]) -> dict:
    """``--set`` items merged into one nested dict, as load_config layers them."""
    out: dict = {}
    for layer in Layer.from_sets(items):
        out = merge(out, layer.data)
    return out


def test_overrides_and_errors_name_the_input(tmp_path):
    assert parse_set(["optim.lr=5e-4", "model.kind=clip", "max_steps=3"]) == {
        "optim": {"lr": "5e-4"}, "model": {"kind": "clip"}, "max_steps": 3}  # typed when loaded (YAML 1.1: a string)
    cfg = load_config(profile="tiny", sets=["optim.lr=5e-4", "model.kind=clip"])
    assert cfg.optim.lr == 5e-4 and cfg.model == {"preset": "tiny", "kind": "clip"} and cfg.workers == 2
    with pytest.raises(ValueError, match=r"optim.lrr: unknown key .lrr. \(from --set optim.lrr=1\)"):
        load_config(profile="tiny", sets=["optim.lrr=1"])
    with pytest.raises(ValueError, match="key=value"):
        parse_set(["optim.lr"])
    with pytest.raises(ValueError, match="data.path"):
        load_config(profile="tiny").validate()
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2]\n")
    with pytest.raises(ValueError, match="bad.yaml"):
        load_config(bad)


def test_schedule_warmup_from_1e6_then_cosine_to_1e5():
    kw = dict(total_steps=100, warmup_steps=10, peak=1e-3, start=1e-6, final=1e-5)
    assert lr_at(0, **kw) == pytest.approx(1e-6)
    assert lr_at(5, **kw) == pytest.approx(1e-6 + (1e-3 - 1e-6) / 2)
    assert lr_at(10, **kw) == pytest.approx(1e-3)
    assert lr_at(55, **kw) == pytest.approx(1e-5 + (1e-3 - 1e-5) / 2)
    assert lr_at(100, **kw) == pytest.approx(1e-5) and lr_at(150, **kw) == pytest.approx(1e-5)
    lrs = [lr_at(s, **kw) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_no_box_batch_trains_without_nan(boxless_shards):
    """A batch without any target box: L_box and L_rd are 0, L_ic trains, no NaN anywhere."""
    import numpy as np

    from grain.data import make_batch, sample_from_row
    from grain.losses import GrainLoss
    from grain.model import build_model
    from trainers.index import build_index
    from trainers.samples import ShardReader

    cfg = load_config(profile="tiny")
    mcfg, lcfg = cfg.model_config(), cfg.loss_config()
    index = build_index(boxless_shards)
    rows = ShardReader(index.root, index.files).read(np.array([[0, 0, i] for i in range(4)]))
    batch = make_batch([sample_from_row(r, mcfg) for r in rows], mcfg)
    assert batch["target_boxes"].shape == (0, 4)
    torch.manual_seed(0)
    model = build_model(mcfg)
    opt = build_optimizer(model, cfg.optim)
    sched = build_scheduler(opt, cfg.optim, total_steps=10, warmup_steps=0)
    losses = GrainLoss(lcfg)(model(batch), batch)
    assert all(math.isfinite(float(v)) for v in losses.values())
    assert float(losses["loss_l1"]) == 0 and float(losses["loss_rd"]) == 0
    before = model.logit_scale.detach().clone(), [p.detach().clone() for p in model.visual.parameters()][:3]
    opt.zero_grad()
    losses["loss"].backward()
    opt.step()
    sched.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before[1], list(model.visual.parameters())[:3]))


def test_cli_help_and_print_config():
    out = subprocess.run([sys.executable, "-m", "trainers.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--baseline" in out.stdout and "--max-steps" in out.stdout
    from trainers.cli import main

    assert main(["--data", "d", "--output", "o", "--profile", "paper", "--baseline", "--print-config"]) == 0
    assert main(["--data", "d", "--output", "o", "--set", "nonsense=1"]) == 2


def test_trimmed_description_tokens_give_the_same_embeddings():
    from grain.model import build_model
    from grain.tokenizer import tokenize, trim_token_padding

    mcfg = load_config(profile="tiny").model_config()
    torch.manual_seed(0)
    model = build_model(mcfg).eval()
    tok = tokenize(["a red square", "a small blue disc on the left", "x"], mcfg.desc_context_length)
    short = trim_token_padding(tok)
    assert short.shape == (3, 9)  # SOT + 7 words + EOT for the longest text
    with torch.no_grad():
        assert torch.allclose(model.encode_text(tok), model.encode_text(short), atol=1e-5)
    assert trim_token_padding(tok[:0]).shape == (0, 2)
