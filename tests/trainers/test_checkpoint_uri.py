"""Checkpoints through grain.common.storage: the training state written to an object-store URI (the
S3 test server) reads back unchanged, a run resumed from there ends where one resumed from the local
directory ends, and final.pt is exported to the URI as one committed object."""

from __future__ import annotations

import io

import torch

from grain.checkpoint import load_checkpoint
from grain.common import storage
from trainers.config import load_config
from trainers.run import export_final, plan_run, run_training
from trainers.state import load_state, save_state, set_rng_state


def _cfg(data, out, max_steps):
    return load_config(profile="tiny", overrides={"data": {"path": data}, "output": out, "workers": 0, "epochs": 1,
                                                  "batch_size": 4, "checkpoint_every": 2, "max_steps": max_steps})


def _same(a, b) -> bool:
    """Equal nested state: dicts, lists/tuples, tensors (exactly), plain values."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    return a == b


def _save_to(uri: str, st: dict, cfg, plan) -> None:
    """save_state of the modules rebuilt from ``st`` (the RNG restored first, so it saves st's)."""
    from grain.model import build_model
    from trainers.optim import build_optimizer, build_scheduler

    model = build_model(cfg.model_config())
    model.load_state_dict(st["model"])
    optimizer = build_optimizer(model, cfg.optim)
    # As the trainer restores: the scheduler is built (it sets the lr of step 0) before the saved state is loaded.
    scheduler = build_scheduler(optimizer, cfg.optim, total_steps=plan.total_steps, warmup_steps=plan.warmup_steps)
    optimizer.load_state_dict(st["optimizer"])
    scheduler.load_state_dict(st["scheduler"])
    set_rng_state(st["rng"])
    save_state(uri, model=model, optimizer=optimizer, scheduler=scheduler, step=st["step"], epoch=st["epoch"],
               step_in_epoch=st["step_in_epoch"], samples_seen=st["samples_seen"], config=st["config"],
               model_config=st["model_config"], loss_config=st["loss_config"], world_size=st["world_size"])


def _resume(data, out, resume_from) -> str:
    """Train in-process to step 4 from ``resume_from``; return the last checkpoint directory."""
    from trainers.loop import train_loop
    from trainers.session import LocalSession

    cfg = _cfg(data, out, max_steps=4)
    loop_config = {**plan_run(cfg).loop_config(cfg), "resume_from": resume_from}
    session = LocalSession(storage.join(out, "ckpts"))
    train_loop(loop_config, session=session)
    return session.last_checkpoint


def test_state_written_to_and_resumed_from_an_s3_uri(train_shards, s3_bucket, tmp_path, capsys):
    first = run_training(_cfg(train_shards, str(tmp_path / "first"), max_steps=2))
    st = load_state(first["checkpoint"])
    assert st["step"] == 2
    cfg = _cfg(train_shards, str(tmp_path / "first"), max_steps=2)
    uri = storage.join(s3_bucket, "run", "checkpoint_000000002")
    _save_to(uri, st, cfg, plan_run(cfg))
    assert storage.exists(storage.join(uri, "state.pt")) and uri.startswith("s3://")
    assert _same(load_state(uri), st)

    from_local = load_state(_resume(train_shards, str(tmp_path / "local"), first["checkpoint"]))
    from_uri_dir = _resume(train_shards, str(tmp_path / "uri"), uri)
    assert f"resumed from {uri} at step 2" in capsys.readouterr().out
    from_uri = load_state(from_uri_dir)
    assert from_uri["step"] == from_local["step"] == 4
    assert _same(from_uri["model"], from_local["model"]) and _same(from_uri["optimizer"], from_local["optimizer"])

    final = storage.join(s3_bucket, "run", "final.pt")
    assert export_final(from_uri_dir, final) == {"step": 4, "epoch": 0, "samples_seen": 16}
    assert storage.is_committed(final)
    local_copy = tmp_path / "final.pt"
    local_copy.write_bytes(storage.read_bytes(final))
    model, _, extra = load_checkpoint(str(local_copy))
    assert extra["step"] == 4 and _same(model.state_dict(), from_uri["model"])
    assert torch.load(io.BytesIO(storage.read_bytes(final)), weights_only=True)["format"] == "grain-checkpoint-v1"
