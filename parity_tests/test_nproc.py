"""`backprop-lab run ddp --nproc N`: torchrun launched for the user, for real (2 processes, gloo on
127.0.0.1). The refusals of bad --nproc values are in test_cli_misuse.py's table."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from experiments import runner

# the real launches (slow, ddp) cost ~10 CPU-seconds each: torchrun and every worker import torch


def cli(*argv):
    return [sys.executable, "-m", "experiments", *argv]


def test_forwarded_options_rebuild_what_was_given():
    """Only the options on the command line go on to torchrun's workers, each as the worker parser reads it."""
    from experiments import cli as main_cli
    from experiments import ddp

    args = main_cli.build_parser().parse_args(["run", "ddp", "--quick", "--no-progress", "--hidden", "8",
                                              "--data", "circles", "--nproc", "2", "--json", "out.json"])
    fwd = runner.forwarded_options(args, ddp.Config)
    assert sorted(fwd[i] for i in range(len(fwd)) if fwd[i].startswith("--")) == \
        ["--data", "--hidden", "--json", "--no-progress", "--quick"]
    assert fwd[fwd.index("--hidden") + 1] == "8" and fwd[fwd.index("--data") + 1] == "circles"
    parsed = ddp.argparse.ArgumentParser()
    runner.add_config_arguments(parsed, ddp.Config)
    parsed.add_argument("--json")
    back = parsed.parse_args(fwd)
    assert (back.quick, back.progress, back.hidden, back.data, back.json) == (True, False, 8, "circles", "out.json")


@pytest.mark.slow
@pytest.mark.ddp
def test_two_processes_run_the_experiment_and_only_rank_0_writes(tmp_path):
    out = tmp_path / "r.json"
    r = subprocess.run(cli("run", "ddp", "--nproc", "2", "--quick", "--no-progress", "--logdir", str(tmp_path / "runs"),
                           "--json", str(out)), capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads(out.read_text())["ddp"]
    assert m["data_parallel"]["world_size"] == 2 and all(c["holds"] for c in m["claims"]), m["claims"]
    assert "2 rank(s) on gloo" in r.stdout and r.stdout.count("claims hold") == 1  # rank 0's summary only
    assert [p.name for p in (tmp_path / "runs" / "ddp").iterdir()] == [os.path.basename(m["logdir"])]


@pytest.mark.slow
@pytest.mark.ddp
def test_a_failing_rank_ends_the_job_and_is_named(tmp_path):
    r = subprocess.run(cli("run", "ddp", "--nproc", "2", "--quick", "--no-progress", "--fail-at", "1:2",
                           "--logdir", str(tmp_path / "runs")), capture_output=True, text=True, timeout=240)
    assert r.returncode != 0
    assert "rank 1: failed: RuntimeError: --fail-at 1:2: planted failure on rank 1 at step 2" in r.stderr


def running(marker):
    """Live processes (not zombies) whose command line holds `marker`. From /proc: torchrun starts each
    worker in a session of its own, so a process-group check would not see the ranks."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().decode(errors="replace")
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:  # ended while we looked
            continue
        if marker in cmd and state != "Z":
            pids.append(int(pid))
    return pids


@pytest.mark.slow
@pytest.mark.ddp
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the ranks through /proc (Linux)")
def test_sigterm_stops_every_rank_and_keeps_the_logs(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = tmp_path / "runs"  # on every command line of the job: ours, torchrun's and each rank's
    log = tmp_path / "stderr.txt"  # a file, not a pipe: the ranks inherit it, and a pipe's end would wait for them
    with open(log, "w") as f:
        p = subprocess.Popen(cli("run", "ddp", "--nproc", "2", "--epochs", "200", "--no-progress", "--logdir",
                                 str(runs)), stdout=subprocess.DEVNULL, stderr=f, start_new_session=True)
    job = []
    try:
        deadline = time.monotonic() + 120
        while not list(runs.glob("ddp/*/manual/events.*")):  # rank 0 has started its run
            assert p.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        time.sleep(2)  # training
        job = running(str(runs))
        assert len(job) == 4, job  # backprop-lab, torchrun, rank 0, rank 1
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=90)
        err = log.read_text()
        deadline = time.monotonic() + 10
        while running(str(runs)) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = running(str(runs))
    finally:
        for pid in running(str(runs)):
            os.kill(pid, signal.SIGKILL)
    assert p.returncode == 143, err[-3000:]
    assert "every rank stopped" in err
    assert not left, f"still running after SIGTERM: {left} of {job}"
    assert "rank 0: interrupted (SIGTERM)" in err, err[-3000:]
    (run,) = runs.glob("ddp/*/manual")
    ea = EventAccumulator(str(run))
    ea.Reload()
    assert len(ea.Scalars("ddp/loss/train")) > 10  # what rank 0 logged before the signal is readable
    assert "custom_scalars__config__" in ea.Tags()["tensors"]  # written by close(): rank 0 closed its logs


@pytest.mark.slow
@pytest.mark.ddp
def test_torchrun_runs_the_cli_itself(tmp_path):
    """`torchrun --nproc-per-node 2 -m experiments run ddp`: each worker is one rank of the experiment;
    a one-process experiment under torchrun is refused on every rank instead of running twice."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
                "experiments", "run"]
    r = subprocess.run(torchrun + ["ddp", "--quick", "--no-progress", "--logdir", str(tmp_path / "runs")],
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("claims hold") == 1 and "2 rank(s) on gloo" in r.stdout
    r = subprocess.run(torchrun + ["xor", "--quick", "--logdir", str(tmp_path / "runs")], capture_output=True,
                       text=True, timeout=240)
    assert r.returncode != 0
    assert r.stderr.count("xor runs in one process, but torchrun started 2 of them") == 2
    assert not (tmp_path / "runs" / "xor").exists()
