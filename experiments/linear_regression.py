"""House prices (guide: "MSE and Cost Functions"): MSE(w) = (1/n) sum (y_i - yhat_i)^2, the guide's
three houses cost 200,000,000, its gradient (-2/n) sum x_i (y_i - w x_i) is what backward computes,
and full-batch gradient descent on the MSE reaches the least-squares answer.

Data: n houses, price ($1000) = 50 + 2.5 size (m^2) + noise, generated in code. Models:
yhat = w x + b (manual.nn.Linear(1, 1)) on the standardised size, and yhat = w x
(Linear(1, 1, bias=False)) on the size divided by its root mean square, so the fit still passes
through the origin; either scaling makes the MSE's Hessian 2 I, so lr 0.1 contracts the error
by 0.8 per step. The reference is numpy.linalg.lstsq on the same scaled feature.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from manual import _backend as B
from manual import nn, optim
from torch_ref import to_torch

from . import _lab
from ._lab import opt

NAME = "linear-regression"
SUMMARY = "the guide's 3 houses have MSE 200,000,000; GD on MSE reaches the least-squares line"
SECTION = "MSE and Cost Functions"
DATA_PARALLEL = True  # on several ranks (`run NAME --nproc N`, torchrun) each step shards its batch: experiments/_dist.py
# HParams metrics: the last value of these tags, one column each (_lab.write_hparams)
METRICS = ("with_bias/loss/train", "no_bias/loss/train", "with_bias/parity/max_abs_param_diff")

GUIDE_ACTUAL = [500_000.0, 300_000.0, 700_000.0]  # the guide's table
GUIDE_PREDICTED = [480_000.0, 310_000.0, 690_000.0]
GUIDE_MSE = 200_000_000.0
FIT_TOL = 1e-6  # relative: GD's w, b and MSE against least squares
EXACT_TOL = {"float64": 1e-12, "float32": 1e-5}  # relative: formula vs backward, the 3-house MSE


@dataclass
class Config(_lab.RunConfig):
    n: int = opt(100, "houses (size in m^2 uniform in [50, 250])")
    price_per_m2: float = opt(2.5, "true slope of price on size, in $1000 per m^2")
    base_price: float = opt(50.0, "true intercept, in $1000")
    noise: float = opt(25.0, "std of the price noise, in $1000")
    steps: int = opt(200, "full-batch gradient-descent steps per model (quick: 150)")
    lr: float = opt(0.1, "SGD learning rate (on the scaled feature)")


def make_houses(cfg, rng):
    """size (n,) in m^2 and price (n,) in $1000: price = base + slope size + noise.

    Prices in $1000 keep the weights near 1e2..1e3, where the absolute parity drift tolerance
    (_lab.DRIFT_TOL) means what it says in float32 too (in $, one float32 ulp of w is 0.03).
    """
    size = rng.uniform(50, 250, cfg.n)
    price = cfg.base_price + cfg.price_per_m2 * size + rng.normal(0, cfg.noise, cfg.n)
    return size, price


def guide_mse(cfg):
    """The guide's three houses, through manual.nn.MSELoss and torch.nn.MSELoss: impl -> MSE."""
    tdev, mdev = _lab.resolve_device(cfg.device, cfg.backend)
    pred, actual = np.array(GUIDE_PREDICTED), np.array(GUIDE_ACTUAL)
    out = {}
    if "manual" in cfg.impls:
        out["manual"] = float(B.to_numpy(nn.MSELoss()(B.place(pred, mdev, cfg.dtype), B.place(actual, mdev, cfg.dtype))))
    if "torch" in cfg.impls:
        out["torch"] = float(torch.nn.MSELoss()(to_torch(pred, tdev, cfg.dtype), to_torch(actual, tdev, cfg.dtype)))
    return out


def formula_vs_backward(twins, x, y):
    """At the no-bias model's initial w: impl -> (the guide's (-2/n) sum x (y - w x), backward's dMSE/dw)."""
    (xm, ym), (xt, yt) = twins.place(x, y)
    out = {}
    for impl in twins.impls:
        w = float(twins.params(impl)["weight"].reshape(()))
        formula = -2.0 / len(x) * float(np.sum(x[:, 0] * (y[:, 0] - w * x[:, 0])))  # the guide's, in NumPy
        if impl == "manual":
            twins.model.zero_grad()
            twins.criterion(twins.model(xm), ym)
            twins.model.backward(twins.criterion.backward())
            grad = float(B.to_numpy(twins.model.weight.grad).reshape(()))
            twins.model.zero_grad()
        else:
            loss = twins.tcriterion(twins.tmodel(xt), yt)
            grad = float(torch.autograd.grad(loss, twins.tmodel.weight)[0].reshape(()))
        out[impl] = (formula, grad)
    return out


def fit(cfg, log, model, x, y, prefix, steps):
    """Full-batch GD on the MSE with both implementations; returns (twins, history)."""
    twins = _lab.Twins(model, nn.MSELoss(), lambda p: optim.SGD(p, lr=cfg.lr), cfg)
    check = formula_vs_backward(twins, x, y) if model.bias is None else None
    hist = _lab.train(twins, log, lambda s: (x, y), steps, lr=cfg.lr, log_histograms_every=max(steps // 4, 1),
                      desc=f"linear-regression {prefix}", progress=cfg.progress, prefix=prefix)
    return twins, hist, check


def figure(impl, size, price, lines):
    """The houses, the least-squares lines and GD's lines, in $ against m^2."""
    plt = _lab.pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 3.4))
    ax.scatter(size, price, s=8, c="0.5", label="houses")
    s = np.linspace(size.min(), size.max(), 2)
    for label, (slope, intercept), style in lines:
        ax.plot(s, intercept + slope * s, style, label=label)
    ax.set(xlabel="size (m^2)", ylabel="price ($1000)", title=f"house prices: GD vs least squares ({impl})")
    ax.legend(fontsize=8)
    return fig


def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


def main(cfg: Config):
    rng = _lab.seeded(cfg)
    steps = _lab.quick_cap(cfg, "steps", 150)
    size, price = make_houses(cfg, rng)
    mean, std, rms = size.mean(), size.std(), np.sqrt(np.mean(size**2))
    xs, xr, y = ((size - mean) / std)[:, None], (size / rms)[:, None], price[:, None]  # (n, 1) each
    # least squares on the same features: [w, b] and [w]
    ls_wb = np.linalg.lstsq(np.hstack([xs, np.ones_like(xs)]), price, rcond=None)[0]
    ls_w = np.linalg.lstsq(xr, price, rcond=None)[0]
    ls_mse = {"wb": float(np.mean((xs[:, 0] * ls_wb[0] + ls_wb[1] - price) ** 2)),
              "w": float(np.mean((xr[:, 0] * ls_w[0] - price) ** 2))}
    with _lab.RunLogger(NAME, cfg) as log:
        three = guide_mse(cfg)
        log.text("guide/three_houses", "MSE of the guide's 3 houses ($^2): " + ", ".join(f"{i} {v:,.1f}" for i, v in three.items()))
        tw_wb, h_wb, _ = fit(cfg, log, nn.Linear(1, 1), xs, y, "with_bias/", steps)
        tw_w, h_w, check = fit(cfg, log, nn.Linear(1, 1, bias=False), xr, y, "no_bias/", steps)
        results = {}
        for impl in cfg.impls:
            p_wb, p_w = tw_wb.params(impl), tw_w.params(impl)
            wb = np.array([p_wb["weight"].item(), p_wb["bias"].item()])
            w = p_w["weight"].item()
            mse_wb = float(np.mean((tw_wb.forward(xs)[impl][:, 0] - price) ** 2))
            mse_w = float(np.mean((tw_w.forward(xr)[impl][:, 0] - price) ** 2))
            formula, grad = check[impl]
            results[impl] = {
                "three_house_mse": three[impl], "w_b": wb.tolist(), "lstsq_w_b": ls_wb.tolist(),
                "w_b_rel_err": rel(wb, ls_wb), "mse": mse_wb, "lstsq_mse": ls_mse["wb"],
                "mse_rel_err": rel(mse_wb, ls_mse["wb"]),
                "price_per_m2": float(wb[0] / std), "base_price": float(wb[1] - wb[0] * mean / std),
                "no_bias_w": w, "lstsq_no_bias_w": float(ls_w[0]), "no_bias_w_rel_err": rel(w, ls_w[0]),
                "no_bias_mse": mse_w, "lstsq_no_bias_mse": ls_mse["w"], "no_bias_mse_rel_err": rel(mse_w, ls_mse["w"]),
                "formula_grad": formula, "backward_grad": grad, "grad_rel_err": rel(grad, formula),
                "first_loss": h_wb["loss"][impl][0], "final_loss": h_wb["loss"][impl][-1],
            }
            r = results[impl]
            lines = [("least squares, w x + b", (ls_wb[0] / std, ls_wb[1] - ls_wb[0] * mean / std), "k-"),
                     ("GD, w x + b", (r["price_per_m2"], r["base_price"]), "r--"),
                     ("least squares, w x", (ls_w[0] / rms, 0.0), "b-"),
                     ("GD, w x", (w / rms, 0.0), "c--")]
            log.image(impl, "fit", figure(impl, size, price, lines), steps)
    drifts = h_wb["drift"] + h_w["drift"]
    tol = EXACT_TOL[cfg.dtype]
    get = lambda key: {i: results[i][key] for i in cfg.impls}  # noqa: E731

    Claim = _lab.Claim
    claims = [
        Claim.each("the guide's 3 houses: MSE = 200,000,000", get("three_house_mse"), lambda v: rel(v, GUIDE_MSE) <= tol),
        Claim.each(f"GD on y = w x + b reaches least squares' w, b (rel. {FIT_TOL:g})", get("w_b_rel_err"),
                   lambda v: v <= FIT_TOL),
        Claim.each(f"... and least squares' MSE (rel. {FIT_TOL:g})", get("mse_rel_err"), lambda v: v <= FIT_TOL),
        Claim.each(f"GD on y = w x reaches least squares' w (rel. {FIT_TOL:g})", get("no_bias_w_rel_err"),
                   lambda v: v <= FIT_TOL),
        Claim.each(f"... and least squares' MSE (rel. {FIT_TOL:g})", get("no_bias_mse_rel_err"), lambda v: v <= FIT_TOL),
        Claim.each("(-2/n) sum x (y - w x) = backward's dMSE/dw (rel. err.)", get("grad_rel_err"), lambda v: v <= tol),
    ]
    return _lab.result(cfg, log, results, claims, drift=max(drifts) if drifts else None)
