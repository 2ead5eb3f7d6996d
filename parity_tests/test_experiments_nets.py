"""The activations and optimizers experiments (quick profile): claims, numbers and TensorBoard tags.

Each experiment runs once per module (both implementations); its claims are asserted from the
returned metrics, expected numbers come from closed forms or root finding (never from the run),
and the event files are read back to prove what was logged.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from _events import Events
from scipy.optimize import brentq

from experiments import _lab, activations, optimizers

pytestmark = pytest.mark.slow  # trains the activations and optimizers experiments (~25 CPU-s): the slow tier


def events(path):
    return Events(path)


def run(module, tmp_path_factory):
    cfg = module.Config(quick=True, progress=False, logdir=str(tmp_path_factory.mktemp(module.NAME)))
    m = module.main(cfg)
    m["ea"] = {impl: events(os.path.join(m["logdir"], impl)) for impl in _lab.IMPLS}
    return m


@pytest.fixture(scope="module")
def act(tmp_path_factory):
    return run(activations, tmp_path_factory)


@pytest.fixture(scope="module")
def optm(tmp_path_factory):
    return run(optimizers, tmp_path_factory)


def claim(m, start):
    (c,) = [c for c in m["claims"] if c["claim"].startswith(start)]
    return c


@pytest.mark.parametrize("fixture", ["act", "optm"])
def test_runs_ok_claims_hold_drift_within_tolerance(fixture, request):
    m = request.getfixturevalue(fixture)
    assert m["status"] == "ok", m["notes"]
    failed = [c["claim"] for c in m["claims"] if not c["holds"]]
    assert not failed, failed
    assert m["drift_ok"] and m["max_drift"] <= _lab.DRIFT_TOL["float64"]
    assert m["max_drift"] < 1e-11  # float64: rounding only


@pytest.mark.parametrize("fixture", ["act", "optm"])
def test_both_implementations_log_the_same_tags(fixture, request):
    ea = request.getfixturevalue(fixture)["ea"]
    for kind in ("scalars", "images", "histograms"):
        assert ea["manual"].Tags()[kind] == ea["torch"].Tags()[kind], kind
    assert "config/text_summary" in ea["manual"].Tags()["tensors"]


# -- activations ------------------------------------------------------------------------------

def test_sigmoid_derivative_numbers_match_the_guide_and_closed_form(act):
    peak = claim(act, "sigmoid'(x) peaks")
    assert peak["manual"] == pytest.approx(0.25, abs=1e-15) and peak["torch"] == pytest.approx(0.25, abs=1e-15)
    at10 = claim(act, "sigmoid'(+-10)")
    exact = math.exp(-10) / (1 + math.exp(-10)) ** 2  # s(1 - s) at x = 10
    for impl in ("manual", "torch"):
        assert at10[impl] == pytest.approx(exact, rel=1e-12)
        assert round(at10[impl], 5) == 0.00005  # the guide's "≈ 0.00005"
    assert claim(act, "<op>_backward")["manual"] <= 1e-12


def test_vanishing_gradients_sigmoid_vs_relu(act):
    for impl in ("manual", "torch"):
        r = act["results"][impl]
        sig, relu = r["sigmoid"]["grad_norm_at_init"], r["relu"]["grad_norm_at_init"]
        assert len(sig) == len(relu) == activations.Config.depth
        assert sig[-1] / sig[0] >= 100  # vanishing towards the input
        assert 0.1 <= relu[0] / relu[-1] <= 10
        assert all(a < b for a, b in zip(sig, sig[1:]))  # shrinks at every layer, input side smallest
        assert r["relu"]["val_accuracy"] >= 0.8 and r["sigmoid"]["val_accuracy"] <= 0.6
    m, t = act["results"]["manual"], act["results"]["torch"]
    for name in activations.ACTIVATIONS:
        np.testing.assert_allclose(m[name]["grad_norm_at_init"], t[name]["grad_norm_at_init"], rtol=1e-10)


def test_dead_units(act):
    for impl in ("manual", "torch"):
        r = act["results"][impl]
        assert r["leaky_relu"]["dead_fraction_init"] == r["leaky_relu"]["dead_fraction_trained"] == 0.0
        # ReLU has dead units in this 12-layer net (22% at init measured, seed 0); a count stuck at 0
        # (or at 1) would fail here; test_dead_fraction_counts_planted_dead_units checks the count itself
        assert 0.0 < r["relu"]["dead_fraction_init"] < 1.0 and 0.0 < r["relu"]["dead_fraction_trained"] < 1.0
        for smooth in ("sigmoid", "tanh", "elu", "gelu"):  # 0 only at isolated points: never dead
            assert r[smooth]["dead_fraction_trained"] == 0.0
    dead = [act["results"][impl]["relu"]["dead_fraction_trained"] for impl in ("manual", "torch")]
    assert dead[0] == dead[1]


def test_dead_fraction_counts_planted_dead_units():
    """Units made dead on purpose (bias -1000 before a ReLU) are exactly the ones counted."""
    from manual import nn, optim

    cfg = activations.Config(progress=False, device="cpu")
    net = activations.deep_net("relu", 3, 5, "he")  # Linear(5,5) ReLU Linear(5,5) ReLU Linear(5,1): 10 hidden units
    for layer, units in ((net[0], [1, 3]), (net[2], [0])):
        b = layer.bias.data.copy()
        b[units] = -1000.0
        layer.bias.data = b
    twins = _lab.Twins(net, nn.BCEWithLogitsLoss(), lambda p: optim.SGD(p, lr=0.1), cfg)
    x = np.random.default_rng(0).uniform(-1, 1, (64, 5))
    # planted dead units in layer 1 only zero their own column of layer 2's input; a layer-2 unit
    # could in principle die too, so count independently with NumPy
    h1 = np.maximum(x @ net[0].weight.data.T + net[0].bias.data, 0)
    h2 = np.maximum(h1 @ net[2].weight.data.T + net[2].bias.data, 0)
    expected = (np.all(h1 == 0, 0).sum() + np.all(h2 == 0, 0).sum()) / 10
    assert expected >= 0.3
    assert activations.dead_fraction(twins, x) == {"manual": expected, "torch": expected}


def test_activations_event_files(act):
    steps = 60  # the quick profile
    for impl, ea in act["ea"].items():
        tags = set(ea.Tags()["scalars"])
        for name in activations.ACTIVATIONS:
            assert f"{name}/lr" not in tags  # a constant learning rate is a setting, not a curve
            for tag in ("loss/train", "loss/val", "accuracy/val", "accuracy/train", "grad_norm/0.weight",
                        "grad_norm/22.weight", "grad_norm/22.bias", "parity/max_abs_param_diff", "dead_fraction"):
                assert f"{name}/{tag}" in tags, (impl, name, tag)
            loss = ea.Scalars(f"{name}/loss/train")
            assert [e.step for e in loss] == list(range(steps))
            final = act["results"][impl][name]["final_train_loss"]
            assert loss[-1].value == pytest.approx(final, rel=1e-6)  # event values are float32
            every = math.ceil(steps / _lab.GRAD_NORM_POINTS)  # at most 50 points per parameter, and the last step
            assert [e.step for e in ea.Scalars(f"{name}/grad_norm/0.weight")] == sorted({*range(0, steps, every),
                                                                                          steps - 1})
            assert not os.path.exists(os.path.join(act["logdir"], impl, name))  # no run per activation
        assert {"derivatives/f", "derivatives/f_prime", "grad_norm_vs_depth/he_init",
                "grad_norm_vs_depth/default_init"} <= set(ea.Tags()["images"])
        assert {"relu/grads/0.weight", "sigmoid/weights/22.weight"} <= set(ea.Tags()["histograms"])
    # the same gradient norms, step by step, in both implementations' logs
    gm = [e.value for e in act["ea"]["manual"].Scalars("sigmoid/grad_norm/0.weight")]
    gt = [e.value for e in act["ea"]["torch"].Scalars("sigmoid/grad_norm/0.weight")]
    np.testing.assert_allclose(gm, gt, rtol=1e-6)


def test_profile_image_is_a_real_picture(act):
    img = act["ea"]["manual"].Images("grad_norm_vs_depth/he_init")[-1]
    assert img.encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n" and img.width > 300 and img.height > 150


# -- optimizers -------------------------------------------------------------------------------

def dL(w, a=1.0, b=3.0):
    """d/dw of the full-batch loss w^2 + a sin(b w) + const."""
    return 2 * w + a * b * math.cos(b * w)


def test_gd_sticks_momentum_escapes_at_the_true_critical_points(optm):
    shallow = brentq(dL, 1.0, 1.5)  # the local minimum between the start (w = 3) and the global one
    bump = brentq(dL, 0.5, 0.9)  # the top of the bump between them
    best = brentq(dL, -0.7, -0.2)  # the global minimum
    assert optm["landscape"]["shallow"][0] == pytest.approx(shallow, abs=1e-4)
    assert optm["landscape"]["barrier"][0] == pytest.approx(bump, abs=1e-4)
    assert optm["landscape"]["global"][0] == pytest.approx(best, abs=1e-4)
    for impl in ("manual", "torch"):
        r = optm["results"][impl]
        assert r["gd_final_w"] == pytest.approx(shallow, abs=1e-6)
        assert r["momentum_final_w"] == pytest.approx(best, abs=1e-4)


def test_minibatch_escape_fraction(optm):
    for impl in ("manual", "torch"):
        r = optm["results"][impl]
        assert len(r["minibatch_escaped"]) == 8  # quick: 8 batch orders
        # escaped = ended past the bump's top (found here by brentq), read from each order's final w
        bump = brentq(dL, 0.5, 0.9)
        ends = [e.value for e in optm["ea"][impl].Scalars("minibatch/final_w_by_order")]
        assert r["minibatch_escaped"] == [w < bump for w in ends]
        assert r["minibatch_escaped_fraction"] == sum(w < bump for w in ends) / 8
        assert 0 < r["minibatch_escaped_fraction"] < 1  # the claim: noise escapes in some runs, not all
    assert optm["results"]["manual"]["minibatch_escaped"] == optm["results"]["torch"]["minibatch_escaped"]
    assert claim(optm, "guide's momentum")["manual"] <= 1e-12


def test_he_init_vs_large_init(optm):
    cfg = optimizers.Config()
    for impl in ("manual", "torch"):
        init = optm["results"][impl]["init"]
        he = init["he"]
        assert he["status"] == "ok" and he["loss_last_finite"] <= 0.5 * he["loss_initial"]
        assert max(he["activation_rms"]) / min(he["activation_rms"]) <= 10
        for name, std in (("std1", 1.0), ("std3", 3.0)):
            r = init[name]
            # ReLU halves the second moment, each layer multiplies it by width * std^2: growth std sqrt(width / 2)
            growth = (std * math.sqrt(cfg.width / 2)) ** (cfg.depth - 2)
            assert growth / 10 <= r["last_over_first_rms"] <= growth * 10, (name, r["last_over_first_rms"], growth)
            assert r["status"] == "diverged" and r["steps_done"] <= 5
    assert optm["status"] == "ok"  # the large inits' divergence is the result, reported in the notes
    assert sum("diverged at step" in n for n in optm["notes"]) >= 2


def test_optimizers_event_files(optm):
    for impl, ea in optm["ea"].items():
        tags = set(ea.Tags()["scalars"])
        for m in ("gd", "momentum", "minibatch"):
            for tag in ("loss/train", "grad_norm/w", "w", "parity/max_abs_param_diff"):
                assert f"{m}/{tag}" in tags, (impl, m, tag)
            ws = ea.Scalars(f"{m}/w")
            assert [e.step for e in ws] == list(range(optimizers.Config.steps))
        assert ea.Scalars("gd/w")[-1].value == pytest.approx(optm["results"][impl]["gd_final_w"], abs=1e-6)
        for name in ("he", "std1", "std3"):
            r = optm["results"][impl]["init"][name]
            loss = ea.Scalars(f"init_{name}/loss/train")
            assert [e.step for e in loss] == list(range(r["steps_done"]))  # every step up to the divergence
            if r["status"] == "diverged":
                assert not math.isfinite(loss[-1].value)
            assert f"init_{name}/grad_norm/0.weight" in tags
        assert {"landscape/paths/on_the_loss", "landscape/paths/w_per_step", "init/activation_scale"} \
            <= set(ea.Tags()["images"])
        assert os.listdir(os.path.join(optm["logdir"], impl)) == [  # sweeps are tags in the run, not runs
            f for f in os.listdir(os.path.join(optm["logdir"], impl)) if f.startswith("events.out.tfevents")]
        ends = ea.Scalars("minibatch/final_w_by_order")  # one point per batch order
        assert [e.step for e in ends] == list(range(8))
        assert ends[0].value == pytest.approx(optm["results"][impl]["minibatch_final_w"], abs=1e-6)
