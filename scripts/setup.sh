#!/usr/bin/env bash
# Set up .venv with napari-nstseg and what it needs; safe to run again (it only adds what is missing).
# Usage: bash scripts/setup.sh [extra ...]   e.g. `bash scripts/setup.sh testing`
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --upgrade pip

# torch: an installed build (say CUDA) is kept. Otherwise a machine with an NVIDIA driver gets the
# default (CUDA) build and a machine without one the 2.13.0 release, which comes as a CPU wheel on
# CPU-only hosts that provide one locally -- so a bare `torch` requirement never drags several GB
# of CUDA wheels onto a CPU box.
if ! python -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    python -m pip install -q torch
  else
    python -m pip install -q "torch==2.13.0"
  fi
fi

extras=""
if [ $# -gt 0 ]; then
  extras="[$(IFS=,; echo "$*")]"
fi
python -m pip install -q -e ".${extras}"
