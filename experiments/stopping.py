"""Stopping conditions (guide: "Stopping Conditions"): the guide's loop checks, before each update,
||grad|| < eps, |cost_new - cost_old| < eps and "validation not improving", and stops at
max_iterations; each condition fires where it should, and the validation stop catches overfitting
(val loss above its best while the train loss is still falling).

Four scenarios, each designed so that one condition fires first:
  gradient    a line fit by GD (lr 0.1), eps_cost tiny: ||grad|| < 1e-3 (the guide's eps) first
  cost        the same fit with the guide's eps_cost = 0.01: the cost change fires first
  max_iter    the same fit at lr 0.001 (slow): the iteration cap fires first
  validation  a wide tanh MLP on 16 noisy points of sin(pi x) (Adam): the val plateau fires first
Validation is "not improving" after `patience` iterations without a new best val loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch

import manual
from manual import _backend as B
from manual import nn, optim

from . import _lab
from ._lab import opt
from .gradient_descent import log_y, plottable

NAME = "stopping"
SUMMARY = "gradient, cost, max-iterations and validation stops each fire where expected; val stop catches overfitting"
SECTION = "Stopping Conditions"
SINGLE_PROCESS = "its stopping rules step each implementation on its own, outside the shared training step"  # why `run NAME --nproc N` is refused (runner.single_process_reason)
# HParams metrics: the last value of these tags, one column each (_lab.write_hparams)
METRICS = ("gradient/loss/train", "cost/loss/train", "max_iter/loss/train", "validation/loss/val")

MESSAGES = {"gradient": "Converged: gradient near zero", "cost": "Converged: cost stable",
            "validation": "Stopped: overfitting", "max_iter": "Stopped: max iterations",
            "diverged": "Stopped: loss is not finite"}


@dataclass
class Config(_lab.RunConfig):
    eps_grad: float = opt(1e-3, "condition 1: stop when ||grad|| < eps_grad (the guide's 0.001)")
    eps_cost: float = opt(1e-10, "condition 2: stop when |cost change| < eps_cost (the cost scenario uses the guide's 0.01)")
    max_iter: int = opt(1000, "condition 3: at most this many iterations (the max_iter scenario uses 200)")
    patience: int = opt(50, "condition 4: stop after this many iterations without a new best val loss")
    hidden: int = opt(64, "width of the overfitting MLP's two tanh hidden layers")
    n_train: int = opt(16, "training points of the overfitting problem (val: 200)")
    noise: float = opt(0.3, "std of the noise on sin(pi x)")
    mlp_lr: float = opt(0.01, "Adam learning rate of the MLP")


@dataclass
class Rule:
    eps_grad: float
    eps_cost: float
    max_iter: int
    patience: int


class Stopper:
    """The guide's conditions 1, 2 and 4 for one implementation, checked in the guide's order."""

    def __init__(self, rule: Rule):
        self.rule, self.old_cost, self.best_val, self.best_it, self.wait = rule, math.inf, math.inf, None, 0

    def check(self, it, grad_norm, cost, val):
        """The reason to stop before this iteration's update, or None to update and go on."""
        if not (math.isfinite(cost) and math.isfinite(grad_norm)):
            return "diverged"
        if grad_norm < self.rule.eps_grad:
            return "gradient"
        if abs(cost - self.old_cost) < self.rule.eps_cost:
            return "cost"
        if val < self.best_val:
            self.best_val, self.best_it, self.wait = val, it, 0
        else:
            self.wait += 1
        if self.wait >= self.rule.patience:
            return "validation"
        self.old_cost = cost
        return None


def evaluate_grads(twins, impl, train, val):
    """Forward + backward at the current weights, no update: (cost, {name: ||grad||}, val cost)."""
    (xm, ym), (xt, yt) = train
    (vxm, vym), (vxt, vyt) = val
    if impl == "manual":
        twins.optimizer.zero_grad()
        cost = twins.criterion(twins.model(xm), ym)
        twins.model.backward(twins.criterion.backward())
        norms = {n: float(np.linalg.norm(B.to_numpy(p.grad))) for n, p in twins.model.named_parameters()}
        with manual.no_grad():  # the validation pass saves nothing for backward
            vcost = twins.criterion(twins.model(vxm), vym)
        return float(B.to_numpy(cost)), norms, float(B.to_numpy(vcost))
    twins.toptimizer.zero_grad()
    cost = twins.tcriterion(twins.tmodel(xt), yt)
    cost.backward()
    norms = {n: float(p.grad.norm()) for n, p in twins.tmodel.named_parameters()}
    with torch.no_grad():
        vcost = twins.tcriterion(twins.tmodel(vxt), vyt)
    return float(cost.detach()), norms, float(vcost)


def run_loop(twins, log, prefix, rule, train, val, lr, hist_every=None):
    """The guide's loop on both implementations in lockstep (each stops on its own).

    Returns impl -> {"reason", "iteration" (updates made), "train", "val", "best_it", "best_val"}
    and the max parameter drift while both were running.
    """
    train, val = twins.place(*train), twins.place(*val)
    stoppers = {i: Stopper(rule) for i in twins.impls}
    out = {i: {"reason": "max_iter", "iteration": rule.max_iter, "train": [], "val": []} for i in twins.impls}
    active, drift = list(twins.impls), 0.0
    for it in range(rule.max_iter):
        for impl in list(active):
            cost, norms, vcost = evaluate_grads(twins, impl, train, val)
            gnorm = math.sqrt(sum(g * g for g in norms.values()))
            change = abs(cost - stoppers[impl].old_cost)
            out[impl]["train"].append(cost)
            out[impl]["val"].append(vcost)
            log.scalar(f"{prefix}loss/train", {impl: cost}, it)
            log.scalar(f"{prefix}loss/val", {impl: vcost}, it)
            log.scalar(f"{prefix}stop/grad_norm", {impl: gnorm}, it)
            log.scalar(f"{prefix}stop/cost_change", {impl: change if math.isfinite(change) else None}, it)
            for name, g in norms.items():
                log.scalar(f"{prefix}grad_norm/{name}", {impl: g}, it)
            reason = stoppers[impl].check(it, gnorm, cost, vcost)
            if reason is not None:
                out[impl].update(reason=reason, iteration=it)
                active.remove(impl)
                log.text_to(impl, f"{prefix}stop", f"{MESSAGES[reason]} (before update {it})", it)
                if reason == "diverged":
                    log.status = "diverged"
                    log.note(f"{prefix}{impl}: loss or gradient not finite at iteration {it}", it)
            else:
                (twins.optimizer if impl == "manual" else twins.toptimizer).step()
        if hist_every and it % hist_every == 0:
            _lab.log_histograms(twins, log, it, prefix)
        if len(active) == 2:
            d = twins.drift()
            drift = max(drift, d)
            log.scalar_all(f"{prefix}parity/max_abs_param_diff", d, it)
        if not active:
            break
    for impl in active:
        log.text_to(impl, f"{prefix}stop", f"{MESSAGES['max_iter']} ({rule.max_iter})", rule.max_iter)
    for impl, s in stoppers.items():
        out[impl].update(best_it=s.best_it, best_val=s.best_val)
    return out, drift


def make_line(rng, n=50):
    """A convex problem: y = 2x + 1 + N(0, 0.3^2), x standardised by the train set. (train, val)."""
    x, xv = rng.normal(size=(n, 1)), rng.normal(size=(n, 1))
    m, s = x.mean(), x.std()
    f = lambda x: 2 * x + 1 + rng.normal(0, 0.3, x.shape)  # noqa: E731
    return ((x - m) / s, f(x)), ((xv - m) / s, f(xv))


def make_wiggle(cfg, rng):
    """An overfitting problem: n_train jittered-grid points of sin(pi x) + noise on [-1, 1]; 200 val points."""
    n = cfg.n_train
    x = (np.linspace(-1, 1, n) + rng.uniform(-1, 1, n) / (n - 1))[:, None]  # (n, 1)
    xv = rng.uniform(-1, 1, (200, 1))
    f = lambda x: np.sin(np.pi * x) + rng.normal(0, cfg.noise, x.shape)  # noqa: E731
    return (x, f(x)), (xv, f(xv))


def overfit_figure(impl, r, twins, train, val):
    """Left: train and val loss with the best val and the stop; right: the fit at the stop."""
    plt = _lab.pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))  # logged one panel per image
    a1.plot(plottable(r["train"]), label="train")
    a1.plot(plottable(r["val"]), label="val")
    log_y(a1)
    a1.axvline(r["best_it"], color="g", ls=":", label=f"best val @ {r['best_it']}")
    a1.axvline(r["iteration"], color="r", ls="--", label=f"stop @ {r['iteration']}")
    a1.set(xlabel="iteration", ylabel="MSE", title=f"{impl}: {MESSAGES[r['reason']]}")
    a1.legend(fontsize=9)
    g = np.linspace(-1, 1, 201)[:, None]
    a2.scatter(val[0][:, 0], val[1][:, 0], s=4, c="0.75", label="val")
    a2.scatter(train[0][:, 0], train[1][:, 0], s=16, c="k", label="train")
    a2.plot(g[:, 0], np.sin(np.pi * g[:, 0]), "g:", label="sin(pi x)")
    a2.plot(g[:, 0], twins.forward(g)[impl][:, 0], "r", label="MLP at the stop")
    a2.set(xlabel="x", ylabel="y", title=f"{impl}: the fit at the stop (iteration {r['iteration']})")
    a2.legend(fontsize=9)
    return fig


def main(cfg: Config):
    rng = _lab.seeded(cfg)
    base = Rule(cfg.eps_grad, cfg.eps_cost, cfg.max_iter, cfg.patience)
    line_train, line_val = make_line(rng)
    wig_train, wig_val = make_wiggle(cfg, rng)
    mlp = lambda: nn.mlp((1, cfg.hidden, cfg.hidden, 1), activation=nn.Tanh)  # noqa: E731
    # name (= the condition designed to fire first) -> (model, optimizer, lr, rule, (train, val))
    scenarios = {
        "gradient": (nn.Linear(1, 1), optim.SGD, 0.1, base, (line_train, line_val)),
        "cost": (nn.Linear(1, 1), optim.SGD, 0.1, replace(base, eps_cost=0.01), (line_train, line_val)),
        "max_iter": (nn.Linear(1, 1), optim.SGD, 0.001, replace(base, max_iter=200), (line_train, line_val)),
        "validation": (mlp(), optim.Adam, cfg.mlp_lr, base, (wig_train, wig_val)),
    }
    out, drift = {}, 0.0
    with _lab.RunLogger(NAME, cfg) as log:
        for name, (model, opt_cls, lr, rule, (train, val)) in scenarios.items():
            twins = _lab.Twins(model, nn.MSELoss(), lambda p: opt_cls(p, lr=lr), cfg)  # noqa: B023 (called at once)
            hist_every = 50 if name == "validation" else None
            with np.errstate(over="ignore", invalid="ignore"):  # a non-finite loss stops the loop, reported
                out[name], d = run_loop(twins, log, f"{name}/", rule, train, val, lr, hist_every)
            drift = max(drift, d)
            if name == "validation":
                for impl in cfg.impls:
                    log.panels(impl, "validation/overfit", overfit_figure(impl, out[name][impl], twins, train, val),
                               ("losses", "fit_at_stop"), out[name][impl]["iteration"])
        rows = ["| scenario | optimizer | eps_grad | eps_cost | max_iter | patience | " + " | ".join(cfg.impls) + " |",
                "|---|---|---|---|---|---|" + "---|" * len(cfg.impls)]
        for name, (_, opt_cls, lr, rule, _) in scenarios.items():
            fired = " | ".join(f"{out[name][i]['reason']} @ {out[name][i]['iteration']}" for i in cfg.impls)
            rows.append(f"| {name} | {opt_cls.__name__} lr {lr:g} | {rule.eps_grad:g} | {rule.eps_cost:g} | "
                        f"{rule.max_iter} | {rule.patience} | {fired} |")
        log.text("stop/summary", "\n".join(rows))

    results = {}
    for impl in cfg.impls:
        r = out["validation"][impl]
        last, best = len(r["val"]) - 1, r["best_it"] if r["best_it"] is not None else 0  # last: the stop's check
        results[impl] = {name: {"reason": o[impl]["reason"], "iteration": o[impl]["iteration"]} for name, o in out.items()}
        results[impl]["validation"].update(
            best_it=best, best_val=r["best_val"], val_at_stop=r["val"][last], train_at_stop=r["train"][last],
            train_at_best=r["train"][best], train_10_before_stop=r["train"][max(last - 10, 0)])
    fired = lambda n: {i: f"{results[i][n]['reason']} @ {results[i][n]['iteration']}" for i in cfg.impls}  # noqa: E731
    first = lambda n: (lambda r: r["reason"] == n)  # noqa: E731  the designed condition fired first

    scenario = lambda n: {i: results[i][n] for i in cfg.impls}  # noqa: E731  impl -> that scenario's stop
    v = scenario("validation")
    above = lambda r: r["reason"] == "validation" and r["val_at_stop"] > r["best_val"]  # noqa: E731
    falling = lambda r: (r["reason"] == "validation" and r["train_at_stop"] < r["train_at_best"]  # noqa: E731
                         and r["train_at_stop"] < r["train_10_before_stop"])
    Claim = _lab.Claim
    claims = [
        Claim.each(f"line, lr 0.1: ||grad|| < {cfg.eps_grad:g} fires first", scenario("gradient"), first("gradient"),
                   shown=fired("gradient")),
        Claim.each("line, lr 0.1: |cost change| < 0.01 fires first", scenario("cost"), first("cost"),
                   shown=fired("cost")),
        Claim.each("line, lr 0.001: the 200-iteration cap fires first", scenario("max_iter"), first("max_iter"),
                   shown=fired("max_iter")),
        Claim.each(f"overfitting MLP: val plateau (patience {cfg.patience}) fires", v, first("validation"),
                   shown=fired("validation")),
        Claim.each("... at that stop, val loss is above its best", v, above,
                   shown={i: f"val {r['val_at_stop']:.3g}, best {r['best_val']:.3g}" for i, r in v.items()}),
        Claim.each("... while train loss still falls (vs best-val, 10 back)", v, falling,
                   shown={i: f"train {r['train_at_stop']:.3g}, was {r['train_at_best']:.3g}" for i, r in v.items()}),
    ]
    if len(cfg.impls) == 2:
        key = lambda i, n: (results[i][n]["reason"], results[i][n]["iteration"])  # noqa: E731
        same = [n for n in out if key("manual", n) == key("torch", n)]
        claims.append(Claim.pair("both implementations stop at the same iteration, same reason",
                                 f"{len(same)}/{len(out)} scenarios", len(same) == len(out)))
    return _lab.result(cfg, log, results, claims, drift=drift if len(cfg.impls) == 2 else None)
