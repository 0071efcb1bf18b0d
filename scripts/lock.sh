#!/usr/bin/env bash
# Regenerate the locks that scripts/setup.sh installs, from pyproject.toml, with `uv pip compile`:
#   requirements/lock-cpu.txt   torch's CPU build (no nvidia-* packages): what CI and CPU machines install
#   requirements/lock-cuda.txt  torch from PyPI with its nvidia-* dependencies: what GPU machines install
# Both are for CPython 3.11 on linux x86_64 (CI's machine), whatever machine runs this script.
# Pins already in a lock are kept where they still satisfy pyproject.toml (so a changed dependency moves
# only what it must); `scripts/lock.sh --upgrade` (make lock-upgrade) moves every package to its newest
# release except torch, whose release is requirements/torch.txt.
# uv is installed into a throwaway venv (.venv-lock), never into the project's environment.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.9
TOOLS=.venv-lock
PY_VERSION=3.11
PLATFORM=x86_64-manylinux_2_28
CPU_INDEX=https://download.pytorch.org/whl/cpu
TORCH_PIN=requirements/torch.txt
CPU_LOCK=requirements/lock-cpu.txt
CUDA_LOCK=requirements/lock-cuda.txt

if [ "$("$TOOLS/bin/uv" --version 2>/dev/null | cut -d' ' -f2)" != "$UV_VERSION" ]; then
  "${PYTHON:-python3}" -m venv "$TOOLS"
  "$TOOLS/bin/pip" install -q "uv==$UV_VERSION"
fi

compile() {  # compile OUTPUT [uv options...]
  local out=$1
  shift
  "$TOOLS/bin/uv" pip compile pyproject.toml --extra test -c "$TORCH_PIN" \
    --python-version "$PY_VERSION" --python-platform "$PLATFORM" \
    --custom-compile-command "make lock" --quiet -o "$out" "$@"
}

# torch's CPU build ("X+cpu"): from the PyTorch CPU index where it can be reached, else from the wheel
# folders pip already uses on this machine (PIP_FIND_LINKS). Without either the resolution would take the
# CUDA build from PyPI; that is refused below rather than written into the CPU lock.
cpu_sources=()
if curl -fsS --max-time 10 -o /dev/null "$CPU_INDEX/torch/" 2>/dev/null; then
  cpu_sources+=(--torch-backend cpu)
fi
for links in ${PIP_FIND_LINKS:-}; do
  cpu_sources+=(--find-links "$links")
done

compile "$CPU_LOCK" "${cpu_sources[@]}" "$@"
if grep -qE '^(nvidia-|triton==)' "$CPU_LOCK"; then
  echo "lock: $CPU_LOCK resolved torch's CUDA build: the CPU build of $(grep -v '^#' "$TORCH_PIN") was" \
       "found neither on $CPU_INDEX nor in PIP_FIND_LINKS" >&2
  exit 1
fi
compile "$CUDA_LOCK" "$@"
echo "lock: wrote $CPU_LOCK and $CUDA_LOCK (uv $UV_VERSION, CPython $PY_VERSION, $PLATFORM)"
