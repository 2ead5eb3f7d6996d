"""Runs end cleanly: a NaN/inf loss is reported as "diverged", Ctrl-C as "interrupted" (exit 130),
never a traceback, and the event files written up to that point stay readable."""

from __future__ import annotations

import glob
import json
import math
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from experiments import _lab, runner
from manual import nn, optim

ROOT = Path(__file__).resolve().parents[1]
SIZE = {"scalars": 0, "images": 0, "histograms": 0, "tensors": 0}


def events(path):
    ea = EventAccumulator(str(path), size_guidance=SIZE)
    ea.Reload()
    return ea


def texts(ea, tag="events/text_summary"):
    if tag not in ea.Tags()["tensors"]:
        return []
    return [s.decode() for e in ea.Tensors(tag) for s in e.tensor_proto.string_val]


def small_twins(cfg, lr):
    _lab.seeded(cfg)
    model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))
    return _lab.Twins(model, nn.MSELoss(), lambda p: optim.SGD(p, lr=lr), cfg)


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 2))
    return x, x[:, :1] * x[:, 1:] + 1.0


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NumPy's overflow warnings on the way to inf
def test_nan_divergence_is_a_status_not_an_exception(tmp_path):
    cfg = _lab.RunConfig(device="cpu", progress=False, logdir=str(tmp_path))
    x, y = data()
    with _lab.RunLogger("diverge", cfg) as log:
        twins = small_twins(cfg, lr=1e3)
        hist = _lab.train(twins, log, lambda s: (x, y), 2000, progress=False, log_histograms_every=1)
    k = hist["steps"] - 1
    assert hist["status"] == log.status == "diverged"
    assert 0 < k < 1999, "lr = 1e3 must blow up well within 2000 steps"
    m = _lab.result(cfg, log, {}, [])
    assert m["status"] == "diverged" and any(f"diverged at step {k}" in n for n in m["notes"]), m["notes"]
    for impl in _lab.IMPLS:
        ea = events(Path(log.root) / impl)
        loss = ea.Scalars("loss/train")
        assert [e.step for e in loss] == list(range(k + 1)), impl  # every step up to the divergence
        losses = hist["loss"][impl]
        assert all(math.isfinite(v) for v in losses[:-1]) and not math.isfinite(losses[-1])
        np.testing.assert_array_equal([e.value for e in loss], np.float32(losses))  # events hold float32
        assert [e.step for e in ea.Scalars("grad_norm/0.weight")] == list(range(k + 1))
        assert [e.step for e in ea.Scalars("parity/max_abs_param_diff")] == list(range(k + 1))
        assert any(f"diverged at step {k}" in t for t in texts(ea))
        # histograms: logged while the weights are finite and below TensorBoard's 1e20 bucket edge, then skipped
        assert ea.Histograms("weights/0.weight")[0].step == 0


def test_run_one_turns_keyboard_interrupt_into_status():
    def main(cfg):
        raise KeyboardInterrupt

    m = runner.run_one(types.SimpleNamespace(main=main), _lab.RunConfig(progress=False))
    assert m["status"] == "interrupted" and m["claims"] == [] and m["max_drift"] is None
    assert runner.exit_code({"x": m}) == 130


def test_run_one_interrupted_mid_training_keeps_the_logs(tmp_path):
    cfg = _lab.RunConfig(device="cpu", progress=False, logdir=str(tmp_path))
    x, y = data()
    seen = {}

    def batches(step):
        if step == 7:
            raise KeyboardInterrupt  # what Ctrl-C does between two steps
        return x, y

    def main(cfg):
        with _lab.RunLogger("ctrl-c", cfg) as log:
            seen["log"] = log
            _lab.train(small_twins(cfg, lr=0.1), log, batches, 100, progress=False)
        return _lab.result(cfg, log, {}, [])

    m = runner.run_one(types.SimpleNamespace(main=main), cfg)
    assert m["status"] == "interrupted"
    assert seen["log"].status == "interrupted"
    for impl in _lab.IMPLS:
        ea = events(Path(seen["log"].root) / impl)
        assert [e.step for e in ea.Scalars("loss/train")] == list(range(7))
        assert any("interrupted" in t for t in texts(ea))


def event_size(logdir):
    files = glob.glob(os.path.join(logdir, "xor", "*", "manual", "events.out.tfevents.*"))
    return max((os.path.getsize(f) for f in files), default=0)


def test_sigint_to_a_running_cli_exits_130_without_traceback(tmp_path):
    logdir = str(tmp_path / "runs")
    cmd = [sys.executable, "-m", "experiments", "run", "xor", "--steps", "1000000", "--device", "cpu",
           "--no-progress", "--logdir", logdir]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while event_size(logdir) < 32 * 1024:  # some steps are on disk: training is under way
            assert proc.poll() is None, f"exited early: {proc.communicate()}"
            assert time.monotonic() < deadline, "no events written within 120 s"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err and "Traceback" not in out, err
    assert "interrupted" in out
    (root,) = glob.glob(os.path.join(logdir, "xor", "*"))
    for impl in _lab.IMPLS:
        ea = events(os.path.join(root, impl))
        steps = [e.step for e in ea.Scalars("linear/loss/train")]
        assert len(steps) > 10 and steps == list(range(len(steps))), impl
        assert any("interrupted" in t for t in texts(ea)), impl


def test_sigint_to_bench_keeps_the_rows_measured_so_far(tmp_path):
    """Ctrl-C during `bench`: exit 130, no traceback, and the JSON and TensorBoard hold what was measured."""
    out = tmp_path / "bench.json"
    p = subprocess.Popen([sys.executable, "-m", "experiments", "bench", "--quick", "--no-memory", "--dtype", "float64",
                          "--logdir", str(tmp_path / "runs"), "--json", str(out)],
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         env={**os.environ, "PYTHONUNBUFFERED": "1"},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in p.stdout:  # the timed loop starts right after the ceiling is printed
            if line.startswith("matmul ceiling"):
                break
        time.sleep(3.0)  # about one model's paired rounds
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    report = json.loads(out.read_text())
    assert report["status"] == "interrupted"
    assert len(report["rows"]) % 3 == 0  # whole models only: 3 implementations each
    assert all(r["median_ms"] > 0 for r in report["rows"])
    assert list((tmp_path / "runs" / "bench").iterdir())  # the TensorBoard folder was written
