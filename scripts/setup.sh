#!/usr/bin/env bash
# Create .venv and install backprop-lab with its test extras.
#   CPU-only machine: the local CPU wheel torch==2.13.* (never a multi-GB CUDA build).
#   Machine with an NVIDIA GPU (nvidia-smi works): torch from PyPI, a CUDA build.
# Override with TORCH_SPEC='torch==2.11.*' (say) to pick the torch yourself.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
if [ -z "${TORCH_SPEC:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    TORCH_SPEC='torch>=2.4,<3'
  else
    TORCH_SPEC='torch==2.13.*'
  fi
fi
pip_install() { .venv/bin/python -m pip install -q --disable-pip-version-check "$@" 2>&1 | grep -v '^WARNING: Location' || true; }
pip_install "$TORCH_SPEC"
pip_install -e '.[dev]'
.venv/bin/python -c 'import torch, manual, torch_ref, experiments; print(f"setup ok: torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")'
