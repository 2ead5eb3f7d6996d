#!/usr/bin/env bash
# The device checks, as one prepared script for a lent GPU machine (see the device tool's README): the
# CUDA bench rows, a profile of three CUDA steps, the default test tier (its CUDA cases included), verify on
# every device, every experiment on CUDA (`all --quick --device cuda`) and one torchrun process on nccl. Each step has its
# own time limit, so that one stuck step leaves the others' results; logs and JSON go to $OUT.
#
# That machine has torch (CUDA), tensorboard, pytest and hypothesis but no network. Bring the rest as
# wheels, here, in the repo's root (.whl/ is ignored through .git/info/exclude):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl array-api-compat expecttest
# and run there with .whl carried:   bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
step() { echo; echo "== $1  ($(date +%T))"; }

step "machine"
nvidia-smi -L
python3 -c 'import sys, torch, numpy; print("python", sys.version.split()[0], "torch", torch.__version__, "CUDA", torch.version.cuda,
  "numpy", numpy.__version__, "|", torch.cuda.get_device_name(0), "| GPUs:", torch.cuda.device_count())'

step "bench: CUDA rows (float32, quick), time and memory"
timeout 170 python3 -m experiments bench --quick --device cuda --dtype float32 --logdir "$OUT/runs" \
  --json "$OUT/bench_cuda.json" 2>&1 | grep -v '^USDT' | tee "$OUT/bench.log"

step "where a CUDA step's time goes (kernels a step, GPU busy time): scripts/step_profile.py"
timeout 60 python3 scripts/step_profile.py --device cuda 784-1024-1024-10 gpt-sort lenet-28x28 2>&1 \
  | grep -v 'profiler.py\|_warn_once' | tee "$OUT/profile.log" | grep -v '^    '

step "the default test tier (python -m pytest, as CI runs it), CUDA cases included"
timeout 200 python3 -m pytest -q -p no:cacheprovider -rfE --durations=5 parity_tests 2>&1 \
  | tee "$OUT/pytest.log" | tail -40
echo "CUDA cases:"; timeout 100 python3 -m pytest -q -p no:cacheprovider -m cuda --co parity_tests 2>&1 | tail -1

step "verify on every device"
timeout 60 python3 -m experiments verify --device all --json "$OUT/verify.json" 2>&1 | tail -8

step "every experiment on CUDA: all --quick --device cuda"
timeout 150 python3 -m experiments all --quick --device cuda --no-progress --logdir "$OUT/runs" \
  --json "$OUT/all_cuda.json" 2>&1 | tail -30

step "one torchrun process on nccl (the hand-written DDP's CUDA path)"
timeout 60 python3 -m torch.distributed.run --standalone --nproc-per-node 1 -m experiments run digits --quick \
  --device cuda --no-progress --logdir "$OUT/runs" 2>&1 | tail -6
step "done"
