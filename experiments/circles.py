"""Circles (guide: "What Hidden Layers Solve", example 2): a straight line cannot separate the
inside of a circle from the outside; an MLP with hidden layers learns the round boundary."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from manual import nn, optim

from . import _lab
from ._lab import opt

NAME = "circles"
SUMMARY = "a linear model stays near the majority rate on inside-vs-outside a circle; an MLP passes 95%"
SECTION = "What Hidden Layers Solve"
DATA_PARALLEL = True  # on several ranks (`run NAME --nproc N`, torchrun) each step shards its batch: experiments/_dist.py
# HParams metrics: the last value of these tags, one column each (_lab.write_hparams)
METRICS = ("linear/accuracy/test", "mlp/accuracy/test", "mlp/loss/val")

LINEAR_MAX, MLP_MIN = 0.75, 0.95  # the claims' bars (see best_line_accuracy for the linear one)


@dataclass
class Config(_lab.RunConfig):
    n: int = opt(2000, "points (half inside, half outside); split 60/20/20 into train/val/test")
    hidden: int = opt(16, "units in each of the MLP's two ReLU hidden layers")
    epochs: int = opt(15, "passes over the training set (quick: 6)")
    batch_size: int = opt(32, "mini-batch size")
    lr: float = opt(0.02, "peak Adam learning rate (cosine decay to 0 over the run)")


def make_circles(n, rng):
    """n points uniform in the unit disc, exactly half inside radius 1/sqrt(2) (equal areas).

    Returns x (n, 2) and y (n, 1), 1 = inside, in a shuffled order.
    """
    n_in = n // 2
    r2 = np.concatenate([0.5 * rng.random(n_in), 0.5 + 0.5 * rng.random(n - n_in)])  # r^2 uniform per region
    theta = rng.uniform(0, 2 * np.pi, n)
    x = np.sqrt(r2)[:, None] * np.stack([np.cos(theta), np.sin(theta)], 1)  # (n, 2)
    y = (np.arange(n) < n_in).astype(np.float64)[:, None]  # (n, 1)
    perm = rng.permutation(n)
    return x[perm], y[perm]


def split(x, y):
    """60/20/20 train/val/test (the data is already shuffled)."""
    a, b = int(0.6 * len(x)), int(0.8 * len(x))
    return (x[:a], y[:a]), (x[a:b], y[a:b]), (x[b:], y[b:])


def best_line_accuracy(x, y, angles=720):
    """The best accuracy ANY straight line reaches on (x, y): every direction, every threshold.

    This is the data's own ceiling for a linear classifier, and the reason the linear claim's
    bar (0.75) is a fair one: on this geometry no half-plane gets much past the majority rate.
    """
    y = y.reshape(-1)
    best = 0.0
    for t in np.linspace(0, np.pi, angles, endpoint=False):
        s = x @ np.array([np.cos(t), np.sin(t)])
        ys = y[np.argsort(s)]
        # predict 1 above the k-th smallest projection: correct = zeros below + ones above
        zeros_below = np.concatenate([[0], np.cumsum(1 - ys)])
        ones_above = ys.sum() - np.concatenate([[0], np.cumsum(ys)])
        acc = (zeros_below + ones_above) / len(y)
        best = max(best, acc.max(), (1 - acc).max())  # either side may be the positive one
    return float(best)


def fit(cfg, log, model, prefix, data, order):
    (xtr, ytr), (xva, yva), (xte, yte) = data
    twins = _lab.Twins(model, nn.BCEWithLogitsLoss(), lambda p: optim.Adam(p, lr=cfg.lr), cfg)
    steps = len(order)

    def evaluate(step):
        tags = {}
        for split_name, (x, y) in (("train", (xtr, ytr)), ("val", (xva, yva))):
            ev = twins.evaluate(x, y)
            if split_name == "val":
                tags["loss/val"] = {i: v[0] for i, v in ev.items()}
            tags[f"accuracy/{split_name}"] = {i: v[1] for i, v in ev.items()}
        if step == steps - 1:
            tags["accuracy/test"] = {i: v[1] for i, v in twins.evaluate(xte, yte).items()}
        return tags

    def batches(step):  # (B, 2), (B, 1): the shared order, at this step's learning rate
        lr = _lab.cosine_lr(cfg.lr, step, steps)  # without the decay the last mini-batches bounce the boundary
        twins.set_lr(lr)
        log.scalar(f"{prefix}lr", {i: lr for i in twins.impls}, step)
        return xtr[order[step]], ytr[order[step]]

    hist = _lab.train(twins, log, batches, steps, evaluate=evaluate,
                      eval_every=max(steps // 30, 1), log_histograms_every=max(steps // 4, 1),
                      desc=f"circles {prefix}", progress=cfg.progress, prefix=prefix)
    test = twins.evaluate(xte, yte)
    if hist["steps"] < steps:  # stopped early (diverged): log the test accuracy it ended with
        log.scalar(f"{prefix}accuracy/test", {i: v[1] for i, v in test.items()}, hist["steps"] - 1)
    for impl in twins.impls:
        fwd = lambda g, impl=impl: twins.forward(g)[impl]  # noqa: E731
        title = f"circles, {prefix.rstrip('/')} ({impl}): test accuracy {test[impl][1]:.3f}"
        fig = _lab.boundary_figure(fwd, (-1.2, 1.2), xte, yte, title, point_size=10,
                                   flat_note="p ~ 0.5 everywhere: no line separates\na disc from its ring (dashed: the truth)")
        fig.axes[0].add_patch(_lab.pyplot().Circle((0, 0), np.sqrt(0.5), fill=False, ls="--", color="g"))  # the truth
        log.image(impl, f"{prefix}boundary", fig, hist["steps"])
    return hist, {i: v[1] for i, v in test.items()}


def main(cfg: Config):
    rng = _lab.seeded(cfg)
    epochs = _lab.quick_cap(cfg, "epochs", 6)
    data = split(*make_circles(cfg.n, rng))
    (xtr, _), _, (xte, yte) = data
    order = _lab.batch_order(rng, len(xtr), cfg.batch_size, epochs)  # (steps,) index arrays, shared by all four runs
    majority = float(max(yte.mean(), 1 - yte.mean()))
    ceiling = best_line_accuracy(xte, yte)
    with _lab.RunLogger(NAME, cfg) as log:
        log.text("data", f"test set: majority rate {majority:.3f}; best accuracy of any straight line {ceiling:.3f}")
        lin_hist, lin_acc = fit(cfg, log, nn.Linear(2, 1), "linear/", data, order)
        mlp = nn.mlp((2, cfg.hidden, cfg.hidden, 1))
        mlp_hist, mlp_acc = fit(cfg, log, mlp, "mlp/", data, order)
    drifts = lin_hist["drift"] + mlp_hist["drift"]
    trained = lin_hist["status"] == "ok" and mlp_hist["status"] == "ok"  # a diverged run shows nothing
    claims = [
        _lab.Claim.each(f"a linear model fails (test acc <= {LINEAR_MAX}; best line {ceiling:.2f})",
                        lin_acc, lambda a: trained and a <= LINEAR_MAX),
        _lab.Claim.each(f"hidden layers learn the circle (test acc >= {MLP_MIN})", mlp_acc,
                        lambda a: trained and a >= MLP_MIN),
    ]
    results = {i: {"linear_test_accuracy": lin_acc[i], "mlp_test_accuracy": mlp_acc[i],
                   "linear_final_loss": lin_hist["loss"][i][-1], "mlp_final_loss": mlp_hist["loss"][i][-1]}
               for i in cfg.impls}
    data_info = {"majority_rate": majority, "best_line_accuracy": ceiling, "steps": len(order)}
    history = {"linear/loss/train": lin_hist["loss"], "mlp/loss/train": mlp_hist["loss"]}
    return _lab.result(cfg, log, results, claims, drift=float(np.max(drifts)) if drifts else None,
                       data=data_info, history=history)
