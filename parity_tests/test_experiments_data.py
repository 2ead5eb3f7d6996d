"""The landscape, circles and digits experiments (quick profile): the guide's claims on each
implementation's own results, checked against independent numbers (the guide's tables, closed
forms, brute force) and read back from the event files."""

from __future__ import annotations

import os

import numpy as np
import pytest
from _events import Events
import torch

from experiments import _lab, circles, digits, landscape


def events(metrics, impl):
    return Events(os.path.join(metrics["logdir"], impl))


def assert_ok(m):
    assert m["status"] == "ok", m["notes"]
    failed = [c for c in m["claims"] if not c["holds"]]
    assert not failed, failed
    assert all(c["holds_manual"] and c["holds_torch"] for c in m["claims"])
    assert m["drift_ok"] and m["max_drift"] <= _lab.DRIFT_TOL["float64"], m["max_drift"]


def assert_logged(m, images, loss="loss/train"):
    ea = {i: events(m, i) for i in _lab.IMPLS}
    assert set(ea["manual"].Tags()["scalars"]) == set(ea["torch"].Tags()["scalars"])
    for impl in _lab.IMPLS:
        values = ea[impl].Scalars(loss)
        assert values[-1].value == np.float32(m["history"][loss][impl][-1]), impl
        assert images <= set(ea[impl].Tags()["images"]), impl
        assert any("weights/" in t for t in ea[impl].Tags()["histograms"]), impl
    return ea


def run(module, tmp_path_factory, **kw):
    logdir = str(tmp_path_factory.mktemp(module.NAME))
    return module.main(module.Config(quick=True, progress=False, logdir=logdir, **kw))


@pytest.fixture(scope="module")
def land(tmp_path_factory):
    return run(landscape, tmp_path_factory)


@pytest.fixture(scope="module")
def circ(tmp_path_factory):
    return run(circles, tmp_path_factory)


@pytest.fixture(scope="module")
def digs(tmp_path_factory):
    return run(digits, tmp_path_factory)


# -- landscape -----------------------------------------------------------------------------------

def test_landscape_claims_hold(land):
    assert_ok(land)
    assert len(land["claims"]) == 6
    assert land["drift_parts"]["sweeps"] == 0.0  # the 1-D sweeps agree exactly


@pytest.mark.parametrize("impl", _lab.IMPLS)
def test_landscape_sweeps_equal_the_guides_tables(land, impl):
    r = land["results"][impl]
    assert r["linear_table"] == [64.0, 16.0, 0.0, 16.0]  # guide: w = 1, 3, 5, 7
    assert r["relu_table"] == [100.0, 100.0, 100.0, 100.0, 64.0, 16.0, 0.0]  # guide: w1 = -3, -2, -1, 0, 1, 3, 5
    assert r["linear_min_second_difference"] == 2.0  # L'' = 2 x^2 = 8, times the step 0.5^2
    assert r["relu_flat_max_abs_grad"] == 0.0 and r["relu_grad_at_0"] == 0.0  # torch's relu'(0) = 0
    assert r["relu_grad_at_0.25"] == -2 * (10 - 0.25 * 2) * 2  # past the kink: -2 (y - w1 x) x


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_landscape_sweeps_match_closed_forms(backend):
    """Manual (on NumPy, and on torch tensors with autograd off) and autograd against the formulas."""
    w = landscape.LINEAR_W
    for loss, grad in [landscape.linear_manual(w, backend, "float64"),
                       landscape.sweep_torch(lambda a, x: a * x, w, "cpu", "float64")]:
        np.testing.assert_array_equal(loss, (10 - 2 * w) ** 2)
        np.testing.assert_allclose(grad, -2 * 2 * (10 - 2 * w), rtol=1e-15, atol=0)
    w1 = landscape.RELU_W1
    expected = (10 - np.maximum(0, 2 * w1)) ** 2
    dexpected = np.where(w1 > 0, -2 * 2 * (10 - 2 * w1), 0.0)
    for loss, grad in [landscape.relu_manual(w1, backend, "float64"),
                       landscape.sweep_torch(lambda a, x: torch.relu(a * x), w1, "cpu", "float64")]:
        np.testing.assert_array_equal(loss, expected)
        np.testing.assert_allclose(grad, dexpected, rtol=1e-15, atol=0)


def test_filter_normalisation_rescales_rows_and_zeroes_biases():
    """Li et al. 2018: each direction row gets the norm of the weight row it perturbs."""
    rng = np.random.default_rng(3)
    w, b = rng.standard_normal((5, 3)), rng.standard_normal(5)
    d, db = rng.standard_normal((5, 3)), rng.standard_normal(5)
    from manual._backend import namespace

    dm = landscape.normalise_manual(d, w, namespace(w))
    np.testing.assert_allclose(np.linalg.norm(dm, axis=1), np.linalg.norm(w, axis=1), rtol=1e-14)
    np.testing.assert_allclose(dm / np.linalg.norm(dm, axis=1, keepdims=True),
                               d / np.linalg.norm(d, axis=1, keepdims=True), rtol=1e-14)  # direction kept
    assert not np.any(landscape.normalise_manual(db, b, namespace(b)))
    dt = landscape.normalise_torch(torch.tensor(d), torch.tensor(w)).numpy()
    np.testing.assert_allclose(dt, dm, rtol=1e-14)
    assert not torch.any(landscape.normalise_torch(torch.tensor(db), torch.tensor(b)))


def test_landscape_surface_agrees_and_is_centred(land):
    zm, zt = (np.array(land["surface"][i]) for i in _lab.IMPLS)
    assert zm.shape == (11, 11)
    np.testing.assert_allclose(zm, zt, rtol=0, atol=1e-10)
    c = 5
    assert land["alphas"][c] == 0.0
    assert zm[c, c] == zm.min() < zm.max()  # the trained weights are the grid's lowest point
    assert land["results"]["manual"]["surface"]["centre"] == zm[c, c]


def test_landscape_does_not_depend_on_which_implementations_run(land, tmp_path):
    """Same seed, same MLP weights and directions with --impl torch alone as with both."""
    alone = landscape.main(landscape.Config(quick=True, progress=False, logdir=str(tmp_path), impl="torch"))
    assert alone["surface"]["torch"] == land["surface"]["torch"]
    assert alone["history"]["loss/train"]["torch"] == land["history"]["loss/train"]["torch"]


def test_landscape_logs(land):
    ea = assert_logged(land, {"sweeps_1d/linear", "sweeps_1d/relu", "surface_2d/contour", "surface_2d/slices_1d"})
    assert "guide_tables/text_summary" in ea["manual"].Tags()["tensors"]


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # NaN weights, on purpose
def test_landscape_divergence_ends_cleanly(tmp_path):
    m = landscape.main(landscape.Config(quick=True, progress=False, logdir=str(tmp_path), lr=float("inf")))
    assert m["status"] == "diverged" and "diverged at step" in m["notes"][0]
    holds = [c["holds"] for c in m["claims"]]
    assert holds == [True, True, True, True, False, False]  # the sweeps need no training; the surface does
    ea = events(m, "manual")
    assert "events/text_summary" in ea.Tags()["tensors"]  # the note reached the event file


# -- circles -------------------------------------------------------------------------------------

def test_circles_claims_hold(circ):
    assert_ok(circ)
    for impl in _lab.IMPLS:
        r = circ["results"][impl]
        assert r["linear_test_accuracy"] <= circles.LINEAR_MAX
        assert r["mlp_test_accuracy"] >= circles.MLP_MIN
    d = circ["data"]
    assert abs(d["majority_rate"] - 0.5) < 0.05  # balanced by construction, up to the split
    assert d["best_line_accuracy"] < circles.LINEAR_MAX  # no line can pass the bar: a fair one


def test_circles_data_is_balanced_and_labelled_by_radius():
    x, y = circles.make_circles(1000, np.random.default_rng(0))
    assert x.shape == (1000, 2) and y.shape == (1000, 1)
    assert y.sum() == 500
    r2 = (x**2).sum(1)
    assert np.all(r2 <= 1) and np.array_equal(y[:, 0] == 1, r2 < 0.5)


def test_best_line_accuracy_on_known_cases():
    xor = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=float)
    assert circles.best_line_accuracy(xor, np.array([0, 1, 1, 0])) == 0.75  # one XOR point is always lost
    rng = np.random.default_rng(1)
    pts = rng.standard_normal((200, 2))
    assert circles.best_line_accuracy(pts, (pts @ [1.0, 2.0] > 0.3).astype(float)) >= 0.99  # separable
    # and no trained linear model beats it: sklearn's logistic regression on the same points
    from sklearn.linear_model import LogisticRegression

    x, y = circles.make_circles(400, rng)
    fit = LogisticRegression().fit(x, y[:, 0])
    assert fit.score(x, y[:, 0]) <= circles.best_line_accuracy(x, y)


def test_batch_order_is_a_permutation_per_epoch():
    order = _lab.batch_order(np.random.default_rng(0), 10, 4, 2)
    assert [len(b) for b in order] == [4, 4, 2, 4, 4, 2]
    for e in range(2):
        assert sorted(np.concatenate(order[3 * e:3 * e + 3])) == list(range(10))
    again = _lab.batch_order(np.random.default_rng(0), 10, 4, 2)
    assert all(np.array_equal(a, b) for a, b in zip(order, again))


def test_circles_logs(circ):
    ea = assert_logged(circ, {"mlp/boundary", "linear/boundary"}, loss="mlp/loss/train")
    for impl in _lab.IMPLS:
        tags = set(ea[impl].Tags()["scalars"])
        assert {"mlp/loss/val", "mlp/accuracy/test", "linear/loss/train", "mlp/lr"} <= tags  # lr: the cosine schedule
        assert ea[impl].Scalars("mlp/accuracy/test")[-1].value == np.float32(circ["results"][impl]["mlp_test_accuracy"])


# -- digits --------------------------------------------------------------------------------------

def test_digits_claims_hold(digs):
    assert_ok(digs)
    for impl in _lab.IMPLS:
        r = digs["results"][impl]
        assert r["test_accuracy"] >= 0.95  # quick profile: 6 epochs, same bar as the default
        assert r["test_accuracy_at_init"] <= 0.2
    assert digs["results"]["manual"]["test_accuracy"] == digs["results"]["torch"]["test_accuracy"]
    assert digs["data"] == {"n_train": 1347, "n_test": 450, "steps": 6 * 22}


def test_digits_standardised_with_training_statistics_only():
    from sklearn.datasets import load_digits

    (xtr, ytr), (xte, yte) = digits.load_data(digits.Config())
    _, y = load_digits(return_X_y=True)
    assert xtr.shape == (1347, 64) and xte.shape == (450, 64)
    np.testing.assert_allclose(xtr.mean(0), 0, atol=1e-12)
    std = xtr.std(0)
    assert np.all((np.abs(std - 1) < 1e-12) | (std == 0)) and (std == 0).sum() < 5  # a few blank corner pixels
    assert np.max(np.abs(xte.mean(0))) > 0.01  # the test set's own statistics were not used
    assert np.max(np.abs(np.bincount(yte) - 0.25 * np.bincount(y))) <= 1  # stratified
    (xtr2, _), _ = digits.load_data(digits.Config())
    np.testing.assert_array_equal(xtr, xtr2)  # seeded


def test_mosaic_tiles_each_unit():
    """digits' first-layer weights (units' 64 inputs as 8x8 tiles), cnn's filters, gpt's attention: one mosaic."""
    w = np.random.default_rng(0).standard_normal((20, 64))
    tiles = w[:16].reshape(-1, 8, 8)
    m = _lab.mosaic(tiles, cols=4)
    assert m.shape == (37, 37)
    for k in (0, 5, 15):
        r, c = divmod(k, 4)
        tile = m[1 + 9 * r:9 + 9 * r, 1 + 9 * c:9 + 9 * c]
        np.testing.assert_array_equal(tile, w[k].reshape(8, 8) / np.abs(w[k]).max())
    assert np.isnan(m[0]).all() and np.isnan(m[:, 9]).all()
    whole = _lab.mosaic(tiles, cols=4, scale="all")
    np.testing.assert_array_equal(whole[1:9, 1:9], tiles[0] / np.abs(tiles).max())
    raw = _lab.mosaic(tiles[:3], cols=2, scale=None)  # 3 tiles, 2 across: a second row half empty
    assert raw.shape == (19, 19) and np.isnan(raw[10:18, 10:18]).all()
    np.testing.assert_array_equal(raw[10:18, 1:9], tiles[2])
    zero = _lab.mosaic(np.zeros((1, 2, 2)), cols=1)  # an all-zero tile stays zero, not NaN
    np.testing.assert_array_equal(zero[1:3, 1:3], 0.0)


def test_digits_logs_weights_before_and_after(digs):
    ea = assert_logged(digs, {"first_layer_weights"})
    steps = digs["data"]["steps"]
    for impl in _lab.IMPLS:
        assert [e.step for e in ea[impl].Images("first_layer_weights")] == [0, steps]
        assert {"accuracy/train", "accuracy/test"} <= set(ea[impl].Tags()["scalars"])
        assert ea[impl].Scalars("accuracy/test")[-1].value == np.float32(digs["results"][impl]["test_accuracy"])
