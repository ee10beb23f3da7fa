"""`grain demo` names the device its tiny models run on, and on CUDA puts every stage there with keys
the stages' own loaders accept (no GPU is needed: torch.cuda is faked)."""

from __future__ import annotations

import torch

from grain.common.runconfig import flatten_overrides
from infra.demo import demo_device


def test_cpu_machine_runs_on_cpu_with_no_overrides(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert demo_device() == ("cpu", {})


def test_gpu_machine_places_every_stage_on_cuda(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "NVIDIA H200")
    label, placed = demo_device()
    assert label == "cuda (1 × NVIDIA H200)"
    from annotators.config import load_config as annotate_config
    from evaluation.config import load_config as eval_config
    from trainers.config import load_config as train_config

    a = annotate_config(profile="tiny", overrides=flatten_overrides(placed["annotate"]), source="demo")
    assert a.run.describer_gpus > 0 and a.run.grounder_gpus > 0
    assert a.run.describer_gpus + a.run.grounder_gpus <= 1  # both fit the one GPU
    assert a.run.grounder_cpu_affinity is None  # the CPU pinning of the tiny profile is off on GPU nodes
    t = train_config(profile="tiny", overrides={**flatten_overrides(placed["train"]), "data.path": str(tmp_path),
                                                "output": str(tmp_path / "o")}, source="demo")
    assert t.use_gpu and t.workers == 1  # one worker per GPU
    e = eval_config(None, {**flatten_overrides(placed["eval"]), "checkpoint": "c.pt", "output": str(tmp_path)},
                    defaults={"datasets": ["x"]}, source="demo")
    assert e.device == "cuda"
