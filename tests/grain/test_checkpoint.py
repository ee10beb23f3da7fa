"""Checkpoint round trip (weights_only) for both kinds, wrapper prefixes, clear errors."""

import pytest
import torch

from grain.checkpoint import load_checkpoint, save_checkpoint
from grain.config import ModelConfig
from tests.grain.conftest import seeded_model


@pytest.mark.parametrize("kind", ["grain", "clip"])
def test_round_trip_equal_outputs(kind, small_batch, tmp_path):
    cfg = ModelConfig.preset("tiny", kind=kind)
    m = seeded_model(cfg, seed=7).eval()
    with torch.no_grad():
        m.logit_scale.fill_(3.0)  # a non-default value must survive
    path = save_checkpoint(str(tmp_path / "ckpt" / "model.pt"), m, cfg, extra={"step": 12, "metrics": {"loss": 1.5}})
    raw = torch.load(path, weights_only=True)  # loadable without pickled classes
    assert raw["config"]["kind"] == kind
    m2, cfg2, extra = load_checkpoint(path)
    assert cfg2 == cfg and extra == {"step": 12, "metrics": {"loss": 1.5}} and not m2.training
    with torch.no_grad():
        a, b = m(small_batch), m2(small_batch)
    for k, v in a.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, b[k]), k


def test_ddp_prefix_stripped(tmp_path):
    cfg = ModelConfig.preset("tiny", kind="clip")
    m = seeded_model(cfg)
    wrapped = torch.nn.Module()
    wrapped.module = m  # what DistributedDataParallel's state dict looks like: "module.<name>"
    path = save_checkpoint(str(tmp_path / "w.pt"), wrapped, cfg)
    m2, _, _ = load_checkpoint(path)
    assert torch.equal(m2.logit_scale, m.logit_scale)


def test_bad_files_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(str(tmp_path / "nope.pt"))
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(1)}, other)
    with pytest.raises(ValueError, match="other.pt.*format"):
        load_checkpoint(str(other))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        load_checkpoint(str(junk))
