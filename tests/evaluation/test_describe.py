"""`grain describe-classes` through the real vLLM offline engine with the tiny text LLM (slow)."""

import json
import os
import subprocess
import sys

import pytest

from evaluation.describe import read_classes


def test_read_classes_formats_and_errors(tmp_path):
    (tmp_path / "c.txt").write_text("red fox\n\nbarn owl\nred fox\n")
    assert read_classes(str(tmp_path / "c.txt"), None) == ["red fox", "barn owl"]
    (tmp_path / "c.json").write_text(json.dumps({"01_fox": "red fox"}))
    assert read_classes(str(tmp_path / "c.json"), None) == ["red fox"]
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_classes(str(tmp_path / "nope.txt"), None)


@pytest.mark.slow
def test_describe_classes_with_tiny_text_llm(tmp_path, tiny_models):
    (tmp_path / "classes.txt").write_text("red fox\nbarn owl\nsea turtle\n")
    out = tmp_path / "descriptors.json"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    # A subprocess: vLLM spawns engine processes and must own its interpreter's main module.
    proc = subprocess.run([sys.executable, "-m", "evaluation.describe", "--classes", str(tmp_path / "classes.txt"),
                           "--output", str(out), "--model", tiny_models["text-llm"]],
                          capture_output=True, text=True, timeout=400, env=env, cwd=os.getcwd())
    assert proc.returncode in (0, 3), proc.stderr[-3000:]
    desc = json.load(open(out))
    assert list(desc) == ["red fox", "barn owl", "sea turtle"]
    assert all(isinstance(v, list) and all(isinstance(d, str) and d for d in v) and len(v) <= 8 for v in desc.values())
    missing = open(str(out) + ".missing.txt").read().split("\n")[:-1]
    assert missing == [c for c, v in desc.items() if not v]  # every empty class is listed, none other
    assert (proc.returncode == 3) == (len(missing) == 3)
