"""Where one training step's time goes, by hand against autograd: torch's profiler over bench's steps.

    python scripts/step_profile.py --device cuda 784-1024-1024-10 gpt-sort lenet-28x28
    python scripts/step_profile.py --device cpu --top 12 64-256-256-10

For each model (bench's names) and each torch implementation (manual on torch tensors, autograd): the
wall time of a step (median of 5 blocks), and over `--steps` profiled steps: on CUDA the kernels a step
launches and how long the GPU is busy (a step that is much longer than its busy time is bound by the
CPU's launches, not by the GPU), the calls that wait for the GPU (item, synchronize, copies to the host);
on the CPU the aten ops a step dispatches. Then the ops by their own CPU time. float32, as the bench.
This is how the CUDA rows in README's GPU section were explained (an H200, 2026-12-04).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

import torch_ref  # noqa: E402
from experiments import bench  # noqa: E402

WAITS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpyAsync", "aten::_local_scalar_dense")


def main(argv=None):
    names = [m[0] for m in bench.MODELS]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="*", metavar="MODEL", help=f"bench's models (default: all): {', '.join(names)}")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=10, help="steps profiled (default: 10)")
    p.add_argument("--top", type=int, default=8, help="ops listed by their own CPU time (default: 8)")
    p.add_argument("--threads", type=int, default=0, help="torch's CPU threads (default: torch's own); on a busy "
                   "machine 1, since spinning thread pools that share cores make every op slower")
    args = p.parse_args(argv)
    unknown = [m for m in args.models if m not in names]
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}: expected some of {', '.join(names)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA GPU")
    if args.steps < 1 or args.top < 0 or args.threads < 0:
        p.error("expected --steps >= 1, --top >= 0 and --threads >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch_ref.ieee_float32()
    cuda = args.device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    impls = ("manual-torch-cuda", "autograd-cuda") if cuda else ("manual-torch", "autograd")
    for name, sizes, batch in [m for m in bench.MODELS if not args.models or m[0] in args.models]:
        steps = bench.make_steps(sizes, batch, "float32", args.device)
        for impl in impls:
            step = steps[impl][0]
            for _ in range(5):
                step()
            sync()
            blocks = []
            for _ in range(5):
                t = time.perf_counter()
                for _ in range(args.steps):
                    step()
                sync()
                blocks.append((time.perf_counter() - t) / args.steps * 1e3)
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
            with profile(activities=activities) as prof:
                for _ in range(args.steps):
                    step()
                sync()
            ka = prof.key_averages()
            n = args.steps
            head = f"{name} {impl}: {statistics.median(blocks):.3f} ms a step"
            if cuda:
                kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
                busy = sum(getattr(e, "device_time", 0.0) for e in kernels) / n / 1e3
                waits = sum(e.count for e in ka if e.key in WAITS) / n
                head += f"; {len(kernels) / n:.0f} kernels a step, the GPU busy {busy:.3f} ms; {waits:.1f} waits a step"
            else:
                head += f"; {sum(e.count for e in ka if e.key.startswith('aten::')) / n:.0f} aten ops a step"
            print(head)
            for e in sorted(ka, key=lambda e: -e.self_cpu_time_total)[:args.top]:
                print(f"    {e.key[:48]:48s} {e.self_cpu_time_total / n:9.1f} us self CPU  x{e.count / n:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
