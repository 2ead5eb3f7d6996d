"""Checkpoints (experiments/checkpoint.py): the file format, refusal of damaged files, no pickle,
random-generator capture, manual <-> torch state transfer, and exact resume in-process (a real
SIGTERM at a chosen step, through the CLI's own handlers). The CLI subprocess versions of the
resume claim are in test_runs_robust.py."""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import pickle
import random
import signal
import threading

import numpy as np
import pytest
import torch

import manual
from experiments import _lab, checkpoint
from manual import nn, optim

# -- the file --------------------------------------------------------------------------------


def sample_state():
    rng = np.random.default_rng(1)
    return {
        "f64": rng.normal(size=(3, 4)),
        "f32": rng.normal(size=(5,)).astype(np.float32),
        "i64": np.arange(6, dtype=np.int64).reshape(2, 3),
        "u8": np.arange(7, dtype=np.uint8),
        "flags": np.array([True, False]),
        "scalar": np.array(2.5),
        "empty": np.zeros((0, 3)),
        "tensor": torch.arange(4, dtype=torch.float64) / 3,
        "by_index": {0: {"step": 3, "buf": np.ones(2)}, 7: {}},
        "betas": (0.9, 0.999),
        "numbers": [1, 2**70, -0.0, float("inf"), float("nan"), 1e-320, None, True, "text"],
    }


def assert_same(a, b, path="state"):
    assert type(a) is type(b), f"{path}: {type(a).__name__} came back as {type(b).__name__}"
    if isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, path
        assert a.tobytes() == b.tobytes(), path  # bit for bit
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), path
    elif isinstance(a, float):
        assert np.float64(a).tobytes() == np.float64(b).tobytes(), f"{path}: {a!r} != {b!r}"
    else:
        assert a == b, path


def test_round_trip_is_exact_for_every_kind_of_value(tmp_path):
    path = str(tmp_path / "c.safetensors")
    state = sample_state()
    checkpoint.save(path, state)
    assert_same(state, checkpoint.load(path))


def test_the_file_is_safetensors_with_json_metadata(tmp_path):
    from safetensors import safe_open

    path = str(tmp_path / "c.safetensors")
    checkpoint.save(path, {"w": np.ones((2, 2)), "step": 4})
    with safe_open(path, framework="numpy") as f:  # any safetensors reader opens it
        meta = f.metadata()
        assert list(f.keys()) == ["/w"] and (f.get_tensor("/w") == 1).all()
    assert meta["format"] == checkpoint.FORMAT and len(meta["sha256"]) == 64
    assert json.loads(meta["state"])["step"] == 4


@pytest.fixture
def written(tmp_path):
    path = str(tmp_path / "c.safetensors")
    checkpoint.save(path, sample_state())
    with open(path, "rb") as f:
        return path, f.read()


@pytest.mark.parametrize("keep", [0, 5, 8, 100, -9, -1])
def test_a_truncated_file_is_refused(written, keep):
    path, blob = written
    with open(path, "wb") as f:
        f.write(blob[:keep] if keep >= 0 else blob[:len(blob) + keep])
    with pytest.raises(checkpoint.CheckpointError, match=r"truncated|not a checkpoint|\d+ bytes") as e:
        checkpoint.load(path)
    assert path in str(e.value)


def test_a_padded_file_is_refused(written):
    path, blob = written
    with open(path, "wb") as f:
        f.write(blob + b"\0")
    with pytest.raises(checkpoint.CheckpointError, match="truncated or padded"):
        checkpoint.load(path)


@pytest.mark.parametrize("where", ["array", "json"])
def test_an_edited_byte_is_refused(written, where):
    path, blob = written
    n = int.from_bytes(blob[:8], "little")
    if where == "array":
        i = len(blob) - 20  # inside the last array's bytes
        edited = blob[:i] + bytes([blob[i] ^ 1]) + blob[i + 1:]
    else:  # a digit inside the state JSON (still valid JSON, a different number)
        i = blob.index(b"999", 8, 8 + n)
        edited = blob[:i] + b"998" + blob[i + 3:]
    with open(path, "wb") as f:
        f.write(edited)
    with pytest.raises(checkpoint.CheckpointError, match="SHA-256"):
        checkpoint.load(path)



def test_any_flipped_bit_in_the_header_is_a_checkpoint_error(written):
    """Every single-bit flip of the header (its length, its JSON, the metadata's keys): a CheckpointError
    naming the file, never a bare KeyError (a flip in 'state' or 'data_offsets' raised KeyError, a
    traceback at `run --resume`) nor a load."""
    path, blob = written
    n = int.from_bytes(blob[:8], "little")
    for i in range(8 + n):
        for bit in (0, 5):
            edited = bytearray(blob)
            edited[i] ^= 1 << bit
            with open(path, "wb") as f:
                f.write(edited)
            with pytest.raises(checkpoint.CheckpointError) as e:
                checkpoint.load(path)
            assert path in str(e.value), (i, bit, str(e.value))

def test_a_foreign_safetensors_file_is_refused(tmp_path):
    from safetensors.numpy import save_file

    path = str(tmp_path / "weights.safetensors")
    save_file({"w": np.ones(2)}, path)
    with pytest.raises(checkpoint.CheckpointError, match="expected format 'backprop-lab/checkpoint/1', got None"):
        checkpoint.load(path)


class _Planted:
    def __reduce__(self):  # unpickling this would create the marker file
        return (open, (os.environ["BL_PICKLE_MARKER"], "w"))


def test_a_pickle_is_never_unpickled(tmp_path, monkeypatch):
    marker = tmp_path / "unpickled"
    monkeypatch.setenv("BL_PICKLE_MARKER", str(marker))
    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps({"w": _Planted()}))
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.load(str(path))
    assert not marker.exists()


def test_cannot_store_an_object_it_would_have_to_pickle(tmp_path):
    with pytest.raises(TypeError, match=r"cannot store object at /a/0 \(expected arrays"):
        checkpoint.save(str(tmp_path / "c.safetensors"), {"a": [object()]})


def test_a_failed_write_leaves_the_old_file_whole(tmp_path, monkeypatch):
    path = str(tmp_path / "c.safetensors")
    checkpoint.save(path, {"v": np.zeros(3)})
    before = open(path, "rb").read()

    def no_space(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError, match="No space"):
        checkpoint.save(path, {"v": np.ones(1000)})
    assert open(path, "rb").read() == before
    assert os.listdir(tmp_path) == ["c.safetensors"]  # no temporary file left behind


# -- random generators ------------------------------------------------------------------------


def draws(rng):
    return (rng.normal(size=3).tolist(), manual.init.default_generator().normal(size=2).tolist(),
            torch.rand(3).tolist(), random.random())


def test_rng_state_restores_every_generator(tmp_path):
    checkpoint.reset_tracking()
    rng = checkpoint.track(np.random.default_rng(5))
    manual.init.manual_seed(6)
    torch.manual_seed(7)
    draws(rng)
    path = str(tmp_path / "rng.safetensors")
    checkpoint.save(path, {"rng": checkpoint.rng_state()})
    first = draws(rng)
    assert draws(rng) != first  # the generators moved on
    checkpoint.set_rng_state(checkpoint.load(path)["rng"])
    assert draws(rng) == first


# -- manual <-> torch ---------------------------------------------------------------------------


def make_twins(impl, seed, opt):
    cfg = _lab.RunConfig(device="cpu", impl=impl, progress=False, seed=seed)
    _lab.seeded(cfg)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2))
    make = (lambda p: optim.SGD(p, lr=0.05, momentum=0.9)) if opt == "sgd" else (lambda p: optim.Adam(p, lr=0.01))
    return _lab.Twins(model, nn.MSELoss(), make, cfg)


def batch(step):
    r = np.random.default_rng(100 + step)
    return r.normal(size=(8, 3)), r.normal(size=(8, 2))


def opt_arrays(sd):
    return {f"{i}/{k}": (v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v))
            for i, st in sd["state"].items() for k, v in st.items()}


@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("src", ["manual", "torch"])
def test_one_sides_checkpoint_loads_into_the_other(tmp_path, opt, src):
    """A checkpoint of one implementation alone continues in the other: the state arrives bit for
    bit, and the next steps follow the source's own continuation (float64 parity, 1e-12)."""
    dst = "torch" if src == "manual" else "manual"
    a = make_twins("both", 0, opt)
    for s in range(5):
        a.step(*batch(s))
    path = str(tmp_path / "c.safetensors")
    checkpoint.save(path, {"twins": {src: a.state_dict()[src]}})  # only the source implementation's state
    b = make_twins(dst, 1, opt)  # other initial weights: all must come from the checkpoint
    b.load_state_dict(checkpoint.load(path)["twins"])
    sa, sb = a.state_dict()[src], b.state_dict()[dst]
    for name, w in sa["model"].items():
        assert np.asarray(w).tobytes() == np.asarray(sb["model"][name]).tobytes(), name
    oa, ob = opt_arrays(sa["optimizer"]), opt_arrays(sb["optimizer"])
    assert oa.keys() == ob.keys() and oa
    for k in oa:
        assert np.asarray(oa[k], dtype=np.float64).tobytes() == np.asarray(ob[k], dtype=np.float64).tobytes(), k
    for s in range(5, 15):
        a.step(*batch(s))
        b.step(*batch(s))
    pa, pb = a.params(src), b.params(dst)
    for name in pa:  # manual and torch round differently: float64 steps agree to ~1e-15 each
        np.testing.assert_allclose(pb[name], pa[name], rtol=0, atol=1e-12, err_msg=name)


# -- exact resume, in-process ------------------------------------------------------------------


def two_segment_run(cfg, stop_at=None, stop_outside=None):
    """A small run in the experiments' shape: segment 1 SGD with momentum, segment 2 Adam with a
    learning-rate schedule, mini-batches drawn each step from the seeded generator (so the
    generator's state must travel with the checkpoint). stop_at=(segment, step) sends this
    process a real SIGTERM during that step; stop_outside="between" before the second segment's
    set-up, "after" once both have trained (outside any training loop, the logger open)."""
    rng = _lab.seeded(cfg)
    x = rng.normal(size=(64, 3))
    y = np.tanh(x @ rng.normal(size=(3, 2)))
    out = {}
    with _lab.RunLogger("ckpt-test", cfg) as log:
        for seg, (opt, steps) in enumerate([("sgd", 12), ("adam", 14)]):
            if stop_outside == "between" and seg == 1:
                os.kill(os.getpid(), signal.SIGTERM)
            model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
            make = ((lambda p: optim.SGD(p, lr=0.05, momentum=0.9)) if opt == "sgd"
                    else (lambda p: optim.Adam(p, lr=0.02)))
            twins = _lab.Twins(model, nn.MSELoss(), make, cfg)

            def batches(step, twins=twins, seg=seg, steps=steps):
                if stop_at == (seg, step):
                    os.kill(os.getpid(), signal.SIGTERM)
                if seg == 1:
                    twins.set_lr(0.02 * (1 - step / steps))
                idx = rng.choice(len(x), 16, replace=False)
                return x[idx], y[idx]

            hist = _lab.train(twins, log, batches, steps, desc=f"seg{seg}", progress=False, prefix=f"{opt}/")
            out[opt] = {"hist": hist, "state": twins.state_dict(), "after": rng.normal(size=2).tolist()}
        if stop_outside == "after":
            os.kill(os.getpid(), signal.SIGTERM)
    return out


def assert_runs_equal(a, b):
    for opt in a:
        assert a[opt]["hist"] == b[opt]["hist"], opt  # every loss and drift value, exactly
        assert a[opt]["after"] == b[opt]["after"], opt  # the data generator continues identically
        for impl, st in a[opt]["state"].items():
            for name, w in st["model"].items():
                assert np.asarray(w).tobytes() == np.asarray(b[opt]["state"][impl]["model"][name]).tobytes(), (opt, impl, name)
            oa, ob = opt_arrays(st["optimizer"]), opt_arrays(b[opt]["state"][impl]["optimizer"])
            assert oa.keys() == ob.keys()
            for k in oa:
                assert np.asarray(oa[k]).tobytes() == np.asarray(ob[k]).tobytes(), (opt, impl, k)


def test_resume_from_every_checkpoint_is_bit_identical(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "KEEP", 100)  # keep them all to resume from each
    cfg = _lab.RunConfig(device="cpu", progress=False, logdir=str(tmp_path), save_every=5)
    ref = two_segment_run(cfg)
    files = sorted(glob.glob(str(tmp_path / "ckpt-test" / "*" / "checkpoints" / "*.safetensors")))
    names = [os.path.basename(f) for f in files]
    assert names == ["seg0-step0000005.safetensors", "seg0-step0000010.safetensors", "seg0-step0000012-end.safetensors",
                     "seg1-step0000005.safetensors", "seg1-step0000010.safetensors", "seg1-step0000014-end.safetensors"]
    for f in files:
        got = two_segment_run(dataclasses.replace(cfg, resume=f, save_every=0))
        assert_runs_equal(ref, got)


@pytest.mark.parametrize("stop_at", [(0, 7), (1, 3)])
def test_sigterm_at_a_step_checkpoints_there_and_the_resume_is_bit_identical(tmp_path, stop_at):
    cfg = _lab.RunConfig(device="cpu", progress=False, logdir=str(tmp_path))  # no --save-every: the stop writes one
    ref = two_segment_run(dataclasses.replace(cfg, logdir=str(tmp_path / "ref")))
    with checkpoint.handle_signals(), pytest.raises(checkpoint.Stop) as e:
        two_segment_run(cfg, stop_at=stop_at)
    assert e.value.exit_code == 143 and e.value.name == "SIGTERM"
    seg, k = stop_at
    (path,) = glob.glob(str(tmp_path / "ckpt-test" / "*" / "checkpoints" / "*.safetensors"))
    assert os.path.basename(path) == f"seg{seg}-step{k + 1:07d}.safetensors"  # the step under way was finished
    state = checkpoint.load(path)
    assert state["reason"] == "SIGTERM" and state["step"] == k + 1 and len(state["done"]) == seg
    got = two_segment_run(dataclasses.replace(cfg, resume="latest"))
    assert_runs_equal(ref, got)


@pytest.mark.parametrize("where", ["between", "after"])
def test_a_stop_outside_a_loop_keeps_the_finished_loops(tmp_path, where):
    """--save-every 0 writes checkpoints only when stopped. A real SIGTERM outside any training loop, after
    one finished ("between": the second loop's set-up; "after": what an experiment does after training,
    evaluation and plots) used to write none: the training done was lost (found by helper-21). Now the
    finished loops are saved; the resume skips them and ends as the uninterrupted run, bit for bit."""
    import types

    from experiments import runner

    cfg = _lab.RunConfig(device="cpu", progress=False, logdir=str(tmp_path))
    ref = two_segment_run(dataclasses.replace(cfg, logdir=str(tmp_path / "ref")))
    exp = types.SimpleNamespace(NAME="ckpt-test", main=lambda c: two_segment_run(c, stop_outside=where))
    with checkpoint.handle_signals():
        m = runner.run_one(exp, cfg)
    assert m["status"] == "interrupted" and m["signal"] == "SIGTERM", m
    (path,) = glob.glob(str(tmp_path / "ckpt-test" / "*" / "checkpoints" / "*.safetensors"))
    assert os.path.basename(path) == ("seg0-step0000012-end.safetensors" if where == "between"
                                      else "seg1-step0000014-end.safetensors")
    assert m["checkpoint"] == path and f"continue with --resume {path}" in " ".join(m["notes"])
    state = checkpoint.load(path)
    assert state["reason"] == "SIGTERM" and state["current"] is None
    assert len(state["done"]) == (1 if where == "between" else 2)
    assert_runs_equal(ref, two_segment_run(dataclasses.replace(cfg, resume=path)))


def test_a_checkpoint_from_other_code_is_refused(tmp_path):
    cfg = _lab.RunConfig(device="cpu", progress=False, logdir=str(tmp_path), save_every=5)
    two_segment_run(cfg)
    path = sorted(glob.glob(str(tmp_path / "ckpt-test" / "*" / "checkpoints" / "seg1-*")))[0]
    cfg2 = dataclasses.replace(cfg, resume=path)
    _lab.seeded(cfg2)
    with pytest.raises(checkpoint.CheckpointError, match=r"segment 0 is 'sgd/seg0 \(12 steps\)', this run's is "
                                                         r"'sgd/seg0 \(13 steps\)'"):
        with _lab.RunLogger("ckpt-test", cfg2) as log:
            _lab.train(make_twins("both", 0, "sgd"), log, batch, 13, desc="seg0", progress=False, prefix="sgd/")
    with pytest.raises(checkpoint.CheckpointError, match=r"this run has 0 training segment\(s\) before its end, "
                                                         r"the checkpoint 2"):
        with _lab.RunLogger("ckpt-test", cfg2):
            pass  # a run that ends without reaching the checkpoint's segment


def test_resume_config_takes_the_checkpoints_options_and_refuses_a_clash(tmp_path):
    from experiments import xor

    cfg = xor.Config(device="cpu", progress=False, logdir=str(tmp_path), steps=40, lr=0.1, save_every=20)
    xor.main(cfg)
    mine = xor.Config(logdir=str(tmp_path), resume="latest")
    got, state = checkpoint.resume_config("xor", mine, given={"resume", "logdir"})
    assert (got.steps, got.lr, got.device, got.save_every) == (40, 0.1, "cpu", 20)
    ends = sorted(glob.glob(str(tmp_path / "xor" / "*" / "checkpoints" / "seg*-step0000040-end.safetensors")))
    assert len(ends) >= 2 and got.resume == state["path"] == ends[-1]  # the newest: the last loop's end
    with pytest.raises(checkpoint.CheckpointError, match=r"--steps 300 \(the checkpoint has 40\)"):
        checkpoint.resume_config("xor", dataclasses.replace(mine, steps=300), given={"steps"})
    with pytest.raises(checkpoint.CheckpointError, match="written by experiment 'xor', expected 'digits'"):
        checkpoint.resume_config("digits", dataclasses.replace(mine, resume=state["path"]), given=set())


def test_run_folders_created_at_the_same_moment_are_distinct(tmp_path, monkeypatch):
    """Runs started in the same second never share a folder. A slow os.path.exists (50 ms) holds
    any check-then-create window open: the old exists-then-create code gave all 4 racing runs
    one folder under it (checked by hand); os.mkdir's atomic claim gives 4."""
    import time

    real = os.path.exists
    monkeypatch.setattr(os.path, "exists", lambda p: (time.sleep(0.05), real(p))[1])
    roots, barrier = [], threading.Barrier(4)

    def make():
        barrier.wait()
        roots.append(_lab.make_run_dir(str(tmp_path / "exp"), "20260101-000000"))

    threads = [threading.Thread(target=make) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(roots)) == 4 and all(os.path.isdir(r) for r in roots)


def test_a_manual_run_resumes_in_torch(tmp_path, monkeypatch):
    """--impl manual checkpointed, --impl torch resumed: the torch twin continues from the manual
    state (same names and layouts) and ends where the manual run ended, to float64 rounding."""
    from experiments import xor

    monkeypatch.setattr(checkpoint, "KEEP", 100)  # keep the first loop's mid checkpoint
    cfg = xor.Config(device="cpu", impl="manual", progress=False, logdir=str(tmp_path), steps=40, save_every=20)
    ref = xor.main(cfg)
    (mid,) = glob.glob(str(tmp_path / "xor" / "*" / "checkpoints" / "seg0-step0000020.safetensors"))
    (end,) = glob.glob(str(tmp_path / "xor" / "*" / "checkpoints" / "seg0-step0000040-end.safetensors"))
    os.replace(end, tmp_path / "end.safetensors")  # the resumed run below writes its own in that folder
    end = str(tmp_path / "end.safetensors")
    got = xor.main(dataclasses.replace(cfg, impl="torch", resume=mid))
    for k, v in ref["results"]["manual"].items():  # manual and torch agree to ~1e-15 per step in float64
        assert got["results"]["torch"][k] == pytest.approx(v, rel=0, abs=1e-12), k
    with pytest.raises(checkpoint.CheckpointError, match=r"was run by manual only, so it has no torch results"):
        xor.main(dataclasses.replace(cfg, impl="torch", resume=end))


def test_save_every_on_an_experiment_without_a_training_loop_says_so():
    import types

    from experiments import runner

    loopless = types.SimpleNamespace(NAME="loopless", main=lambda cfg: {"status": "ok", "notes": []})
    m = runner.run_one(loopless, _lab.RunConfig(progress=False, save_every=3))
    assert m["notes"] == ["--save-every 3: loopless has no _lab.train loop to checkpoint; nothing saved"]
    assert runner.run_one(loopless, _lab.RunConfig(progress=False))["notes"] == []
