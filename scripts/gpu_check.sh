#!/usr/bin/env bash
# The device checks, as one prepared script for a lent GPU machine (see the device tool's README).
# That machine has torch (CUDA), tensorboard, pytest and hypothesis but no network; bring the rest
# as wheels first, here:   pip download -d .wheels array-api-compat threadpoolctl tqdm safetensors
# (add scipy scikit-learn matplotlib if `python -c 'import scipy, sklearn, matplotlib'` fails there)
# and run there with .wheels carried:   bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=.
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
[ -d .wheels ] && python -m pip install -q --no-index --find-links .wheels .wheels/*.whl 2>&1 | tail -2
python -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, torch.cuda.get_device_name(0))'
echo "== CUDA parity cases"
python -m pytest -q -p no:cacheprovider -o addopts="" -m cuda parity_tests 2>&1 | tail -5
echo "== verify on every device"
python -m experiments verify --device all --json "$OUT/verify.json" | tail -4
echo "== a GPU experiment (manual on CUDA tensors next to autograd)"
python -m experiments run digits --device cuda --dtype float32 --no-progress --logdir "$OUT/runs" --json "$OUT/digits.json" | tail -4
echo "== the GPT by hand on CUDA (quick)"
python -m experiments run gpt --quick --device cuda --no-progress --logdir "$OUT/runs" --json "$OUT/gpt.json" | tail -4
echo "== bench (CPU and CUDA rows)"
python -m experiments bench --quick --no-memory --logdir "$OUT/runs" --json "$OUT/bench.json" 2>&1 | grep -v '^USDT'
