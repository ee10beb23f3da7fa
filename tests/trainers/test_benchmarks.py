"""The benchmark scripts run (tiny preset, CPU) and the GPU one stays free of Ray/Prefect/vLLM/trainers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_CHECK = """
import runpy, sys
sys.argv = ["gpu_train_step.py"] + sys.argv[1:]
try:
    runpy.run_path("benchmarks/gpu_train_step.py", run_name="__main__")
except SystemExit as e:
    assert not e.code, e.code
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("ray", "prefect", "vllm", "trainers", "annotators"))
assert not bad, bad
print("IMPORTS-OK")
"""


@pytest.mark.slow  # ~10 s idle (imports + 3 tiny steps), 30 s on a loaded 2-core machine
def test_gpu_train_step_runs_on_cpu_tiny_and_imports_only_grain(tmp_path):
    out = tmp_path / "res.json"
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", _CHECK, "--preset", "tiny", "--device", "cpu", "--steps", "2",
                        "--warmup", "1", "--batch-size", "4", "--json", str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "IMPORTS-OK" in r.stdout and "samples/s" in r.stdout and "MFU" in r.stdout
    res = json.loads(out.read_text())
    assert res["samples_per_s"] > 0 and 0 < res["mfu"] < 1.5 and res["flops_per_step"] > 1e8
