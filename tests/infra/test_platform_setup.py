"""infra/setup.sh's platform choice: infra/detect_platform.sh with a fake ``nvidia-smi`` on PATH.

Nothing is installed: the detection script runs alone with PATH holding only the fake (bash runs it by
its absolute path), and the wiring of setup.sh and the Dockerfile is read, not executed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DETECT = ROOT / "infra" / "detect_platform.sh"
BASH = shutil.which("bash")

ANSWER = "GPU 0: NVIDIA H200 (UUID: GPU-00000000-1111-2222-3333-444444444444)\n"


def _fake_smi(tmp_path: Path, script: str | None) -> Path:
    """A bin/ folder holding ``nvidia-smi`` running ``script`` (None: an empty folder, no nvidia-smi)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if script is not None:
        smi = bin_dir / "nvidia-smi"
        smi.write_text(f"#!{BASH}\n{script}\n")
        smi.chmod(0o755)
    return bin_dir


def detect(bin_dir: Path, platform: str | None = None) -> subprocess.CompletedProcess:
    env = {"PATH": str(bin_dir), "HOME": os.environ.get("HOME", "/tmp")}
    if platform is not None:
        env["GRAIN_PLATFORM"] = platform
    return subprocess.run([BASH, str(DETECT)], env=env, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("script, want", [
    (f"printf '{ANSWER}'", "gpu"),                                     # driver present and answering
    (f"printf '{ANSWER}{ANSWER.replace('GPU 0', 'GPU 1')}'", "gpu"),   # two GPUs
    ("echo 'NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.' >&2; exit 9", "cpu"),
    ("exit 0", "cpu"),                                                 # answers, lists no GPU
    (None, "cpu"),                                                     # no nvidia-smi at all
])
def test_detection_with_fake_nvidia_smi(tmp_path, script, want):
    r = detect(_fake_smi(tmp_path, script))
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{want}\n", (r.stdout, r.stderr)
    assert r.stderr.startswith(f"[platform] {want}")


@pytest.mark.parametrize("forced, script", [("cpu", f"printf '{ANSWER}'"), ("gpu", None), ("gpu", "exit 9")])
def test_grain_platform_overrides_detection(tmp_path, forced, script):
    r = detect(_fake_smi(tmp_path, script), platform=forced)
    assert (r.returncode, r.stdout) == (0, f"{forced}\n"), r.stderr
    assert "forced by GRAIN_PLATFORM" in r.stderr


def test_grain_platform_unknown_value_is_refused_naming_it(tmp_path):
    r = detect(_fake_smi(tmp_path, None), platform="tpu")
    assert r.returncode == 2 and r.stdout == ""
    assert "GRAIN_PLATFORM=tpu" in r.stderr and "cpu or gpu" in r.stderr


def test_setup_installs_from_the_detected_platforms_constraints():
    text = (ROOT / "infra" / "setup.sh").read_text()
    assert "PLATFORM=$(bash infra/detect_platform.sh)" in text
    assert "CONSTRAINTS=constraints/$PLATFORM.txt" in text
    gpu_branch, cpu_branch = re.search(r'if \[ "\$PLATFORM" = gpu \]; then(.*?)\n  else(.*?)\n  fi', text, re.S).groups()
    assert '-c "$CONSTRAINTS" -e ".[gpu,dev]"' in gpu_branch and "fix_import_traps" not in gpu_branch
    assert '-c "$CONSTRAINTS" -e ".[cpu,dev]"' in cpu_branch and "fix_import_traps.sh" in cpu_branch
    assert "fix_import_traps" not in text.replace(cpu_branch, "")  # the trap fixes run on the CPU path only


def test_dockerfile_gpu_stage_installs_from_constraints_gpu():
    text = (ROOT / "infra" / "docker" / "Dockerfile").read_text()
    gpu_stage = text.split("FROM base AS gpu", 1)[1]
    assert 'pip install -c constraints/gpu.txt ".[gpu,s3]"' in gpu_stage
    assert "fix_import_traps" not in gpu_stage and "constraints/cpu.txt" not in gpu_stage


@pytest.mark.slow
def test_gpu_constraints_resolve_as_a_whole_set(tmp_path):
    """Metadata only: pip resolves every pin of constraints/gpu.txt together (nothing is installed)."""
    report = tmp_path / "report.json"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                        "--report", str(report), "-r", str(ROOT / "constraints" / "gpu.txt")],
                       capture_output=True, text=True, timeout=1200, cwd=ROOT)
    if r.returncode != 0 and ("No matching distribution" in r.stderr or "Could not find a version" in r.stderr):
        pytest.fail(f"constraints/gpu.txt does not resolve from this machine's package indexes:\n{r.stderr[-3000:]}")
    assert r.returncode == 0, r.stderr[-3000:]
    import json

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    resolved = {norm(i["metadata"]["name"]): i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}
    pins = dict(line.strip().split("==") for line in (ROOT / "constraints" / "gpu.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    assert {"vllm", "torch"} <= set(pins)
    for name, version in pins.items():
        assert resolved.get(norm(name)) == version, (name, version, resolved.get(norm(name)))
