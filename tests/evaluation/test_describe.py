"""`grain describe-classes` through the real vLLM offline engine with the tiny text LLM (slow)."""

import json
import os
import subprocess
import sys

import pytest

from evaluation.describe import read_classes


def test_bullets_regex_bounds():
    import re

    from evaluation.describe import bullets_regex

    rx = re.compile(bullets_regex(3, 10))
    assert rx.fullmatch("- red fur\n- bushy tail\n") and rx.fullmatch(" - a\n")
    assert not rx.fullmatch("") and not rx.fullmatch("- \n") and not rx.fullmatch("- 01234567890\n")
    assert not rx.fullmatch("- a\n- b\n- c\n- d\n")
    with pytest.raises(ValueError, match="max_items"):
        bullets_regex(0, 10)


def test_read_classes_formats_and_errors(tmp_path):
    (tmp_path / "c.txt").write_text("red fox\n\nbarn owl\nred fox\n")
    assert read_classes(str(tmp_path / "c.txt"), None) == ["red fox", "barn owl"]
    (tmp_path / "c.json").write_text(json.dumps({"01_fox": "red fox"}))
    assert read_classes(str(tmp_path / "c.json"), None) == ["red fox"]
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_classes(str(tmp_path / "nope.txt"), None)


def test_describe_engine_gets_the_cpu_fixes(monkeypatch):
    """The describe-classes engine is built like the annotation stage's (grain.common.vllm_args): float32
    and a small KV cache on a CPU machine, the caller's dtype kept."""
    import types

    import torch

    from evaluation.describe import describe
    from grain.common.vllm_args import engine_kwargs

    seen = {}

    class Stop(Exception):
        pass

    def fake_llm(**kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=fake_llm, SamplingParams=None))
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(Stop):
        describe(["red fox"], "some-model", structured=False)
    assert seen["dtype"] == "float32" and seen["model"] == "some-model" and seen["max_model_len"] == 512
    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert engine_kwargs({"dtype": "bfloat16"}, on_gpu=False)["dtype"] == "bfloat16"
    assert engine_kwargs({"dtype": None}, on_gpu=True)["dtype"] == "auto"


@pytest.mark.slow
def test_describe_classes_with_tiny_text_llm(tmp_path, tiny_models):
    (tmp_path / "classes.txt").write_text("red fox\nbarn owl\nsea turtle\n")
    out = tmp_path / "descriptors.json"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    # A subprocess: vLLM spawns engine processes and must own its interpreter's main module.
    proc = subprocess.run([sys.executable, "-m", "evaluation.describe", "--classes", str(tmp_path / "classes.txt"),
                           "--output", str(out), "--model", tiny_models["text-llm"]],
                          capture_output=True, text=True, timeout=400, env=env, cwd=os.getcwd())
    assert proc.returncode == 0, proc.stderr[-3000:]
    desc = json.load(open(out))
    assert list(desc) == ["red fox", "barn owl", "sea turtle"]
    # structured outputs: even the random-weight model's answers are bullet lists, so every class is described
    assert all(isinstance(v, list) and 1 <= len(v) <= 8 and all(isinstance(d, str) and d.strip() for d in v)
               for v in desc.values()), desc
    assert open(str(out) + ".missing.txt").read() == ""  # no class left empty
    assert "3/3 classes described" in proc.stdout
