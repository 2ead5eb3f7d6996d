"""XOR (guide: "What Hidden Layers Solve"): no straight line separates XOR; one hidden layer does."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from manual import nn, optim

from . import _lab
from ._lab import opt

NAME = "xor"
SUMMARY = ("a linear model stays at or below 75% on XOR; one hidden layer reaches 100%; two stacked Linear "
           "layers without an activation are one Linear layer")
SECTION = "What Hidden Layers Solve"
SINGLE_PROCESS = "its batch is the 4 points of XOR: nothing worth splitting"  # why `run NAME --nproc N` is refused (runner.single_process_reason)
# HParams metrics: the last value of these tags, one column each (_lab.write_hparams)
METRICS = ("linear/accuracy/train", "mlp/accuracy/train", "mlp/loss/train", "stacked_linear/accuracy/train")

X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float64)
Y = np.array([[0], [1], [1], [0]], dtype=np.float64)


@dataclass
class Config(_lab.RunConfig):
    hidden: int = opt(8, "hidden units of the MLP")
    steps: int = opt(600, "full-batch Adam steps per model (quick: 300)")
    lr: float = opt(0.05, "Adam learning rate")


def fit(cfg, log, model, prefix, steps):
    twins = _lab.Twins(model, nn.BCEWithLogitsLoss(), lambda p: optim.Adam(p, lr=cfg.lr), cfg)

    def evaluate(step):
        return {"accuracy/train": {i: _lab.accuracy(o, Y) for i, o in twins.forward(X).items()}}

    hist = _lab.train(twins, log, lambda s: (X, Y), steps, evaluate=evaluate, eval_every=25, lr=cfg.lr,
                      log_histograms_every=max(steps // 5, 1), desc=f"xor {prefix}",
                      progress=cfg.progress, prefix=prefix)
    out = twins.forward(X)
    acc = {i: _lab.accuracy(o, Y) for i, o in out.items()}
    for impl in twins.impls:
        fwd = lambda g, impl=impl: twins.forward(g)[impl]  # noqa: E731
        title = f"XOR, {prefix.rstrip('/')} ({impl}): accuracy {acc[impl]:.2f}"
        log.image(impl, f"{prefix}boundary", _lab.boundary_figure(
            fwd, (-0.5, 1.5), X, Y, title, point_size=80,
            flat_note="p ~ 0.5 everywhere:\nno line separates XOR,\nso the best line is no line"), steps)
    return twins, hist, acc


# |stack(x) - folded(x)| on a grid of |x| <= 1.5: a few roundings of sums of `hidden` terms
FOLD_TOL = {"float64": 1e-12, "float32": 1e-5}


def folded_gap(twins, n=41):
    """impl -> max |stack(x) - (W x + b)| over a grid, W = W2 W1 and b = W2 b1 + b2 from that impl's
    trained weights: two Linear layers without an activation between them are one Linear layer."""
    g = np.linspace(-0.5, 1.5, n)
    grid = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    out = {}
    for impl, z in twins.forward(grid).items():
        p = twins.params(impl)
        w = p["1.weight"] @ p["0.weight"]  # (1, hidden) @ (hidden, 2) -> (1, 2)
        b = p["1.weight"] @ p["0.bias"] + p["1.bias"]  # (1,)
        out[impl] = float(np.max(np.abs(z - (grid.astype(w.dtype) @ w.T + b))))
    return out


def main(cfg: Config):
    _lab.seeded(cfg)
    steps = _lab.quick_cap(cfg, "steps", 300)
    with _lab.RunLogger(NAME, cfg) as log:
        lin, lin_hist, lin_acc = fit(cfg, log, nn.Linear(2, 1), "linear/", steps)
        mlp_model = nn.mlp((2, cfg.hidden, 1), activation=nn.Tanh)
        mlp, mlp_hist, mlp_acc = fit(cfg, log, mlp_model, "mlp/", steps)
        # guide, "Why We Need Them": without an activation, stacked layers are one linear map
        stacked_model = nn.mlp((2, cfg.hidden, 1), activation=None)
        stacked, stacked_hist, stacked_acc = fit(cfg, log, stacked_model, "stacked_linear/", steps)
        folded = folded_gap(stacked)
    drifts = [d for h in (lin_hist, mlp_hist, stacked_hist) for d in h["drift"]]
    Claim = _lab.Claim
    claims = [
        Claim.each("a linear model cannot solve XOR (accuracy <= 75%)", lin_acc, lambda a: a <= 0.75),
        Claim.each("one hidden layer solves XOR (accuracy 100%)", mlp_acc, lambda a: a == 1.0),
        Claim.each("two stacked Linear layers without an activation do no better than a linear model (accuracy <= 75%)",
                   stacked_acc, lambda a: a <= 0.75),
        Claim.each("...because they are one Linear layer: W2 W1 x + (W2 b1 + b2) = the stack's output "
                   "(max |difference| on a grid, float64 rounding)", folded, lambda g: g <= FOLD_TOL[cfg.dtype]),
    ]
    results = {i: {"linear_accuracy": lin_acc[i], "mlp_accuracy": mlp_acc[i],
                   "mlp_final_loss": mlp_hist["loss"][i][-1], "stacked_linear_accuracy": stacked_acc[i],
                   "stacked_folded_gap": folded[i]} for i in cfg.impls}
    return _lab.result(cfg, log, results, claims, drift=float(np.max(drifts)) if drifts else None)  # NaN propagates
