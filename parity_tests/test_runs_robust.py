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

from experiments import _lab, checkpoint, runner
from manual import nn, optim

ROOT = Path(__file__).resolve().parents[1]
SIZE = {"scalars": 0, "images": 0, "histograms": 0, "tensors": 0}


def events(path):
    ea = EventAccumulator(str(path), size_guidance=SIZE)
    ea.Reload()
    return ea


def find(ea, kind, name):
    """The one tag of this kind that is `name` or ends in "/name" (tags may carry the experiment's name)."""
    tags = [t for t in ea.Tags()[kind] if t == name or t.endswith("/" + name)]
    assert len(tags) <= 1, tags
    return tags[0] if tags else None


def scalars(ea, name):
    tag = find(ea, "scalars", name)
    assert tag, f"no scalar tag {name!r} among {ea.Tags()['scalars']}"
    return ea.Scalars(tag)


def texts(ea, name="events/text_summary"):
    tag = find(ea, "tensors", name)
    if tag is None:
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
        loss = scalars(ea, "loss/train")
        assert [e.step for e in loss] == list(range(k + 1)), impl  # every step up to the divergence
        losses = hist["loss"][impl]
        assert all(math.isfinite(v) for v in losses[:-1]) and not math.isfinite(losses[-1])
        np.testing.assert_array_equal([e.value for e in loss], np.float32(losses))  # events hold float32
        every = math.ceil(2000 / _lab.GRAD_NORM_POINTS)  # gradient norms: every 40th step, and the diverging one
        assert [e.step for e in scalars(ea, "grad_norm/0.weight")] == sorted({*range(0, k + 1, every), k})
        assert [e.step for e in scalars(ea, "parity/max_abs_param_diff")] == list(range(k + 1))
        assert any(f"diverged at step {k}" in t for t in texts(ea))
        # histograms: logged while the weights are finite and below TensorBoard's 1e20 bucket edge, then skipped
        assert ea.Histograms(find(ea, "histograms", "weights/0.weight"))[0].step == 0


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
        assert [e.step for e in scalars(ea, "loss/train")] == list(range(7))
        assert any("interrupted" in t for t in texts(ea))


@pytest.mark.parametrize("when", ["before training", "mid-training"])
def test_an_interrupted_run_is_listed_as_interrupted_and_names_its_folder(tmp_path, when):
    """`timeout -s INT 3 backprop-lab run digits`: the run folder was made, but no outcome was written, so
    `backprop-lab runs` listed it as "no outcome recorded (running, stopped, ...)", and the summary printed
    no "run folder:" line (the folder was known only once a training loop had started)."""
    from experiments import view

    cfg = _lab.RunConfig(device="cpu", progress=False, logdir=str(tmp_path))
    x, y = data()
    seen = {}

    def batches(step):
        if step == 7:
            raise KeyboardInterrupt
        return x, y

    def main(cfg):
        with _lab.RunLogger("ctrl-c", cfg) as log:
            seen["root"] = log.root
            if when == "before training":
                raise KeyboardInterrupt  # loading data, building the model
            _lab.train(small_twins(cfg, lr=0.1), log, batches, 100, progress=False)
        return _lab.result(cfg, log, {}, [])

    m = runner.run_one(types.SimpleNamespace(main=main, NAME="ctrl-c"), cfg)
    assert m["status"] == "interrupted" and m["logdir"] == seen["root"]
    name, text = view.describe(seen["root"])
    assert text.startswith("interrupted (SIGINT)"), text
    outcome = json.loads((Path(seen["root"]) / _lab.OUTCOME).read_text())
    assert outcome["status"] == "interrupted" and outcome["signal"] == "SIGINT"


def test_a_run_folder_removed_under_the_run_is_a_write_failure_not_a_traceback(tmp_path):
    """`runs --clean` or an `rm -rf` in another terminal removed a running run's folder: the next event write
    raised FileNotFoundError (TensorBoard's writer threads printed their tracebacks, the command one more, exit
    1). It is a failed write of this run (exit 74), named as a removed folder, with no checkpoint to offer."""
    import shutil

    cfg = _lab.RunConfig(device="cpu", progress=False, logdir=str(tmp_path))
    x, y = data()
    seen = {}

    def batches(step):
        if step == 5:
            shutil.rmtree(seen["root"])
        return x, y

    def main(cfg):
        with _lab.RunLogger("removed", cfg) as log:
            seen["root"] = log.root
            _lab.train(small_twins(cfg, lr=0.1), log, batches, 5000, progress=False)
            for w in log.writers.values():
                w.flush()
        return _lab.result(cfg, log, {}, [])

    with checkpoint.quiet_writer_threads():  # as cli.main runs it: a writer thread's failed write is not printed
        m = runner.run_one(types.SimpleNamespace(main=main, NAME="removed"), cfg)
    assert m["status"] == "write-failed" and runner.exit_code({"removed": m}) == 74, m
    assert "the run folder was removed while the run wrote it" in m["notes"][0] and "b'" not in m["notes"][0]
    assert m["checkpoint"] is None


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
        steps = [e.step for e in scalars(ea, "linear/loss/train")]
        assert len(steps) > 10 and steps == list(range(len(steps))), impl
        assert any("interrupted" in t for t in texts(ea)), impl


@pytest.mark.slow  # a real training subprocess or run: the slow tier (`pytest -m slow`)
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_to_bench_keeps_the_rows_measured_so_far(tmp_path, sig, code):
    """Ctrl-C (or SIGTERM) during `bench`: exit 130 (143), no traceback, and the JSON and TensorBoard
    hold what was measured."""
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
        p.send_signal(sig)
        _, err = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode == code, err[-2000:]
    assert "Traceback" not in err
    report = json.loads(out.read_text())
    assert report["status"] == "interrupted"
    assert len(report["rows"]) % 3 == 0  # whole models only: 3 implementations each
    assert all(r["median_ms"] > 0 for r in report["rows"])
    assert list((tmp_path / "runs" / "bench").iterdir())  # the TensorBoard folder was written


# -- stopped runs resume exactly; faults end with one message ------------------------------------

def cli(*args, **kw):
    """A real `backprop-lab` process (the CLI as users start it)."""
    return subprocess.Popen([sys.executable, "-m", "experiments", *args], cwd=ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def finish(proc, timeout=240):
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return out, err


def wait_for(pattern, proc, timeout=180):
    """Poll (10 ms) until a file matches `pattern`; the running process must still be alive."""
    deadline = time.monotonic() + timeout
    while True:
        found = glob.glob(pattern)
        if found:
            return found
        assert proc.poll() is None, f"exited before {pattern} appeared: {finish(proc)}"
        assert time.monotonic() < deadline, f"no {pattern} within {timeout} s"
        time.sleep(0.01)


def cli_main(argv):
    from experiments import cli as cli_module

    return cli_module.main(argv)


def in_process(mod, **kw):
    """The uninterrupted reference run, as the CLI runs it (runner.run_one: same threads)."""
    cfg = mod.Config(device="cpu", progress=False, quick=True, **kw)
    return runner.run_one(mod, cfg)


@pytest.mark.slow  # a real training subprocess or run: the slow tier (`pytest -m slow`)
def test_sigterm_mid_run_then_resume_latest_is_bit_identical_sgd_momentum(tmp_path):
    """SIGTERM: a checkpoint at the step boundary, events flushed, status in the JSON, exit 143;
    `--resume latest` then ends exactly where the uninterrupted run ends (SGD, momentum 0.9)."""
    from experiments import digits

    logdir = str(tmp_path / "runs")
    proc = cli("run", "digits", "--quick", "--epochs", "3", "--optimizer", "sgd", "--device", "cpu", "--no-progress",
               "--save-every", "5", "--logdir", logdir, "--json", str(tmp_path / "stopped.json"))
    wait_for(os.path.join(logdir, "digits", "*", "checkpoints", "*.safetensors"), proc)
    proc.send_signal(signal.SIGTERM)
    out, err = finish(proc)
    assert proc.returncode == 143, (out, err)
    assert "Traceback" not in err + out
    stopped = json.loads((tmp_path / "stopped.json").read_text())["digits"]
    assert stopped["status"] == "interrupted" and stopped["signal"] == "SIGTERM"
    state = checkpoint.load(stopped["checkpoint"])
    k = state["step"]
    assert state["reason"] == "SIGTERM" and 5 <= k < 66, k  # stopped mid-run (3 epochs of 22 batches), at a step boundary
    (run_dir,) = glob.glob(os.path.join(logdir, "digits", "*"))
    for impl in _lab.IMPLS:  # every step before the stop is on disk
        ea = events(os.path.join(run_dir, impl))
        assert [e.step for e in scalars(ea, "loss/train")] == list(range(k)), impl

    # the resume through the same CLI entry point, in this process (a third process would only add start-up time)
    code = cli_main(["run", "digits", "--resume", "latest", "--no-progress", "--logdir", logdir,
                     "--json", str(tmp_path / "resumed.json")])
    resumed = json.loads((tmp_path / "resumed.json").read_text())["digits"]
    ref = in_process(digits, epochs=3, optimizer="sgd", logdir=str(tmp_path / "ref"))
    assert code == runner.exit_code({"digits": ref})
    assert resumed["history"] == ref["history"]  # every step's loss, both implementations, bit for bit
    assert resumed["results"] == ref["results"] and resumed["claims"] == ref["claims"]
    assert any(f"at step {k} of" in n for n in resumed["notes"])


@pytest.mark.slow  # a real training subprocess or run: the slow tier (`pytest -m slow`)
def test_sigkill_after_a_checkpoint_then_resume_is_bit_identical_adam(tmp_path):
    """SIGKILL (nothing can be flushed) in xor's second training loop, after a checkpoint: the
    resumed run restores the finished first loop, retrains the steps lost after the checkpoint,
    and ends with the uninterrupted run's weights and Adam state, bit for bit."""
    from experiments import xor

    logdir = str(tmp_path / "runs")
    proc = cli("run", "xor", "--quick", "--steps", "160", "--device", "cpu", "--no-progress", "--save-every", "25",
               "--logdir", logdir)
    wait_for(os.path.join(logdir, "xor", "*", "checkpoints", "seg1-step0000050.safetensors"), proc)
    proc.kill()
    finish(proc)
    assert proc.returncode == -signal.SIGKILL
    code = cli_main(["run", "xor", "--resume", "latest", "--no-progress", "--logdir", logdir, "--json", str(tmp_path / "r.json")])
    resumed = json.loads((tmp_path / "r.json").read_text())["xor"]
    ref = in_process(xor, steps=160, logdir=str(tmp_path / "ref"), save_every=25)
    assert code == runner.exit_code({"xor": ref})
    assert resumed["results"] == ref["results"] and resumed["claims"] == ref["claims"]
    mine = max(glob.glob(os.path.join(logdir, "xor", "*", "checkpoints", "seg*-end.safetensors")))
    theirs = max(glob.glob(str(tmp_path / "ref" / "xor" / "*" / "checkpoints" / "seg*-end.safetensors")))
    assert os.path.basename(mine) == os.path.basename(theirs)  # the last loop's end
    a, b = checkpoint.load(mine), checkpoint.load(theirs)
    assert len(a["done"]) == len(b["done"]) >= 2
    for seg_a, seg_b in zip(a["done"], b["done"]):  # both loops' final weights and optimizer state
        for impl in _lab.IMPLS:
            for part in ("model", "optimizer"):
                flat_a, flat_b = {}, {}
                checkpoint._encode(seg_a["twins"][impl][part], "", flat_a)
                checkpoint._encode(seg_b["twins"][impl][part], "", flat_b)
                assert flat_a.keys() == flat_b.keys() and flat_a
                for name in flat_a:
                    assert flat_a[name].tobytes() == flat_b[name].tobytes(), (seg_a["key"], impl, part, name)


def _tmpfs(path, size):
    """Mount a tiny tmpfs at path (needs root and CAP_SYS_ADMIN); False where that is not possible."""
    if not (hasattr(os, "geteuid") and os.geteuid() == 0):
        return False
    path.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.mark.slow  # a real training subprocess or run: the slow tier (`pytest -m slow`)
def test_full_disk_is_one_message_exit_74_and_the_json_is_kept(tmp_path):
    """A disk that fills during a run: a real 256 KiB tmpfs where one can be mounted (root with
    CAP_SYS_ADMIN), else a per-process file-size limit (RLIMIT_FSIZE: writes past 48 KiB fail
    with EFBIG), which fails the same writes the same way."""
    import resource

    disk = tmp_path / "disk"
    how = "tmpfs" if _tmpfs(disk, "256k") else "rlimit"
    limit = 48 * 1024

    def small_files():  # runs in the child only
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills it instead of failing the write
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    try:
        logdir = str(disk / "runs") if how == "tmpfs" else str(tmp_path / "runs")
        report = tmp_path / "r.json"  # beside the full disk, as a user would point --json
        proc = cli("run", "xor", "--quick", "--device", "cpu", "--no-progress", "--save-every", "50",
                   "--logdir", logdir, "--json", str(report), preexec_fn=small_files if how == "rlimit" else None)
        out, err = finish(proc)
        assert proc.returncode == runner.EXIT_WRITE_FAILED == 74, (out, err)
        assert "Traceback" not in err + out and "Exception in thread" not in err
        m = json.loads(report.read_text())["xor"]
        assert m["status"] == "write-failed"
        assert m["error"].startswith("ENOSPC" if how == "tmpfs" else "EFBIG"), m["error"]
        (note,) = [n for n in m["notes"] if n.startswith("stopped: a write failed")]
        assert m["logdir"] in note and note in out.replace("\n  ", " ") or "stopped: a write failed" in out
        seg, step = m["stopped_at"]
        assert step > 0
        if m["checkpoint"]:  # the newest checkpoint that made it to disk is whole
            assert checkpoint.load(m["checkpoint"])["step"] <= step
        leftovers = glob.glob(os.path.join(logdir, "**", ".*.tmp"), recursive=True)
        assert not leftovers, leftovers  # a failed atomic write leaves no temporary file
    finally:
        if how == "tmpfs":
            subprocess.run(["umount", str(disk)], capture_output=True)


def catches_sigterm(pid):
    """Linux: whether the process has installed its own SIGTERM handler (bit 15 of SigCgt)."""
    with open(f"/proc/{pid}/status") as f:
        mask = next(line.split()[1] for line in f if line.startswith("SigCgt:"))
    return bool(int(mask, 16) >> (signal.SIGTERM - 1) & 1)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc/<pid>/status (Linux)")
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_during_start_up_exits_cleanly(tmp_path, sig, code):
    """Sent as soon as the CLI's handlers are in (its first act), while Python is still importing
    torch and the experiments (a second or more), before any run exists."""
    logdir = tmp_path / "runs"
    proc = cli("run", "xor", "--quick", "--no-progress", "--logdir", str(logdir))
    deadline = time.monotonic() + 60
    while not catches_sigterm(proc.pid):
        assert proc.poll() is None and time.monotonic() < deadline, finish(proc)
        time.sleep(0.002)
    proc.send_signal(sig)
    out, err = finish(proc)
    assert proc.returncode == code, (out, err)
    assert "Traceback" not in err + out, err
    assert f"backprop-lab: interrupted ({signal.Signals(sig).name})" in err
    assert not logdir.exists() or not any(logdir.iterdir()), "the signal came after start-up"


def test_a_second_ctrl_c_stops_at_once_without_a_traceback(tmp_path):
    logdir = str(tmp_path / "runs")
    proc = cli("run", "xor", "--steps", "1000000", "--device", "cpu", "--no-progress", "--logdir", logdir,
               "--json", str(tmp_path / "r.json"))
    deadline = time.monotonic() + 180
    while event_size(logdir) < 8 * 1024:  # training is under way
        assert proc.poll() is None and time.monotonic() < deadline, finish(proc)
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    out, err = finish(proc)
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err + out, err
    m = json.loads((tmp_path / "r.json").read_text())["xor"]
    assert m["status"] == "interrupted" and m["signal"] == "SIGINT"


def test_the_json_of_a_diverged_run_is_strict_json(tmp_path):
    """A diverged run's --json held the bare tokens NaN and Infinity (the drift, the losses, `--lr` of a
    library-made config), which JSON does not have: JSON.parse, jq --strict readers and Go refuse the file.
    They are written as strings, as `verify --json` writes them."""
    def strict(token):
        raise ValueError(f"not JSON: {token}")

    out = tmp_path / "r.json"
    assert runner.write_json(str(out), {"xor": {"status": "diverged", "max_drift": float("nan"), "lr": math.inf,
                                                 "loss": [1.0, np.float32(-np.inf)], "w": np.array([np.nan, 2.0])}})
    m = json.loads(out.read_text(), parse_constant=strict)["xor"]
    assert m == {"status": "diverged", "max_drift": "nan", "lr": "inf", "loss": [1.0, "-inf"], "w": ["nan", 2.0]}
