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


@pytest.mark.slow
@pytest.mark.ddp
def test_sigterm_stops_every_rank_and_keeps_the_logs(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = tmp_path / "runs"
    p = subprocess.Popen(cli("run", "ddp", "--nproc", "2", "--epochs", "200", "--no-progress", "--logdir", str(runs)),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not list(runs.glob("ddp/*/manual/events.*")):  # rank 0 has started its run
            assert p.poll() is None and time.monotonic() < deadline, p.communicate()[1][-3000:]
            time.sleep(0.2)
        time.sleep(2)  # training
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 143, err[-3000:]
    assert "every rank stopped" in err
    time.sleep(1)
    with pytest.raises(ProcessLookupError):  # torchrun and both workers are gone
        os.killpg(p.pid, 0)
    (run,) = runs.glob("ddp/*/manual")
    ea = EventAccumulator(str(run))
    ea.Reload()
    assert len(ea.Scalars("ddp/loss/train")) > 10  # what rank 0 logged before the signal is readable


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
