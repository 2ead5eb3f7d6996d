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
    flat = " ".join(r.stdout.split())  # list wraps long lines at 100 columns
    for name, mod in runner.experiments().items():
        assert name in r.stdout and mod.SECTION in flat and " ".join(mod.SUMMARY.split()) in flat, name
    assert "ddp" in r.stdout and "run only, not in `all`" in flat  # the run-only experiments too
    several = [n for n, m in runner.experiments().items() if runner.data_parallel(m)]
    assert "digits" in several and "xor" not in several
    assert f"On several processes (--nproc N, or torchrun), each step's batch split over them: {', '.join(several)};" in flat


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
    """cli.main(argv) in-process (no interpreter start-up): argparse's exit code and stderr, its message
    unwrapped (errors wrap at 100 columns, continued with a 2-space indent)."""
    import re

    with pytest.raises(SystemExit) as e:
        cli_main(list(argv))
    return e.value.code, re.sub(r"\n  (?=\S)", " ", capsys.readouterr().err)


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


@pytest.mark.slow  # a real training subprocess or run: the slow tier (`pytest -m slow`)
def test_run_xor_quick_writes_the_json_report(tmp_path):
    out = tmp_path / "xor.json"
    r = cli("run", "xor", "--quick", "--no-progress", "--json", str(out), "--logdir", str(tmp_path / "runs"))
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(out.read_text())
    assert set(report) == {"xor"}
    m = report["xor"]
    check_report(m)
    for impl in _lab.IMPLS:
        assert set(m["results"][impl]) == {"linear_accuracy", "mlp_accuracy", "mlp_final_loss",
                                           "stacked_linear_accuracy", "stacked_folded_gap"}
        assert m["results"][impl]["mlp_accuracy"] == 1.0
    assert m["config"]["logdir"] == str(tmp_path / "runs")
    assert "a linear model cannot solve XOR" in r.stdout  # the claims table
    # the venv's backprop-lab, or `python -m experiments` where the package runs from a checkout (PYTHONPATH)
    assert f"run folder: {m['logdir']}" in r.stdout
    assert "backprop-lab view xor" in r.stdout or "-m experiments view xor" in r.stdout, r.stdout
    assert f"{len(m['claims'])}/{len(m['claims'])} claims hold for both implementations" in r.stdout


@pytest.mark.slow  # a real training subprocess or run: the slow tier (`pytest -m slow`)
def test_all_quick_only_xor_writes_the_json_report(tmp_path):
    out = tmp_path / "all.json"
    r = cli("all", "--quick", "--only", "xor", "--no-progress", "--json", str(out), "--logdir", str(tmp_path / "runs"))
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(out.read_text())
    assert set(report) == {"xor"}
    check_report(report["xor"])
    assert "1 experiment in" in r.stdout and "1 experiments" not in r.stdout


# `all --quick` over every experiment: parity_tests/test_view.py (one shared run, then TensorBoard).


def every_help():
    """argv of every --help there is: the program, each command, and `run NAME` for each experiment."""
    from experiments.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    argvs = [["--help"], ["-h"]] + [[cmd, "--help"] for cmd in sub.choices] + [["run", "-h"]]
    return argvs + [["run", name, "--help"] for name in runner.runnable()]


@pytest.mark.parametrize("argv", every_help(), ids=" ".join)
def test_every_help_works(argv, capsys):
    """Every usage error says "see --help": each help must print and exit 0 (a '%' in a summary used to crash it)."""
    with pytest.raises(SystemExit) as e:
        cli_main(argv)
    out = capsys.readouterr()
    assert e.value.code == 0 and "Traceback" not in out.err, out.err
    assert out.out.startswith("usage: backprop-lab"), out.out[:200]
    if argv[0] == "run" and len(argv) == 3:  # an experiment's own options and its guide section
        mod = runner.load(argv[1])
        assert mod.SECTION.split()[0] in out.out and "--seed" in out.out and "--json" in out.out


def test_an_experiment_summary_with_a_percent_sign_shows_in_help():
    assert "75%" in runner.load("xor").SUMMARY  # the case that crashed `run --help`
    r = cli("run", "--help")
    assert r.returncode == 0 and "75%" in r.stdout, r.stderr
    r = cli("run", "xor", "--help")  # the description, printed as written: one %, not two
    assert r.returncode == 0 and "75%" in r.stdout and "%%" not in r.stdout, r.stdout


def test_listed_experiments_are_an_explicit_contract(monkeypatch):
    """A renamed or broken module is an error naming it, never an experiment silently dropped."""
    monkeypatch.setitem(runner.EXPERIMENTS, "renamed", "no_such_module")
    with pytest.raises(runner.ExperimentError, match="'renamed' is listed in runner.EXPERIMENTS, but its module "
                                                      "experiments.no_such_module does not exist"):
        runner.experiments()
    monkeypatch.delitem(runner.EXPERIMENTS, "renamed")
    monkeypatch.setitem(runner.EXPERIMENTS, "xor-alias", "xor")
    with pytest.raises(runner.ExperimentError, match="says NAME = 'xor'"):
        runner.experiments()


def test_list_fits_100_columns():
    r = cli("list")
    assert r.returncode == 0
    assert max(map(len, r.stdout.splitlines())) <= 100


def test_device_cuda_without_a_gpu_exits_2_like_verify_and_bench(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: --device cuda is valid here")
    for argv in (["run", "xor", "--device", "cuda"], ["all", "--device", "cuda", "--only", "xor"]):
        code, err = parse_error(capsys, *argv)
        assert code == 2 and "--device cuda: torch sees no CUDA GPU" in err, argv


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


# -- --backend: the manual side on NumPy or on torch CPU tensors --------------------------------

def test_backend_picks_the_manual_sides_arrays():
    """--backend torch puts the manual model on torch CPU tensors (autograd off), numpy and auto on NumPy."""
    import numpy as np
    import torch

    from manual import nn, optim

    assert _lab.resolve_device("cpu", "auto") == ("cpu", "numpy")
    assert _lab.resolve_device("cpu", "numpy") == ("cpu", "numpy")
    assert _lab.resolve_device("cpu", "torch") == ("cpu", "cpu")
    for backend, kind in (("numpy", np.ndarray), ("torch", torch.Tensor)):
        cfg = _lab.RunConfig(device="cpu", backend=backend)
        twins = _lab.Twins(nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)), nn.MSELoss(),
                           lambda ps: optim.SGD(ps, lr=0.1), cfg)
        assert all(isinstance(p.data, kind) for p in twins.model.parameters()), backend
        x, y = np.ones((4, 2)), np.zeros((4, 1))
        (xm, ym), _ = twins.place(x, y)
        assert isinstance(xm, kind) and isinstance(ym, kind)
        twins.step(x, y)
        assert twins.drift() < 1e-14  # same weights, same step, either array library
        if backend == "torch":
            assert not any(p.data.requires_grad for p in twins.model.parameters())  # autograd stays off


@pytest.mark.slow  # a real training subprocess
def test_run_xor_with_the_torch_backend_labels_the_run_and_every_claim_holds(tmp_path):
    out = tmp_path / "xor.json"
    r = cli("run", "xor", "--quick", "--backend", "torch", "--no-progress", "--json", str(out),
            "--logdir", str(tmp_path / "runs"))
    assert r.returncode == 0, r.stdout + r.stderr
    m = json.loads(out.read_text())["xor"]
    assert m["config"]["backend"] == "torch"
    assert "backend=torch" in m["logdir"]
    assert all(c["holds"] for c in m["claims"]), m["claims"]


def test_backend_numpy_on_cuda_is_a_usage_error(capsys, monkeypatch):
    """NumPy arrays cannot live on a GPU: exit 2 before any work (a GPU is pretended, so that the
    no-GPU check does not answer first); an unknown backend names the choices."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for argv in (["run", "xor", "--backend", "numpy", "--device", "cuda"],
                 ["all", "--only", "xor", "--backend", "numpy"]):  # auto takes the (pretended) GPU
        code, err = parse_error(capsys, *argv)
        assert code == 2 and "--backend numpy runs on the CPU only" in err, (argv, err)
    with pytest.raises(SystemExit, match="--backend numpy runs on the CPU only"):
        _lab.resolve_device("cuda", "numpy")
    code, err = parse_error(capsys, "run", "xor", "--backend", "gpu")
    assert code == 2 and "invalid choice: 'gpu'" in err and "'torch'" in err, err


@pytest.mark.slow  # two real training runs
def test_a_resume_with_another_logdir_continues_in_its_folder_and_makes_no_other(tmp_path):
    """`run xor --resume CKPT --logdir NEW`: the run continues in the checkpoint's own folder (the hint names
    that folder), and NEW is not made (it was, empty, by the --logdir check before the run)."""
    first = tmp_path / "first"
    r = cli("run", "xor", "--quick", "--no-progress", "--save-every", "100", "--logdir", str(first))
    assert r.returncode == 0, r.stdout + r.stderr
    ckpt = sorted(first.glob("xor/*/checkpoints/*.safetensors"))[0]
    new = tmp_path / "new"
    r = cli("run", "xor", "--quick", "--no-progress", "--resume", str(ckpt), "--logdir", str(new))
    assert r.returncode == 0, r.stdout + r.stderr
    assert not new.exists()
    assert f"--logdir {first}" in r.stdout


def test_quick_caps_a_given_value_and_says_so(monkeypatch):
    """--quick is a quick profile: a value given above its cap is capped, and the run's notes (printed beside
    the claims and in the JSON) say so; helper-21 found it silent. Not given (the default is larger than the
    cap): the quick profile, no note. Without --quick: the value as given."""
    import dataclasses
    import types

    from experiments import xor

    exp = types.SimpleNamespace(NAME="capped", main=lambda c: {"status": "ok", "notes": [],
                                                               "used": _lab.quick_cap(c, "steps", 300)})
    cfg = xor.Config(quick=True, steps=5000, progress=False)
    monkeypatch.setattr(_lab, "GIVEN", {"steps"})
    m = runner.run_one(exp, cfg)
    assert m["used"] == 300
    assert m["notes"] == ["--quick caps --steps at 300: this run used 300, not the 5000 given (without --quick it "
                          "uses 5000)"]
    assert runner.run_one(exp, dataclasses.replace(cfg, steps=50))["used"] == 50  # under the cap: as given
    assert runner.run_one(exp, dataclasses.replace(cfg, quick=False)) == {"status": "ok", "notes": [], "used": 5000}
    monkeypatch.setattr(_lab, "GIVEN", set())
    assert runner.run_one(exp, cfg) == {"status": "ok", "notes": [], "used": 300}


@pytest.mark.slow  # a real run
def test_run_quick_with_a_larger_steps_says_it_was_capped(tmp_path):
    out = tmp_path / "x.json"
    r = cli("run", "xor", "--quick", "--steps", "5000", "--no-progress", "--json", str(out), "--logdir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    m = json.loads(out.read_text())["xor"]
    assert m["config"]["steps"] == 5000 and any("--quick caps --steps at 300" in n for n in m["notes"]), m["notes"]
    assert "(--quick caps --steps at 300" in r.stdout


def test_outcome_json_is_strict_json_when_a_run_diverged(tmp_path):
    """A diverged run's drift is NaN: outcome.json (what `backprop-lab runs` lists) holds it as the string
    "nan", so that any JSON reader takes the file (Python's json wrote a bare NaN token), and the listing
    still shows it."""
    from experiments import view

    _lab.write_outcome(str(tmp_path), "xor", {"status": "diverged", "config": {"lr": 1e3}, "claims": [],
                                              "max_drift": float("nan"), "drift_ok": False})

    def refuse(token):
        raise ValueError(f"not JSON: {token}")

    o = json.loads((tmp_path / "outcome.json").read_text(), parse_constant=refuse)
    assert o["max_drift"] == "nan" and o["status"] == "diverged"
    assert view.describe(str(tmp_path))[1] == "diverged, drift nan OVER tolerance"
    assert json.loads(_lab.strict_json({"a": [float("inf"), -float("inf"), 1.5]}), parse_constant=refuse) == \
        {"a": ["inf", "-inf", 1.5]}
