"""The guide's worked examples, computed by hand (guide: seeds/000_536e11626ec8df2a.txt).

Scalar examples are plain floats / NumPy, derivatives written out as the guide writes them.
The Backpropagation section's network is built as a real `manual.nn` model, so the same
numbers also check the library (parity_tests/test_guide.py).
"""

from __future__ import annotations

import numpy as np

from . import _backend as B
from . import nn, optim


def chain_rule_example(x):
    """Chain Rule: f(x) = (x^2 + 1)^3 = g(h(x)) -> (f, f'(x) = g'(h(x)) h'(x) = 6x(x^2 + 1)^2)."""
    h = x * x + 1.0  # inner h(x) = x^2 + 1
    dh_dx = 2.0 * x  # h'(x) = 2x
    f = h**3  # outer g(u) = u^3
    dg_dh = 3.0 * h * h  # g'(u) = 3u^2, at u = h(x)
    return f, dg_dh * dh_dx


def bowl(p):
    """Gradients: f(x, y, ...) = x^2 + y^2 + ... -> (f, grad f = (2x, 2y, ...))."""
    p = np.asarray(p, dtype=np.float64)
    return float(np.sum(p * p)), 2.0 * p


def gradient_descent(grad_fn, x0, lr, steps):
    """Gradient Descent: x_new = x_old - lr * grad f(x_old); returns [x0, x1, ..., x_steps]."""
    x = x0 if np.ndim(x0) == 0 else np.asarray(x0, dtype=np.float64)
    iterates = [x]
    for _ in range(steps):
        x = x - lr * grad_fn(x)
        iterates.append(x)
    return iterates


def mse_linear(w, x, y):
    """MSE and Cost Functions: yhat = w x; MSE(w) = (1/n) sum (y - w x)^2, dMSE/dw = (-2/n) sum x (y - w x)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n = x.size
    err = y - w * x
    return float(np.sum(err * err) / n), float(-2.0 / n * np.sum(x * err))


def linear_landscape(w_values, x=2.0, y=10.0):
    """Bumpy Landscapes (linear table): yhat = w x, L = (y - yhat)^2, dL/dw = -2 (y - yhat) x."""
    w = np.asarray(w_values, dtype=np.float64)
    yhat = w * x
    error = y - yhat
    return {"w": w, "yhat": yhat, "error": error, "loss": error**2, "dloss_dw": -2.0 * error * x}


def relu_landscape(w1_values, x=2.0, y=10.0, w2=1.0):
    """Bumpy Landscapes (ReLU table): h = ReLU(w1 x), yhat = w2 h, L = (y - yhat)^2.

    dL/dw1 = -2 (y - yhat) w2 relu'(w1 x) x, with relu'(z) = 1 if z > 0 else 0 (torch's value at 0).
    """
    w1 = np.asarray(w1_values, dtype=np.float64)
    z = w1 * x
    h = np.maximum(0.0, z)
    yhat = w2 * h
    error = y - yhat
    relu_grad = (z > 0).astype(np.float64)
    return {"w1": w1, "z": z, "h": h, "yhat": yhat, "error": error, "loss": error**2,
            "dloss_dw1": -2.0 * error * w2 * relu_grad * x}


def two_layer_example(device=None):
    """Backpropagation: h = ReLU(w1 x + b1), yhat = w2 h + b2, L = (y - yhat)^2, with w1 = w2 = 1, b1 = b2 = 0.

    Returns (model, criterion): Sequential(Linear(1, 1), ReLU(), Linear(1, 1)) in float64 and
    MSELoss (for one example, MSE = (y - yhat)^2).
    """
    model = nn.Sequential(nn.Linear(1, 1, device=device, dtype="float64"), nn.ReLU(),
                          nn.Linear(1, 1, device=device, dtype="float64"))
    one, zero = np.ones((1, 1)), np.zeros(1)
    model.load_state_dict({"0.weight": one, "0.bias": zero, "2.weight": one, "2.bias": zero})
    return model, nn.MSELoss()


def _scalar(a):
    return float(B.to_numpy(a).reshape(()))


def forward_values(model, x=2.0, y=10.0, criterion=None):
    """The guide's forward pass, layer by layer: z1, h, z2 = yhat, and L (scalars)."""
    criterion = nn.MSELoss() if criterion is None else criterion
    p = model[0].weight.data
    xa, ya = B.place([[x]], B.device_of(p), p.dtype), B.place([[y]], B.device_of(p), p.dtype)
    z1 = model[0](xa)
    h = model[1](z1)
    yhat = model[2](h)
    loss = criterion(yhat, ya)
    return {"z1": _scalar(z1), "h": _scalar(h), "yhat": _scalar(yhat), "loss": _scalar(loss)}


def backprop_step(model, x=2.0, y=10.0, lr=0.01):
    """One step of the guide's Backpropagation example with manual.nn and manual.optim.SGD.

    Returns the forward values (z1, h, yhat, loss), the backward chain (dL_dyhat, dL_dh,
    dL_dz1), every gradient by state_dict name ("grads") and the weights after the update
    ("weights"), all as floats.
    """
    criterion = nn.MSELoss()
    model.zero_grad()
    out = forward_values(model, x, y, criterion)
    dL_dyhat = criterion.backward()  # -2 (y - yhat)
    dL_dh = model[2].backward(dL_dyhat)  # dL/dyhat * w2; accumulates dL/dw2 = dL/dyhat h, dL/db2
    dL_dz1 = model[1].backward(dL_dh)  # dL/dh * relu'(z1)
    model[0].backward(dL_dz1)  # accumulates dL/dw1 = dL/dz1 x, dL/db1 = dL/dz1
    grads = {n: _scalar(p.grad) for n, p in model.named_parameters()}
    optim.SGD(model.parameters(), lr=lr).step()  # w = w - lr dL/dw
    weights = {n: _scalar(v) for n, v in model.state_dict().items()}
    return {**out, "dL_dyhat": _scalar(dL_dyhat), "dL_dh": _scalar(dL_dh), "dL_dz1": _scalar(dL_dz1),
            "grads": grads, "weights": weights}
