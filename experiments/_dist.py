"""One rank of a torchrun job: the batch experiments on several processes (README "More than one process").

Under torchrun (`backprop-lab run NAME --nproc N`, `backprop-lab all --nproc N`, or
`torchrun --nproc-per-node N -m experiments run NAME`) every rank runs the same experiment code
from the same seed, so every rank holds the same data, batch order and initial weights.

* An experiment that trains on mini-batches says so with `DATA_PARALLEL = True`. Its
  `_lab.Twins` then wraps the manual model in `manual.parallel.DistributedDataParallel` and the
  torch twin in torch's `DistributedDataParallel`; each step, rank r takes its shard of the
  batch (`manual.parallel.shard_bounds`), and its loss gradient is weighted by W d_r / D, where
  d_r is the shard's share of the loss's mean denominator (examples, or counted targets of a
  cross-entropy with ignore_index / class weights) and D the whole batch's. DDP's average of
  the weighted gradients is then the whole batch's gradient, unequal shards included, so a step
  on W ranks is the one-process step, to rounding.
* Every other experiment runs replicated: each rank computes the same numbers; rank 0 logs them.
* Rank 0 alone writes TensorBoard, outcome.json, JSON and checkpoints, and prints.
* A failure on any rank prints `rank R: failed: ...` and ends that rank at once; torchrun then
  stops the others. A Ctrl-C or SIGTERM is agreed on at the next step boundary (one small
  all_reduce per step), so every rank stops at the same step and rank 0's checkpoint resumes it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback

import numpy as np

_STATE = {"shard": False}


def launched() -> bool:
    """True in a process that torchrun started (it sets WORLD_SIZE and LOCAL_RANK)."""
    return "WORLD_SIZE" in os.environ or "LOCAL_RANK" in os.environ


def _initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    if not _initialized():
        return 0
    import torch.distributed as dist

    return dist.get_rank()


def world_size() -> int:
    if not _initialized():
        return 1
    import torch.distributed as dist

    return dist.get_world_size()


def is_main() -> bool:
    """Rank 0, or a one-process run: the process that writes logs, checkpoints and JSON."""
    return rank() == 0


@contextlib.contextmanager
def job(device="auto", backend="auto", timeout_s=600.0):
    """Under torchrun: the default process group (gloo on CPU, nccl on CUDA) for the body, destroyed
    after. Elsewhere, nothing. timeout_s bounds every collective: a rank that dies makes the others
    fail instead of waiting forever (torchrun also stops them when one exits with an error)."""
    if not launched() or _initialized():
        yield
        return
    from manual import parallel as P

    from ._lab import resolve_device

    tdev, _ = resolve_device(device, backend)
    if tdev == "cuda":
        take_local_gpu()
    P.init_process_group(device=tdev, timeout=timeout_s)
    import torch.distributed as dist

    try:
        yield
        barrier_before_teardown()
    finally:
        dist.destroy_process_group()


def gpus_for(device, nproc):
    """None, or why `nproc` processes on this machine cannot run on `device`: on CUDA each process takes
    its own GPU (nccl refuses two ranks on one GPU; rank r takes cuda:r), so nproc must not exceed the
    GPUs torch sees."""
    if device != "cuda" or nproc <= 1:
        return None
    import torch

    have = torch.cuda.device_count()
    if nproc > have:
        return (f"--nproc {nproc} on CUDA: expected at most {have} process{'es' if have != 1 else ''} here, one per "
                f"GPU (nccl runs one process per GPU, and torch sees {have}); --device cpu runs {nproc} "
                "processes with gloo")
    return None


def take_local_gpu():
    """A torchrun rank on CUDA takes its GPU, cuda:LOCAL_RANK; SystemExit naming the way out when the machine
    has fewer GPUs than processes (torchrun by hand; the launcher refuses that before it starts them)."""
    import torch

    problem = gpus_for("cuda", int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    if problem:
        raise SystemExit(problem)
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))


def barrier_before_teardown():
    """On a clean exit, every rank waits for the others before tearing gloo down: a rank that destroyed its
    group and exited while another still held a connection sometimes took that one down with 'terminate
    called without an active exception' (exit -6 under torchrun; the slow test_nproc file failed so in 3 of
    11 runs before this). Not on an exception: the others may never arrive."""
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


@contextlib.contextmanager
def sharding(on: bool):
    """Inside: Twins built on more than one rank shard their batches (an experiment with DATA_PARALLEL)."""
    before = _STATE["shard"]
    _STATE["shard"] = bool(on)
    try:
        yield
    finally:
        _STATE["shard"] = before


def sharded() -> bool:
    return _STATE["shard"] and world_size() > 1


# -- the loss's share of each rank --------------------------------------------------------------

def row_weights(criterion, y) -> np.ndarray:
    """Each example's (row's) share of the loss's mean denominator: 1 per element of its target for
    MSE and BCE; for a cross-entropy with class-index targets, the summed class weights of its
    targets that are not ignore_index (torch's 'mean' divides by that sum)."""
    y = np.asarray(y)
    n = y.shape[0] if y.ndim else 1
    weight = getattr(criterion, "weight", None)
    ignore = getattr(criterion, "ignore_index", None)
    if ignore is not None and np.issubdtype(y.dtype, np.integer):  # cross-entropy, class-index targets
        from manual import _backend as B

        keep = (y != ignore).reshape(n, -1)
        if weight is None:
            return keep.sum(1).astype(np.float64)
        w = B.to_numpy(weight).astype(np.float64)
        return (np.where(keep, w[np.where(keep, y.reshape(n, -1), 0)], 0.0)).sum(1)
    return np.full(n, float(np.prod(y.shape[1:], dtype=np.int64)))


def shard(criterion, x, y):
    """(x_r, y_r, scale, share): this rank's rows of the batch; scale = W d(whole-batch loss)/d(this rank's
    loss), the seed of its loss gradient, so that DDP's average (1/W) sum_r is the whole batch's gradient;
    share = d(whole-batch loss)/d(this rank's loss), so that sum_r share_r loss_r is the whole batch's loss."""
    from manual import parallel as P

    reduction = getattr(criterion, "reduction", "mean")
    w, r, n = world_size(), rank(), len(x)
    if reduction not in ("mean", "sum"):
        raise ValueError(f"data parallel: the loss's reduction must be 'mean' or 'sum', got {reduction!r}")
    if n == 0:
        raise ValueError("data parallel: an empty batch")
    a, b = P.shard_bounds(n, w, r)
    if a == b:  # fewer examples than ranks (an epoch's last batch): this rank runs the first example with a
        return x[:1], y[:1], 0.0, 0.0  # zero-seeded gradient, exactly 0 in DDP's sum (DDP needs every rank)
    if reduction == "sum":
        return x[a:b], y[a:b], float(w), 1.0
    rows = row_weights(criterion, y)
    total, mine = float(rows.sum()), float(rows[a:b].sum())
    if mine <= 0 or total <= 0:
        raise ValueError(f"data parallel: rank {r}'s shard (rows {a}:{b} of {n}) has no counted targets "
                         f"(all ignore_index or zero class weight): its mean loss is 0/0")
    return x[a:b], y[a:b], w * mine / total, mine / total


def _all_reduce(values, dtype, op, what):
    """values reduced over the ranks with `op` (one all_reduce, on CUDA under nccl), as a list."""
    import torch
    import torch.distributed as dist

    from manual import parallel as P

    t = torch.tensor(values, dtype=dtype)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    P._collective(what, lambda: dist.all_reduce(t, op=op), None)
    return t.cpu().tolist()


def all_sum(values):
    """[sum over ranks of each value] (float64, one all_reduce)."""
    import torch
    import torch.distributed as dist

    return _all_reduce([float(v) for v in values], torch.float64, dist.ReduceOp.SUM, "all_reduce of the step's losses")


def agree_stop(signum):
    """The signal every rank stops on at this step boundary (the highest pending anywhere), or None:
    one rank's Ctrl-C stops them all at the same step."""
    if world_size() == 1:
        return signum
    import torch
    import torch.distributed as dist

    (got,) = _all_reduce([int(signum or 0)], torch.int64, dist.ReduceOp.MAX, "all_reduce of the stop flag")
    if got and not signum:
        from .signals import claim_stop

        claim_stop()  # this rank had no signal of its own: it stops because another rank does
    return got or None


# -- ending a rank ------------------------------------------------------------------------------

def exit_now(code):
    """Flush and end this rank at once. Not `return`: after a failed collective, freeing the process
    group and DDP objects can block in their C++ destructors (seen in about 1 failing run in 20).
    Exiting now lets torchrun and the other ranks see the failure immediately."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_rank(fn, rank_of=None):
    """fn() on this rank; its return value (an exit code). A failure prints its traceback and one
    line naming the rank, then ends the process with 1; Ctrl-C / SIGTERM ends it with 130 / 143."""
    from .signals import Stop

    r = rank() if rank_of is None else rank_of
    try:
        return fn()
    except KeyboardInterrupt as e:
        stop = e if isinstance(e, Stop) else Stop()
        print(f"rank {r}: interrupted ({stop.name})", file=sys.stderr)
        exit_now(stop.exit_code)
    except SystemExit:
        raise
    except BaseException as e:
        traceback.print_exc()
        print(f"rank {r}: failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", file=sys.stderr)
        exit_now(1)
