"""Backpropagation (guide: "Backpropagation"): the guide's 2-layer example, h = ReLU(w1 x + b1),
yhat = w2 h + b2, L = (y - yhat)^2 at x = 2, y = 10, w = 1, b = 0, has loss 64, gradients
dL/dyhat = -16, dL/dw2 = -32, dL/db2 = -16, dL/dh = dL/dz1 = -16, dL/dw1 = -32, dL/db1 = -16; one
step at lr 0.01 gives w = 1.32, b = 0.16 and loss 37.748736 (the guide's 37.7); its 100-iteration
loop fits the example; the same chain rule, layer by layer, trains an L-layer network.

manual runs the layers' own backward one at a time (criterion.backward(), then each module's
backward in reverse), torch runs autograd with retain_grad() on the intermediates. The step-by-step
table goes to TensorBoard text always, and to stdout with --verbose (`backprop-lab run backprop
--verbose`; `backprop-lab all` leaves it off).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from manual import _backend as B
import manual
from manual import guide, init, nn, optim

from . import _dist, _lab
from ._lab import opt
from .gradient_descent import log_y, plottable

NAME = "backprop"
SUMMARY = "the guide's worked example (loss 64 -> 37.75, grads -16/-32) by hand and by autograd; an L-layer net trains"
SECTION = "Backpropagation"
SINGLE_PROCESS = "the guide's worked example is one example, and its loop steps it by hand: nothing to split"  # why `run NAME --nproc N` is refused (runner.single_process_reason)
# HParams metrics: the last value of these tags, one column each (_lab.write_hparams)
METRICS = ("loss/train", "deep/loss/train")

X, Y = np.array([[2.0]]), np.array([[10.0]])  # (1, 1): the guide's x = 2, y = 10
GUIDE_LR = 0.01
GUIDE = {  # the guide's numbers, in its order ("Step 1" .. "Step 4")
    "forward": {"z1": 2.0, "h": 2.0, "yhat": 2.0, "loss": 64.0},
    "backward": {"dL/dyhat": -16.0, "dL/dw2": -32.0, "dL/db2": -16.0, "dL/dh": -16.0, "dL/dz1": -16.0,
                 "dL/dw1": -32.0, "dL/db1": -16.0},
    "update": {"w2": 1.32, "b2": 0.16, "w1": 1.32, "b1": 0.16},
    "new": {"z1": 2.80, "h": 2.80, "yhat": 3.86, "loss": 37.7},  # the guide rounds these
}
NEW_LOSS = (10.0 - (1.32 * (1.32 * 2 + 0.16) + 0.16)) ** 2  # = 6.144^2 = 37.748736, by hand
# The loop's example has an exact fit (loss 0), so "the loop fits it" is: final loss < 1e-10, i.e.
# |y - yhat| < 1e-5, y = 10 to six digits; float32 rounds 10 to ~1e-6 (loss ~1e-12), so one bar serves both.
LOOP_MAX = 1e-10
TOL = {"float64": 1e-10, "float32": 1e-4}  # |value - exact number|, scaled by max(1, |number|)


@dataclass
class Config(_lab.RunConfig):
    iterations: int = opt(100, "iterations of the guide's loop on its one example (the guide: 100)")
    depth: int = opt(4, "Linear layers of the L-layer network (ReLU between them)")
    width: int = opt(16, "hidden units per layer of the L-layer network")
    deep_steps: int = opt(300, "full-batch SGD steps of the L-layer network (quick: 150)")
    deep_lr: float = opt(0.05, "SGD learning rate of the L-layer network")
    verbose: bool = opt(False, "print the worked example step by step and the loop every 10 iterations")


def guide_twins(cfg):
    """The guide's network, w1 = w2 = 1, b1 = b2 = 0, and its torch twin; SGD at lr 0.01."""
    model = nn.Sequential(nn.Linear(1, 1), nn.ReLU(), nn.Linear(1, 1))
    one, zero = np.ones((1, 1)), np.zeros(1)
    model.load_state_dict({"0.weight": one, "0.bias": zero, "2.weight": one, "2.bias": zero})
    return _lab.Twins(model, nn.MSELoss(), lambda p: optim.SGD(p, lr=GUIDE_LR), cfg)


def _f(a):
    return float(B.to_numpy(a).reshape(()))


def layer_values(twins, impl):
    """z1, h, yhat and L at the current weights, one layer at a time, on one implementation."""
    (xm, ym), (xt, yt) = twins.place(X, Y)
    m, crit, x, y = ((twins.model, twins.criterion, xm, ym) if impl == "manual"
                     else (twins.tmodel, twins.tcriterion, xt, yt))
    z1 = m[0](x)  # z1 = w1 x + b1
    h = m[1](z1)  # h = ReLU(z1)
    yhat = m[2](h)  # yhat = w2 h + b2
    return z1, h, yhat, crit(yhat, y)  # L = (y - yhat)^2


def worked_example(twins):
    """Steps 1-4 of the guide on each implementation: impl -> {section: {name: value}}.

    manual: manual/guide.py's backprop_step, the guide's step by hand (one copy, shared with
    the parity tests); torch: autograd on the twin, each intermediate's .grad retained."""
    out = {}
    for impl in twins.impls:
        if impl == "manual":
            s = guide.backprop_step(twins.model, float(X[0, 0]), float(Y[0, 0]), lr=GUIDE_LR)  # steps 1-3
            g = s["grads"]
            out[impl] = {
                "forward": {k: s[k] for k in ("z1", "h", "yhat", "loss")},
                "backward": {"dL/dyhat": s["dL_dyhat"], "dL/dw2": g["2.weight"], "dL/db2": g["2.bias"],
                             "dL/dh": s["dL_dh"], "dL/dz1": s["dL_dz1"], "dL/dw1": g["0.weight"],
                             "dL/db1": g["0.bias"]},
            }
        else:
            m, opt_ = twins.tmodel, twins.toptimizer
            opt_.zero_grad()
            z1, h, yhat, loss = layer_values(twins, impl)
            for t in (z1, h, yhat):
                t.retain_grad()
            loss.backward()  # autograd
            out[impl] = {
                "forward": {"z1": _f(z1), "h": _f(h), "yhat": _f(yhat), "loss": _f(loss)},
                "backward": {"dL/dyhat": _f(yhat.grad), "dL/dw2": _f(m[2].weight.grad), "dL/db2": _f(m[2].bias.grad),
                             "dL/dh": _f(h.grad), "dL/dz1": _f(z1.grad), "dL/dw1": _f(m[0].weight.grad),
                             "dL/db1": _f(m[0].bias.grad)},
            }
            opt_.step()  # step 3: w = w - 0.01 dL/dw
        p = twins.params(impl)
        out[impl]["update"] = {"w2": p["2.weight"].item(), "b2": p["2.bias"].item(),
                               "w1": p["0.weight"].item(), "b1": p["0.bias"].item()}
        with manual.no_grad():  # step 4: the forward pass again, nothing to differentiate
            out[impl]["new"] = dict(zip(("z1", "h", "yhat", "loss"), map(_f, layer_values(twins, impl))))
    return out


def example_rows(ex):
    """[(section, name, guide, {impl: value})] in the guide's order."""
    return [(sec, k, g, {i: ex[i][sec][k] for i in ex}) for sec, vals in GUIDE.items() for k, g in vals.items()]


def example_text(rows, impls, markdown):
    head = ["step", "value", "guide"] + list(impls)
    lines = [[sec, k, f"{g:g}"] + [f"{v[i]:.10g}" for i in impls] for sec, k, g, v in rows]
    if markdown:
        row = lambda cells: "| " + " | ".join(cells) + " |"  # noqa: E731
        return "\n".join([row(head), "|" + "---|" * len(head)] + [row(r) for r in lines])
    w = [max(len(r[j]) for r in [head] + lines) for j in range(len(head))]
    return "\n".join("  ".join(c.ljust(w[j]) for j, c in enumerate(r)) for r in [head] + lines)


def guide_loop(twins, log, iterations):
    """The guide's loop: forward, loss, backward, update, `iterations` times.

    Returns impl -> (losses, predictions), each before that iteration's update (what the guide
    prints), and the max parameter drift.
    """
    hist = {i: ([], []) for i in twins.impls}
    drift = 0.0
    for it in range(iterations):
        pred = twins.forward(X)  # the prediction this iteration's loss is computed from
        out = twins.step(X, Y)
        for impl, o in out.items():
            hist[impl][0].append(o["loss"])
            hist[impl][1].append(float(pred[impl].item()))
            for name, g in o["grad_norm"].items():
                log.scalar(f"grad_norm/{name}", {impl: g}, it)
        log.scalar("loss/train", {i: o["loss"] for i, o in out.items()}, it)
        d = twins.drift()
        if d is not None:
            drift = max(drift, d)
            log.scalar_all("parity/max_abs_param_diff", d, it)
    return hist, drift


def reference_loop(iterations):
    """The guide's own code, verbatim in plain Python floats: the loss at each iteration."""
    x, y, w1, b1, w2, b2, alpha = 2.0, 10.0, 1.0, 0.0, 1.0, 0.0, GUIDE_LR
    losses = []
    for _ in range(iterations):
        z1 = w1 * x + b1
        h = max(0, z1)
        y_pred = w2 * h + b2
        losses.append((y - y_pred) ** 2)
        d = -2 * (y - y_pred)
        dz1 = d * w2 * (1 if z1 > 0 else 0)
        w1, b1, w2, b2 = w1 - alpha * dz1 * x, b1 - alpha * dz1, w2 - alpha * d * h, b2 - alpha * d
    return losses


def deep_problem(cfg, rng):
    """y = sin(2 x1) + x2^2 on 128 points of [-1, 1]^2; an MLP of `depth` Linear layers, He-initialised."""
    x = rng.uniform(-1, 1, (128, 2))
    y = (np.sin(2 * x[:, 0]) + x[:, 1] ** 2)[:, None]  # (128, 1)
    model = nn.mlp([2] + [cfg.width] * (cfg.depth - 1) + [1])
    for lin in model[::2]:
        init.he_normal_(lin.weight)  # the guide's "smart init": std sqrt(2 / n_in)
        init.zeros_(lin.bias)
    return x, y, model


def figure(impl, loop_losses, deep_losses, norms):
    """Loss of the guide's loop, loss of the L-layer net, and its gradient norm per parameter at step 0."""
    plt = _lab.pyplot()
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(10.5, 3.2))
    a1.plot(plottable(loop_losses), ".-", ms=3)
    a1.set(xlabel="iteration", ylabel="loss (floored at 1e-32)", title="the guide's loop")
    log_y(a1)
    a2.plot(plottable(deep_losses))
    a2.set(xlabel="step", ylabel="MSE", title="L-layer net")
    log_y(a2)
    names = list(norms)
    a3.bar(range(len(names)), [norms[n] for n in names])
    a3.set_xticks(range(len(names)), names, rotation=60, fontsize=9)
    a3.set(ylabel="||dL/dparam||", title="L-layer net, gradients at step 0")
    fig.tight_layout()
    return fig


def main(cfg: Config):
    rng = _lab.seeded(cfg)
    tol = TOL[cfg.dtype]
    deep_steps = _lab.quick_cap(cfg, "deep_steps", 150)
    with _lab.RunLogger(NAME, cfg) as log:
        ex = worked_example(guide_twins(cfg))
        rows = example_rows(ex)
        log.text("guide/worked_example", example_text(rows, cfg.impls, markdown=True))
        twins = guide_twins(cfg)
        loop, drift = guide_loop(twins, log, cfg.iterations)
        lines = [f"Iter {i}: " + " | ".join(f"{impl} Loss={loop[impl][0][i]:.2f}, Pred={loop[impl][1][i]:.2f}"
                                           for impl in cfg.impls) for i in range(0, cfg.iterations, 10)]  # as the guide prints
        log.text("guide/loop", "\n\n".join(lines))
        if cfg.verbose and _dist.is_main():  # on several ranks (`all --nproc N`) rank 0 prints
            print("The guide's worked example (Backpropagation, steps 1-4):")
            print(example_text(rows, cfg.impls, markdown=False))
            print(f"\nThe guide's loop, lr {GUIDE_LR}:")
            print("\n".join(lines) + "\n")

        x, y, model = deep_problem(cfg, rng)
        deep = _lab.Twins(model, nn.MSELoss(), lambda p: optim.SGD(p, lr=cfg.deep_lr), cfg)
        grads0 = deep.gradients(x, y)
        with np.errstate(over="ignore", invalid="ignore"):  # a diverging run is caught and reported by train()
            dh = _lab.train(deep, log, lambda s: (x, y), deep_steps, lr=cfg.deep_lr, prefix="deep/",
                            log_histograms_every=max(deep_steps // 5, 1), desc="backprop deep", progress=cfg.progress)
        norms0 = {i: {n: float(np.linalg.norm(g)) for n, g in gs.items()} for i, gs in grads0.items()}
        for impl in cfg.impls:
            fig = figure(impl, loop[impl][0], dh["loss"][impl], norms0[impl])
            log.panels(impl, "losses", fig, ("guide_loop", "deep_net", "deep_grad_norms_at_init"), deep_steps)

    ref = reference_loop(cfg.iterations)
    close = lambda a, b: abs(a - b) <= tol * max(1.0, abs(b))  # noqa: E731
    results = {}
    for impl in cfg.impls:
        e = ex[impl]
        losses = loop[impl][0]
        results[impl] = {
            **{f"{sec}/{k}": v for sec in GUIDE for k, v in e[sec].items()},
            "loop_first_loss": losses[0], "loop_final_loss": losses[-1], "loop_final_pred": loop[impl][1][-1],
            "loop_max_diff_vs_guide_code": max(abs(a - b) for a, b in zip(losses, ref)),
            "deep_first_loss": dh["loss"][impl][0], "deep_final_loss": dh["loss"][impl][-1], "deep_steps": dh["steps"],
            "deep_grad_norms_step0": norms0[impl],
        }
        if len(grads0) == 2:
            gm, gt = grads0["manual"], grads0["torch"]
            results[impl]["deep_grad_rel_diff_step0"] = max(
                float(np.linalg.norm(gm[n] - gt[n]) / max(np.linalg.norm(gt[n]), 1e-300)) for n in gt)
    h = {i: {} for i in cfg.impls}
    for impl, r in results.items():
        e = ex[impl]
        h[impl]["step"] = (close(e["forward"]["loss"], 64.0) and close(e["new"]["loss"], NEW_LOSS)
                           and abs(e["new"]["loss"] - GUIDE["new"]["loss"]) < 0.05)
        h[impl]["forward"] = all(close(e["forward"][k], g) for k, g in GUIDE["forward"].items())
        h[impl]["grads"] = all(close(e["backward"][k], g) for k, g in GUIDE["backward"].items())
        h[impl]["update"] = all(close(e["update"][k], g) for k, g in GUIDE["update"].items())
        h[impl]["loop"] = r["loop_final_loss"] < LOOP_MAX
        h[impl]["ref"] = r["loop_max_diff_vs_guide_code"] <= tol * 64  # relative to the first loss
        h[impl]["deep"] = r["deep_final_loss"] < r["deep_first_loss"] and dh["status"] == "ok"
    grad_err = {i: max(abs(ex[i]["backward"][k] - g) for k, g in GUIDE["backward"].items()) for i in cfg.impls}
    upd_err = {i: max(abs(ex[i]["update"][k] - g) for k, g in GUIDE["update"].items()) for i in cfg.impls}

    get = lambda k: {i: results[i][k] for i in cfg.impls}  # noqa: E731
    held = lambda key: {i: h[i][key] for i in h}  # noqa: E731  (each verdict, computed above)
    Claim = _lab.Claim
    claims = [
        Claim.each("worked example: z1 = h = yhat = 2, loss 64", held("forward"), bool, shown=get("forward/loss")),
        Claim.each("dL/dyhat..dL/db1 = -16,-32,-16,-16,-16,-32,-16 (max err)", held("grads"), bool, shown=grad_err),
        Claim.each("update at lr 0.01: w = 1.32, b = 0.16 (max err)", held("update"), bool, shown=upd_err),
        Claim.each("one step: loss 64 -> 37.748736 (the guide's 37.7)", held("step"), bool, shown=get("new/loss")),
        Claim.each(f"the guide's {cfg.iterations}-iteration loop: final loss < {LOOP_MAX:g}", held("loop"), bool,
                   shown=get("loop_final_loss")),
        Claim.each("... loss at every iteration = the guide's own code", held("ref"), bool,
                   shown=get("loop_max_diff_vs_guide_code")),
        Claim.each(f"depth-{cfg.depth} ReLU net: loss decreases ({deep_steps} SGD steps)", held("deep"), bool,
                   shown={i: f"{results[i]['deep_first_loss']:.3g} -> {results[i]['deep_final_loss']:.3g}"
                          for i in cfg.impls}),
    ]
    if len(grads0) == 2:
        rd = results["manual"]["deep_grad_rel_diff_step0"]
        claims.append(Claim.pair(f"depth-{cfg.depth}: layer-by-layer backward = autograd (rel.)", rd, rd <= tol))
    drifts = [d for d in (drift, max(dh["drift"], default=None)) if d is not None]
    return _lab.result(cfg, log, results, claims, drift=max(drifts) if drifts and len(cfg.impls) == 2 else None)
