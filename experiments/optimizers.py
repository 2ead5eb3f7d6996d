"""Non-convex optimisation (guide: "Non-Convex Optimization"): gradient descent stops in a shallow
valley, momentum rolls past the bump, mini-batch noise sometimes escapes; He init keeps a deep
ReLU net trainable where a large random init explodes."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

import manual
from manual import _backend as B
from manual import init, nn, optim

from . import _lab
from ._lab import opt
from ._threads import one_thread

NAME = "optimizers"
SUMMARY = "GD sticks in a shallow valley, momentum rolls past it, mini-batch noise may escape; He init vs large init"
SECTION = "Non-Convex Optimization"
DATA_PARALLEL = True  # on several ranks (`run NAME --nproc N`, torchrun) each step shards its batch: experiments/_dist.py
# HParams metrics: the last value of these tags, one column each (_lab.write_hparams)
METRICS = ("gd/w", "momentum/w", "minibatch/final_w_by_order", "init_he/loss/train", "init_std1/loss/train")


@dataclass
class Config(_lab.RunConfig):
    bump_a: float = opt(1.0, "bump height a in L(w) = mean (w - x_i)^2 + a sin(b w)")
    bump_b: float = opt(3.0, "bump frequency b")
    w0: float = opt(3.0, "starting point of every 1-D run")
    lr: float = opt(0.02, "learning rate of GD, momentum and mini-batch SGD (1-D problem)")
    beta: float = opt(0.9, "the guide's momentum: v = beta v + lr g; w = w - v")
    steps: int = opt(300, "steps of each 1-D run")
    n_data: int = opt(256, "data points x_i ~ N(0, data_std^2), centred, of the 1-D problem")
    data_std: float = opt(4.0, "spread of the x_i: sets the mini-batch gradient noise 2 std / sqrt(batch)")
    batch: int = opt(4, "mini-batch size of the noisy runs")
    seeds: int = opt(20, "mini-batch runs (batch orders) for the escape fraction (quick: 8)")
    depth: int = opt(10, "Linear layers of the deep ReLU MLP")
    width: int = opt(32, "units per hidden layer of the MLP")
    large_std: float = opt(1.0, "std of the 'large random' init (a second run uses 3x this)")
    init_steps: int = opt(150, "full-batch SGD steps of the MLP under each init (quick: 100)")
    init_lr: float = opt(0.01, "SGD learning rate of the MLP, the same for every init")


# -- the 1-D bumpy problem -------------------------------------------------------------------

def loss_and_grad(w, xb, a, b):
    """L(w) = mean_i (w - x_i)^2 + a sin(b w);  dL/dw = 2 mean_i (w - x_i) + a b cos(b w), by hand."""
    xp = B.namespace(w, xb)
    r = w - xb  # (batch,) from w (1,)
    return xp.mean(r * r) + a * xp.sin(b * w[0]), 2.0 * xp.mean(r) + a * b * xp.cos(b * w)


def torch_loss(t, xb, a, b):
    """The same L(w) for autograd (its gradient is never written out)."""
    return ((t - xb) ** 2).mean() + a * torch.sin(b * t[0])


def landscape(cfg, data):
    """Critical points of the full-batch loss on a fine grid (NumPy, independent of the runs)."""
    w = np.linspace(-4.0, 5.0, 90001)
    f = w * w + np.mean(data * data) + cfg.bump_a * np.sin(cfg.bump_b * w)
    i = np.arange(1, w.size - 1)
    mins = i[(f[i] < f[i - 1]) & (f[i] < f[i + 1])]
    maxs = i[(f[i] > f[i - 1]) & (f[i] > f[i + 1])]
    g = mins[np.argmin(f[mins])]  # the global minimum
    # the valley the start rolls into: the local minimum nearest w0 on the way down to g
    between = [m for m in mins if min(w[g], cfg.w0) < w[m] < max(w[g], cfg.w0) and m != g]
    shallow = max(between, key=lambda m: -abs(w[m] - cfg.w0)) if between else None
    barrier = None
    if shallow is not None:
        tops = [m for m in maxs if min(w[g], w[shallow]) < w[m] < max(w[g], w[shallow])]
        barrier = max(tops, key=lambda m: f[m])
    pick = lambda k: None if k is None else (float(w[k]), float(f[k]))  # noqa: E731
    return {"grid": (w, f), "global": pick(g), "shallow": pick(shallow), "barrier": pick(barrier),
            "n_minima": int(mins.size)}


def run_1d(cfg, log, data, method, batches, prefix=None):
    """One 1-D run on both implementations from w0; batches(step) -> indices into data.

    manual: hand gradient, manual.optim on a Parameter; torch: autograd, torch.optim.
    Returns {"path": {impl: (steps+1,)}, "loss": {impl: [...]}, "drift": float, "status": str}.
    """
    tdev, mdev = _lab.resolve_device(cfg.device, cfg.backend)
    a, b = cfg.bump_a, cfg.bump_b
    p = nn.Parameter(B.place(np.array([cfg.w0]), mdev, cfg.dtype))
    t = torch.tensor([cfg.w0], dtype=getattr(torch, cfg.dtype), device=tdev, requires_grad=True)
    if method == "momentum":
        mopt = optim.GuideMomentum([p], lr=cfg.lr, beta=cfg.beta)
        topt = torch.optim.SGD([t], lr=cfg.lr, momentum=cfg.beta, foreach=False)
    else:
        mopt, topt = optim.SGD([p], lr=cfg.lr), torch.optim.SGD([t], lr=cfg.lr, foreach=False)
    dm, dt = B.place(data, mdev, cfg.dtype), torch.as_tensor(data, dtype=t.dtype, device=tdev)
    path = {i: [cfg.w0] for i in cfg.impls}
    losses = {i: [] for i in cfg.impls}
    drift, status = 0.0, "ok"
    for step in range(cfg.steps):
        idx = batches(step)
        out = {}
        if "manual" in cfg.impls:
            xb = dm if idx is None else _take(dm, idx)
            loss, grad = loss_and_grad(p.data, xb, a, b)
            mopt.zero_grad()
            p.grad = grad
            mopt.step()
            out["manual"] = (float(B.to_numpy(loss)), abs(float(B.to_numpy(grad)[0])), float(B.to_numpy(p.data)[0]))
        if "torch" in cfg.impls:
            xb = dt if idx is None else _take(dt, idx)
            topt.zero_grad()
            tl = torch_loss(t, xb, a, b)
            tl.backward()
            g = abs(float(t.grad[0]))
            topt.step()
            out["torch"] = (float(tl.detach()), g, float(t.detach()[0]))
        for impl, (lv, gv, wv) in out.items():
            losses[impl].append(lv)
            path[impl].append(wv)
        if len(out) == 2:
            drift = max(drift, abs(out["manual"][2] - out["torch"][2]))
        if prefix is not None:
            log.scalar(f"{prefix}loss/train", {i: o[0] for i, o in out.items()}, step)
            log.scalar(f"{prefix}grad_norm/w", {i: o[1] for i, o in out.items()}, step)
            log.scalar(f"{prefix}w", {i: o[2] for i, o in out.items()}, step)
            if len(out) == 2:
                log.scalar_all(f"{prefix}parity/max_abs_param_diff", abs(out["manual"][2] - out["torch"][2]), step)
        bad = [i for i, o in out.items() if not math.isfinite(o[0] + o[2])]
        if bad:
            status = "diverged"
            log.note(f"{prefix or method}: diverged at step {step} ({', '.join(bad)})", step)
            break
    return {"path": {i: np.array(v) for i, v in path.items()}, "loss": losses, "drift": drift, "status": status}


def _take(arr, idx):
    """arr[idx] for a NumPy array or a torch tensor (CPU or CUDA)."""
    return arr[idx] if isinstance(arr, np.ndarray) else arr[torch.as_tensor(idx, device=arr.device)]


def ends_in(path, barrier_w, global_w):
    """Where a run ends: the mean of its last 20 iterates, on the global side of the barrier or not."""
    end = float(np.mean(path[-20:]))
    return end, bool((end - barrier_w) * (global_w - barrier_w) > 0)


def paths_figure(land, runs, sweep, impl):
    plt = _lab.pyplot()
    w, f = land["grid"]
    keep = (w > -2.5) & (w < 3.6)
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(10, 4))  # logged one panel per image
    a0.plot(w[keep], f[keep], "k-", lw=1)
    fw = lambda x: np.interp(x, w, f)  # noqa: E731
    style = {"minibatch": ("C2", 2, 0.4), "momentum": ("C1", 3, 0.8), "gd": ("C0", 5, 1.0)}  # back to front
    for name, (c, ms, alpha) in style.items():
        pth = runs[name]["path"][impl]
        a0.plot(pth, fw(pth), ".-", color=c, ms=ms, lw=0.5, alpha=alpha, label=name)
        a1.plot(pth, color=c, lw=1.2, label=name)
    a0.plot([pth[0]], [fw(pth[0])], "k*", ms=9, label="start")
    for r in sweep[1:]:
        a1.plot(r["path"][impl], color="C2", lw=0.5, alpha=0.25)
    for key, ls in (("shallow", ":"), ("barrier", "--"), ("global", "-.")):
        if land[key]:
            a1.axhline(land[key][0], color="gray", ls=ls, lw=0.8, label=key)
    a0.set(title=f"{impl}: full-batch loss L(w) and the paths", xlabel="w", ylabel="L(w)")
    a1.set(title=f"{impl}: w per step\n(faint: the other mini-batch seeds)", xlabel="step", ylabel="w")
    a0.legend(fontsize=9)
    a1.legend(fontsize=9, loc="upper right")
    return fig


# -- smart initialisation on a deep ReLU MLP -------------------------------------------------

def regression_task(rng, n=256, d=8):
    """y = sin(x_0) + x_1 x_2 / 2 on x ~ N(0, I_d): smooth, nonlinear, generated here."""
    x = rng.normal(size=(n, d))  # (N, d)
    return x, np.sin(x[:, :1]) + 0.5 * x[:, 1:2] * x[:, 2:3]  # (N, 1)


def relu_mlp(depth, width, d_in, std):
    """depth Linear layers with ReLU between; weights He (std None) or N(0, std^2); zero biases."""
    model = nn.mlp([d_in] + [width] * (depth - 1) + [1])
    for layer in model[::2]:
        if std is None:
            init.he_normal_(layer.weight)  # the guide's randn * sqrt(2 / n_in)
        else:
            init.normal_(layer.weight, 0.0, std)
        init.zeros_(layer.bias)
    return model


def activation_scale(twins, x):
    """impl -> RMS of each hidden layer's ReLU output on x (input side first)."""
    xm, xt = twins.place(x)
    out = {}
    for impl, model, h in (("manual", twins.model, xm), ("torch", twins.tmodel, xt)):
        if impl in twins.impls:
            rms = []
            with torch.no_grad(), manual.no_grad(), np.errstate(over="ignore"):
                for i, layer in enumerate(model):
                    h = layer(h)
                    if i % 2:
                        rms.append(float(np.sqrt(np.mean(B.to_numpy(h) ** 2))))
            out[impl] = rms
    return out


def scale_figure(scales, impl):
    plt = _lab.pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    for c, (name, s) in zip(("C0", "C1", "C3"), scales.items()):
        ax.semilogy(range(1, len(s[impl]) + 1), s[impl], "o-", color=c, ms=3, label=name)
    ax.set(title=f"{impl}: activation RMS per layer at init", xlabel="hidden layer", ylabel="RMS of ReLU output")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=9)
    return fig


def init_runs(cfg, log, rng):
    x, y = regression_task(rng)
    steps = _lab.quick_cap(cfg, "init_steps", 100)
    inits = {"he": None, f"std{cfg.large_std:g}": cfg.large_std, f"std{3 * cfg.large_std:g}": 3 * cfg.large_std}
    state = init.default_generator().bit_generator.state
    scales, hist, drift = {}, {}, {}
    for name, std in inits.items():
        init.default_generator().bit_generator.state = state  # the same normal draws, only the scale differs
        twins = _lab.Twins(relu_mlp(cfg.depth, cfg.width, x.shape[1], std), nn.MSELoss(),
                           lambda p: optim.SGD(p, lr=cfg.init_lr), cfg)
        scales[name] = activation_scale(twins, x)
        before = log.status
        with np.errstate(over="ignore", invalid="ignore"):  # a large init overflows on purpose
            hist[name] = _lab.train(twins, log, lambda s: (x, y), steps, lr=cfg.init_lr,
                                    log_histograms_every=steps, desc=f"init {name}",
                                    progress=cfg.progress, prefix=f"init_{name}/")
        drift[name] = [d if math.isfinite(d) else None for d in hist[name]["drift"]]
        if std is not None and hist[name]["status"] == "diverged" and before == "ok":
            log.status = "ok"  # this divergence is the result being shown, not a failed run
            log.note(f"init {name} (N(0, {std:g}^2)): diverged at step {hist[name]['steps'] - 1}, as large inits do")
    for impl in cfg.impls:
        log.image(impl, "init/activation_scale", scale_figure(scales, impl))
    return inits, scales, hist, drift, steps


def _last_finite(values, default=None):
    return next((v for v in reversed(values) if math.isfinite(v)), default)


# -- main ------------------------------------------------------------------------------------

def main(cfg: Config):
    with one_thread():
        return _main(cfg)


def _main(cfg: Config):
    rng = _lab.seeded(cfg)
    data = rng.normal(0.0, cfg.data_std, cfg.n_data)
    data -= data.mean()  # full-batch loss = w^2 + a sin(b w) + mean(x^2)
    land = landscape(cfg, data)
    if land["shallow"] is None:
        raise SystemExit(f"optimizers: no local minimum between w0={cfg.w0} and the global minimum for "
                         f"a={cfg.bump_a}, b={cfg.bump_b}; choose a bumpier landscape")
    n_seeds = _lab.quick_cap(cfg, "seeds", 8)
    bw, gw = land["barrier"][0], land["global"][0]

    with _lab.RunLogger(NAME, cfg) as log:
        log.text("landscape", f"L(w) = mean (w - x_i)^2 + {cfg.bump_a:g} sin({cfg.bump_b:g} w): global minimum "
                 f"w = {gw:.3f}, shallow valley w = {land['shallow'][0]:.3f}, bump top w = {bw:.3f}; "
                 f"start w0 = {cfg.w0:g}")
        runs = {"gd": run_1d(cfg, log, data, "gd", lambda s: None, prefix="gd/"),
                "momentum": run_1d(cfg, log, data, "momentum", lambda s: None, prefix="momentum/")}
        sweep = []
        for k in range(n_seeds):
            order = np.random.default_rng([cfg.seed, k])
            batches = lambda s, o=order: o.choice(cfg.n_data, cfg.batch, replace=False)  # noqa: E731
            sweep.append(run_1d(cfg, log, data, "minibatch", batches, prefix="minibatch/" if k == 0 else None))
        runs["minibatch"] = sweep[0]

        ends = {m: {i: ends_in(r["path"][i], bw, gw) for i in cfg.impls} for m, r in runs.items()}
        escaped = {i: [ends_in(r["path"][i], bw, gw)[1] for r in sweep] for i in cfg.impls}
        for k, r in enumerate(sweep):  # the sweep over batch orders: one point per order, in this run
            log.scalar("minibatch/final_w_by_order", {i: ends_in(r["path"][i], bw, gw)[0] for i in cfg.impls}, k)
        for impl in cfg.impls:
            log.panels(impl, "landscape/paths", paths_figure(land, runs, sweep, impl), ("on_the_loss", "w_per_step"))

        inits, scales, ihist, idrift, isteps = init_runs(cfg, log, rng)

    return _result(cfg, log, land, runs, sweep, ends, escaped, inits, scales, ihist, idrift, isteps)


def _result(cfg, log, land, runs, sweep, ends, escaped, inits, scales, ihist, idrift, isteps):
    gw, sw = land["global"][0], land["shallow"][0]
    gd_end = {i: e[0] for i, e in ends["gd"].items()}
    mo_end = {i: e[0] for i, e in ends["momentum"].items()}
    frac = {i: float(np.mean(e)) for i, e in escaped.items()}
    large = [n for n in inits if n != "he"]
    rms_ratio = {n: {i: s[-1] / s[0] for i, s in scales[n].items()} for n in inits}
    he_spread = {i: max(s) / min(s) for i, s in scales["he"].items()}
    he_loss = {i: ihist["he"]["loss"][i] for i in cfg.impls}
    fate = {n: {i: ("diverged" if ihist[n]["status"] == "diverged" else "stalled")
                if not ihist[n]["loss"][i][-1] < ihist[n]["loss"][i][0] else "trained" for i in cfg.impls}
            for n in large}
    Claim = _lab.Claim
    claims = [
        Claim.each(f"GD stops in the shallow valley w = {sw:.2f} (global: w = {gw:.2f}); value: final w", ends["gd"],
                   lambda e: not e[1] and abs(e[0] - sw) < 1e-3, shown=gd_end),
        Claim.each(f"momentum (v = {cfg.beta:g} v + lr g) rolls past the bump to w = {gw:.2f}; value: final w",
                   ends["momentum"], lambda e: e[1] and abs(e[0] - gw) < 1e-3, shown=mo_end),
        Claim.each(f"mini-batch noise (batch {cfg.batch}) escapes in some runs; value: fraction of {len(sweep)}",
                   frac, lambda f: f > 0),
        Claim.each("He init: activation RMS ~constant (max/min over layers <= 10)", he_spread, lambda r: r <= 10),
    ]
    for n in large:
        claims.append(Claim.each(f"init N(0, {inits[n]:g}^2): RMS explodes, last/first layer >= 1000x", rms_ratio[n],
                                 lambda r: r >= 1000))
    claims.append(Claim.each(f"He init trains: loss after {isteps} steps <= half the initial (final/initial)", he_loss,
                             lambda ls: ls[-1] <= 0.5 * ls[0], shown={i: ls[-1] / ls[0] for i, ls in he_loss.items()}))
    for n in large:
        claims.append(Claim.each(f"init N(0, {inits[n]:g}^2) does not train at the same lr (diverges or stalls)",
                                 fate[n], lambda f: f != "trained",
                                 shown={i: f + (f" at step {ihist[n]['steps'] - 1}" if f == "diverged" else "")
                                        for i, f in fate[n].items()}))
    if len(cfg.impls) == 2:
        d = runs["momentum"]["drift"]
        claims.append(Claim.pair(f"guide's momentum = torch SGD(momentum={cfg.beta:g}) step for step (max |dw|)", d,
                                 d <= _lab.DRIFT_TOL[cfg.dtype]))
    drifts = [r["drift"] for r in (runs["gd"], runs["momentum"], *sweep)] + ihist["he"]["drift"]
    results = {i: {"gd_final_w": gd_end[i], "momentum_final_w": mo_end[i],
                   "minibatch_final_w": ends["minibatch"][i][0], "minibatch_escaped_fraction": frac[i],
                   "minibatch_escaped": escaped[i],
                   "init": {n: {"activation_rms": scales[n][i], "last_over_first_rms": rms_ratio[n][i],
                                "loss_initial": ihist[n]["loss"][i][0],
                                "loss_last_finite": _last_finite(ihist[n]["loss"][i]),
                                "steps_done": ihist[n]["steps"], "status": ihist[n]["status"],
                                "drift_per_step": idrift[n]} for n in inits}}
               for i in cfg.impls}
    landscape_info = {k: land[k] for k in ("global", "shallow", "barrier", "n_minima")}
    drift = max(drifts) if len(cfg.impls) == 2 else None
    return _lab.result(cfg, log, results, claims, drift=drift, landscape=landscape_info)
