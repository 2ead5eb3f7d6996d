"""CNN on digits: a small convolutional network against the MLP of `digits`, same data, same budget.

Two 3x3 convolutions (each with ReLU and 2x2 max pooling) and one Linear layer, trained by
hand (every convolution's backward written out in manual.functional.conv) and by autograd from
identical weights, on the same split of the 8x8 digits, with the same batches, optimizer and
epochs as the MLP of `digits` (trained here too). Inputs: the MLP reads `digits`' per-pixel
standardised vectors; the CNN reads the same images standardised as a whole (one mean, one
std), since its filters slide over every position. Its first-layer filters and the feature maps
they make of a test digit are logged as images; both parameter counts go to the run's text.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from manual import _backend as B
from manual import nn, optim

from . import _lab, digits
from ._lab import opt

NAME = "cnn"
SUMMARY = "a small CNN passes 97% on held-out 8x8 digits, by hand and by autograd, beside the MLP of `digits`"
SECTION = "How Neurons Self-Program"
DATA_PARALLEL = True  # on several ranks (`run NAME --nproc N`, torchrun) each step shards its batch: experiments/_dist.py

TEST_MIN = 0.97
METRICS = ("cnn/accuracy/test", "mlp/accuracy/test", "cnn/loss/train", "mlp/loss/train")


@dataclass
class Config(_lab.RunConfig):
    channels1: int = opt(16, "filters of the first 3x3 convolution (1 -> channels1, 8x8 -> 4x4 after pooling)")
    channels2: int = opt(32, "filters of the second 3x3 convolution (-> channels2 x 2 x 2 after pooling)")
    hidden: int = opt(32, "hidden ReLU units of the MLP it is compared with (64 -> hidden -> 10, as `digits`)")
    epochs: int = opt(20, "passes over the training set, for both networks (quick: 6)")
    batch_size: int = opt(64, "mini-batch size, for both networks")
    optimizer: str = opt("adam", "adam, or sgd (momentum 0.9), for both networks", choices=("adam", "sgd"))
    lr: float = opt(1e-2, "learning rate, for both networks")
    test_fraction: float = opt(0.25, "held-out share of the 1797 digits (stratified, seeded; the split of `digits`)")


def load_images(cfg):
    """`digits`' seeded stratified split as (N, 1, 8, 8) images, standardised with the training set's
    mean and std over all pixels (a filter sees every position: one scale for all of them)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x.astype(np.float64), y.astype(np.int64), test_size=cfg.test_fraction,
                                          random_state=cfg.seed, stratify=y)
    mean, std = xtr.mean(), xtr.std()
    return ((xtr - mean) / std).reshape(-1, 1, 8, 8), ytr, ((xte - mean) / std).reshape(-1, 1, 8, 8), yte


def build_cnn(cfg):
    c1, c2 = cfg.channels1, cfg.channels2
    return nn.Sequential(
        nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (N, 1, 8, 8) -> (N, c1, 4, 4)
        nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # -> (N, c2, 2, 2)
        nn.Flatten(), nn.Linear(c2 * 4, 10),  # -> (N, 4 c2) -> (N, 10)
    )


def build_mlp(cfg):
    return nn.mlp((64, cfg.hidden, 10))


def n_params(model) -> int:
    return sum(int(np.prod(p.shape)) for p in model.parameters())


def feature_maps(twins, impl, image):
    """The first convolution + ReLU applied to one image (1, 1, 8, 8): (c1, 8, 8) as NumPy."""
    if impl == "manual":
        x = B.place(image, twins.mdev, twins.dtype)
        return B.to_numpy(twins.model[1](twins.model[0](x)))[0]
    with torch.no_grad():
        x = torch.as_tensor(image, dtype=getattr(torch, twins.dtype), device=twins.tdev)
        return twins.tmodel[1](twins.tmodel[0](x)).cpu().numpy()[0]


def log_images(log, twins, image, step, when, maps=True):
    for impl in twins.impls:
        w = twins.params(impl)["0.weight"][:, 0]  # (c1, 3, 3)
        log.image(impl, "filters/conv1", _lab.mosaic_figure(_lab.mosaic(w, cols=4), f"{impl}: conv1 filters, {when}\n"
                                                                                   "(red +, blue -)"), step)
        if not maps:
            continue
        fmap = feature_maps(twins, impl, image)
        shown = np.concatenate([image[0], fmap])  # the digit, then one map per filter
        log.image(impl, "feature_maps/conv1", _lab.mosaic_figure(
            _lab.mosaic(shown, cols=5), f"{impl}: a test digit and its conv1+ReLU maps,\n{when}", cmap="viridis",
            vmin=0.0), step)


def main(cfg: Config):
    rng = _lab.seeded(cfg)
    epochs = _lab.quick_cap(cfg, "epochs", 6)
    (xtr, ytr), (xte, yte) = digits.load_data(cfg)  # the MLP's inputs: per-pixel standardised, (N, 64)
    img_tr, ytr_, img_te, yte_ = load_images(cfg)  # the CNN's: the same split as images, (N, 1, 8, 8)
    assert np.array_equal(ytr_, ytr) and np.array_equal(yte_, yte), "cnn: the CNN and the MLP must see one split"
    order = _lab.batch_order(rng, len(xtr), cfg.batch_size, epochs)  # both networks see these batches
    steps = len(order)
    make_opt = ((lambda p: optim.Adam(p, lr=cfg.lr)) if cfg.optimizer == "adam"
                else (lambda p: optim.SGD(p, lr=cfg.lr, momentum=0.9)))
    cnn, mlp = build_cnn(cfg), build_mlp(cfg)
    counts = {"cnn": n_params(cnn), "mlp": n_params(mlp)}
    acc, hists = {}, {}
    with _lab.RunLogger(NAME, cfg) as log:
        log.text("parameters", f"| network | parameters |\n|---|---|\n| cnn | {counts['cnn']} |\n| mlp | {counts['mlp']} |\n\n"
                               f"```\n{cnn!r}\n```")
        for name, model, (tr, te) in (("cnn", cnn, (img_tr, img_te)), ("mlp", mlp, (xtr, xte))):
            twins = _lab.Twins(model, nn.CrossEntropyLoss(), make_opt, cfg)
            if name == "cnn":
                log_images(log, twins, img_te[:1], 0, "at random initialisation", maps=False)

            def evaluate(step, twins=twins, tr=tr, te=te, name=name):
                return {"accuracy/train": {i: v[1] for i, v in twins.evaluate(tr, ytr).items()},
                        "accuracy/test": {i: v[1] for i, v in twins.evaluate(te, yte).items()}}

            hists[name] = _lab.train(twins, log, lambda s, tr=tr: (tr[order[s]], ytr[order[s]]), steps,
                                     evaluate=evaluate, eval_every=max(steps // (8 if cfg.quick else 25), 1),
                                     lr=cfg.lr,
                                     log_histograms_every=max(steps // 4, 1), desc=f"cnn: {name}",
                                     progress=cfg.progress, prefix=f"{name}/")
            acc[name] = {i: v[1] for i, v in twins.evaluate(te, yte).items()}
            if name == "cnn":
                log_images(log, twins, img_te[:1], hists[name]["steps"], f"after {hists[name]['steps']} steps")
    cnn_acc, mlp_acc = acc["cnn"], acc["mlp"]
    claims = [
        _lab.Claim.each(f"the CNN passes {TEST_MIN:.0%} on held-out digits: test acc >= {TEST_MIN}", cnn_acc,
                        lambda a: a >= TEST_MIN),
    ]
    results = {i: {"cnn_test_accuracy": cnn_acc[i], "mlp_test_accuracy": mlp_acc[i],
                   "cnn_final_loss": hists["cnn"]["loss"][i][-1], "mlp_final_loss": hists["mlp"]["loss"][i][-1]}
               for i in cfg.impls}
    drift = [d for h in hists.values() for d in h["drift"]]
    data = {"n_train": len(xtr), "n_test": len(xte), "steps": steps, "parameters": counts}
    return _lab.result(cfg, log, results, claims, drift=float(np.max(drift)) if drift else None, data=data,
                       history={f"{n}/loss/train": h["loss"] for n, h in hists.items()})
