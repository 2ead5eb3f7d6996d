"""`backprop-lab verify`, run in-process: exit codes, the JSON it writes, and what it names on a failure."""

from __future__ import annotations

import json
import os

import pytest

import manual.functional as MF
from experiments.cli import main
from manual import nn
from torch_ref.opinfo import DTYPES, OPS


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("verify") / "verify.json"
    code = main(["verify", "--device", "cpu", "--json", str(path)])
    return code, json.loads(path.read_text())


def test_exits_0_and_writes_every_op_and_dtype(full_run):
    code, report = full_run
    assert code == 0 and report["passed"] is True
    rows = {(r["name"], r["dtype"], r["device"]) for r in report["rows"]}
    for op in OPS:
        for dt in DTYPES:
            for dev in ("numpy", "torch-cpu"):
                assert (op.name, dt, dev) in rows, f"no row for {op.name} {dt} {dev}"
    assert {r["name"] for r in report["rows"] if r["kind"] == "model"} >= {"mlp[relu]", "mlp[tanh]", "mlp[gelu]"}
    assert all(r["passed"] for r in report["rows"])


def test_json_holds_per_sample_detail(full_run):
    _, report = full_run
    tanh = [d for d in report["samples"] if d["op"] == "tanh" and d["dtype"] == "float32"]
    assert {d["sample"] for d in tanh} >= {"saturated", "empty", "3d", "batch1"}
    assert all({"max_abs", "max_rel", "errors", "passed", "device"} <= set(d) for d in tanh)
    row = next(r for r in report["rows"] if r["name"] == "cross_entropy" and r["dtype"] == "float64")
    assert row["rtol"] <= 1e-10 and row["tol_reason"]


def test_a_broken_op_backward_exits_1_and_is_named(tmp_path, capsys, monkeypatch):
    real = MF.tanh_backward
    monkeypatch.setattr(MF, "tanh_backward", lambda g, *a, **k: real(g, *a, **k) * (1 + 1e-4))
    path = tmp_path / "v.json"
    code = main(["verify", "--device", "cpu", "--dtype", "float32", "--only", "tanh", "sigmoid", "--json", str(path)])
    assert code == 1
    out = capsys.readouterr().out
    assert "FAILED: tanh" in out
    lines = out.splitlines()  # a heading per op, then its rows: the tanh rows fail, the sigmoid rows pass
    rows, name = {}, None
    for line in lines[3:]:
        if line and not line.startswith(" "):
            name = line
        rows[name] = rows.get(name, "") + line
    assert "FAIL" in rows["tanh"] and "FAIL" not in rows["sigmoid"], out
    rows = {r["name"]: r for r in json.loads(path.read_text())["rows"]}
    assert rows["tanh"]["passed"] is False and rows["sigmoid"]["passed"] is True


def test_a_broken_model_names_the_first_diverging_layer(tmp_path, capsys, monkeypatch):
    real = nn.Linear.backward

    def wrong(self, g, **kw):  # every Linear: grad_input 1e-4 too large; the topmost ("4") diverges first
        return real(self, g, **kw) * (1 + 1e-4)

    monkeypatch.setattr(nn.Linear, "backward", wrong)
    path = tmp_path / "v.json"
    code = main(["verify", "--device", "cpu", "--dtype", "float64", "--only", "mlp[elu]", "--json", str(path)])
    assert code == 1
    assert "first diverging layer: 4 (4.grad_input)" in capsys.readouterr().out
    models = json.loads(path.read_text())["models"]
    assert models and all(m["first_divergent"] == "4" for m in models)


def test_bad_arguments_exit_2_on_stderr(capsys):
    """An unknown --only name was printed to stdout as one line of 700 columns (a Python list of every name)."""
    with pytest.raises(SystemExit) as e:
        main(["verify", "--only", "nosuchop", "relu"])
    out, err = capsys.readouterr()
    assert e.value.code == 2 and not out
    assert "backprop-lab verify: error: --only: unknown name(s) nosuchop; expected some of: adaptive_avg_pool2d," in err
    assert "['" not in err


def test_the_table_fits_100_columns(capsys):
    """The rows were 106 to 128 columns (the op's name, 35 wide, on every row): a heading per op now."""
    assert main(["verify", "--device", "cpu", "--only", "binary_cross_entropy_with_logits", "gelu", "mlp[leaky_relu]",
                 "scaled_dot_product_attention"]) == 0
    out = capsys.readouterr().out
    assert max(map(len, out.splitlines())) <= 100, out
    assert "binary_cross_entropy_with_logits\n  float64  numpy" in out


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full (every write: ENOSPC)")
def test_a_json_that_cannot_be_written_is_exit_74(capsys, tmp_path):
    """verify's --json was a plain open() and write: a full disk gave a traceback and a half-written file. Now
    runner.write_json (atomic; a device is written into, never replaced): exit 74 as run's, and why."""
    assert main(["verify", "--device", "cpu", "--only", "relu", "--json", "/dev/full"]) == 74
    assert "could not write --json /dev/full: No space left on device" in capsys.readouterr().err
    assert os.path.exists("/dev/full") and not os.path.isfile("/dev/full")  # still the device
