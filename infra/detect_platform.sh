#!/usr/bin/env bash
# Print the platform infra/setup.sh installs for: "gpu" or "cpu" (one word on stdout).
#   gpu: an NVIDIA driver is present and answers (`nvidia-smi -L` exits 0 and lists a "GPU n: ..." line)
#   cpu: otherwise (no nvidia-smi on PATH, or it fails, hangs past 20 s, or lists no GPU)
# GRAIN_PLATFORM=cpu|gpu forces the answer; any other value is an error (exit 2) naming it.
# The reason goes to stderr, so `platform=$(bash infra/detect_platform.sh)` stays one word.
set -uo pipefail

forced=${GRAIN_PLATFORM:-}
if [ -n "$forced" ]; then
  case "$forced" in
    cpu|gpu) echo "[platform] $forced (forced by GRAIN_PLATFORM)" >&2; echo "$forced"; exit 0 ;;
    *) echo "[platform] GRAIN_PLATFORM=$forced: expected cpu or gpu (or unset to detect)" >&2; exit 2 ;;
  esac
fi

if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "[platform] cpu (no nvidia-smi on PATH)" >&2; echo cpu; exit 0
fi
if command -v timeout >/dev/null 2>&1; then
  listing=$(timeout 20 nvidia-smi -L 2>/dev/null); rc=$?
else
  listing=$(nvidia-smi -L 2>/dev/null); rc=$?
fi
gpus=0
while IFS= read -r line; do
  case "$line" in "GPU "[0-9]*) gpus=$((gpus + 1)) ;; esac
done <<< "$listing"
if [ "$rc" -ne 0 ] || [ "$gpus" -eq 0 ]; then
  echo "[platform] cpu (nvidia-smi is there but does not answer: exit $rc, $gpus GPUs listed)" >&2; echo cpu; exit 0
fi
echo "[platform] gpu ($gpus NVIDIA GPU(s): nvidia-smi -L answered)" >&2
echo gpu
