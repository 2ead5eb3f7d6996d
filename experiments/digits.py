"""Digits (guide: "How Neurons Self-Program"): nobody sets the weights; trained from random ones
on 8x8 digit images, an MLP passes 95% on held-out digits and its first-layer weights become
pixel patterns (shown as 8x8 images before and after training)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from manual import nn, optim

from . import _lab
from ._lab import opt

NAME = "digits"
SUMMARY = "from random weights an MLP passes 95% on held-out 8x8 digits; its first-layer weights become pixel patterns"
SECTION = "How Neurons Self-Program"
DATA_PARALLEL = True  # on several ranks (`run NAME --nproc N`, torchrun) each step shards its batch: experiments/_dist.py
# HParams metrics: the last value of these tags, one column each (_lab.write_hparams)
METRICS = ("accuracy/test", "loss/train")

TEST_MIN = 0.95
CHANCE_MAX = 0.2  # 10 balanced classes: a network that has learned nothing scores about 0.1
N_SHOWN = 16  # hidden units drawn as 8x8 weight images


@dataclass
class Config(_lab.RunConfig):
    hidden: int = opt(32, "hidden ReLU units (64 -> hidden -> 10)")
    epochs: int = opt(20, "passes over the training set (quick: 6)")
    batch_size: int = opt(64, "mini-batch size")
    optimizer: str = opt("adam", "adam, or sgd (momentum 0.9)", choices=("adam", "sgd"))
    lr: float = opt(1e-2, "learning rate")
    test_fraction: float = opt(0.25, "held-out share of the 1797 digits (stratified, seeded)")


def load_data(cfg):
    """scikit-learn's bundled 8x8 digits (no download): a seeded stratified split, standardised
    with the training set's statistics only. Returns (xtr, ytr), (xte, yte), x (N, 64), y (N,) int."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)  # (1797, 64) pixel intensities 0..16, (1797,)
    xtr, xte, ytr, yte = train_test_split(x.astype(np.float64), y.astype(np.int64), test_size=cfg.test_fraction,
                                          random_state=cfg.seed, stratify=y)
    mean, std = xtr.mean(0), xtr.std(0)
    std = np.where(std > 0, std, 1.0)  # corner pixels that are always 0 in the training set
    return ((xtr - mean) / std, ytr), ((xte - mean) / std, yte)



def log_weights(log, twins, step, when):
    for impl in twins.impls:
        w = twins.params(impl)["0.weight"]  # (hidden, 64)
        title = f"{impl}: units 0-{N_SHOWN - 1}, input weights\n{when} (red +, blue -)"
        tiles = _lab.mosaic(w[:N_SHOWN].reshape(-1, 8, 8), cols=4)  # each unit scaled to its own max |w|
        log.image(impl, "first_layer_weights", _lab.mosaic_figure(tiles, title), step)


def main(cfg: Config):
    rng = _lab.seeded(cfg)
    epochs = _lab.quick_cap(cfg, "epochs", 6)
    (xtr, ytr), (xte, yte) = load_data(cfg)
    order = _lab.batch_order(rng, len(xtr), cfg.batch_size, epochs)  # (steps,) index arrays
    steps = len(order)
    model = nn.mlp((64, cfg.hidden, 10))
    make_opt = ((lambda p: optim.Adam(p, lr=cfg.lr)) if cfg.optimizer == "adam"
                else (lambda p: optim.SGD(p, lr=cfg.lr, momentum=0.9)))
    with _lab.RunLogger(NAME, cfg) as log:
        twins = _lab.Twins(model, nn.CrossEntropyLoss(), make_opt, cfg)
        w0 = {i: twins.params(i)["0.weight"].copy() for i in twins.impls}
        start = {i: v[1] for i, v in twins.evaluate(xte, yte).items()}
        log_weights(log, twins, 0, "at random initialisation")

        def evaluate(step):
            tr = twins.evaluate(xtr, ytr)
            te = twins.evaluate(xte, yte)
            return {"accuracy/train": {i: v[1] for i, v in tr.items()},
                    "accuracy/test": {i: v[1] for i, v in te.items()}}

        hist = _lab.train(twins, log, lambda s: (xtr[order[s]], ytr[order[s]]), steps, evaluate=evaluate,
                          eval_every=max(steps // 25, 1), lr=cfg.lr, log_histograms_every=max(steps // 4, 1),
                          desc="digits", progress=cfg.progress)
        final = twins.evaluate(xte, yte)
        log_weights(log, twins, hist["steps"], f"after {hist['steps']} steps")
    acc = {i: v[1] for i, v in final.items()}
    moved = {i: float(np.linalg.norm(twins.params(i)["0.weight"] - w0[i]) / np.linalg.norm(w0[i]))
             for i in twins.impls}  # ||W_trained - W_init|| / ||W_init||
    claims = [
        _lab.Claim.each(f"random weights detect nothing: test acc at init <= {CHANCE_MAX} (chance 0.1)", start,
                        lambda a: a <= CHANCE_MAX),
        _lab.Claim.each(f"trained, the neurons program themselves: test acc >= {TEST_MIN}", acc, lambda a: a >= TEST_MIN),
    ]
    results = {i: {"test_accuracy": acc[i], "test_accuracy_at_init": start[i], "final_loss": hist["loss"][i][-1],
                   "first_layer_relative_change": moved[i]} for i in cfg.impls}
    data = {"n_train": len(xtr), "n_test": len(xte), "steps": steps}
    return _lab.result(cfg, log, results, claims, drift=float(np.max(hist["drift"])) if hist["drift"] else None,
                       data=data, history={"loss/train": hist["loss"]})
