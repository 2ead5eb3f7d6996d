"""The guide's own worked numbers (seeds/000_536e11626ec8df2a.txt), typed in from the guide.

Each worked example is its own test; where autograd applies, torch checks the same number.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import BACKENDS, DEVICE_OF

import manual.functional as F
from manual import _backend as B
from manual import guide as G
from manual import nn, optim
from manual._backend import to_numpy
from torch_ref import twin



def autograd_derivative(fn, x):
    """d fn / dx at a float x, by torch autograd in float64."""
    t = torch.tensor(float(x), dtype=torch.float64, requires_grad=True)
    fn(t).backward()
    return t.grad.item()


# -- Chain Rule ------------------------------------------------------------------------------

@pytest.mark.parametrize("x", [-2.0, -0.5, 0.0, 1.0, 2.0, 3.7])
def test_chain_rule_derivative_of_x2_plus_1_cubed(x):
    f, df = G.chain_rule_example(x)
    assert f == pytest.approx((x**2 + 1) ** 3, rel=1e-15)
    assert df == pytest.approx(6 * x * (x**2 + 1) ** 2, rel=1e-15, abs=0)  # the guide's 6x(x^2 + 1)^2
    assert df == pytest.approx(autograd_derivative(lambda t: (t**2 + 1) ** 3, x), rel=1e-15, abs=0)


def test_chain_rule_typed_values():
    # 6x(x^2 + 1)^2 at x = 0, 1, 2: 0, 6*1*4 = 24, 6*2*25 = 300
    assert [G.chain_rule_example(x)[1] for x in (0.0, 1.0, 2.0)] == [0.0, 24.0, 300.0]


# -- Gradients -------------------------------------------------------------------------------

def test_gradient_of_bowl_at_3_4_is_6_8():
    f, grad = G.bowl((3.0, 4.0))
    assert f == 25.0
    np.testing.assert_array_equal(grad, [6.0, 8.0])


def test_gradient_of_bowl_at_origin_is_zero():
    f, grad = G.bowl((0.0, 0.0))
    assert f == 0.0
    np.testing.assert_array_equal(grad, [0.0, 0.0])


def test_bowl_gradient_matches_autograd_in_5d(rng):
    p = rng.standard_normal(5)
    t = torch.tensor(p, requires_grad=True)
    (t * t).sum().backward()
    np.testing.assert_allclose(G.bowl(p)[1], t.grad.numpy(), rtol=1e-15, atol=0)


# -- Gradient Descent ------------------------------------------------------------------------

def test_gradient_descent_on_x2_from_10():
    xs = G.gradient_descent(lambda x: 2 * x, 10.0, lr=0.1, steps=3)
    assert xs == pytest.approx([10.0, 8.0, 6.4, 5.12], rel=1e-15)


def test_gradient_descent_derivatives_20_16_12_8():
    for x, expected in [(10.0, 20.0), (8.0, 16.0), (6.4, 12.8)]:
        assert autograd_derivative(lambda t: t**2, x) == pytest.approx(expected, rel=1e-15), f"f'({x})"


def test_gradient_descent_two_variables_from_5_3():
    xs = G.gradient_descent(lambda p: G.bowl(p)[1], (5.0, 3.0), lr=0.1, steps=2)
    expected = [(5.0, 3.0), (4.0, 2.4), (3.2, 1.92)]
    for i, (got, want) in enumerate(zip(xs, expected)):
        np.testing.assert_allclose(got, want, rtol=1e-15, atol=0, err_msg=f"iterate {i}")
    np.testing.assert_allclose(G.bowl(xs[0])[1], (10.0, 6.0), rtol=1e-15)
    np.testing.assert_allclose(G.bowl(xs[1])[1], (8.0, 4.8), rtol=1e-15)


# -- MSE and Cost Functions ------------------------------------------------------------------

def test_three_houses_mse_is_200_million():
    actual = np.array([500_000.0, 300_000.0, 700_000.0])
    predicted = np.array([480_000.0, 310_000.0, 690_000.0])
    np.testing.assert_array_equal(actual - predicted, [20_000.0, -10_000.0, 10_000.0])
    np.testing.assert_array_equal((actual - predicted) ** 2, [4e8, 1e8, 1e8])
    assert float(F.mse_loss(predicted, actual, reduction="sum")) == 600_000_000.0
    assert float(F.mse_loss(predicted, actual)) == 200_000_000.0


def test_mse_linear_gradient_formula_matches_autograd(rng):
    x, y, w = rng.standard_normal(7), rng.standard_normal(7), 0.3
    mse, grad = G.mse_linear(w, x, y)
    wt = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    loss = ((torch.tensor(y) - wt * torch.tensor(x)) ** 2).mean()
    loss.backward()
    assert mse == pytest.approx(loss.item(), rel=1e-14)
    assert grad == pytest.approx(wt.grad.item(), rel=1e-13)
    assert mse == pytest.approx(float(F.mse_loss(w * x, y)), rel=1e-14)


# -- Why Neural Networks Create Bumpy Landscapes ------------------------------------------------

def test_linear_bowl_table():
    # x = 2, y = 10: w = 1, 3, 5, 7 -> yhat 2, 6, 10, 14; error 8, 4, 0, -4; loss 64, 16, 0, 16
    t = G.linear_landscape([1, 3, 5, 7], x=2, y=10)
    np.testing.assert_array_equal(t["yhat"], [2, 6, 10, 14])
    np.testing.assert_array_equal(t["error"], [8, 4, 0, -4])
    np.testing.assert_array_equal(t["loss"], [64, 16, 0, 16])


@pytest.mark.parametrize("w", [1.0, 3.0, 5.0, 7.0])
def test_linear_bowl_with_manual_nn_matches_autograd(w):
    model = nn.Linear(1, 1, bias=False, dtype="float64")
    model.load_state_dict({"weight": np.array([[w]])})
    crit = nn.MSELoss()
    x, y = np.array([[2.0]]), np.array([[10.0]])
    loss = float(crit(model(x), y))
    model.backward(crit.backward())
    tm = twin(model)
    tl = torch.nn.functional.mse_loss(tm(torch.tensor(x)), torch.tensor(y))
    tl.backward()
    table = G.linear_landscape([w])
    assert loss == table["loss"][0] == tl.item()
    assert float(model.weight.grad[0, 0]) == table["dloss_dw"][0] == tm.weight.grad.item()


RELU_TABLE = [  # w1, w1 x, h = ReLU(w1 x), yhat, error, loss  (x = 2, y = 10, w2 = 1)
    (-3, -6, 0, 0, 10, 100),
    (-2, -4, 0, 0, 10, 100),
    (-1, -2, 0, 0, 10, 100),
    (0, 0, 0, 0, 10, 100),
    (1, 2, 2, 2, 8, 64),
    (3, 6, 6, 6, 4, 16),
    (5, 10, 10, 10, 0, 0),
]


def test_relu_kink_table():
    t = G.relu_landscape([r[0] for r in RELU_TABLE], x=2, y=10, w2=1)
    for key, col in [("z", 1), ("h", 2), ("yhat", 3), ("error", 4), ("loss", 5)]:
        np.testing.assert_array_equal(t[key], [r[col] for r in RELU_TABLE], err_msg=key)


@pytest.mark.parametrize("row", RELU_TABLE, ids=lambda r: f"w1={r[0]}")
def test_relu_kink_gradient_flat_region_is_zero(row):
    """dL/dw1 = 0 on the flat region w1 <= 0 (relu'(0) = 0, torch's convention); manual.nn, autograd and the table agree."""
    w1, loss = float(row[0]), float(row[5])
    model = nn.Sequential(nn.Linear(1, 1, bias=False, dtype="float64"), nn.ReLU(),
                          nn.Linear(1, 1, bias=False, dtype="float64"))
    model.load_state_dict({"0.weight": np.array([[w1]]), "2.weight": np.array([[1.0]])})
    tm = twin(model)
    crit = nn.MSELoss()
    x, y = np.array([[2.0]]), np.array([[10.0]])
    assert float(crit(model(x), y)) == loss
    model.backward(crit.backward())
    torch.nn.functional.mse_loss(tm(torch.tensor(x)), torch.tensor(y)).backward()
    by_hand = G.relu_landscape([w1])["dloss_dw1"][0]
    got = float(model[0].weight.grad[0, 0])
    assert got == by_hand == tm[0].weight.grad.item()
    if w1 <= 0:
        assert got == 0.0


# -- Activation Functions: vanishing gradients ---------------------------------------------------

@pytest.mark.parametrize("x", [10.0, -10.0])
def test_sigmoid_gradient_at_10_is_about_0_00005(x):
    closed_form = math.exp(-10) / (1 + math.exp(-10)) ** 2  # s(1 - s) = 4.5396e-05
    got = float(F.sigmoid_backward(np.array(1.0), np.array(x)))  # the derivative itself: upstream 1
    assert got == pytest.approx(closed_form, rel=1e-14)
    assert got == pytest.approx(autograd_derivative(torch.sigmoid, x), rel=1e-14)
    assert got == pytest.approx(0.0000454, abs=5e-8)
    assert round(got, 5) == 0.00005  # the guide's "gradient ~ 0.00005"


def test_sigmoid_chain_vanishes_relu_chain_does_not():
    """Five stacked sigmoids: d/dx <= 0.25^5 (sigmoid' <= 1/4); five ReLUs at x > 0: exactly 1."""
    x = np.array([[0.7]])
    sig = nn.Sequential(*[nn.Sigmoid() for _ in range(5)])
    sig(x)
    g_sig = float(sig.backward(np.array([[1.0]]))[0, 0])
    t = torch.tensor(x, requires_grad=True)
    y = t
    for _ in range(5):
        y = torch.sigmoid(y)
    y.backward(torch.ones_like(y))
    assert g_sig == pytest.approx(t.grad.item(), rel=1e-14)
    assert 0 < g_sig <= 0.25**5
    relu = nn.Sequential(*[nn.ReLU() for _ in range(5)])
    relu(x)
    assert float(relu.backward(np.array([[1.0]]))[0, 0]) == 1.0


# -- Backpropagation: the 2-layer example ---------------------------------------------------------

@pytest.fixture(params=BACKENDS)
def step(request):
    model, _ = G.two_layer_example(device=DEVICE_OF[request.param])
    return G.backprop_step(model, x=2.0, y=10.0, lr=0.01), model


def test_backprop_forward_and_loss_64(step):
    r, _ = step
    assert (r["z1"], r["h"], r["yhat"]) == (2.0, 2.0, 2.0)
    assert r["loss"] == 64.0


def test_backprop_dL_dyhat_is_minus_16(step):
    assert step[0]["dL_dyhat"] == -16.0


def test_backprop_dL_dh_and_dL_dz1_are_minus_16(step):
    assert (step[0]["dL_dh"], step[0]["dL_dz1"]) == (-16.0, -16.0)


def test_backprop_gradients(step):
    assert step[0]["grads"] == {"0.weight": -32.0, "0.bias": -16.0, "2.weight": -32.0, "2.bias": -16.0}


def test_backprop_gradients_match_autograd():
    model, _ = G.two_layer_example()
    tm = twin(model)
    torch.nn.functional.mse_loss(tm(torch.tensor([[2.0]], dtype=torch.float64)),
                                 torch.tensor([[10.0]], dtype=torch.float64)).backward()
    r = G.backprop_step(model)
    assert r["grads"] == {n: p.grad.item() for n, p in tm.named_parameters()}


def test_backprop_update_weights_1_32_biases_0_16(step):
    w = step[0]["weights"]
    for name, expected in {"0.weight": 1.32, "2.weight": 1.32, "0.bias": 0.16, "2.bias": 0.16}.items():
        assert w[name] == pytest.approx(expected, rel=1e-15), name


def test_backprop_new_forward_loss_37_7(step):
    _, model = step
    new = G.forward_values(model, x=2.0, y=10.0)
    # z1 = 1.32*2 + 0.16 = 2.80; yhat = 1.32*2.80 + 0.16 = 3.856 (the guide prints 3.86);
    # L = (10 - 3.856)^2 = 6.144^2 = 37.748736 (the guide prints 37.7)
    assert new["z1"] == pytest.approx(2.80, rel=1e-15)
    assert new["h"] == new["z1"]
    assert new["yhat"] == pytest.approx(3.856, rel=1e-15)
    assert new["loss"] == pytest.approx(37.748736, rel=1e-14)
    assert (round(new["yhat"], 2), round(new["loss"], 1)) == (3.86, 37.7)
    assert new["loss"] < 64.0


def guide_loop(steps=100):
    """A plain-Python transcription of the guide's Complete Code Example (records every iteration)."""
    x, y = 2.0, 10.0
    w1, b1 = 1.0, 0.0
    w2, b2 = 1.0, 0.0
    alpha = 0.01
    records = []
    for i in range(steps):
        z1 = w1 * x + b1
        h = max(0, z1)
        z2 = w2 * h + b2
        y_pred = z2
        loss = (y - y_pred) ** 2
        dL_dy_pred = -2 * (y - y_pred)
        dL_dw2 = dL_dy_pred * h
        dL_db2 = dL_dy_pred
        dL_dh = dL_dy_pred * w2
        dL_dz1 = dL_dh * (1 if z1 > 0 else 0)
        dL_dw1 = dL_dz1 * x
        dL_db1 = dL_dz1
        w1 -= alpha * dL_dw1
        b1 -= alpha * dL_db1
        w2 -= alpha * dL_dw2
        b2 -= alpha * dL_db2
        records.append({"loss": loss, "y_pred": y_pred,
                        "0.weight": w1, "0.bias": b1, "2.weight": w2, "2.bias": b2})
    return records


@pytest.mark.parametrize("backend", BACKENDS)
def test_complete_code_example_100_iterations(backend):
    model, crit = G.two_layer_example(device=DEVICE_OF[backend])
    opt = optim.SGD(model.parameters(), lr=0.01)
    x, y = B.place([[2.0]], DEVICE_OF[backend], "float64"), B.place([[10.0]], DEVICE_OF[backend], "float64")
    expected = guide_loop(100)
    for i, want in enumerate(expected):
        opt.zero_grad()
        y_pred = model(x)
        loss = crit(y_pred, y)
        model.backward(crit.backward())
        opt.step()
        got = {"loss": float(loss), "y_pred": float(y_pred[0, 0]),
               **{n: float(to_numpy(v).reshape(())) for n, v in model.state_dict().items()}}
        assert got == want, f"{backend} float64, iteration {i}: manual {got} != guide {want}"
        if i == 0:
            assert f"Iter {i}: Loss={loss:.2f}, Pred={float(y_pred[0, 0]):.2f}" == "Iter 0: Loss=64.00, Pred=2.00"
    assert expected[-1]["loss"] < 1e-6  # the loop converges: yhat -> y = 10
