"""The `backprop-lab` CLI as a user runs it (`python -m experiments ...` in a subprocess):
help, list, errors that name what is valid (exit 2), and the `--json` report of `run` and `all`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import _lab, runner
from experiments.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "experiments", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_help_lists_the_commands():
    r = cli("--help")
    assert r.returncode == 0, r.stderr
    for command in ("list", "run", "all"):
        assert command in r.stdout


def test_list_names_every_available_experiment():
    r = cli("list")
    assert r.returncode == 0, r.stderr
    for name, mod in runner.available().items():
        assert name in r.stdout and mod.SECTION in r.stdout, name


def test_run_xor_help_shows_its_options():
    r = cli("run", "xor", "--help")
    assert r.returncode == 0, r.stderr
    for flag in ("--steps", "--hidden", "--lr", "--quick", "--device", "--dtype", "--seed", "--logdir", "--json"):
        assert flag in r.stdout, flag
    assert "What Hidden Layers Solve" in r.stdout


def test_unknown_experiment_exits_2_and_lists_the_valid_ones():
    r = cli("run", "no-such-experiment")
    assert r.returncode == 2
    assert "no-such-experiment" in r.stderr and "Traceback" not in r.stderr
    for name in runner.available():
        assert name in r.stderr, name


def parse_error(capsys, *argv):
    """cli.main(argv) in-process (no interpreter start-up): argparse's exit code and stderr."""
    with pytest.raises(SystemExit) as e:
        cli_main(list(argv))
    return e.value.code, capsys.readouterr().err


def test_unknown_command_exits_2_and_lists_the_valid_ones(capsys):
    code, err = parse_error(capsys, "no-such-command")
    assert code == 2
    assert all(c in err for c in ("list", "run", "all"))


def test_bad_option_value_exits_2_and_lists_the_choices(capsys):
    code, err = parse_error(capsys, "run", "xor", "--dtype", "float16")
    assert code == 2
    assert "float16" in err and "float32" in err and "float64" in err


def test_unknown_option_exits_2(capsys):
    code, err = parse_error(capsys, "run", "xor", "--no-such-option")
    assert code == 2 and "--no-such-option" in err


def test_unknown_option_message_lists_the_valid_options(capsys):
    """Reported by `run xor`'s own parser, whose usage lists xor's options."""
    _, err = parse_error(capsys, "run", "xor", "--no-such-option")
    assert "backprop-lab run xor: error: unrecognized arguments: --no-such-option" in err
    assert "--steps" in err and "--hidden" in err


def check_report(m):
    """One experiment's entry of the --json report."""
    assert m["status"] == "ok", m["notes"]
    assert m["config"]["quick"] is True and m["config"]["impl"] == "both"
    assert set(m["results"]) == set(_lab.IMPLS)
    assert m["max_drift"] is not None and m["max_drift"] <= m["drift_tolerance"] and m["drift_ok"] is True
    assert m["claims"] and all(isinstance(c["holds"], bool) for c in m["claims"])
    assert all(c["holds"] for c in m["claims"]), [c["claim"] for c in m["claims"] if not c["holds"]]
    assert Path(m["logdir"]).is_dir()


def test_run_xor_quick_writes_the_json_report(tmp_path):
    out = tmp_path / "xor.json"
    r = cli("run", "xor", "--quick", "--no-progress", "--json", str(out), "--logdir", str(tmp_path / "runs"))
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(out.read_text())
    assert set(report) == {"xor"}
    m = report["xor"]
    check_report(m)
    for impl in _lab.IMPLS:
        assert set(m["results"][impl]) == {"linear_accuracy", "mlp_accuracy", "mlp_final_loss"}
        assert m["results"][impl]["mlp_accuracy"] == 1.0
    assert m["config"]["logdir"] == str(tmp_path / "runs")
    assert "a linear model cannot solve XOR" in r.stdout  # the claims table


def test_all_quick_only_xor_writes_the_json_report(tmp_path):
    out = tmp_path / "all.json"
    r = cli("all", "--quick", "--only", "xor", "--no-progress", "--json", str(out), "--logdir", str(tmp_path / "runs"))
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(out.read_text())
    assert set(report) == {"xor"}
    check_report(report["xor"])
    assert "1 experiments in" in r.stdout


@pytest.mark.slow
def test_all_quick_runs_every_available_experiment(tmp_path):
    """`backprop-lab all --quick` over whatever experiments exist now (all ten once written)."""
    names = list(runner.available())
    out = tmp_path / "all.json"
    r = cli("all", "--quick", "--only", *names, "--no-progress", "--json", str(out),
            "--logdir", str(tmp_path / "runs"), timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads(out.read_text())
    assert list(report) == names
    for name, m in report.items():
        assert m["status"] == "ok", (name, m["notes"])
        assert all(c["holds"] for c in m["claims"]), (name, [c["claim"] for c in m["claims"] if not c["holds"]])
        assert m["drift_ok"] is not False, name


@pytest.mark.parametrize("argv, message", [
    (["run", "xor", "--steps", "0"], "argument --steps: expected an integer >= 1, got 0"),
    (["run", "xor", "--hidden", "-3"], "argument --hidden: expected an integer >= 1, got -3"),
    (["run", "xor", "--lr", "-0.1"], "argument --lr: expected a number > 0, got -0.1"),
    (["run", "digits", "--lr", "fast"], "argument --lr: expected a number > 0, got 'fast'"),
])
def test_bad_values_exit_2_naming_the_option_and_the_range(capsys, argv, message):
    code, err = parse_error(capsys, *argv)
    assert code == 2 and message in err


def test_json_into_a_missing_folder_is_refused_before_any_work(capsys, tmp_path):
    missing = tmp_path / "no" / "such" / "out.json"
    code, err = parse_error(capsys, "run", "xor", "--json", str(missing), "--logdir", str(tmp_path / "runs"))
    assert code == 2 and f"the folder {missing.parent} does not exist" in err
    assert not (tmp_path / "runs" / "xor").exists()  # nothing ran


def test_a_logdir_that_cannot_be_created_is_refused(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, err = parse_error(capsys, "all", "--quick", "--logdir", str(blocker / "runs"))
    assert code == 2 and f"--logdir {blocker / 'runs'}: cannot create it" in err
