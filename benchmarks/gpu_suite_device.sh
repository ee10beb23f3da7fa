#!/usr/bin/env bash
# benchmarks/gpu_suite.py on a lent GPU machine as it is (torch + CUDA, transformers, timm; no vllm, no
# open_clip, no package registry), in one invocation of at most 8 minutes.
#
# Prepare (on a machine with a registry; pure-Python wheels, < 2 MiB together):
#   python -m pip download --no-deps -d .device-wheels open_clip_torch==3.3.0 ftfy wcwidth
# Run on the device from the repository root, carrying .device-wheels:
#   GRAIN_COMMIT=<commit> OUT=<dir> bash benchmarks/gpu_suite_device.sh
# Writes $OUT/gpu_suite.json (after every part: a timeout keeps what finished) and $OUT/nvidia-smi.txt.
# Parts: train (4 arms), describer (vLLM: records "not measurable" where vllm is missing), describer_hf
# (transformers generate, the labelled lower bound), grounder, data. Exit status: gpu_suite.py's.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/grain-gpu-suite}
WHEELS=${WHEELS:-.device-wheels}
mkdir -p "$OUT"
site=$(mktemp -d)
if ! python -c "import open_clip" 2>/dev/null; then
  ls "$WHEELS"/*.whl >/dev/null 2>&1 || { echo "gpu_suite_device: no open_clip here and no wheels in $WHEELS (see the header)" >&2; exit 3; }
  python -m pip install -q --no-deps --no-index --target "$site" "$WHEELS"/*.whl || exit 3
fi
export PYTHONPATH="$PWD:$site" HF_HUB_OFFLINE=1 GRAIN_COMMIT=${GRAIN_COMMIT:-unknown}
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
timeout 470 python benchmarks/gpu_suite.py --parts train describer describer_hf grounder data --json "$OUT/gpu_suite.json"
rc=$?
[ "$rc" = 124 ] && echo "gpu_suite_device: stopped at 470 s; $OUT/gpu_suite.json holds the parts that finished" >&2
exit "$rc"
