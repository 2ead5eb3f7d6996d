"""Activation functions (guide: "Activation Functions", "Why ReLU Solved Deep Learning"):
sigmoid' <= 0.25 shrinks the gradient at every layer of a deep net; ReLU' = 1 does not."""

from __future__ import annotations

from ._threads import one_thread
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

import manual
import manual.functional as F
from manual import _backend as B
from manual import init, nn, optim
from torch_ref.opinfo import MODULES, OPS_BY_NAME

from . import _lab
from ._lab import opt

NAME = "activations"
SUMMARY = ("the registered activations and their derivatives; sigmoid's gradients vanish in a 12-layer net, "
           "ReLU's do not")
SECTION = "Activation Functions"
DATA_PARALLEL = True  # on several ranks (`run NAME --nproc N`, torchrun) each step shards its batch: experiments/_dist.py

# name -> (manual module factory, manual forward, manual backward, torch forward), each with the example's
# arguments: every activation of the module registry (torch_ref.opinfo.MODULES, kind "activation"), so an
# activation registered there is trained and plotted here with no change to this file
ACTIVATIONS = {
    eid: (partial(getattr(nn, m.name), **kw), partial(getattr(F, m.op), **kw),
          partial(getattr(F, m.op + "_backward"), **kw), partial(OPS_BY_NAME[m.op].ref, **kw))
    for m in MODULES if m.kind == "activation" for eid, kw in m.examples.items()
}
# |manual <op>_backward - autograd| on the plotting grid, and relative gap of gradient norms
DERIV_TOL = {"float64": 1e-12, "float32": 1e-6}
NORM_RTOL = {"float64": 1e-10, "float32": 1e-4}
HISTOGRAMS = ("sigmoid", "relu")  # weight/grad histograms (first and last step) for the two the guide contrasts
# HParams metrics: the last value of these tags, one column each (_lab.write_hparams)
METRICS = tuple(f"{a}/{q}" for a in ACTIVATIONS for q in ("loss/val", "dead_fraction"))


@dataclass
class Config(_lab.RunConfig):
    depth: int = opt(12, "Linear layers in each deep net (depth - 1 activations)")
    width: int = opt(32, "units per hidden layer; also the input dimension, so layer 1 is width x width too")
    init: str = opt("he", "weights of the deep nets: he (the guide's randn * sqrt(2/n_in), zero bias) or "
                    "default (torch.nn.Linear's U(+-1/sqrt(n_in)))", choices=("he", "default"))
    n_train: int = opt(512, "training points of the circle task (256 more for validation)")
    batch: int = opt(64, "mini-batch size")
    steps: int = opt(250, "Adam steps per activation (quick: 60)")
    lr: float = opt(1e-3, "Adam learning rate")


def circle_task(rng, n, embed):
    """The guide's circle problem, seen through d random linear features.

    p ~ N(0, I_2); y = 1 outside the circle |p|^2 = 2 ln 2 (the median, so classes balance);
    x = p @ embed with embed (2, d) ~ N(0, 1/2): d unit-variance inputs, so layer 1 is
    (width, d) like the hidden layers and its gradient norm compares like with like.
    """
    p = rng.normal(size=(n, 2))  # (N, 2)
    x = p @ embed  # (N, d)
    return x, (np.sum(p * p, axis=1) > 2 * np.log(2)).astype(np.float64)[:, None]  # (N, 1)


def deep_net(act, depth, width, init_name):
    """Linear(width, width) -> act -> ... -> Linear(width, 1): `depth` Linear layers."""
    model = nn.mlp([width] * depth + [1], activation=ACTIVATIONS[act][0])
    if init_name == "he":
        for layer in model[::2]:
            init.he_normal_(layer.weight)
            init.zeros_(layer.bias)
    return model


def weight_grad_norms(twins, x, y):
    """impl -> [||dL/dW|| of each Linear, input to output] at the current weights (no step taken)."""
    return {impl: [float(np.linalg.norm(g)) for n, g in grads.items() if n.endswith("weight")]
            for impl, grads in twins.gradients(x, y).items()}


def dead_fraction(twins, x):
    """impl -> fraction of hidden units whose output is exactly 0 for every row of x."""
    xm, xt = twins.place(x)
    out = {}
    for impl, model, h in (("manual", twins.model, xm), ("torch", twins.tmodel, xt)):
        if impl not in twins.impls:
            continue
        dead = []
        with torch.no_grad(), manual.no_grad():  # a probe: nothing saved for backward on either side
            for i, layer in enumerate(model):
                h = layer(h)
                if i % 2:  # the activations sit at odd positions
                    dead.append(np.all(B.to_numpy(h) == 0, axis=0))  # (width,)
        out[impl] = float(np.mean(np.concatenate(dead)))
    return out


def derivatives(cfg, grid):
    """name -> {"f": f(grid), "manual": <op>_backward(ones, grid), "torch": autograd d f/dx} as NumPy."""
    tdev, mdev = _lab.resolve_device(cfg.device, cfg.backend)
    xm = B.place(grid, mdev, cfg.dtype)
    out = {}
    for name, (_, fwd, bwd, tfwd) in ACTIVATIONS.items():
        ones = B.place(np.ones_like(grid), mdev, cfg.dtype)  # the elementwise derivative itself
        xt = torch.tensor(grid, dtype=getattr(torch, cfg.dtype), device=tdev, requires_grad=True)
        tfwd(xt).backward(torch.ones_like(xt))
        out[name] = {"f": B.to_numpy(fwd(xm)), "manual": B.to_numpy(bwd(ones, xm)),
                     "torch": xt.grad.cpu().numpy()}
    return out


def derivative_figure(grid, d):
    plt = _lab.pyplot()
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(10, 4))  # logged one panel per image (RunLogger.panels)
    for i, (name, v) in enumerate(d.items()):
        c = f"C{i}"
        a0.plot(grid, v["f"], color=c, label=name)
        a1.plot(grid, v["manual"], color=c, label=f"{name} (manual)")
        a1.plot(grid[::40], v["torch"][::40], "o", color=c, ms=3, mfc="none")
    a0.set(title="activation f(x)", xlabel="x", ylim=(-1.5, 3))
    a1.set(title="f'(x): lines manual <op>_backward,\ncircles autograd (sigmoid' peaks at 0.25)", xlabel="x",
           ylim=(-0.2, 1.3))
    a1.axhline(0.25, color="gray", lw=0.6, ls=":")
    a0.legend(fontsize=9)
    a1.legend(fontsize=8)
    for a in (a0, a1):
        a.grid(alpha=0.3)
    return fig


def profile_figure(norms, other, cfg, other_init, impl):
    """Per-layer weight-gradient norm vs depth at init, one line per activation; two inits side by side."""
    plt = _lab.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))  # one panel per image: each keeps its own axis labels
    for ax, prof, which in ((axes[0], norms, cfg.init), (axes[1], other, other_init)):
        for i, (name, g) in enumerate(prof.items()):
            ax.semilogy(range(1, len(g[impl]) + 1), g[impl], "osv^dp<>*"[i % 9] + "-", color=f"C{i}", ms=4, mfc="none",
                        label=name)
        ax.set(title=f"{impl}: ||dL/dW|| at init ({which} init)", xlabel="layer (1 = input side)",
               ylabel="gradient norm")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=9)
    return fig


def val_metrics(twins, x, y):
    """accuracy and BCE of each implementation's logits on (x, y)."""
    out = {"accuracy/val": {}, "loss/val": {}}
    for impl, z in twins.forward(x).items():
        out["accuracy/val"][impl] = _lab.accuracy(z, y)
        out["loss/val"][impl] = float(np.mean(np.logaddexp(0, z) - y * z))  # BCE from logits
    return out


def main(cfg: Config):
    with one_thread():
        return _main(cfg)


def _main(cfg: Config):
    rng = _lab.seeded(cfg)
    steps = _lab.quick_cap(cfg, "steps", 60)
    embed = rng.normal(0.0, np.sqrt(0.5), size=(2, cfg.width))
    x, y = circle_task(rng, cfg.n_train, embed)
    xv, yv = circle_task(rng, 256, embed)
    order = [rng.choice(cfg.n_train, cfg.batch, replace=False) for _ in range(steps)]  # same batches for all
    grid = np.arange(-600, 601) / 100.0  # [-6, 6] with x = 0 exactly on it
    other_init = "default" if cfg.init == "he" else "he"
    seed_state = init.default_generator().bit_generator.state

    with _lab.RunLogger(NAME, cfg) as log:
        log.text("task", f"circle task through {cfg.width} random linear features: {cfg.n_train} train / "
                 "256 val points; "
                 f"{cfg.depth} Linear layers of width {cfg.width}, {cfg.init} init, Adam lr {cfg.lr}, "
                 f"{steps} steps of batch {cfg.batch}")
        d = derivatives(cfg, grid)
        log.panels(None, "derivatives", derivative_figure(grid, d), ("f", "f_prime"))
        sig10 = derivatives_at(cfg, [-10.0, 10.0])

        norms, other, dead0, dead1, final, hists = {}, {}, {}, {}, {}, {}
        for name in ACTIVATIONS:
            init.default_generator().bit_generator.state = seed_state  # the same draws for every net
            twins_other = _lab.Twins(deep_net(name, cfg.depth, cfg.width, other_init), nn.BCEWithLogitsLoss(),
                                     lambda p: optim.Adam(p, lr=cfg.lr), cfg)
            other[name] = weight_grad_norms(twins_other, x, y)
            init.default_generator().bit_generator.state = seed_state
            twins = _lab.Twins(deep_net(name, cfg.depth, cfg.width, cfg.init), nn.BCEWithLogitsLoss(),
                               lambda p: optim.Adam(p, lr=cfg.lr), cfg)
            norms[name] = weight_grad_norms(twins, x, y)
            dead0[name] = dead_fraction(twins, x)

            def evaluate(step, twins=twins):
                m = val_metrics(twins, xv, yv)
                m["accuracy/train"] = {i: _lab.accuracy(z, y) for i, z in twins.forward(x).items()}
                return m

            hists[name] = _lab.train(twins, log, lambda s: (x[order[s]], y[order[s]]), steps,
                                     evaluate=evaluate, eval_every=max(steps // 10, 1), lr=cfg.lr,
                                     log_histograms_every=steps if name in HISTOGRAMS else None,
                                     desc=f"activations {name}", progress=cfg.progress, prefix=f"{name}/")
            dead1[name] = dead_fraction(twins, x)
            final[name] = val_metrics(twins, xv, yv)
            for impl in cfg.impls:
                log.scalar(f"{name}/dead_fraction", {impl: dead0[name][impl]}, 0)
                log.scalar(f"{name}/dead_fraction", {impl: dead1[name][impl]}, steps)
        for impl in cfg.impls:
            log.panels(impl, "grad_norm_vs_depth", profile_figure(norms, other, cfg, other_init, impl),
                       (f"{cfg.init}_init", f"{other_init}_init"))

    claims = derivative_claims(cfg, d, sig10) + net_claims(cfg, steps, norms, final, dead0, dead1)
    drifts = [dd for h in hists.values() for dd in h["drift"]]
    results = {i: {a: {"grad_norm_at_init": norms[a][i], "first_over_last": norms[a][i][0] / norms[a][i][-1],
                       f"first_over_last_{other_init}_init": other[a][i][0] / other[a][i][-1],
                       "dead_fraction_init": dead0[a][i], "dead_fraction_trained": dead1[a][i],
                       "final_train_loss": hists[a]["loss"][i][-1], "val_loss": final[a]["loss/val"][i],
                       "val_accuracy": final[a]["accuracy/val"][i], "status": hists[a]["status"]}
                   for a in ACTIVATIONS} for i in cfg.impls}
    return _lab.result(cfg, log, results, claims, drift=max(drifts) if drifts else None)


def derivatives_at(cfg, xs):
    """sigmoid'(x) at a few points: manual sigmoid_backward(ones) and autograd."""
    return derivatives(cfg, np.asarray(xs, dtype=np.float64))["sigmoid"]


def net_claims(cfg, steps, norms, final, dead0, dead1):
    ratio = {a: {i: g[0] / g[-1] for i, g in norms[a].items()} for a in norms}
    acc = {a: final[a]["accuracy/val"] for a in final}
    learned = {i: acc["relu"][i] >= 0.8 and acc["sigmoid"][i] <= 0.6 for i in cfg.impls}
    leaky = {i: max(dead0["leaky_relu"][i], dead1["leaky_relu"][i]) for i in cfg.impls}
    Claim = _lab.Claim
    claims = [
        Claim.each(f"sigmoid, {cfg.depth} layers: last/first layer gradient >= 100x at init (vanishing)",
                   {i: 1 / r for i, r in ratio["sigmoid"].items()}, lambda r: r >= 100),
        Claim.each(f"ReLU, {cfg.depth} layers: first/last layer gradient within 10x at init (0.1..10)",
                   ratio["relu"], lambda r: 0.1 <= r <= 10),
        Claim.each(f"ReLU net learns the circle (val acc >= 0.8), sigmoid's stays <= 0.6 ({steps} steps)",
                   learned, bool,
                   shown={i: f"relu {acc['relu'][i]:.2f} / sigmoid {acc['sigmoid'][i]:.2f}" for i in cfg.impls}),
        Claim.each("Leaky ReLU: no dead units (0 on every input), at init or trained", leaky, lambda f: f == 0.0,
                   shown={i: f"{leaky[i]:g} (ReLU: {dead0['relu'][i]:.0%} -> {dead1['relu'][i]:.0%})"
                          for i in cfg.impls}),
    ]
    if len(cfg.impls) == 2:
        gap = max(abs(a - b) / max(abs(b), 1e-300)
                  for n in norms for a, b in zip(norms[n]["manual"], norms[n]["torch"]))
        claims.append(Claim.pair("per-layer gradient norms at init: manual = autograd (max rel gap)",
                                 gap, gap <= NORM_RTOL[cfg.dtype]))
    return claims


def derivative_claims(cfg, d, sig10):
    tol = DERIV_TOL[cfg.dtype]
    peak = {i: float(np.max(d["sigmoid"][i])) for i in ("manual", "torch")}
    at0 = {i: float(d["sigmoid"][i][600]) for i in ("manual", "torch")}  # grid[600] == 0.0
    s10 = {i: float(np.max(sig10[i])) for i in ("manual", "torch")}
    same = {i: float(abs(sig10[i][0] - sig10[i][1])) for i in ("manual", "torch")}
    gap = max(float(np.max(np.abs(v["manual"] - v["torch"]))) for v in d.values())
    return [
        _lab.Claim.each("sigmoid'(x) peaks at 0.25, at x = 0", {i: (peak[i], at0[i]) for i in _lab.IMPLS},
                        lambda v: abs(v[0] - 0.25) <= tol and v[0] == v[1], shown=peak),
        _lab.Claim.each("sigmoid'(+-10) ~ 0.00005: tiny (rounds to 5e-5)", {i: (s10[i], same[i]) for i in _lab.IMPLS},
                        lambda v: 4.5e-5 <= v[0] < 5.5e-5 and v[1] <= tol, shown=s10),
        _lab.Claim.pair(f"<op>_backward(ones, x) = autograd f'(x), {len(d)} activations (max diff)", gap, gap <= tol),
    ]
