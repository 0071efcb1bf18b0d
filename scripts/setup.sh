#!/usr/bin/env bash
# Create .venv with everything modelaudit needs; idempotent. On a machine without an NVIDIA GPU the
# CPU build of torch is installed first (an unpinned torch would pull a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    .venv/bin/pip install -q torch
  else
    .venv/bin/pip install -q "torch==2.13.0" || .venv/bin/pip install -q torch --index-url https://download.pytorch.org/whl/cpu
  fi
fi
.venv/bin/pip install -q -e ".[test]"
