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
    """The reported figures are the arithmetic they claim to be, exactly (not a plausible range):
    achieved = FLOPs per step / step time, samples/s = batch / step time, and each MFU = achieved /
    its peak (the chip peak given by --peak-tflops, and the measured matmul rate)."""
    out = tmp_path / "res.json"
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", _CHECK, "--preset", "tiny", "--device", "cpu", "--steps", "2",
                        "--warmup", "1", "--batch-size", "4", "--peak-tflops", "0.5", "--json", str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "IMPORTS-OK" in r.stdout and "samples/s" in r.stdout and "chip peak" in r.stdout
    res = json.loads(out.read_text())
    assert res["flops_per_step"] > 1e8 and res["step_s"] > 0
    rel = pytest.approx
    assert res["samples_per_s"] == rel(4 / res["step_s"], rel=1e-12)
    assert res["achieved_tflops"] * 1e12 == rel(res["flops_per_step"] / res["step_s"], rel=1e-12)
    assert (res["chip_peak_tflops"], res["chip_peak_source"]) == (0.5, "--peak-tflops")
    assert res["mfu"] == rel(res["achieved_tflops"] / 0.5, rel=1e-12)
    assert res["mfu_vs_matmul"] == rel(res["achieved_tflops"] / res["matmul_peak_tflops"], rel=1e-12)


def test_chip_peak_table_and_cpu_needs_the_flag():
    """Datasheet dense peaks by device name; a CPU, or a chip not in the table, gets no chip MFU."""
    from benchmarks.gpu_train_step import chip_peak_tflops

    assert chip_peak_tflops("NVIDIA H200", "bf16") == (989.0, "datasheet dense peak of H200 (bf16)")
    assert chip_peak_tflops("NVIDIA H100 80GB HBM3", "bf16")[0] == 989.0
    assert chip_peak_tflops("NVIDIA H100 PCIe", "bf16")[0] == 756.0  # not the SXM figure
    assert chip_peak_tflops("NVIDIA A100-SXM4-80GB", "fp32")[0] == 156.0  # TF32, which the script enables
    assert chip_peak_tflops("cpu", "fp32")[0] is None and chip_peak_tflops("Some New GPU", "bf16")[0] is None
    assert chip_peak_tflops("cpu", "fp32", override=2.0) == (2.0, "--peak-tflops")
