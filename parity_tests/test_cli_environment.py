"""The command line in the places a user puts it: output piped into `head`, a terminal of 100 columns,
errors on stderr. Each test here began as something a new user met that the other CLI tests missed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import cli

ROOT = Path(__file__).resolve().parents[1]


def closed_stdout(*args, timeout=300):
    """Run the CLI with its stdout a pipe whose reader is gone (`backprop-lab ... | head -1` once head has
    exited): every write to stdout fails with EPIPE. Returns (exit code, stderr)."""
    proc = subprocess.Popen([sys.executable, "-m", "experiments", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the only reader: from now on the child's writes to stdout raise BrokenPipeError
    err = proc.stderr.read()
    return proc.wait(timeout), err


def fake_run(logdir, name="xor", stamp="20260101-000000"):
    run = logdir / name / stamp
    run.mkdir(parents=True)
    (run / "outcome.json").write_text(json.dumps({"status": "ok", "claims": 4, "claims_hold": 4}))
    return run


@pytest.mark.parametrize("argv", [["list"], ["runs"], ["--help"], ["run", "xor", "--help"]])
def test_output_into_a_closed_pipe_is_no_traceback(argv, tmp_path):
    """`backprop-lab list | head -1` printed a BrokenPipeError traceback and exited 1."""
    if argv == ["runs"]:
        for i in range(3):
            fake_run(tmp_path, stamp=f"2026010{i}-000000")
        argv = ["runs", "--logdir", str(tmp_path)]
    code, err = closed_stdout(*argv)
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err, err
    assert code == 0, err


@pytest.mark.slow
def test_a_run_piped_into_head_still_writes_its_json(tmp_path):
    """`run xor --quick --json r.json | head -3`: the table's print raised BrokenPipeError after the training,
    before the JSON was written: the run's results were lost, with a traceback."""
    out = tmp_path / "r.json"
    code, err = closed_stdout("run", "xor", "--quick", "--no-progress", "--logdir", str(tmp_path / "runs"),
                              "--json", str(out))
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert code == 0, err
    assert json.loads(out.read_text())["xor"]["status"] == "ok"


def test_the_pipe_guard_leaves_the_streams_as_they_were(capsys):
    """cli.main wraps sys.stdout and sys.stderr while it runs and puts the originals back."""
    before = sys.stdout, sys.stderr
    assert cli.main(["list"]) == 0
    assert (sys.stdout, sys.stderr) == before
    assert "xor" in capsys.readouterr().out


def test_all_only_one_says_one_experiment(tmp_path, monkeypatch, capsys):
    """`all --quick --only xor` ended with "1 experiments in 3.3 s"."""
    from experiments import runner

    monkeypatch.setattr(runner, "run_one", lambda mod, cfg: {"status": "ok", "claims": [], "config": {}, "notes": []})
    assert cli.main(["all", "--only", "xor", "--no-progress", "--logdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "\n1 experiment in " in out, out


def test_view_of_an_unknown_name_says_it_is_not_an_experiment(tmp_path, capsys):
    """`view nosuch` said "no runs of nosuch ...; make one with `backprop-lab run nosuch`", a command that
    fails: a name that is no experiment is named as such, with the valid ones."""
    import re

    fake_run(tmp_path)
    assert cli.main(["view", "nosuch", "--logdir", str(tmp_path)]) == 2
    err = re.sub(r"\n  (?=\S)", " ", capsys.readouterr().err)
    assert "nosuch: not an experiment; expected some of: gradient-descent," in err and "ddp, bench" in err, err
    assert "run nosuch" not in err


def test_the_command_lines_own_process_ignores_signals_once_it_is_done(monkeypatch):
    """main() as the console script calls it (argv None): once the command is done, SIGINT and SIGTERM are
    ignored for the process's exit; called with a list (a caller's process), the handlers are left alone."""
    import signal

    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        assert cli.main(["list"]) == 0
        assert {s: signal.getsignal(s) for s in old} == old
        monkeypatch.setattr(sys, "argv", ["backprop-lab", "list"])
        assert cli.main() == 0
        assert all(signal.getsignal(s) is signal.SIG_IGN for s in old)
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@pytest.mark.slow
def test_ctrl_c_after_the_results_are_written_keeps_exit_0(tmp_path):
    """SIGINT in the half second after `run xor --quick --json` wrote its JSON (the interpreter's exit) made the
    process exit 130, silently, with every claim holding and the JSON saying "ok"."""
    import signal
    import time

    out = tmp_path / "r.json"
    proc = subprocess.Popen([sys.executable, "-m", "experiments", "run", "xor", "--quick", "--no-progress",
                             "--logdir", str(tmp_path / "runs"), "--json", str(out)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = []
    for line in proc.stderr:
        err.append(line)
        if line.startswith("wrote "):  # the last thing the command does; then the interpreter's exit
            time.sleep(0.2)
            proc.send_signal(signal.SIGINT)
    code = proc.wait(60)
    assert code == 0, "".join(err)
    assert json.loads(out.read_text())["xor"]["status"] == "ok"


def test_runs_clean_keeps_a_run_that_may_still_be_running(tmp_path, capsys):
    """`runs --clean --keep 1` while an older run was still being written (an `all` in another terminal)
    removed its folder under it. A run with no outcome whose files changed in the last 10 minutes is kept
    and said; one untouched for longer (killed) is removed as before."""
    import os

    old_killed = tmp_path / "xor" / "20260101-000000"
    running = tmp_path / "xor" / "20260101-000100"
    for run in (old_killed, running):
        (run / "manual").mkdir(parents=True)
        (run / "manual" / "events.out.tfevents.1.host.1.0").write_bytes(b"")
    hour_ago = os.path.getmtime(running) - 3600
    os.utime(old_killed / "manual" / "events.out.tfevents.1.host.1.0", (hour_ago, hour_ago))
    fake_run(tmp_path, stamp="20260101-000200")  # the newest, finished
    assert cli.main(["runs", "--logdir", str(tmp_path), "--clean", "--keep", "1"]) == 0
    out = capsys.readouterr().out
    assert running.exists() and f"keeping {running}: no outcome recorded" in out, out
    assert not old_killed.exists()


def test_verify_device_cuda_without_a_gpu_is_a_usage_error_on_stderr(capsys):
    """It was printed on stdout (exit 2), unlike run's, all's and bench's."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: --device cuda is valid here")
    with pytest.raises(SystemExit) as e:
        cli.main(["verify", "--device", "cuda"])
    out, err = capsys.readouterr()
    assert e.value.code == 2 and not out and "backprop-lab verify: error: --device cuda: torch sees no CUDA GPU" in err
