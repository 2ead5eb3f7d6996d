"""Gradient descent (guide: "Gradient Descent"): x_new = x_old - lr f'(x) walks f(x) = x^2 from 10
through 8, 6.4, 5.12 to 0, and (5, 3) on x^2 + y^2 through (4, 2.4), (3.2, 1.92) to (0, 0); on x^2,
lr 0.001 is slow, 0.1 efficient, 0.9 bounces and a rate above 1 diverges.

The "model" is the point x itself: manual computes f'(x) = 2x by hand into a manual.nn.Parameter
and steps manual.optim.SGD; torch differentiates f = sum(x * x) with autograd and steps
torch.optim.SGD. Same start, same steps; the reported drift is max |x_manual - x_torch| / max(1, |x|)
over all iterates (TensorBoard's parity/max_abs_param_diff is the absolute difference).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from manual import _backend as B
from manual import nn, optim
from torch_ref import to_torch

from . import _lab
from ._lab import opt

NAME = "gradient-descent"
SUMMARY = "x^2 from 10 at lr 0.1: 10, 8, 6.4, 5.12 -> 0; lr 0.001/0.1/0.9/1.1 is slow/efficient/bouncing/diverging"
SECTION = "Gradient Descent"
# HParams metrics: the last value of these tags, one column each (_lab.write_hparams)
METRICS = ("x2/loss/train", "bowl/loss/train") + tuple(f"sweep/lr_{lr:g}/loss/train" for lr in (0.001, 0.1, 0.9, 1.1))

GUIDE_X = [10.0, 8.0, 6.4, 5.12]  # "Step 0: x = 10 ... Step 5: x = 5.12"
GUIDE_DX = [20.0, 16.0, 12.8]  # f'(10), f'(8), f'(6.4)
GUIDE_XY = [[5.0, 3.0], [4.0, 2.4], [3.2, 1.92]]  # the two-variable example's iterates
GUIDE_DXY = [[10.0, 6.0], [8.0, 4.8]]  # its gradients
GUIDE_REGIME = {0.001: "slow", 0.1: "efficient", 0.9: "bouncing"}  # "Learning Rate (alpha)"; lr > 1: diverging
CONVERGED = 1e-3  # |x_N| <= CONVERGED |x_0|: "reached the minimum" for the classifier
BLOWUP = 1e6  # a run stops once |x| > BLOWUP |x_0| (or is not finite): diverged, noted, no crash
MATCH_TOL = {"float64": 1e-12, "float32": 1e-5}  # |iterate - the guide's number| / max(1, |number|)


@dataclass
class Config(_lab.RunConfig):
    steps: int = opt(100, "gradient steps per run (quick: 80)")
    lrs: list = field(default_factory=lambda: [0.001, 0.1, 0.9, 1.1],
                      metadata={"help": "learning rates of the sweep on x^2 from 10"})


def descend(cfg, x0, lr, steps):
    """Gradient descent on f(x) = sum(x^2) from x0 with each implementation.

    Returns impl -> {"x": (T+1, d) iterates, "grad": (T, d) gradients, "blew_up": bool};
    T <= steps: a run stops once |x| passes BLOWUP |x0| or is not finite.
    """
    tdev, mdev = _lab.resolve_device(cfg.device, cfg.backend)
    x0 = np.atleast_1d(np.asarray(x0, dtype=np.float64))  # (d,)
    limit = BLOWUP * float(np.max(np.abs(x0)))
    out = {}
    for impl in cfg.impls:
        if impl == "manual":
            p = nn.Parameter(B.place(x0.copy(), mdev, cfg.dtype))  # a copy: SGD updates p.data in place
            opt_ = optim.SGD([p], lr=lr)
            xnow = lambda: B.to_numpy(p.data).copy()  # noqa: E731

            def grad():
                p.grad = 2.0 * p.data  # f'(x) = 2x, by hand
                return B.to_numpy(p.grad).copy()
        else:
            t = to_torch(x0, device=tdev, dtype=cfg.dtype).requires_grad_()
            opt_ = torch.optim.SGD([t], lr=lr, foreach=False)
            xnow = lambda: t.detach().cpu().numpy().copy()  # noqa: E731

            def grad():
                opt_.zero_grad()
                (t * t).sum().backward()  # autograd
                return t.grad.cpu().numpy().copy()
        xs, gs = [xnow()], []
        for _ in range(steps):
            gs.append(grad())
            opt_.step()
            xs.append(xnow())
            if not np.all(np.isfinite(xs[-1])) or np.max(np.abs(xs[-1])) > limit:
                break
        blew = not np.all(np.isfinite(xs[-1])) or np.max(np.abs(xs[-1])) > limit
        out[impl] = {"x": np.array(xs), "grad": np.array(gs), "blew_up": bool(blew)}
    return out


def classify(xs, converged=CONVERGED):
    """The regime of a 1-D gradient-descent trajectory x_0..x_N toward the minimum at 0, from the
    trajectory alone: diverging (|x| grows or blows up), bouncing (the sign flips every step while
    |x| shrinks), oscillating (the sign flips, |x| stays), efficient (one sign, |x| never grows,
    |x_N| <= converged |x_0|), slow (one sign, |x| never grows, still farther than that), else irregular."""
    xs = np.asarray(xs, dtype=np.float64).reshape(-1)
    a = np.abs(xs)
    if not np.all(np.isfinite(a)) or a[-1] > a[0]:
        return "diverging"
    nonzero = (xs[:-1] != 0) & (xs[1:] != 0)
    flips = np.sign(xs[:-1]) * np.sign(xs[1:]) < 0
    shrinking = bool(np.all(np.diff(a) <= 0))
    if nonzero.any() and np.all(flips[nonzero]) and shrinking:
        return "bouncing" if a[-1] < a[0] else "oscillating"
    if not flips.any() and shrinking:
        return "efficient" if a[-1] <= converged * a[0] else "slow"
    return "irregular"


def expected_regime(lr):
    """The guide's label for lr (None: the guide says nothing about it)."""
    return "diverging" if lr > 1 else GUIDE_REGIME.get(lr)


def log_run(log, prefix, runs, lr, names=("x",)):
    """Per step: each coordinate, f = loss/train, |grad f|, lr, parity drift.

    Returns the max drift relative to the iterate's size, |x_manual - x_torch| / max(1, |x|): a
    diverging run reaches |x| ~ 1e7, where one rounding step (an ulp) is already ~2e-9.
    """
    n = min(len(r["x"]) for r in runs.values())
    drift = 0.0
    for k in range(n):
        for impl, r in runs.items():
            x = r["x"][k]
            for j, name in enumerate(names):
                log.scalar(f"{prefix}{name}", {impl: x[j]}, k)
            with np.errstate(over="ignore"):  # f = inf past float range: logged as is
                log.scalar(f"{prefix}loss/train", {impl: float(np.sum(x * x))}, k)
            if k < len(r["grad"]):
                log.scalar(f"{prefix}grad_norm/{'x' if len(names) == 1 else 'p'}", {impl: np.linalg.norm(r["grad"][k])}, k)
        if len(runs) == 2:
            xm, xt = runs["manual"]["x"][k], runs["torch"]["x"][k]
            d = np.abs(xm - xt)
            drift = max(drift, float(np.max(d / np.maximum(1.0, np.abs(xt)))))
            log.scalar_all(f"{prefix}parity/max_abs_param_diff", np.max(d), k)
    return drift


def matches(values, guide, tol):
    values, guide = np.asarray(values, dtype=np.float64), np.asarray(guide, dtype=np.float64)
    return bool(values.shape == guide.shape and np.all(np.abs(values - guide) <= tol * np.maximum(1, np.abs(guide))))


def plottable(a, lo=1e-32, hi=1e30):
    """Values for a log-scale plot: non-finite ones dropped (NaN gaps), the rest clipped to [lo, hi]."""
    a = np.asarray(a, dtype=np.float64)
    return np.where(np.isfinite(a), np.clip(a, lo, hi), np.nan)


def log_y(ax):
    """A log-scale y axis labelled 1e-04, ...: no mathtext, which costs ~1 s per figure here."""
    from matplotlib import ticker

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ticker.LogFormatter())
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())


def figure(impl, sweep, bowl):
    """x_k of each sweep run (first 20 steps), |x_k| on a log scale, and the 2-D path over x^2 + y^2."""
    plt = _lab.pyplot()
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(10.5, 3.2))
    for lr, s in sweep.items():
        x = s["runs"][impl]["x"][:, 0]
        label = f"lr {lr:g}: {s['regime'][impl]}"
        a1.plot(np.clip(x[:21], -1e3, 1e3), ".-", ms=4, label=label)
        a2.plot(plottable(np.abs(x)), lw=1, label=label)
    a1.set(xlabel="step", ylabel="x", ylim=(-15, 15), title="x^2 from x = 10, per learning rate")
    a1.axhline(0, color="k", lw=0.5)
    a1.legend(fontsize=9)
    log_y(a2)
    a2.set(xlabel="step", ylabel="|x|", title="x^2 from x = 10: |x| (log scale)")
    a2.legend(fontsize=9)
    g = np.linspace(-6, 6, 121)
    gx, gy = np.meshgrid(g, g)
    a3.contour(gx, gy, gx**2 + gy**2, levels=12, cmap="viridis", linewidths=0.7)
    path = bowl[impl]["x"]
    a3.plot(path[:, 0], path[:, 1], "r.-", ms=4)
    a3.set(aspect="equal", title="x^2 + y^2 from (5, 3), lr 0.1")
    fig.tight_layout()
    return fig


def main(cfg: Config):
    _lab.seeded(cfg)
    steps = _lab.quick_cap(cfg, "steps", 80)
    tol = MATCH_TOL[cfg.dtype]
    with _lab.RunLogger(NAME, cfg) as log:
        one = descend(cfg, 10.0, 0.1, steps)  # the guide's x^2 example
        drift = log_run(log, "x2/", one, 0.1)
        bowl = descend(cfg, [5.0, 3.0], 0.1, steps)  # the guide's x^2 + y^2 example
        drift = max(drift, log_run(log, "bowl/", bowl, 0.1, names=("x", "y")))
        sweep = {}
        for lr in cfg.lrs:
            runs = descend(cfg, 10.0, lr, steps)
            drift = max(drift, log_run(log, f"sweep/lr_{lr:g}/", runs, lr))
            sweep[lr] = {"runs": runs, "regime": {i: classify(r["x"]) for i, r in runs.items()}}
            for impl, r in runs.items():
                if r["blew_up"]:
                    log.note(f"{impl}, lr {lr:g}: diverged, |x| = {abs(r['x'][-1, 0]):.3g} after {len(r['grad'])} "
                             f"steps (stopped past {BLOWUP:g} |x0|)", len(r["grad"]))
        rows = ["| lr | expected (guide) | " + " | ".join(cfg.impls) + " |", "|---|---|" + "---|" * len(cfg.impls)]
        rows += [f"| {lr:g} | {expected_regime(lr) or '-'} | " + " | ".join(s["regime"][i] for i in cfg.impls) + " |"
                 for lr, s in sweep.items()]
        log.text("sweep/regimes", "\n".join(rows))
        for impl in cfg.impls:
            log.panels(impl, "trajectories", figure(impl, sweep, bowl), ("x_per_step", "abs_x_log", "bowl_path"), steps)

    results, holds = {}, {"guide_x": {}, "zero": {}, "guide_xy": {}, "origin": {}, "regimes": {}}
    for impl in cfg.impls:
        x, g = one[impl]["x"][:, 0], one[impl]["grad"][:, 0]
        xy, gxy = bowl[impl]["x"], bowl[impl]["grad"]
        regimes = {lr: s["regime"][impl] for lr, s in sweep.items()}
        graded = {lr: r for lr, r in regimes.items() if expected_regime(lr) is not None}
        holds["guide_x"][impl] = matches(x[:4], GUIDE_X, tol) and matches(g[:3], GUIDE_DX, tol)
        holds["zero"][impl] = bool(abs(x[-1]) < 1e-6)
        holds["guide_xy"][impl] = matches(xy[:3], GUIDE_XY, tol) and matches(gxy[:2], GUIDE_DXY, tol)
        holds["origin"][impl] = bool(np.max(np.abs(xy[-1])) < 1e-6)
        holds["regimes"][impl] = bool(graded) and all(r == expected_regime(lr) for lr, r in graded.items())
        results[impl] = {
            "x": x[:6].tolist(), "grad": g[:5].tolist(), "final_x": float(x[-1]),
            "xy": xy[:3].tolist(), "grad_xy": gxy[:2].tolist(), "final_xy": xy[-1].tolist(),
            "regimes": {f"{lr:g}": r for lr, r in regimes.items()},
            "sweep_final_abs_x": {f"{lr:g}": float(abs(s["runs"][impl]["x"][-1, 0])) for lr, s in sweep.items()},
            "sweep_steps_run": {f"{lr:g}": len(s["runs"][impl]["grad"]) for lr, s in sweep.items()},
        }
    val = lambda f: {i: f(results[i]) for i in cfg.impls}  # noqa: E731
    x3 = val(lambda r: r["x"][3])
    xn = val(lambda r: abs(r["final_x"]))
    xy2 = val(lambda r: "({:.4g}, {:.4g})".format(*r["xy"][2]))
    xyn = val(lambda r: float(np.max(np.abs(r["final_xy"]))))
    reg = val(lambda r: ", ".join(r["regimes"].values()))
    Claim = _lab.Claim  # each verdict was computed per implementation above (holds[key][impl])
    claims = [
        Claim.each("x^2 from 10, lr 0.1: x = 10, 8, 6.4, 5.12 (the guide)", holds["guide_x"], bool, shown=x3),
        Claim.each(f"... and eventually x ~ 0 (|x| < 1e-6 after {steps} steps)", holds["zero"], bool, shown=xn),
        Claim.each("x^2+y^2 from (5, 3): (4, 2.4), (3.2, 1.92) (the guide's)", holds["guide_xy"], bool, shown=xy2),
        Claim.each("... and eventually (0, 0) (max |coordinate| < 1e-6)", holds["origin"], bool, shown=xyn),
        Claim.each("lr " + "/".join(f"{lr:g}" for lr in cfg.lrs) + ": "
                   + "/".join(expected_regime(lr) or "?" for lr in cfg.lrs), holds["regimes"], bool, shown=reg),
    ]
    return _lab.result(cfg, log, results, claims, drift=drift if len(cfg.impls) == 2 else None)
