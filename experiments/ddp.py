"""Data parallelism (guide: "Mini-Batch SGD", spread over processes): each of W ranks takes its
shard of the global mini-batch, runs the hand-written backward on it, and the ranks average
their gradients with torch.distributed (manual.parallel.DistributedDataParallel), beside
torch's own DistributedDataParallel on the autograd twin. After every step both equal one
process's step on the whole batch, and DDP's mean of per-rank means departs from the global
mean exactly as sum_r (1/W - n_r/N) g_r predicts when the shards differ in size.

    torchrun --nproc-per-node 2 -m experiments.ddp --quick
    python -m experiments.ddp --quick            # one process: a world of 1

Rank 0 alone writes TensorBoard, JSON and the summary; any rank's failure ends the job with a
non-zero exit and a message naming that rank (collectives time out after --timeout-s).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist

import manual
from manual import _backend as B
from manual import nn, optim
from manual import parallel as P
from torch_ref import twin, twin_loss, twin_optimizer

from . import _dist, _lab
from ._lab import opt

NAME = "ddp"
MULTIPROCESS = True  # `backprop-lab run ddp --nproc N` launches it with torchrun
SUMMARY = ("hand-written gradients averaged over ranks equal torch's DDP and one process's step on the whole "
           "batch; the mean-of-means gap of unequal shards is the predicted one")
SECTION = "Non-Convex Optimization: Mini-Batch SGD"

# Test accuracy the data-parallel MLP must reach at the defaults (lr 1e-2, Adam). Measured with one
# process over seeds 0-3 (min): digits 3 epochs 0.953, 1 epoch (quick) 0.896; circles (batch 32)
# 3 epochs 0.892, 1 epoch 0.76. The bars sit ~5 points below the worst seed.
LEARN_MIN = {"digits": 0.9, "circles": 0.85}
LEARN_MIN_QUICK = {"digits": 0.85, "circles": 0.7}


@dataclass
class Config(_lab.RunConfig):
    data: str = opt("digits", "digits (8x8 images, 10 classes) or circles (2-D points, inside vs outside)",
                    choices=("digits", "circles"))
    hidden: int = opt(32, "hidden ReLU units")
    epochs: int = opt(3, "passes over the training set (quick: 1)")
    batch_size: int = opt(64, "GLOBAL mini-batch, split over the ranks (unequal shards where W does not divide it)")
    accumulate: int = opt(1, "micro-batches per rank per step: gradients accumulate under no_sync(), one "
                             "all_reduce per bucket per step")
    mean: str = opt("global", "global: each rank's loss gradient weighted by W n_r / N, so a step is the whole "
                              "batch's; ddp: DDP's plain mean of per-rank means", choices=("global", "ddp"))
    optimizer: str = opt("adam", "adam, or sgd (momentum 0.9)", choices=("adam", "sgd"))
    lr: float = opt(1e-2, "learning rate")
    bucket_cap_mb: float = opt(25.0, "largest gradient bucket in MiB (DDP's bucket_cap_mb)")
    timeout_s: float = opt(60.0, "collective timeout in seconds: a rank that stops makes the others fail, not hang")
    fail_at: str = opt("", "RANK:STEP makes that rank raise at that step (to see a failure end the job)")


def load(cfg):
    """((xtr, ytr), (xte, yte)), identical on every rank (seeded)."""
    if cfg.data == "digits":
        from .digits import load_data

        return load_data(SimpleNamespace(test_fraction=0.25, seed=cfg.seed))
    from .circles import make_circles

    x, y = make_circles(1000, np.random.default_rng(cfg.seed))
    return (x[:750], y[:750]), (x[750:], y[750:])


def make_model(cfg, n_in):
    if cfg.data == "digits":
        return nn.mlp((n_in, cfg.hidden, 10)), nn.CrossEntropyLoss()
    return nn.mlp((n_in, cfg.hidden, cfg.hidden, 1)), nn.BCEWithLogitsLoss()


def parse_fail_at(text):
    if not text:
        return None
    try:
        rank, step = (int(v) for v in text.split(":"))
    except ValueError:
        raise SystemExit(f"--fail-at: expected RANK:STEP (two integers), got {text!r}") from None
    return rank, step


@contextlib.contextmanager
def process_group(cfg, device):
    """The default process group: torchrun's (env://) when launched by it, else a world of 1.

    Destroyed on the way out only if this function created it."""
    if dist.is_initialized():
        yield dist.get_rank(), dist.get_world_size()
        return
    if "WORLD_SIZE" in os.environ:  # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, LOCAL_RANK
        if device == "cuda":
            from ._dist import take_local_gpu

            take_local_gpu()
        P.init_process_group(device=device, timeout=cfg.timeout_s)
    else:
        P.init_process_group(device=device, timeout=cfg.timeout_s, store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield dist.get_rank(), dist.get_world_size()
        _dist.barrier_before_teardown()
    finally:
        dist.destroy_process_group()


class Sides:
    """Manual DDP, torch DDP and (rank 0) one process on the whole batch, from the same weights."""

    def __init__(self, cfg, rank, world, n_in, tdev, mdev):
        self.cfg, self.rank, self.world, self.tdev, self.mdev = cfg, rank, world, tdev, mdev
        manual.init.manual_seed(cfg.seed + rank)  # each rank draws its own weights: wrapping must replace them
        model, self.crit = make_model(cfg, n_in)
        model = model.to(mdev, cfg.dtype)
        self.spread_before = spread([p.data for p in model.parameters()])
        self.ddp = P.DistributedDataParallel(model, bucket_cap_mb=cfg.bucket_cap_mb)
        self.spread_after = spread([p.data for p in model.parameters()])
        make = ((lambda p: optim.Adam(p, lr=cfg.lr)) if cfg.optimizer == "adam"
                else (lambda p: optim.SGD(p, lr=cfg.lr, momentum=0.9)))
        self.opt = make(self.ddp.parameters())
        self.tcrit = twin_loss(self.crit, device=tdev)
        self.tddp = None
        if "torch" in cfg.impls:  # torch's DDP (its first construction imports torch._dynamo: ~3 s per rank)
            self.tddp = torch.nn.parallel.DistributedDataParallel(
                twin(model, device=tdev), bucket_cap_mb=cfg.bucket_cap_mb,
                device_ids=[torch.cuda.current_device()] if tdev == "cuda" else None)
            self.topt = twin_optimizer(self.opt, self.tddp.parameters())
        self.single = None
        if rank == 0:
            self.single = twin(model, device=tdev)
            self.sopt = twin_optimizer(self.opt, self.single.parameters())
        self.names = [n for n, _ in model.named_parameters()]

    def place(self, x, y):
        xm, xt = B.place(x, self.mdev, self.cfg.dtype), torch.as_tensor(x, device=self.tdev, dtype=_lab_dtype(self.cfg))
        if np.issubdtype(y.dtype, np.integer):
            ym = y if self.mdev == "numpy" else torch.as_tensor(y, device=self.mdev)
            return xm, ym, xt, torch.as_tensor(y, device=self.tdev)
        return xm, B.place(y, self.mdev, self.cfg.dtype), xt, torch.as_tensor(y, device=self.tdev, dtype=_lab_dtype(self.cfg))

    def manual_backward(self, x, y, scale):
        xm, ym, _, _ = self.place(x, y)
        loss = self.crit(self.ddp(xm), ym)
        seed = B.place(np.asarray(scale), self.mdev, self.cfg.dtype)  # d (scaled loss) / d loss
        self.ddp.backward(self.crit.backward(seed))
        return float(B.to_numpy(loss))

    def torch_backward(self, x, y, scale):
        _, _, xt, yt = self.place(x, y)
        loss = self.tcrit(self.tddp(xt), yt)
        (loss * scale).backward()
        return float(loss.detach())

    def step(self, x, y, micro, scales):
        """One step on every side; returns (sum over this rank's examples of each side's loss)."""
        sums = {}
        if "manual" in self.cfg.impls:
            self.opt.zero_grad()
            sums["manual"] = sum(self._accumulate(self.ddp, self.manual_backward, x, y, micro, scales))
            self.opt.step()
        if "torch" in self.cfg.impls:
            self.topt.zero_grad()
            sums["torch"] = sum(self._accumulate(self.tddp, self.torch_backward, x, y, micro, scales))
            self.topt.step()
        return sums

    @staticmethod
    def _accumulate(ddp, backward, x, y, micro, scales):
        for j, (idx, s) in enumerate(zip(micro, scales)):
            with ddp.no_sync() if j < len(micro) - 1 else contextlib.nullcontext():
                yield backward(x[idx], y[idx], s) * len(idx)

    def single_step(self, x, y):
        _, _, xt, yt = self.place(x, y)
        self.sopt.zero_grad()
        self.tcrit(self.single(xt), yt).backward()
        self.sopt.step()

    def params(self, side):
        if side == "manual":
            return [B.to_numpy(p.data) for p in self.ddp.parameters()]
        model = self.tddp if side == "torch" else self.single
        return [p.detach().cpu().numpy() for p in model.parameters()]

    def accuracy(self, x, y):
        """side -> test accuracy (the unwrapped models: an evaluation forward must not start a collective)."""
        xm, _, xt, _ = self.place(x, y)
        out = {}
        with manual.no_grad():
            out["manual"] = _lab.accuracy(B.to_numpy(self.ddp.module(xm)), y)
        with torch.no_grad():
            if self.tddp is not None:
                out["torch"] = _lab.accuracy(self.tddp.module(xt).cpu().numpy(), y)
            if self.single is not None:
                out["single"] = _lab.accuracy(self.single(xt).cpu().numpy(), y)
        return out


def _lab_dtype(cfg):
    return getattr(torch, cfg.dtype)


def comm_device():
    """Where this process group's collectives take tensors: CUDA for nccl, the CPU for gloo."""
    return "cuda" if dist.get_backend() == "nccl" else "cpu"


def maxdiff(a, b):
    return max(float(np.max(np.abs(u - v), initial=0.0)) for u, v in zip(a, b))


def spread(arrays):
    """max over ranks and entries of |this rank's value - rank 0's| (0.0 when every rank holds the same bits)."""
    flat = torch.from_numpy(np.concatenate([B.to_numpy(a).astype(np.float64).ravel() for a in arrays])).to(comm_device())
    ref = flat.clone()
    dist.broadcast(ref, src=0)
    d = torch.max(torch.abs(flat - ref)).reshape(1)
    dist.all_reduce(d, op=dist.ReduceOp.MAX)
    return float(d.item())


def gap_check(cfg, sides, x, y):
    """On one deliberately unequal cut of 2W+1 examples: DDP's mean of per-rank means minus the
    whole batch's mean gradient, against sum_r (1/W - n_r/N) g_r computed from every rank's own
    gradient; and the W n_r / N weighting, against the whole batch. Gradients only: no step."""
    world, rank = sides.world, sides.rank
    n = 2 * world + 1
    a, b = P.shard_bounds(n, world, rank)
    counts = [P.shard_bounds(n, world, r)[1] - P.shard_bounds(n, world, r)[0] for r in range(world)]
    xs, ys = x[:n], y[:n]
    ddp, out = sides.ddp, {"counts": counts}

    def grads():
        return [B.to_numpy(p.grad).astype(np.float64).ravel() for p in ddp.parameters()]

    ddp.zero_grad()
    with ddp.no_sync():
        sides.manual_backward(xs[a:b], ys[a:b], 1.0)
    local = torch.from_numpy(np.concatenate(grads()))  # this rank's own mean-loss gradient
    every = [torch.zeros_like(local) for _ in range(world)]
    every = [e.to(comm_device()) for e in every]
    dist.all_gather(every, local.to(comm_device()))
    predicted = P.mean_of_means_gap([e.cpu().numpy() for e in every], counts)
    ddp.zero_grad()
    sides.manual_backward(xs[a:b], ys[a:b], 1.0)
    plain = np.concatenate(grads())
    ddp.zero_grad()
    sides.manual_backward(xs[a:b], ys[a:b], P.global_mean_scale(b - a))
    weighted = np.concatenate(grads())
    ddp.zero_grad()
    tplain = None
    if sides.tddp is not None:
        sides.tddp.zero_grad()
        sides.torch_backward(xs[a:b], ys[a:b], 1.0)
        tplain = np.concatenate([p.grad.detach().cpu().numpy().ravel() for p in sides.tddp.parameters()])
        sides.tddp.zero_grad()
    if rank == 0:
        _, _, xt, yt = sides.place(xs, ys)
        sides.single.zero_grad()
        sides.tcrit(sides.single(xt), yt).backward()
        whole = np.concatenate([p.grad.detach().cpu().numpy().ravel() for p in sides.single.parameters()])
        sides.single.zero_grad()
        out.update(gap_norm=float(np.linalg.norm(predicted)),
                   manual_gap_error=float(np.max(np.abs((plain - whole) - predicted))),
                   torch_gap_error=None if tplain is None else float(np.max(np.abs((tplain - whole) - predicted))),
                   weighted_error=float(np.max(np.abs(weighted - whole))))
    return out


def main(cfg: Config):
    if cfg.resume or cfg.save_every:
        raise SystemExit("ddp: --resume and --save-every: this experiment is a short check that writes no checkpoints; "
                         "the batch experiments (`run digits --nproc N --save-every K`, ...) checkpoint and resume "
                         "on any number of processes")
    fail = parse_fail_at(cfg.fail_at)
    tdev, mdev = _lab.resolve_device(cfg.device, cfg.backend)
    with process_group(cfg, tdev) as (rank, world):
        return _run(cfg, rank, world, tdev, mdev, fail)


def _run(cfg, rank, world, tdev, mdev, fail):
    (xtr, ytr), (xte, yte) = load(cfg)
    epochs = _lab.quick_cap(cfg, "epochs", 1)
    rng = np.random.default_rng(cfg.seed)
    per_step = world * cfg.accumulate  # a rank needs one example per micro-batch
    order = [idx for idx in _lab.batch_order(rng, len(xtr), cfg.batch_size, epochs) if len(idx) >= per_step]
    if not order:
        raise SystemExit(f"ddp: --batch-size {cfg.batch_size} is smaller than {per_step} (ranks x --accumulate): "
                         f"every rank needs at least one example per micro-batch")
    sides = Sides(cfg, rank, world, xtr.shape[1], tdev, mdev)
    gap = gap_check(cfg, sides, xtr, ytr)
    c0 = sides.ddp.comm_stats["collectives"]
    log = _lab.RunLogger(NAME, cfg) if rank == 0 else None
    drift, vs_single, unequal_steps = [], [], 0
    hist = {i: [] for i in cfg.impls}
    from tqdm.auto import tqdm

    try:
        bar = tqdm(range(len(order)), desc=f"ddp rank {rank}/{world}", leave=False, dynamic_ncols=True,
                   disable=rank != 0 or not cfg.progress or None)
        for s in bar:
            if fail is not None and (rank, s) == fail:
                raise RuntimeError(f"--fail-at {cfg.fail_at}: planted failure on rank {rank} at step {s}")
            idx = order[s]
            n = len(idx)
            a, b = P.shard_bounds(n, world, rank)
            unequal_steps += n % world != 0
            micro = np.array_split(idx[a:b], cfg.accumulate)
            # d(loss)/d(micro-batch mean loss): the whole batch's mean, or DDP's mean of per-rank means
            scales = ([world * len(m) / n for m in micro] if cfg.mean == "global"
                      else [1.0 / cfg.accumulate] * cfg.accumulate)
            sums = sides.step(xtr, ytr, micro, scales)
            loss = torch.tensor([sums.get(i, 0.0) for i in _lab.IMPLS], dtype=torch.float64, device=comm_device())
            dist.all_reduce(loss)  # the sum over every example of the global batch
            loss = loss.cpu()
            if rank == 0:
                sides.single_step(xtr[idx], ytr[idx])
                pm = sides.params("manual") if "manual" in cfg.impls else None
                pt = sides.params("torch") if "torch" in cfg.impls else None
                ps = sides.params("single")
                if pm is not None and pt is not None:
                    drift.append(maxdiff(pm, pt))
                    log.scalar_all("parity/max_abs_param_diff", drift[-1], s)
                vs_single.append(max(maxdiff(p, ps) for p in (pm, pt) if p is not None))
                log.scalar_all("parity/max_abs_diff_vs_one_process", vs_single[-1], s)
                for k, i in enumerate(_lab.IMPLS):
                    if i in cfg.impls:
                        hist[i].append(float(loss[k]) / n)
                log.scalar("loss/train", {i: hist[i][-1] for i in cfg.impls}, s)
                log.scalar("comm/seconds", {"manual": sides.ddp.comm_stats["seconds"]}, s)
        bar.close()
        acc = sides.accuracy(xte, yte) if rank == 0 else None
        end_spread = {i: spread(sides.params(i)) for i in cfg.impls}
    except BaseException:
        if log is not None:
            log.status = "failed"
            log.close()
        raise
    if rank != 0:
        return {"rank": rank, "status": "ok", "claims": [], "results": {}}
    steps = len(order)
    collectives = sides.ddp.comm_stats["collectives"] - c0
    n_buckets = len(sides.ddp.bucket_sizes)
    tol = _lab.DRIFT_TOL[cfg.dtype]
    learn = (LEARN_MIN_QUICK if cfg.quick else LEARN_MIN)[cfg.data]
    for i in cfg.impls:
        log.scalar("accuracy/test", {i: acc[i]}, steps)
    log.close()
    Claim, ran = _lab.Claim, (lambda d: {i: d[i] for i in cfg.impls})  # the impls --impl ran
    both_gaps = {i: gap[f"{i}_gap_error"] for i in _lab.IMPLS if gap[f"{i}_gap_error"] is not None}
    claims = [  # the checks on one side only are the manual DDP's own (torch DDP's internals are not visible)
        Claim.each(f"wrapping gives every rank rank 0's weights: spread across ranks 0 after (before: "
                   f"{sides.spread_before:.3g})", {"manual": sides.spread_after},
                   lambda s: s == 0.0 and (world == 1 or sides.spread_before > 0)),
        Claim.each(f"mean of per-rank means - whole-batch mean = sum_r (1/W - n_r/N) g_r on shards {gap['counts']} "
                   f"(|gap| = {gap['gap_norm']:.3g}; error <= {tol:g})", both_gaps, lambda e: e <= tol),
        Claim.each(f"weighting each rank's gradient by W n_r / N gives the whole batch's mean gradient (<= {tol:g})",
                   {"manual": gap["weighted_error"]}, lambda e: e <= tol),
        Claim.each(f"{cfg.accumulate} micro-batch(es) per step: one all_reduce per bucket per step "
                   f"({n_buckets} bucket(s) x {steps} steps)", {"manual": collectives} if "manual" in cfg.impls else {},
                   lambda c: c == n_buckets * steps),
        Claim.each("every rank ends with the same parameters, bit for bit", ran(end_spread), lambda s: s == 0.0),
        Claim.each(f"the data-parallel MLP learns {cfg.data}: test accuracy >= {learn}", ran(acc), lambda a: a >= learn),
    ]
    if cfg.mean == "global":
        claims.insert(3, Claim.each(f"after every step, data-parallel = one process on the whole batch (max |diff| <= "
                                    f"{tol:g}; {unequal_steps} of {steps} steps had unequal shards)",
                                    {"manual": max(vs_single)}, lambda d: d <= tol))
    claims = [c for c in claims if c.holds_manual is not None or c.holds_torch is not None]  # --impl
    results = {i: {"test_accuracy": acc[i], "final_loss": hist[i][-1]} for i in cfg.impls}
    results["one_process"] = {"test_accuracy": acc["single"]}
    dp = {"world_size": world, "backend": dist.get_backend(), "steps": steps, "unequal_steps": unequal_steps,
          "buckets": sides.ddp.bucket_names, "bucket_bytes": sides.ddp.bucket_sizes,
          "comm": dict(sides.ddp.comm_stats), "max_diff_vs_one_process": max(vs_single), "gap_check": gap,
          "spread_before_wrap": sides.spread_before, "spread_end": end_spread}
    return _lab.result(cfg, log, results, claims, drift=max(drift) if drift else None, data_parallel=dp,
                       history={"loss/train": hist})


# -- torchrun entry ----------------------------------------------------------------------------

def cli(argv=None) -> int:
    from .runner import add_config_arguments, config_from_args, exit_code, print_summary, write_json

    parser = argparse.ArgumentParser(prog="torchrun --nproc-per-node N -m experiments.ddp",
                                     description=f"{SUMMARY} (guide: {SECTION})")
    add_config_arguments(parser, Config)
    parser.add_argument("--json", metavar="PATH", help="rank 0 writes the config, metrics and claims as JSON")
    args = parser.parse_args(argv)
    cfg = config_from_args(Config, args)
    rank = int(os.environ.get("RANK", 0))
    from ._threads import one_thread
    from .signals import handle_signals

    with handle_signals(), one_thread():  # SIGTERM from torchrun, like Ctrl-C, closes rank 0's logs
        # a failure prints its traceback and one line naming the rank, then ends this rank at once
        metrics = _dist.run_rank(lambda: main(cfg), rank_of=rank)
    if rank != 0:
        return 0
    print_summary({NAME: metrics})
    dp = metrics["data_parallel"]
    print(f"\n{dp['world_size']} rank(s) on {dp['backend']}; {dp['steps']} steps; {len(dp['buckets'])} gradient "
          f"bucket(s); {dp['comm']['collectives']} all_reduce calls, {dp['comm']['seconds']:.3f} s in them on rank 0")
    print(f"run logged under {metrics['logdir']}")
    if args.json:
        write_json(args.json, {NAME: metrics})
    return exit_code({NAME: metrics})


if __name__ == "__main__":
    sys.exit(cli())
