#!/usr/bin/env bash
# Create .venv with everything modelaudit needs, at the versions in the lock (requirements/lock-cpu.txt, or
# requirements/lock-cuda.txt on a machine with an NVIDIA GPU); idempotent: a second run checks two
# fingerprints and installs nothing. On a machine without an NVIDIA GPU torch's CPU build is installed
# first (torch from PyPI would pull a multi-GB CUDA build).
#   scripts/setup.sh --latest   the same into .venv-latest without the lock: the newest release of every
#                               dependency that pyproject.toml allows (make test-latest)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
CPU_INDEX=https://download.pytorch.org/whl/cpu
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  GPU=1 LOCK=requirements/lock-cuda.txt
else
  GPU=0 LOCK=requirements/lock-cpu.txt
fi

if [ "${1:-}" = "--latest" ]; then
  # One resolution over PyPI and, on CPU, the PyTorch CPU index: of the same torch release the CPU build
  # ("X+cpu") ranks above PyPI's, so it wins. An index that cannot be reached is left out (pip would retry
  # it for every package).
  cpu_index=()
  if [ "$GPU" = 0 ] && curl -fsS --max-time 10 -o /dev/null "$CPU_INDEX/torch/" 2>/dev/null; then
    cpu_index=(--extra-index-url "$CPU_INDEX")
  fi
  "$PY" -m venv --clear .venv-latest
  .venv-latest/bin/pip install -q --upgrade --upgrade-strategy eager "${cpu_index[@]}" torch -e ".[test]"
  exit 0
fi

VENV=.venv
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
# torch first, from where its build lives: pip's own sources, then the PyTorch CPU index (the CPU lock
# names the CPU build, "X+cpu", which PyPI does not carry).
TORCH=$(grep -E '^torch==' "$LOCK" | cut -d= -f3)
if [ "$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null)" != "$TORCH" ]; then
  if [ "$GPU" = 1 ]; then
    "$VENV/bin/pip" install -q -c "$LOCK" torch
  else
    "$VENV/bin/pip" install -q -c "$LOCK" torch \
      || "$VENV/bin/pip" install -q -c "$LOCK" torch --extra-index-url "$CPU_INDEX"
  fi
fi
# The rest only when the lock, the project's metadata or this script changed since the last install here.
STAMP="$VENV/.modelaudit-setup"
WANT=$(cat "$LOCK" pyproject.toml scripts/setup.sh | "$VENV/bin/python" -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  "$VENV/bin/pip" install -q -c "$LOCK" -e ".[test]"
  echo "$WANT" > "$STAMP"
fi
