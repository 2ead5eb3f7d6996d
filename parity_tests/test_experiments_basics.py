"""The gradient-descent, linear-regression, stopping and backprop experiments (quick profile):
their claims hold, the guide's numbers come out of both implementations, and the event files
hold what was reported. Expected numbers come from the guide, closed forms or numpy.linalg.lstsq."""

from __future__ import annotations

import os

import numpy as np
import pytest
from _events import Events

from experiments import backprop, gradient_descent, linear_regression, runner, stopping

MODULES = {"gradient-descent": gradient_descent, "linear-regression": linear_regression,
           "stopping": stopping, "backprop": backprop}
IMAGES = {"gradient-descent": "trajectories/x_per_step", "linear-regression": "fit", "stopping": "validation/overfit/losses",
          "backprop": "losses/guide_loop"}  # multi-panel figures are logged one panel per image


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Each experiment once, quick, on the CPU: name -> metrics."""
    out = {}
    for name, mod in MODULES.items():
        cfg = mod.Config(quick=True, progress=False, device="cpu", logdir=str(tmp_path_factory.mktemp(mod.__name__)))
        out[name] = mod.main(cfg)
    return out


def events(m, impl):
    return Events(os.path.join(m["logdir"], impl))


def values(ea, tag):
    return [e.value for e in ea.Scalars(tag)]


@pytest.mark.parametrize("name", list(MODULES))
def test_claims_hold_and_logs_match(runs, name):
    m = runs[name]
    assert m["status"] == "ok", m["notes"]
    failed = [(c["claim"], c["manual"], c["torch"]) for c in m["claims"] if not c["holds"]]
    assert not failed, f"{name}: claims that do not hold: {failed}"
    assert m["drift_ok"] and m["max_drift"] <= m["drift_tolerance"], f"{name}: drift {m['max_drift']}"
    em, et = events(m, "manual"), events(m, "torch")
    assert em.Tags()["scalars"] and sorted(em.Tags()["scalars"]) == sorted(et.Tags()["scalars"])
    assert IMAGES[name] in em.Tags()["images"] and IMAGES[name] in et.Tags()["images"]
    assert "config/text_summary" in em.Tags()["tensors"]
    mod = runner.load(name)
    assert mod is MODULES[name] and mod.NAME == name and mod.SECTION and mod.SUMMARY


def test_gradient_descent_guide_numbers(runs):
    m = runs["gradient-descent"]
    for impl in ("manual", "torch"):
        r = m["results"][impl]
        np.testing.assert_allclose(r["x"][:4], [10, 8, 6.4, 5.12], rtol=0, atol=1e-12)  # the guide's steps
        np.testing.assert_allclose(r["grad"][:3], [20, 16, 12.8], rtol=0, atol=1e-12)
        np.testing.assert_allclose(r["xy"], [[5, 3], [4, 2.4], [3.2, 1.92]], rtol=0, atol=1e-12)
        np.testing.assert_allclose(r["grad_xy"], [[10, 6], [8, 4.8]], rtol=0, atol=1e-12)
        assert r["regimes"] == {"0.001": "slow", "0.1": "efficient", "0.9": "bouncing", "1.1": "diverging"}
        # closed form: x_k = 10 (1 - 2 lr)^k on x^2
        assert r["final_x"] == pytest.approx(10 * 0.8**80, rel=1e-9)
        assert r["sweep_final_abs_x"]["0.001"] == pytest.approx(10 * 0.998**80, rel=1e-9)
        k = r["sweep_steps_run"]["1.1"]  # stopped once |x| = 10 * 1.2^k passed 1e7, no crash
        assert k == int(np.ceil(np.log(1e6) / np.log(1.2))) and r["sweep_final_abs_x"]["1.1"] == pytest.approx(10 * 1.2**k)
        ea = events(m, impl)
        np.testing.assert_allclose(values(ea, "x2/x")[:4], [10, 8, 6.4, 5.12], rtol=1e-6)  # event files store float32
        assert values(ea, "x2/loss/train")[0] == 100.0 and len(values(ea, "sweep/lr_1.1/x")) == k + 1
        assert sorted(os.listdir(os.path.join(m["logdir"], impl))) == sorted(  # the sweep is tags, not runs
            f for f in os.listdir(os.path.join(m["logdir"], impl)) if f.startswith("events.out.tfevents"))
        assert values(ea, "sweep/lr_0.9/loss/train")[-1] == pytest.approx(r["sweep_final_abs_x"]["0.9"] ** 2, rel=1e-6)
    assert any("lr 1.1: diverged" in n for n in m["notes"])


def test_classifier_on_closed_form_trajectories():
    traj = lambda lr, n=80: 10 * (1 - 2 * lr) ** np.arange(n + 1)  # noqa: E731  x^2 from 10
    assert [gradient_descent.classify(traj(lr)) for lr in (0.001, 0.1, 0.9, 1.1, 0.5)] == \
        ["slow", "efficient", "bouncing", "diverging", "efficient"]
    assert gradient_descent.classify([10, 12, np.inf]) == "diverging"
    assert gradient_descent.classify(traj(1.0)) == "oscillating"  # 10, -10, 10, ...: |x| stays
    assert gradient_descent.classify([10, -5, 6, 1]) == "irregular"


def test_linear_regression_against_lstsq(runs):
    m = runs["linear-regression"]
    cfg = linear_regression.Config(**m["config"])
    size, price = linear_regression.make_houses(cfg, np.random.default_rng(cfg.seed))  # the run's data
    slope, intercept = np.linalg.lstsq(np.stack([size, np.ones_like(size)], 1), price, rcond=None)[0]  # raw units
    w0 = np.linalg.lstsq(size[:, None], price, rcond=None)[0][0]  # y = w x through the origin
    rms = np.sqrt(np.mean(size**2))
    for impl in ("manual", "torch"):
        r = m["results"][impl]
        assert r["three_house_mse"] == 200_000_000.0  # the guide's table
        assert r["price_per_m2"] == pytest.approx(slope, rel=1e-9) and r["base_price"] == pytest.approx(intercept, rel=1e-9)
        assert r["no_bias_w"] / rms == pytest.approx(w0, rel=1e-9)
        assert r["mse"] == pytest.approx(np.mean((intercept + slope * size - price) ** 2), rel=1e-9)
        assert r["grad_rel_err"] < 1e-12
        ea = events(m, impl)
        assert values(ea, "with_bias/loss/train")[-1] == pytest.approx(r["final_loss"], rel=1e-6)
        assert values(ea, "no_bias/loss/train") and "with_bias/weights/weight" in ea.Tags()["histograms"]


def test_stopping_conditions(runs):
    m = runs["stopping"]
    fired = {n: (v["reason"], v["iteration"]) for n, v in m["results"]["manual"].items()}
    assert fired == {n: (v["reason"], v["iteration"]) for n, v in m["results"]["torch"].items()}
    assert {n: r for n, (r, _) in fired.items()} == {n: n for n in fired}
    assert fired["max_iter"][1] == 200
    for impl in ("manual", "torch"):
        ea = events(m, impl)
        g = values(ea, "gradient/stop/grad_norm")  # condition 1 fires at the first ||grad|| < 1e-3
        assert len(g) == fired["gradient"][1] + 1 and g[-1] < 1e-3 and min(g[:-1]) >= 1e-3
        c = values(ea, "cost/stop/cost_change")  # condition 2 at the first |change| < 0.01 (none logged at step 0)
        assert len(c) == fired["cost"][1] and c[-1] < 0.01 and min(c[:-1]) >= 0.01
        assert len(values(ea, "max_iter/loss/train")) == 200 and min(values(ea, "max_iter/stop/grad_norm")) >= 1e-3
        val, train = values(ea, "validation/loss/val"), values(ea, "validation/loss/train")
        v = m["results"][impl]["validation"]
        stop, best = fired["validation"][1], int(np.argmin(val))
        assert len(val) == stop + 1 and best == v["best_it"] and stop - best == m["config"]["patience"]
        assert val[stop] > val[best] and train[stop] < train[best]  # overfitting: val up, train still down
        assert val[-1] == pytest.approx(v["val_at_stop"], rel=1e-6)
        assert "validation/stop/text_summary" in ea.Tags()["tensors"]


def test_backprop_guide_numbers(runs):
    m = runs["backprop"]
    guide = {"forward/z1": 2, "forward/h": 2, "forward/yhat": 2, "forward/loss": 64, "backward/dL/dyhat": -16,
             "backward/dL/dw2": -32, "backward/dL/db2": -16, "backward/dL/dh": -16, "backward/dL/dz1": -16,
             "backward/dL/dw1": -32, "backward/dL/db1": -16, "update/w1": 1.32, "update/b1": 0.16,
             "update/w2": 1.32, "update/b2": 0.16, "new/yhat": 3.856, "new/loss": 37.748736}
    for impl in ("manual", "torch"):
        r = m["results"][impl]
        for k, v in guide.items():
            assert r[k] == pytest.approx(v, rel=1e-12, abs=1e-12), (impl, k)
        assert round(r["new/loss"], 1) == 37.7  # the guide's rounding
        assert r["loop_final_loss"] < 1e-10 and r["loop_final_pred"] == pytest.approx(10.0, abs=1e-5)
        assert r["deep_final_loss"] < r["deep_first_loss"]
        ea = events(m, impl)
        loss = values(ea, "loss/train")
        assert len(loss) == 100 and loss[0] == 64.0 and loss[-1] == pytest.approx(r["loop_final_loss"], abs=1e-12)
        assert values(ea, "deep/loss/train")[-1] == pytest.approx(r["deep_final_loss"], rel=1e-6)
        assert {"deep/grad_norm/0.weight", "deep/grad_norm/6.weight"} <= set(ea.Tags()["scalars"])
        assert "deep/grads/0.weight" in ea.Tags()["histograms"]
        assert "guide/worked_example/text_summary" in ea.Tags()["tensors"]


def test_backprop_prints_only_when_verbose(tmp_path, capsys):
    for verbose in (False, True):
        m = backprop.main(backprop.Config(quick=True, progress=False, device="cpu", logdir=str(tmp_path),
                                          impl="manual", deep_steps=3, verbose=verbose))
        out = capsys.readouterr().out
        assert m["status"] == "ok"
        if verbose:
            assert "dL/dw1" in out and "37.748736" in out and "Iter 90:" in out
        else:
            assert out == ""
