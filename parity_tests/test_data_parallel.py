"""The batch experiments on several processes (experiments/_dist.py): `_lab.Twins` sharded over real
process groups of 2 and 3 ranks (gloo on 127.0.0.1, forked by test_ddp's forkserver harness), against
one process on the whole batch computed here in the test process.

Every step of a sharded run is the whole batch's step: each rank's loss gradient is seeded with
W d_r / D (its share of the loss's mean denominator), and DDP's average of the W gradients is then the
whole batch's gradient, also for unequal shards, for a batch smaller than the world (a surplus rank
runs one example with a zero seed), and for a cross-entropy whose denominator counts class weights
and skips ignore_index. Tolerance: float64; the sharded sums and the one-process sums differ in
order only, so they agree to rounding (test_ddp.py measured 2.2e-16 on values ~0.5; TOL = 1e-13 as
there). Without the W d_r / D seed (DDP's plain mean of per-rank means) the unequal-shard steps
below differ by > 1e-3: `test_the_seed_is_what_makes_it_the_whole_batch` plants that.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import signal

import numpy as np
import pytest

from experiments import _dist, _lab, checkpoint
from manual import nn, optim

from test_ddp import TOL, _ok, run_group  # noqa: E402  (the forkserver harness: ranks never forked from pytest)

pytestmark = pytest.mark.ddp

STEPS = 6
# batch sizes per step: equal shards, unequal ones (7 = 3+2+2 on 3 ranks), and fewer examples than ranks
SIZES = [12, 7, 2, 12, 5, 1]
BN_SIZES = [12, 8, 6, 12, 10, 4]  # batch norm in training needs 2+ examples per rank


def _case(name):
    """(model, criterion, optimizer factory, x, y): the same on every process (seeded)."""
    rng = np.random.default_rng(3)
    manual_seed = 11
    from manual import init

    init.manual_seed(manual_seed)
    x = rng.normal(size=(48, 4))
    if name == "mse":
        model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
        return model, nn.MSELoss(), (lambda p: optim.SGD(p, lr=0.1, momentum=0.9)), x, np.tanh(x[:, :2] * 2)
    if name == "ce-weighted-ignore":  # the mean divides by the summed class weights of the counted targets
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        y = rng.integers(0, 3, size=48)
        y[rng.random(48) < 0.3] = -100
        y[:2] = (0, 1)  # the one-example step takes x[0]: a counted target
        weight = np.array([0.5, 2.0, 1.25])
        crit = nn.CrossEntropyLoss(weight=weight, ignore_index=-100)
        return model, crit, (lambda p: optim.Adam(p, lr=0.05)), x, y
    if name == "batchnorm":  # per-rank batch statistics: sharded != one process, but manual == torch
        # SGD, not Adam: the bias before batch norm has a true gradient of 0, so its computed gradient is
        # rounding noise (~1e-17), which Adam divides by its own RMS into lr-sized steps: 1.6e-10 apart
        # between manual and torch even in one process (measured); SGD keeps noise noise-sized
        model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))
        return model, nn.BCEWithLogitsLoss(), (lambda p: optim.SGD(p, lr=0.1, momentum=0.9)), x, (x[:, :1] > 0).astype(float)
    raise ValueError(name)


def _batches(n_examples, name):
    rng = np.random.default_rng(5)
    return [rng.choice(n_examples, size, replace=False) for size in (BN_SIZES if name == "batchnorm" else SIZES)]


def _train(name, cfg, seed_scale=True):
    """STEPS steps of Twins on `name`; returns {impl/param: final value, loss/impl: [per step]}."""
    model, crit, make, x, y = _case(name)
    twins = _lab.Twins(model, crit, make, cfg)
    losses = {i: [] for i in twins.impls}
    for idx in _batches(len(x), name):
        if not seed_scale:  # DDP's plain mean of per-rank means: every rank's seed 1
            orig = _dist.shard
            _dist.shard = lambda c, a, b: (*orig(c, a, b)[:2], 1.0, 1.0 / _dist.world_size())
        try:
            out = twins.step(x[idx], y[idx])
        finally:
            if not seed_scale:
                _dist.shard = orig
        for i, o in out.items():
            losses[i].append(o["loss"])
    rec = {f"{impl}/{n}": v for impl in twins.impls for n, v in twins.params(impl).items()}
    rec.update({f"loss/{i}": np.array(v) for i, v in losses.items()})
    return rec, twins


def _cfg(tmp):
    return _lab.RunConfig(device="cpu", dtype="float64", progress=False, logdir=str(tmp))


def _sharded_worker(rank, world, out, name, seed_scale):
    with _dist.sharding(True):
        rec, twins = _train(name, _cfg(out), seed_scale)
    assert twins.sharded and twins.mddp is not None and twins.tddp is not None
    np.savez(os.path.join(out, f"rank{rank}.npz"), **rec)


def _sharded(tmp_path, world, name, seed_scale=True):
    codes, errors, _ = run_group(_sharded_worker, world, tmp_path, name, seed_scale)
    _ok(codes, errors)
    return [dict(np.load(tmp_path / f"rank{r}.npz")) for r in range(world)]


def _maxdiff(a, b, keys):
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in keys)


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("name", ["mse", "ce-weighted-ignore"])
def test_sharded_steps_equal_one_process_on_the_whole_batch(tmp_path, world, name):
    recs = _sharded(tmp_path, world, name)
    one, _ = _train(name, _cfg(tmp_path / "one"))  # this process: world 1, nothing sharded
    params = [k for k in one if not k.startswith("loss/")]
    for r in recs:
        assert set(r) == set(one)
        assert _maxdiff(r, recs[0], r) == 0.0  # every rank holds the same bits
    for impl in ("manual", "torch"):
        keys = [k for k in params if k.startswith(impl + "/")]
        assert _maxdiff(recs[0], one, keys) <= TOL, impl
        # the loss each step reports is the whole batch's, summed over the ranks' shares
        np.testing.assert_allclose(recs[0][f"loss/{impl}"], one[f"loss/{impl}"], rtol=1e-13, atol=0)
    init = _case(name)[0].state_dict()
    assert max(float(np.max(np.abs(one[f"manual/{n}"] - init[n]))) for n in init) > 1e-2  # the steps moved the weights


def test_the_seed_is_what_makes_it_the_whole_batch(tmp_path):
    """Planted: every rank seeded with 1 (DDP's mean of per-rank means). The unequal-shard steps
    (7 on 3 ranks, 2 and 1 examples on 3 ranks) then take another step: far beyond TOL."""
    recs = _sharded(tmp_path, 3, "mse", seed_scale=False)
    one, _ = _train("mse", _cfg(tmp_path / "one"))
    keys = [k for k in one if k.startswith("manual/")]
    assert _maxdiff(recs[0], one, keys) > 1e-3


def test_batch_norm_keeps_per_rank_statistics_on_both_sides(tmp_path):
    recs = _sharded(tmp_path, 2, "batchnorm")
    one, _ = _train("batchnorm", _cfg(tmp_path / "one"))
    names = [k.split("/", 1)[1] for k in one if k.startswith("manual/")]
    drift = max(float(np.max(np.abs(recs[0][f"manual/{n}"] - recs[0][f"torch/{n}"]))) for n in names)
    assert drift <= TOL  # manual DDP and torch DDP agree: both normalise each rank's shard
    assert _maxdiff(recs[0], one, [f"manual/{n}" for n in names]) > 1e-4  # and that is not the whole batch's


# -- logging, stopping and resuming on several ranks --------------------------------------------

def _segment_run(cfg, stop_rank=None, stop_step=None, name="mse"):
    """One _lab.train segment in the experiments' shape on `name`'s data, seeded mini-batches of 9."""
    rng = _lab.seeded(cfg)
    model, crit, make, x, y = _case(name)
    with _lab.RunLogger("dp-test", cfg) as log:
        twins = _lab.Twins(model, crit, make, cfg)

        def batches(step):
            if stop_step == step and _dist.rank() == stop_rank:
                os.kill(os.getpid(), signal.SIGTERM)  # this rank alone gets the signal
            idx = rng.choice(len(x), 9, replace=False)
            return x[idx], y[idx]

        hist = _lab.train(twins, log, batches, 10, progress=False)
    return hist, {f"{i}/{n}": v for i in twins.impls for n, v in twins.params(i).items()}


def _logged_worker(rank, world, out, stop_rank, stop_step, resume, name):
    cfg = dataclasses.replace(_cfg(os.path.join(out, "runs")), save_every=4 if stop_rank is None else 0, resume=resume)
    with _dist.sharding(True), checkpoint.handle_signals():
        try:
            hist, params = _segment_run(cfg, stop_rank, stop_step, name)
        except checkpoint.Stop as e:
            with open(os.path.join(out, f"rank{rank}.stop"), "w") as f:
                f.write(e.name)
            return 0
    np.savez(os.path.join(out, f"rank{rank}.npz"), **params)
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(hist, f)


def test_rank_0_alone_logs_and_checkpoints(tmp_path):
    codes, errors, _ = run_group(_logged_worker, 2, tmp_path, None, None, "", "mse")
    _ok(codes, errors)
    (run,) = glob.glob(str(tmp_path / "runs" / "dp-test" / "*"))  # one run folder, rank 0's
    assert run.endswith("_nproc=2")  # named as a 2-process run: TensorBoard's run list tells it apart
    assert sorted(os.listdir(run)) == ["checkpoints", "manual", "torch"]
    assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == [
        "seg0-step0000004.safetensors", "seg0-step0000008.safetensors", "seg0-step0000010-end.safetensors"]
    state = checkpoint.load(os.path.join(run, "checkpoints", "seg0-step0000008.safetensors"))
    assert state["world_size"] == 2 and state["per_rank_statistics"] is False
    h0, h1 = (json.load(open(tmp_path / f"rank{r}.json")) for r in range(2))
    assert h0 == h1 and h0["steps"] == 10 and h0["status"] == "ok"


def test_one_ranks_sigterm_stops_every_rank_at_the_same_step_and_resumes_on_other_counts(tmp_path):
    """Rank 1 alone gets SIGTERM during step 5: both ranks stop after it (the stop is agreed on at the
    step boundary), rank 0 writes the checkpoint. It resumes on 1 process and on 3, each continuing
    the whole-batch steps: equal to the uninterrupted run to rounding (another sum order)."""
    codes, errors, _ = run_group(_logged_worker, 2, tmp_path, 1, 5, "", "mse")
    _ok(codes, errors)
    assert [open(tmp_path / f"rank{r}.stop").read() for r in range(2)] == ["SIGTERM", "SIGTERM"]
    (path,) = glob.glob(str(tmp_path / "runs" / "dp-test" / "*" / "checkpoints" / "*.safetensors"))
    assert os.path.basename(path) == "seg0-step0000006.safetensors" and checkpoint.load(path)["world_size"] == 2

    ref_hist, ref = _segment_run(_cfg(tmp_path / "ref"))  # uninterrupted, one process
    hist1, one = _segment_run(dataclasses.replace(_cfg(tmp_path / "runs"), resume=path))
    assert hist1["steps"] == 10 and any("resumed on 1 rank(s) from a checkpoint written on 2" in n
                                        for n in _notes(tmp_path / "runs"))
    assert _maxdiff(one, ref, ref) <= TOL
    np.testing.assert_allclose(hist1["loss"]["manual"], ref_hist["loss"]["manual"], rtol=1e-12, atol=0)

    out3 = tmp_path / "three"
    out3.mkdir()
    codes, errors, _ = run_group(_logged_worker, 3, out3, None, None, path, "mse")
    _ok(codes, errors)
    three = dict(np.load(out3 / "rank0.npz"))
    assert _maxdiff(three, ref, ref) <= TOL


def _notes(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    notes = []
    for d in glob.glob(str(runs / "dp-test" / "*" / "manual")):
        acc = EventAccumulator(d, size_guidance={"tensors": 0})
        acc.Reload()
        for tag in acc.Tags()["tensors"]:
            if tag.startswith("dp-test/events"):
                notes += [e.tensor_proto.string_val[0].decode() for e in acc.Tensors(tag)]
    return notes


def test_batch_norm_checkpoint_refuses_another_rank_count(tmp_path):
    codes, errors, _ = run_group(_logged_worker, 2, tmp_path, None, None, "", "batchnorm")
    _ok(codes, errors)
    path = sorted(glob.glob(str(tmp_path / "runs" / "dp-test" / "*" / "checkpoints" / "*.safetensors")))[-1]
    state = checkpoint.load(path)
    assert state["per_rank_statistics"] is True
    with pytest.raises(checkpoint.CheckpointError, match=r"written on 2 process\(es\), resumed on 1: this model "
                                                         r"has batch norm.*--nproc 2"):
        _segment_run(dataclasses.replace(_cfg(tmp_path / "runs"), resume=path), name="batchnorm")
    checkpoint.check_world({**state, "path": path}, 2)  # the same count is fine
