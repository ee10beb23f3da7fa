#!/usr/bin/env bash
# Create img2dataset's own environment ($GRAIN_CACHE/img2dataset-venv); idempotent. See annotators/img2dataset_env.py.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" -m annotators.img2dataset_env ensure
