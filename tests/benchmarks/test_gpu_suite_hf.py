"""gpu_suite.py part ``describer_hf`` at tiny size on CPU: transformers' generate on the LLaVA architecture with
random weights, output length forced, labelled as a lower bound; and the JSON names its hardware and command."""

from __future__ import annotations

import json

from benchmarks import gpu_suite


def test_describer_hf_tiny_forces_the_output_length_and_says_lower_bound(tmp_path):
    out = tmp_path / "suite.json"
    gpu_suite.main(["--tiny", "--parts", "describer_hf", "--json", str(out)])
    res = json.loads(out.read_text())
    part = res["describer_hf"]
    assert "error" not in part, part
    assert "lower bound" in part["engine"] and "not vLLM" in part["engine"]
    (run,) = part["runs"]
    assert run["out_tokens"] == 8
    assert round(run["output_tokens_per_s"] * run["seconds"]) == part["batch"] * 8  # every sequence ran 8 tokens
    assert res["hardware"].endswith(f"torch {__import__('torch').__version__}") and "gpu_suite.py" in res["command"]
