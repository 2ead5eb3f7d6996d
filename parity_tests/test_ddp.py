"""Hand-written data parallelism (manual.parallel) against torch's DistributedDataParallel.

Real process groups: 2 and 3 processes on 127.0.0.1 over gloo, started by multiprocessing's
forkserver (a fresh, single-threaded server process that imports torch once; each rank is forked
from it, never from the threaded test process), each with a hard deadline. One group
per world size runs every numerical claim; its ranks write what they saw to .npz files and
the assertions run here, in the test process.

Tolerances: every comparison is float64. The three sides (manual DDP, torch DDP, one process
on the whole batch) do the same arithmetic in different orders (per-rank sums then an
all_reduce vs one sum over the whole batch; NumPy's vs torch's matmul kernels), so they agree
to rounding: over every check below (3 SGD-with-momentum steps, accumulation, unequal shards,
batch norm, SyncBatchNorm) the measured worst case was 2.2e-16 on values of size ~0.5;
TOL = 1e-13 leaves ~500x margin and is still 10 orders of magnitude below any real difference
(the unequal-shard gap asserted below is > 1e-3, per-rank vs whole-batch batch norm > 1e-4).
"""

from __future__ import annotations

import datetime
import json
import multiprocessing as mp
import os
import time
import traceback

import numpy as np
import pytest
import torch
import torch.distributed as dist

import manual
from manual import nn, optim
from manual import _backend as B
from manual import parallel as P
from torch_ref import twin

TOL = 1e-13
DEADLINE_S = 60  # hard limit on one process group's life in these tests

# Ranks are forked from a forkserver, not from the test process: the test process runs threads
# (the TCPStore server, xdist), and a rank forked from it once hung in its TCPStore connect in a
# clean-clone CI run (a fork-with-threads deadlock). The forkserver is a fresh interpreter with one
# thread, started once per test process; it preloads torch and this module, so a rank costs a fork.
pytestmark = pytest.mark.ddp


# -- launching a group -----------------------------------------------------------------------

def _child(fn, rank, world, port, out, timeout_s, init, args):
    import faulthandler

    code = 0
    stacks = open(os.path.join(out, f"rank{rank}.stack"), "w")
    faulthandler.dump_traceback_later(DEADLINE_S - 5, file=stacks)  # where a hung rank was, for the report
    try:
        torch.set_num_threads(1)
        if init:
            store = dist.TCPStore("127.0.0.1", port, world, is_master=False, timeout=datetime.timedelta(seconds=30))
            P.init_process_group(store=store, rank=rank, world_size=world, timeout=timeout_s)
        else:  # what torchrun hands its workers: env:// rendezvous on the agent's (here: the test's) store
            os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                              MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), TORCHELASTIC_USE_AGENT_STORE="True")
        code = fn(rank, world, out, *args) or 0
    except BaseException:
        code = 1
        with open(os.path.join(out, f"rank{rank}.err"), "w") as f:
            f.write(traceback.format_exc())
    finally:
        os._exit(code)  # skip torch's exit handlers: the exit code is the report


# What the forkserver imports once, before it forks any rank (seconds each, otherwise paid per rank):
# torch's DDP imports torch._dynamo lazily (~3 s); rank 0 of the experiment logs to TensorBoard.
_PRELOAD = ["numpy", "torch", "torch.distributed", "torch._dynamo", "torch.utils.tensorboard",
            "manual", "manual.parallel", "torch_ref", "experiments.ddp", __name__]


def _context():
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)  # read when the server starts (the first group), ignored after
    return ctx


def run_group(fn, world, out, *args, timeout_s=20.0, deadline_s=DEADLINE_S, init=True):
    """Run fn(rank, world, out, *args) on `world` ranks forked by the forkserver; returns ([exit codes], [error texts], seconds).

    init=True: the group is initialized before fn runs; init=False: fn finds torchrun's environment.
    A rank's exit code is 1 if fn raised (its traceback in out/rank<r>.err), else what fn returned (or 0).

    The test process holds the TCPStore (port chosen by the OS: no port races); any rank still
    alive at the deadline is killed and the test fails, so nothing here can hang.
    """
    store = dist.TCPStore("127.0.0.1", 0, None, is_master=True, wait_for_workers=False,
                          timeout=datetime.timedelta(seconds=30))
    ctx = _context()
    procs = [ctx.Process(target=_child, args=(fn, r, world, store.port, str(out), timeout_s, init, args)) for r in range(world)]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join(max(deadline_s - (time.perf_counter() - t0), 0.1))
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    seconds = time.perf_counter() - t0
    if hung:
        stacks = {r: open(os.path.join(out, f"rank{r}.stack")).read() for r in range(world)}
        raise AssertionError(f"ranks {hung} still running after {deadline_s} s: killed (a hang); stacks: {stacks}")
    errors = []
    for r in range(world):
        path = os.path.join(out, f"rank{r}.err")
        errors.append(open(path).read() if os.path.exists(path) else "")
    return [p.exitcode for p in procs], errors, seconds


def _ok(codes, errors):
    assert codes == [0] * len(codes), "\n".join(f"rank {r} exit {c}:\n{e}" for r, (c, e) in enumerate(zip(codes, errors)))


# -- the claims, one group per world size -------------------------------------------------------

N_IN, N_HID, N_OUT = 5, 7, 3
STEPS, BATCH = 3, 6  # 6 splits evenly over 2 and 3 ranks; the unequal-shard check uses 7
LR, MOMENTUM = 0.1, 0.9
SEED0 = 100  # rank r initialises its weights from seed SEED0 + r: wrapping must broadcast rank 0's


def _data(n, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, N_IN)), rng.integers(0, N_OUT, n)


def _manual_model(seed):
    manual.init.manual_seed(seed)
    return nn.Sequential(nn.Linear(N_IN, N_HID), nn.Tanh(), nn.Linear(N_HID, N_OUT)).to(dtype="float64")


def _bn_model(seed):
    manual.init.manual_seed(seed)
    return nn.Sequential(nn.Linear(N_IN, N_HID), nn.BatchNorm1d(N_HID), nn.Tanh(), nn.Linear(N_HID, N_OUT)).to(dtype="float64")


def _buffers(model):
    """Running mean and variance (num_batches_tracked is an integer count: compared elsewhere by the step count)."""
    return {n: B.to_numpy(v).astype(np.float64).copy() for n, v in model.named_buffers() if "running" in n}


def _torch_grads(tmodel):
    return {n: p.grad.detach().numpy().copy() for n, p in tmodel.named_parameters()}


def _manual_grads(model):
    return {n: np.array(p.grad) for n, p in model.named_parameters()}


def _params(model):
    if isinstance(model, torch.nn.Module):
        return {n: p.detach().numpy().copy() for n, p in model.named_parameters()}
    return {n: np.array(p.data) for n, p in model.named_parameters()}


def _record(store, tag, d):
    for n, a in d.items():
        store.setdefault(f"{tag}/{n.removeprefix('module.')}", []).append(a)


def _claims_worker(rank, world, out, bucket_cap_mb):
    rec, info = {}, {}
    crit, tcrit = nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()

    # 1. Per-step parity: manual DDP, torch DDP, and one process on the whole batch (autograd).
    model = _manual_model(SEED0 + rank)
    _record(rec, "init_before_wrap", _params(model))
    ddp = P.DistributedDataParallel(model, bucket_cap_mb=bucket_cap_mb)
    _record(rec, "init_after_wrap", _params(model))
    opt = optim.SGD(ddp.parameters(), lr=LR, momentum=MOMENTUM)
    tddp = torch.nn.parallel.DistributedDataParallel(twin(model), bucket_cap_mb=bucket_cap_mb)
    topt = torch.optim.SGD(tddp.parameters(), lr=LR, momentum=MOMENTUM, foreach=False)
    single = twin(_manual_model(SEED0))  # rank 0's initial weights, built independently of any broadcast
    sopt = torch.optim.SGD(single.parameters(), lr=LR, momentum=MOMENTUM, foreach=False)
    x, y = _data(STEPS * BATCH, seed=1)
    a, b = P.shard_bounds(BATCH, world, rank)
    info["buckets"] = ddp.bucket_names
    info["n_params"] = len(list(model.parameters()))
    info["shares_memory"] = [bk.tensor.data_ptr() == bk.flat.ctypes.data for bk in ddp._buckets]
    calls = []
    for s in range(STEPS):
        xb, yb = x[s * BATCH:(s + 1) * BATCH], y[s * BATCH:(s + 1) * BATCH]
        opt.zero_grad()
        c0 = ddp.comm_stats["collectives"]
        crit(ddp(xb[a:b]), yb[a:b])
        ddp.backward(crit.backward())
        calls.append(ddp.comm_stats["collectives"] - c0)
        _record(rec, "step_grad_manual", _manual_grads(ddp))
        opt.step()
        topt.zero_grad()
        tcrit(tddp(torch.from_numpy(xb[a:b])), torch.from_numpy(yb[a:b])).backward()
        _record(rec, "step_grad_torch", _torch_grads(tddp))
        topt.step()
        sopt.zero_grad()
        tcrit(single(torch.from_numpy(xb)), torch.from_numpy(yb)).backward()
        sopt.step()
        _record(rec, "step_manual", _params(ddp))
        _record(rec, "step_torch", _params(tddp))
        _record(rec, "step_single", _params(single))
    info["collectives_per_sync"] = calls

    # 2. no_sync: two micro-batches per rank, communication only after the second.
    model = _manual_model(SEED0)
    ddp = P.DistributedDataParallel(model, bucket_cap_mb=bucket_cap_mb)
    tddp = torch.nn.parallel.DistributedDataParallel(twin(model), bucket_cap_mb=bucket_cap_mb)
    single = twin(_manual_model(SEED0))
    x, y = _data(2 * BATCH, seed=2)  # global batch of 12: each rank's shard cut into 2 equal micro-batches
    a, b = P.shard_bounds(2 * BATCH, world, rank)
    m = (b - a) // 2
    micro = [(x[a:a + m], y[a:a + m]), (x[a + m:b], y[a + m:b])]
    half = np.asarray(0.5)  # d (mean of the 2 micro-batch losses) / d (each)
    c0 = ddp.comm_stats["collectives"]
    with ddp.no_sync():
        crit(ddp(micro[0][0]), micro[0][1])
        ddp.backward(crit.backward(half))
    info["collectives_in_no_sync"] = ddp.comm_stats["collectives"] - c0
    _record(rec, "nosync_pre_manual", _manual_grads(ddp))
    crit(ddp(micro[1][0]), micro[1][1])
    ddp.backward(crit.backward(half))
    _record(rec, "nosync_post_manual", _manual_grads(ddp))
    with tddp.no_sync():
        (0.5 * tcrit(tddp(torch.from_numpy(micro[0][0])), torch.from_numpy(micro[0][1]))).backward()
    _record(rec, "nosync_pre_torch", _torch_grads(tddp))
    (0.5 * tcrit(tddp(torch.from_numpy(micro[1][0])), torch.from_numpy(micro[1][1]))).backward()
    _record(rec, "nosync_post_torch", _torch_grads(tddp))
    tcrit(single(torch.from_numpy(x)), torch.from_numpy(y)).backward()
    _record(rec, "nosync_single", _torch_grads(single))

    # 3. Unequal shards: 7 examples over W ranks.
    n = 7
    x, y = _data(n, seed=3)
    a, b = P.shard_bounds(n, world, rank)
    xl, yl = x[a:b], y[a:b]
    info["counts"] = [P.shard_bounds(n, world, r)[1] - P.shard_bounds(n, world, r)[0] for r in range(world)]
    local = twin(_manual_model(SEED0))  # this rank's own gradient, plain autograd, no communication
    tcrit(local(torch.from_numpy(xl)), torch.from_numpy(yl)).backward()
    _record(rec, "unequal_local_autograd", _torch_grads(local))
    single = twin(_manual_model(SEED0))
    tcrit(single(torch.from_numpy(x)), torch.from_numpy(y)).backward()
    _record(rec, "unequal_single", _torch_grads(single))
    scale = P.global_mean_scale(b - a)
    info["scale"] = scale
    model = _manual_model(SEED0)
    ddp = P.DistributedDataParallel(model, bucket_cap_mb=bucket_cap_mb)
    crit(ddp(xl), yl)
    ddp.backward(crit.backward())
    _record(rec, "unequal_ddp_manual", _manual_grads(ddp))
    ddp.zero_grad()
    crit(ddp(xl), yl)
    ddp.backward(crit.backward(np.asarray(scale)))
    _record(rec, "unequal_weighted_manual", _manual_grads(ddp))
    tddp = torch.nn.parallel.DistributedDataParallel(twin(_manual_model(SEED0)), bucket_cap_mb=bucket_cap_mb)
    tcrit(tddp(torch.from_numpy(xl)), torch.from_numpy(yl)).backward()
    _record(rec, "unequal_ddp_torch", _torch_grads(tddp))
    tddp.zero_grad()
    (scale * tcrit(tddp(torch.from_numpy(xl)), torch.from_numpy(yl))).backward()
    _record(rec, "unequal_weighted_torch", _torch_grads(tddp))

    # 4. The same averaged step with manual on torch CPU tensors (buckets are torch tensors), and with
    #    gradient_as_bucket_view=True (each .grad left as a view into its NumPy bucket).
    x, y = _data(BATCH, seed=5)
    a, b = P.shard_bounds(BATCH, world, rank)
    for tag, kw, device in [("view", {"gradient_as_bucket_view": True}, "numpy"), ("torchcpu", {}, "cpu")]:
        ddp = P.DistributedDataParallel(_manual_model(SEED0).to(device), bucket_cap_mb=bucket_cap_mb, **kw)
        xl, yl = (x[a:b], y[a:b]) if device == "numpy" else (torch.from_numpy(x[a:b]), torch.from_numpy(y[a:b]))
        crit(ddp(xl), yl)
        ddp.backward(crit.backward())
        _record(rec, f"variant_{tag}", {n: B.to_numpy(p.grad).copy() for n, p in ddp.named_parameters()})
        if tag == "view":
            info["grads_are_bucket_views"] = [np.shares_memory(p.grad, bk.flat) for bk in ddp._buckets for p in bk.params]
    tddp = torch.nn.parallel.DistributedDataParallel(twin(_manual_model(SEED0)), bucket_cap_mb=bucket_cap_mb)
    tcrit(tddp(torch.from_numpy(x[a:b])), torch.from_numpy(y[a:b])).backward()
    _record(rec, "variant_torchddp", _torch_grads(tddp))

    # 5. Batch norm. (a) BatchNorm1d under DDP: per-rank statistics, rank 0's running statistics
    #    broadcast before each forward (torch's broadcast_buffers); (b) SyncBatchNorm: statistics of the
    #    whole batch, on unequal shards of 7 with each rank's loss weighted by W n_r / N.
    x, y = _data(2 * 7, seed=6)
    for tag in ("bn", "syncbn"):
        n = BATCH if tag == "bn" else 7
        a, b = P.shard_bounds(n, world, rank)
        model = _bn_model(SEED0)
        single = twin(model)  # plain torch BatchNorm1d on the whole batch
        if tag == "syncbn":
            model = P.SyncBatchNorm.convert_sync_batchnorm(model)
        ddp = P.DistributedDataParallel(model, bucket_cap_mb=bucket_cap_mb)
        opt = optim.SGD(ddp.parameters(), lr=LR, momentum=MOMENTUM)
        sopt = torch.optim.SGD(single.parameters(), lr=LR, momentum=MOMENTUM, foreach=False)
        if tag == "bn":
            tddp = torch.nn.parallel.DistributedDataParallel(twin(_bn_model(SEED0)), bucket_cap_mb=bucket_cap_mb)
            topt = torch.optim.SGD(tddp.parameters(), lr=LR, momentum=MOMENTUM, foreach=False)
        scale = world * (b - a) / n if tag == "syncbn" else 1.0
        for s in range(2):
            xb, yb = x[s * n:(s + 1) * n], y[s * n:(s + 1) * n]
            opt.zero_grad()
            crit(ddp(xb[a:b]), yb[a:b])
            ddp.backward(crit.backward(np.asarray(scale)))
            opt.step()
            _record(rec, f"{tag}_manual", {**_params(ddp), **_buffers(ddp)})
            if tag == "bn":
                topt.zero_grad()
                tcrit(tddp(torch.from_numpy(xb[a:b])), torch.from_numpy(yb[a:b])).backward()
                topt.step()
                _record(rec, f"{tag}_torch", {**_params(tddp), **_buffers(tddp)})
            sopt.zero_grad()
            tcrit(single(torch.from_numpy(xb)), torch.from_numpy(yb)).backward()
            sopt.step()
            _record(rec, f"{tag}_single", {**_params(single), **_buffers(single)})

    np.savez(os.path.join(out, f"rank{rank}.npz"), **{k: np.stack(v) for k, v in rec.items()})
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(info, f)


def _load(out, world):
    recs = [dict(np.load(os.path.join(out, f"rank{r}.npz"))) for r in range(world)]
    infos = [json.load(open(os.path.join(out, f"rank{r}.json"))) for r in range(world)]
    return recs, infos


def _maxdiff(rec, a, b):
    """max |rec[a/name] - rec[b/name]| over every parameter name (and step)."""
    names = [k.split("/", 1)[1] for k in rec if k.startswith(a + "/")]
    assert names, f"nothing recorded under {a}"
    return max(float(np.max(np.abs(rec[f"{a}/{n}"] - rec[f"{b}/{n}"]))) for n in names)


def _across_ranks(recs, tag):
    names = [k for k in recs[0] if k.startswith(tag + "/")]
    return max(float(np.max(np.abs(r[k] - recs[0][k]))) for r in recs[1:] for k in names)


@pytest.fixture(scope="module", params=[2, 3], ids=["2-ranks", "3-ranks"])
def group(request, tmp_path_factory):
    """One real process group per world size; every claim below reads what its ranks recorded."""
    world = request.param
    out = tmp_path_factory.mktemp(f"ddp{world}")
    cap = 200 / P._MB  # 200 bytes: the 4 float64 parameters (24..280 bytes) fall into 2 buckets
    codes, errors, seconds = run_group(_claims_worker, world, out, cap)
    _ok(codes, errors)
    recs, infos = _load(out, world)
    return world, recs, infos


def test_wrapping_gives_every_rank_rank0s_weights(group):
    world, recs, _ = group
    assert _across_ranks(recs, "init_before_wrap") > 0.1  # each rank drew its own weights
    assert _across_ranks(recs, "init_after_wrap") == 0.0  # a broadcast copies bits
    assert _maxdiff(recs[0], "init_before_wrap", "init_after_wrap") == 0.0  # ... of rank 0's


def test_every_step_manual_ddp_equals_torch_ddp_and_one_process(group):
    world, recs, _ = group
    for r, rec in enumerate(recs):
        for a, b in [("step_manual", "step_torch"), ("step_manual", "step_single"),
                     ("step_grad_manual", "step_grad_torch")]:
            for s in range(STEPS):
                step = {k: v[s:s + 1] for k, v in rec.items()}
                d = _maxdiff(step, a, b)
                assert d <= TOL, f"{world} ranks, rank {r}, step {s}: max |{a} - {b}| = {d:.3g} > {TOL}"
    # every rank receives the same all_reduce result and applies the same update: identical bits
    assert _across_ranks(recs, "step_manual") == 0.0
    assert _across_ranks(recs, "step_torch") == 0.0


def test_gradients_travel_in_flat_buckets_shared_with_numpy(group):
    world, recs, infos = group
    info = infos[0]
    # 200-byte cap, parameters in reverse order (as backward finishes them), DDP's "close the bucket
    # once it reaches the cap": 2.bias 24 B + 2.weight 168 B + 0.bias 56 B = 248 B >= 200; 0.weight 280 B
    assert info["buckets"] == [["2.bias", "2.weight", "0.bias"], ["0.weight"]]
    assert info["collectives_per_sync"] == [2] * STEPS  # one all_reduce per bucket, not per parameter (4)
    assert all(info["shares_memory"])  # torch reduces the NumPy bucket in place (torch.from_numpy, no copy)


def test_no_sync_accumulates_locally_then_averages(group):
    world, recs, infos = group
    assert infos[0]["collectives_in_no_sync"] == 0
    assert _across_ranks(recs, "nosync_pre_manual") > 1e-2  # each rank's own micro-batch gradient
    for r, rec in enumerate(recs):
        assert _maxdiff(rec, "nosync_pre_manual", "nosync_pre_torch") <= TOL, f"rank {r}: before the sync"
        assert _maxdiff(rec, "nosync_post_manual", "nosync_post_torch") <= TOL, f"rank {r}: after the sync"
        assert _maxdiff(rec, "nosync_post_manual", "nosync_single") <= TOL, f"rank {r}: vs the whole batch"
    assert _across_ranks(recs, "nosync_post_manual") == 0.0
    assert _across_ranks(recs, "nosync_post_torch") == 0.0


def test_unequal_shards_mean_of_means_gap_is_the_predicted_one(group):
    world, recs, infos = group
    counts = infos[0]["counts"]
    n = sum(counts)
    assert counts == [len(c) for c in np.array_split(np.arange(7), world)] and len(set(counts)) > 1
    names = [k.split("/", 1)[1] for k in recs[0] if k.startswith("unequal_single/")]
    for name in names:
        # by hand: (1/W) sum_r g_r - (1/N) sum_r n_r g_r, each g_r by plain autograd on rank r's shard
        g = [rec[f"unequal_local_autograd/{name}"][0] for rec in recs]
        predicted = sum((1 / world - c / n) * g_r for g_r, c in zip(g, counts))
        assert np.max(np.abs(predicted)) > 1e-3, f"{name}: a gap this small would not test anything"
        assert np.max(np.abs(P.mean_of_means_gap(g, counts) - predicted)) <= TOL
        for r, rec in enumerate(recs):
            single = rec[f"unequal_single/{name}"][0]
            for side in ("manual", "torch"):
                gap = rec[f"unequal_ddp_{side}/{name}"][0] - single
                assert np.max(np.abs(gap - predicted)) <= TOL, f"{side} DDP, rank {r}, {name}"
                weighted = rec[f"unequal_weighted_{side}/{name}"][0]
                assert np.max(np.abs(weighted - single)) <= TOL, f"{side}, weighted by W n_r / N, rank {r}, {name}"
    assert [i["scale"] for i in infos] == pytest.approx([world * c / n for c in counts], rel=1e-15)


def test_torch_tensor_buckets_and_gradient_as_bucket_view(group):
    world, recs, infos = group
    for r, rec in enumerate(recs):
        for tag in ("view", "torchcpu"):
            assert _maxdiff(rec, f"variant_{tag}", "variant_torchddp") <= TOL, f"rank {r}, {tag}"
    assert _across_ranks(recs, "variant_torchcpu") == 0.0
    assert all(infos[0]["grads_are_bucket_views"])


def test_batch_norm_under_ddp_uses_per_rank_statistics_as_torch_does(group):
    world, recs, _ = group
    for r, rec in enumerate(recs):
        d = _maxdiff(rec, "bn_manual", "bn_torch")  # parameters and running statistics, after each step
        assert d <= TOL, f"rank {r}: manual DDP vs torch DDP with BatchNorm1d: {d:.3g}"
        # per-rank statistics are not the whole batch's: the step differs from one process's
        assert _maxdiff(rec, "bn_manual", "bn_single") > 1e-4
    # rank 0's running statistics reach every rank before each forward, then each rank updates its own
    assert _across_ranks(recs, "bn_manual") > 0


def test_sync_batch_norm_equals_one_process_on_the_whole_batch(group):
    world, recs, _ = group
    for r, rec in enumerate(recs):
        d = _maxdiff(rec, "syncbn_manual", "syncbn_single")
        assert d <= TOL, f"rank {r}: SyncBatchNorm under DDP vs torch BatchNorm1d on the whole batch: {d:.3g}"
    assert _across_ranks(recs, "syncbn_manual") == 0.0


# -- failures end the group, name the rank, never hang ---------------------------------------

def _raises_on_rank1(rank, world, out):
    ddp = P.DistributedDataParallel(_manual_model(SEED0))
    crit = nn.CrossEntropyLoss()
    x, y = _data(4, seed=4)
    for step in range(3):
        if rank == 1 and step == 1:
            raise ValueError("planted failure on rank 1 at step 1")
        crit(ddp(x), y)
        ddp.backward(crit.backward())


def _stalls_on_rank1(rank, world, out):
    ddp = P.DistributedDataParallel(_manual_model(SEED0))
    crit = nn.CrossEntropyLoss()
    x, y = _data(4, seed=4)
    if rank == 1:  # alive, but never reaches the all_reduce: waits until rank 0 has given up
        t0 = time.perf_counter()
        while not os.path.exists(os.path.join(out, "rank0.err")) and time.perf_counter() - t0 < 10:
            time.sleep(0.05)
        return
    crit(ddp(x), y)
    ddp.backward(crit.backward())


def _different_model_on_rank1(rank, world, out):
    manual.init.manual_seed(0)
    hidden = N_HID + rank
    P.DistributedDataParallel(nn.Sequential(nn.Linear(N_IN, hidden), nn.Tanh(), nn.Linear(hidden, N_OUT)))


def test_a_rank_that_raises_ends_the_group_and_is_named(tmp_path):
    codes, errors, seconds = run_group(_raises_on_rank1, 2, tmp_path, timeout_s=30.0)
    assert codes == [1, 1], errors
    assert "planted failure on rank 1 at step 1" in errors[1]
    # rank 0 was waiting in the all_reduce: the peer's exit ends it with a message naming rank 0,
    # long before the 30 s timeout
    assert "rank 0 of 2: all_reduce of gradient bucket 0" in errors[0], errors[0]
    assert seconds < 15, f"took {seconds:.1f} s: rank 0 waited for the timeout instead of seeing the peer go"


def test_a_stalled_rank_times_out_instead_of_hanging(tmp_path):
    codes, errors, seconds = run_group(_stalls_on_rank1, 2, tmp_path, timeout_s=1.0)
    assert codes == [1, 0], errors
    assert "rank 0 of 2: all_reduce of gradient bucket 0" in errors[0], errors[0]
    assert "Timed out" in errors[0], errors[0]  # gloo's own words for the 1 s timeout
    assert seconds < 8, f"took {seconds:.1f} s with a 1 s timeout"


def test_ranks_with_different_models_are_refused(tmp_path):
    codes, errors, _ = run_group(_different_model_on_rank1, 2, tmp_path)
    assert codes == [1, 1], errors
    for r in range(2):
        assert f"rank {r}: DistributedDataParallel: ranks [1] hold a different model from rank 0" in errors[r]


# -- in-process pieces -------------------------------------------------------------------------

@pytest.mark.parametrize("n, world", [(7, 2), (7, 3), (6, 3), (2, 3), (64, 3)])
def test_shard_bounds_follow_array_split(n, world):
    expected = [(int(c[0]), int(c[-1]) + 1) if len(c) else None for c in np.array_split(np.arange(n), world)]
    got = [P.shard_bounds(n, world, r) for r in range(world)]
    assert [g if g[1] > g[0] else None for g in got] == expected
    assert got[-1][1] == n


def test_backend_is_gloo_on_cpu_and_numpy():
    assert P.backend_for(None) == "gloo" and P.backend_for("numpy") == "gloo" and P.backend_for("cpu") == "gloo"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to torch")
def test_backend_is_nccl_on_cuda():
    assert P.backend_for("cuda") == "nccl"


def test_wrapping_without_a_process_group_is_a_clear_error():
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="process group is not initialized.*init_process_group"):
        P.DistributedDataParallel(_manual_model(0))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="rank < world_size = 2, got rank 2"):
        P.shard_bounds(5, 2, 2)
    with pytest.raises(ValueError, match="timeout > 0 s, got 0.0 s"):
        P.init_process_group("gloo", timeout=0)
    with pytest.raises(ValueError, match="one gradient per count"):
        P.mean_of_means_gap([np.zeros(2)], [1, 2])


# -- the experiment: launched as torchrun launches it -------------------------------------------

def _experiment_rank(rank, world, out, argv):
    """experiments.ddp's command line on one rank, stdout and stderr kept per rank."""
    import contextlib

    from experiments import ddp

    with open(os.path.join(out, f"rank{rank}.out"), "w") as o, open(os.path.join(out, f"rank{rank}.stderr"), "w") as e:
        with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
            return ddp.cli(argv)


def _experiment_argv(tmp_path):
    # circles, one epoch of batch 32 over 750 points: 24 steps, the last of 14 examples cut 7/7
    return ["--data", "circles", "--quick", "--batch-size", "32", "--no-progress", "--timeout-s", "20",
            "--logdir", str(tmp_path / "runs"), "--json", str(tmp_path / "out.json")]


def test_experiment_rank0_alone_writes_and_every_claim_holds(tmp_path):
    codes, errors, _ = run_group(_experiment_rank, 2, tmp_path, _experiment_argv(tmp_path), init=False)
    stderr = [open(tmp_path / f"rank{r}.stderr").read() for r in range(2)]
    assert codes == [0, 0], (errors, stderr)
    assert open(tmp_path / "rank1.out").read() == ""  # rank 1 prints nothing ...
    assert os.listdir(tmp_path / "runs" / "ddp") and len(os.listdir(tmp_path / "runs" / "ddp")) == 1  # ... logs nothing
    m = json.load(open(tmp_path / "out.json"))["ddp"]
    dp = m["data_parallel"]
    assert dp["world_size"] == 2 and dp["backend"] == "gloo" and dp["steps"] == 24
    assert dp["gap_check"]["counts"] == [3, 2] and dp["gap_check"]["gap_norm"] > 1e-3
    assert [c["holds"] for c in m["claims"]] == [True] * len(m["claims"]), m["claims"]
    assert m["max_drift"] <= TOL and dp["max_diff_vs_one_process"] <= TOL
    assert dp["spread_before_wrap"] > 0.1 and dp["spread_end"] == {"manual": 0.0, "torch": 0.0}


def test_experiment_a_failing_rank_ends_the_job_named(tmp_path):
    argv = _experiment_argv(tmp_path) + ["--fail-at", "1:2"]
    codes, errors, seconds = run_group(_experiment_rank, 2, tmp_path, argv, init=False)
    stderr = [open(tmp_path / f"rank{r}.stderr").read() for r in range(2)]
    assert codes == [1, 1], (errors, stderr)
    assert "rank 1: failed: RuntimeError: --fail-at 1:2: planted failure on rank 1 at step 2" in stderr[1]
    assert "rank 0: failed: RuntimeError: rank 0 of 2: all_reduce of gradient bucket 0" in stderr[0], stderr[0]
    assert not os.path.exists(tmp_path / "out.json")  # a failed job claims nothing
    assert seconds < 30


@pytest.mark.slow  # ~10 CPU-seconds: torchrun and both workers each import torch from scratch
def test_torchrun_launches_the_experiment(tmp_path):
    """The real launcher: `torchrun --standalone --nproc-per-node 2 -m experiments.ddp` (manual side only,
    so the workers skip torch DDP's lazy torch._dynamo import; the forkserver tests above cover torch's DDP)."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "experiments.ddp", "--impl", "manual", *_experiment_argv(tmp_path)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    m = json.load(open(tmp_path / "out.json"))["ddp"]
    assert m["data_parallel"]["world_size"] == 2 and all(c["holds"] for c in m["claims"]), m["claims"]
    assert len(os.listdir(tmp_path / "runs" / "ddp")) == 1
    assert p.stdout.count("2 rank(s) on gloo") == 1  # one summary, from rank 0
