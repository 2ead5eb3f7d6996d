"""Loss landscapes (guide: "Non-Convex Optimization", "Why Neural Networks Create Bumpy
Landscapes"): yhat = w x has a smooth bowl; yhat = w2 ReLU(w1 x) has a flat region and a kink;
a trained MLP sits at the bottom of a 2-D slice of its own landscape (Li et al. 2018)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

import manual
from manual import _backend as B
from manual import nn, optim

from . import _lab
from ._lab import opt

NAME = "landscape"
SUMMARY = ("yhat = w x is a bowl, ReLU adds a flat region and a kink (the guide's tables); "
           "a trained MLP sits at the bottom of a bumpy 2-D slice")
SECTION = "Why Neural Networks Create Bumpy Landscapes"
DATA_PARALLEL = True  # on several ranks (`run NAME --nproc N`, torchrun) each step shards its batch: experiments/_dist.py
# HParams metrics: the last value of these tags, one column each (_lab.write_hparams)
METRICS = ("loss/train", "parity/max_abs_param_diff")

X, Y = 2.0, 10.0  # the guide's single example
LINEAR_TABLE = {1: 64.0, 3: 16.0, 5: 0.0, 7: 16.0}  # w -> loss, typed in from the guide
RELU_TABLE = {-3: 100.0, -2: 100.0, -1: 100.0, 0: 100.0, 1: 64.0, 3: 16.0, 5: 0.0}  # w1 -> loss (w2 = 1)
LINEAR_W = np.arange(-2.0, 12.0 + 1e-9, 0.5)  # includes the table's w
RELU_W1 = np.arange(-3.0, 5.0 + 1e-9, 0.25)  # includes the table's w1
NEAR_MIN = 0.01  # "at the bottom": centre - min <= 1% of the slice's range (max - min)


@dataclass
class Config(_lab.RunConfig):
    grid: int = opt(21, "points per axis of the 2-D loss surface (quick: 11)")
    span: float = opt(1.0, "the surface covers [-span, span]^2 in filter-normalised units")
    hidden: int = opt(32, "units in each of the MLP's two ReLU hidden layers")
    n: int = opt(64, "training points of the MLP's regression task y = sin(x), x in [-3, 3]")
    steps: int = opt(800, "full-batch Adam steps for the MLP (quick: 300)")
    lr: float = opt(0.01, "peak Adam learning rate (cosine decay to 0)")


# -- the guide's 1-D sweeps: forward + backward by hand, and by autograd -------------------

def sweep_manual(model, weight, ws, device, dtype):
    """Loss and d loss / d weight at each value of one weight, by model.backward (manual)."""
    crit = nn.MSELoss()
    x, y = B.place([[X]], device, dtype), B.place([[Y]], device, dtype)  # (1, 1)
    losses, grads = [], []
    for w in ws:
        weight.data = B.place([[w]], device, dtype)
        model.zero_grad()
        losses.append(float(B.to_numpy(crit(model(x), y))))
        model.backward(crit.backward())
        grads.append(float(B.to_numpy(weight.grad).reshape(())))
    return np.array(losses), np.array(grads)


def linear_manual(ws, device, dtype):
    """yhat = w x: a bias-free Linear(1, 1)."""
    model = nn.Linear(1, 1, bias=False).to(device, dtype)
    return sweep_manual(model, model.weight, ws, device, dtype)


def relu_manual(ws, device, dtype, w2=1.0):
    """h = ReLU(w1 x), yhat = w2 h: Linear(1, 1) -> ReLU -> Linear(1, 1), no biases."""
    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.ReLU(), nn.Linear(1, 1, bias=False)).to(device, dtype)
    model[2].weight.data = B.place([[w2]], device, dtype)
    return sweep_manual(model, model[0].weight, ws, device, dtype)


def sweep_torch(fn, ws, device, dtype):
    """Loss and d loss / d w by torch autograd, for yhat = fn(w, x)."""
    dt = {"float32": torch.float32, "float64": torch.float64}[dtype]
    x, y = torch.tensor(X, dtype=dt, device=device), torch.tensor(Y, dtype=dt, device=device)
    losses, grads = [], []
    for w in ws:
        wt = torch.tensor(float(w), dtype=dt, device=device, requires_grad=True)
        loss = torch.nn.functional.mse_loss(fn(wt, x), y)
        loss.backward()
        losses.append(loss.item())
        grads.append(wt.grad.item())
    return np.array(losses), np.array(grads)


def sweeps(impls, tdev, mdev, dtype):
    """impl -> {"linear": (loss, grad), "relu": (loss, grad)} over LINEAR_W and RELU_W1."""
    out = {}
    if "manual" in impls:
        out["manual"] = {"linear": linear_manual(LINEAR_W, mdev, dtype), "relu": relu_manual(RELU_W1, mdev, dtype)}
    if "torch" in impls:
        out["torch"] = {"linear": sweep_torch(lambda w, x: w * x, LINEAR_W, tdev, dtype),
                        "relu": sweep_torch(lambda w, x: 1.0 * torch.relu(w * x), RELU_W1, tdev, dtype)}
    return out


def at(ws, values, table):
    """The sweep's values at the table's weights."""
    return [float(values[int(np.flatnonzero(ws == w)[0])]) for w in table]


def sweep_checks(s, dtype):
    """The guide's claims on one implementation's sweeps (the tables' losses are small integers:
    exact in float32 and float64, so they are compared with ==)."""
    (lin, dlin), (relu, drelu) = s["linear"], s["relu"]
    tol = 1e-12 if dtype == "float64" else 1e-5
    closed = -2 * X * (Y - LINEAR_W * X)  # the guide's dMSE/dw for one example
    lin_table, relu_table = at(LINEAR_W, lin, LINEAR_TABLE), at(RELU_W1, relu, RELU_TABLE)
    flat = RELU_W1 <= 0
    return {
        "linear_table": lin_table,
        "linear_table_max_error": max(abs(a - b) for a, b in zip(lin_table, LINEAR_TABLE.values())),
        "linear_grad_max_error": float(np.max(np.abs(dlin - closed))),
        "linear_table_ok": lin_table == list(LINEAR_TABLE.values())
                           and bool(np.all(np.abs(dlin - closed) <= tol * np.maximum(1, np.abs(closed)))),
        "linear_min_second_difference": float(np.min(lin[2:] - 2 * lin[1:-1] + lin[:-2])),
        "relu_table": relu_table,
        "relu_table_max_error": max(abs(a - b) for a, b in zip(relu_table, RELU_TABLE.values())),
        "relu_table_ok": relu_table == list(RELU_TABLE.values()),
        "relu_flat_ok": bool(np.all(relu[flat] == Y**2) and np.all(drelu[flat] == 0)),
        "relu_flat_max_abs_grad": float(np.max(np.abs(drelu[flat]))),
        # the kink: slope 0 up to w1 = 0, then -2 (y - w1 x) x right after it (-38 at w1 = 0.25)
        "relu_grad_at_0": float(drelu[RELU_W1 == 0][0]),
        "relu_grad_at_0.25": float(drelu[RELU_W1 == 0.25][0]),
    }


# -- the 2-D slice: Li et al. 2018, filter-normalised random directions ---------------------

def gaussian_directions(model, rng):
    """Two Gaussian draws per parameter (NumPy, shared by both implementations): [{name: array}] * 2."""
    return [{n: rng.standard_normal(p.shape) for n, p in model.named_parameters()} for _ in range(2)]


def normalise_manual(d, w, xp):
    """Each row (one output neuron = one filter) of d rescaled to the norm of w's row; biases get 0."""
    if w.ndim < 2:
        return xp.zeros_like(w)
    return d * (xp.sqrt(xp.sum(w * w, axis=1, keepdims=True)) / xp.sqrt(xp.sum(d * d, axis=1, keepdims=True)))


def normalise_torch(d, w):
    if w.ndim < 2:
        return torch.zeros_like(w)
    return d * (w.norm(dim=1, keepdim=True) / d.norm(dim=1, keepdim=True))


def surface_manual(twins, raw, x, y, alphas):
    """L(theta* + a d1 + b d2) on the grid, manual forward passes; (len(alphas), len(alphas)), rows b."""
    crit = nn.MSELoss()
    (xm, ym), _ = twins.place(x, y)
    params = dict(twins.model.named_parameters())
    theta = {n: p.data for n, p in params.items()}
    dirs = [{n: normalise_manual(B.place(r[n], twins.mdev, twins.dtype), theta[n], B.namespace(theta[n]))
             for n in params} for r in raw]
    z = np.empty((len(alphas), len(alphas)))
    try:
        for i, b in enumerate(alphas.tolist()):
            for j, a in enumerate(alphas.tolist()):
                for n, p in params.items():
                    p.data = theta[n] + a * dirs[0][n] + b * dirs[1][n]
                with manual.no_grad():  # 2-D surface: evaluation only
                    z[i, j] = float(B.to_numpy(crit(twins.model(xm), ym)))
    finally:
        for n, p in params.items():
            p.data = theta[n]
    return z


def surface_torch(twins, raw, x, y, alphas):
    """The same surface with the torch twin (its own weights, its own normalisation)."""
    _, (xt, yt) = twins.place(x, y)
    params = dict(twins.tmodel.named_parameters())
    with torch.no_grad():
        theta = {n: p.detach().clone() for n, p in params.items()}
        dirs = [{n: normalise_torch(torch.as_tensor(r[n], dtype=p.dtype, device=p.device), theta[n])
                 for n, p in params.items()} for r in raw]
        z = np.empty((len(alphas), len(alphas)))
        try:
            for i, b in enumerate(alphas.tolist()):
                for j, a in enumerate(alphas.tolist()):
                    for n, p in params.items():
                        p.copy_(theta[n] + a * dirs[0][n] + b * dirs[1][n])
                    z[i, j] = torch.nn.functional.mse_loss(twins.tmodel(xt), yt).item()
        finally:
            for n, p in params.items():
                p.copy_(theta[n])
    return z


SKIPPED = {"centre": None, "min": None, "max": None, "centre_gap_fraction": None, "near_min": False,
           "nonconvex_fraction": None, "nonconvex": False}


def surface_checks(z):
    c = len(z) // 2
    lo, hi = float(np.nanmin(z)), float(np.nanmax(z))
    gap = (float(z[c, c]) - lo) / (hi - lo) if hi > lo else 0.0
    rows = np.concatenate([z, z.T])  # every 1-D line of the grid along d1 and along d2
    second = rows[:, 2:] - 2 * rows[:, 1:-1] + rows[:, :-2]
    bend = -1e-6 * (hi - lo)  # a real downward bend, far above float32 rounding of the losses
    return {"centre": float(z[c, c]), "min": lo, "max": hi, "centre_gap_fraction": gap,
            "near_min": bool(np.isfinite(gap) and gap <= NEAR_MIN),
            "nonconvex_fraction": float(np.mean(second < bend)), "nonconvex": bool(np.any(second < bend))}


# -- figures ---------------------------------------------------------------------------------

STYLE = {"manual": dict(ls="-", lw=2.5, alpha=0.6), "torch": dict(ls="--", lw=1.2)}


def sweeps_figure(s):
    """The guide's two sweeps, each implementation's curve overlaid (they coincide)."""
    plt = _lab.pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))  # logged one panel per image
    for impl, r in s.items():
        a1.plot(LINEAR_W, r["linear"][0], color="C0", label=impl, **STYLE[impl])
        a2.plot(RELU_W1, r["relu"][0], color="C1", label=impl, **STYLE[impl])
    a1.plot(list(LINEAR_TABLE), list(LINEAR_TABLE.values()), "o", mfc="none", color="k", label="guide's table")
    a1.set(title=f"yhat = w x: a smooth bowl\n(loss over w; x = {X:g}, y = {Y:g})", xlabel="w", ylabel="loss")
    a2.plot(list(RELU_TABLE), list(RELU_TABLE.values()), "o", mfc="none", color="k", label="guide's table")
    a2.axvspan(RELU_W1[0], 0, color="0.9", label="flat: gradient 0")
    a2.set(title=f"yhat = ReLU(w1 x): flat, then a kink\n(loss over w1; x = {X:g}, y = {Y:g})", xlabel="w1",
           ylabel="loss")
    for ax in (a1, a2):
        ax.legend(fontsize=9)
    return fig


def surface_figure(z, alphas):
    """Contour of the first implementation's surface, and the 1-D slices of each overlaid."""
    plt = _lab.pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))  # logged one panel per image
    first = next(iter(z))
    zf, c = z[first], len(alphas) // 2
    cs = a1.contourf(alphas, alphas, np.log10(np.maximum(zf, 1e-12)), levels=20, cmap="viridis")
    fig.colorbar(cs, ax=a1, label="log10 loss")
    a1.plot(0, 0, "r+", ms=10, label="trained weights")
    i, j = np.unravel_index(np.argmin(zf), zf.shape)
    a1.plot(alphas[j], alphas[i], "wx", ms=6, label="grid min")
    a1.set(title=f"trained MLP's loss, {first}:\n2-D slice (filter-normalised directions)", xlabel="alpha (d1)",
           ylabel="beta (d2)")
    a1.legend(fontsize=9)
    for impl, zi in z.items():
        a2.plot(alphas, zi[c, :], color="C0", label=f"{impl} along d1", **STYLE[impl])
        a2.plot(alphas, zi[:, c], color="C3", label=f"{impl} along d2", **STYLE[impl])
    drift = f"\nmax |manual - torch| = {np.max(np.abs(z['manual'] - z['torch'])):.1e}" if len(z) == 2 else ""
    a2.set(title=f"1-D slices through the centre{drift}", xlabel="step", ylabel="loss", yscale="log")
    a2.legend(fontsize=9)
    return fig


def guide_table_text(checks):
    """The guide's two tables next to each implementation's values (Markdown, for the text plugin)."""
    rows = ["| sweep | guide | " + " | ".join(checks) + " |", "|---|---|" + "---|" * len(checks)]
    rows.append("| loss at w = 1, 3, 5, 7 | " + ", ".join(f"{v:g}" for v in LINEAR_TABLE.values()) + " | "
                + " | ".join(", ".join(f"{v:g}" for v in c["linear_table"]) for c in checks.values()) + " |")
    rows.append("| loss at w1 = -3, -2, -1, 0, 1, 3, 5 | " + ", ".join(f"{v:g}" for v in RELU_TABLE.values()) + " | "
                + " | ".join(", ".join(f"{v:g}" for v in c["relu_table"]) for c in checks.values()) + " |")
    return "\n".join(rows)


def main(cfg: Config):
    rng = _lab.seeded(cfg)
    grid = _lab.quick_cap(cfg, "grid", 11)
    steps = _lab.quick_cap(cfg, "steps", 300)
    tdev, mdev = _lab.resolve_device(cfg.device, cfg.backend)
    x = np.linspace(-3, 3, cfg.n)[:, None]  # (n, 1)
    y = np.sin(x)  # (n, 1)
    # built first: the sweeps' own Linear layers draw from the same seeded generator
    model = nn.mlp((1, cfg.hidden, cfg.hidden, 1))
    with _lab.RunLogger(NAME, cfg) as log:
        s = sweeps(cfg.impls, tdev, mdev, cfg.dtype)
        checks = {i: sweep_checks(s[i], cfg.dtype) for i in cfg.impls}
        log.text("guide_tables", guide_table_text(checks))
        log.panels(None, "sweeps_1d", sweeps_figure(s), ("linear", "relu"))  # rendered once, logged to every run

        twins = _lab.Twins(model, nn.MSELoss(), lambda p: optim.Adam(p, lr=cfg.lr), cfg)

        def batches(step):  # full batch, cosine-decayed lr written into both optimizers
            lr = _lab.cosine_lr(cfg.lr, step, steps)
            twins.set_lr(lr)
            log.scalar("lr", {i: lr for i in twins.impls}, step)
            return x, y

        hist = _lab.train(twins, log, batches, steps, log_histograms_every=max(steps // 4, 1), desc="landscape mlp",
                          progress=cfg.progress)
        alphas = np.linspace(-cfg.span, cfg.span, grid)
        raw = gaussian_directions(twins.model, rng)
        trained = hist["status"] == "ok"  # else no trained weights to look around: the surface claims fail
        if not trained:
            log.note("2-D surface skipped: the MLP's training diverged")
        z = {}  # impl -> (grid, grid) losses, rows beta (d2), columns alpha (d1)
        if trained and "manual" in cfg.impls:
            z["manual"] = surface_manual(twins, raw, x, y, alphas)
        if trained and "torch" in cfg.impls:
            z["torch"] = surface_torch(twins, raw, x, y, alphas)
        surf = {i: surface_checks(z[i]) if i in z else SKIPPED for i in cfg.impls}
        if z:
            log.panels(None, "surface_2d", surface_figure(z, alphas), ("contour", "slices_1d"), hist["steps"])

    drift_parts = {"training_params": float(np.max(hist["drift"])) if hist["drift"] else None}
    if len(cfg.impls) == 2:
        m, t = s["manual"], s["torch"]
        drift_parts["sweeps"] = max(float(np.max(np.abs(m[k][q] - t[k][q]))) for k in m for q in (0, 1))
    if len(z) == 2:
        drift_parts["surface"] = float(np.max(np.abs(z["manual"] - z["torch"])))
    parts = [v for v in drift_parts.values() if v is not None]
    drift = float(np.max(parts)) if parts else None  # np.max: a NaN part makes the drift NaN

    pick = lambda d, k: {i: d[i][k] for i in d}  # noqa: E731  (impl -> one entry of each impl's checks)
    Claim = _lab.Claim
    claims = [
        Claim.each("w x: loss at w = 1,3,5,7 = the guide's 64,16,0,16; dL/dw = -2x(y - wx)",
                   pick(checks, "linear_table_ok"), bool, shown=pick(checks, "linear_table_max_error")),
        Claim.each("w x: a convex bowl (second differences >= 0)", pick(checks, "linear_min_second_difference"),
                   lambda v: v >= 0),
        Claim.each("ReLU: loss at w1 = -3..5 = the guide's 100,100,100,100,64,16,0",
                   pick(checks, "relu_table_ok"), bool, shown=pick(checks, "relu_table_max_error")),
        Claim.each("ReLU: flat for w1 <= 0 (loss exactly 100, gradient exactly 0)",
                   pick(checks, "relu_flat_ok"), bool, shown=pick(checks, "relu_flat_max_abs_grad")),
        Claim.each(f"MLP at the bottom of its 2-D slice (centre-min <= {NEAR_MIN:.0%} range)",
                   pick(surf, "near_min"), bool, shown=pick(surf, "centre_gap_fraction")),
        Claim.each("MLP slice is not a bowl: some lines bend down (2nd diff < 0)",
                   pick(surf, "nonconvex"), bool, shown=pick(surf, "nonconvex_fraction")),
    ]
    results = {i: {**checks[i], "surface": surf[i], "mlp_final_loss": hist["loss"][i][-1]} for i in cfg.impls}
    return _lab.result(cfg, log, results, claims, drift=drift, drift_parts=drift_parts,
                       history={"loss/train": hist["loss"]}, surface={i: z[i].tolist() for i in z},
                       alphas=alphas.tolist())
