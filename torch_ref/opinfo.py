"""The one registry of ops (a small OpInfo): name, torch reference, samples, dtypes, tolerances.

The manual op is named by its string (`manual.functional.<name>` and `<name>_backward`);
this module never imports `manual`, so the oracle stays independent. Samples are NumPy:
floating arrays are float64 (placed in the tested dtype later), class indices are int64.

Tolerances (TOLS) were measured: a small factor above the worst error over every sample on NumPy
and torch-cpu, per op and dtype, the measurement in the reason (`backprop-lab verify --json`
records every error again on each run).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as TF

DTYPES = ("float64", "float32")
REDUCTIONS = ("mean", "sum", "none")


@dataclass(frozen=True)
class Tol:
    rtol: float
    atol: float
    reason: str = "rounding of the same formula in a different order"


@dataclass(frozen=True)
class Sample:
    id: str
    args: tuple  # positional args, NumPy (float64, or int64 class indices)
    kwargs: dict = field(default_factory=dict)  # may hold NumPy arrays (BCE weight, ...)
    diff: tuple = ("input",)  # names (from OpInfo.arg_names) of the differentiable args
    fd: bool = True  # False: exactly on a kink (or at -inf), where a finite difference is meaningless
    fd_reason: str = ""


@dataclass(frozen=True)
class OpInfo:
    name: str  # manual.functional.<name> and <name>_backward
    ref: Callable  # torch reference on torch tensors
    samples: Callable  # samples(rng) -> list[Sample]
    arg_names: tuple = ("input",)
    tols: dict = field(default_factory=dict)  # dtype -> Tol; empty: TOLS[name]
    dtypes: tuple = DTYPES
    from_output: bool = False  # <name>_backward also accepts output= (checked as its own key)

    def tol(self, dtype: str) -> Tol:
        return (self.tols or TOLS[self.name])[dtype]


# -- sample inputs ---------------------------------------------------------------------------

def _away(x, margin=0.05):
    """Push values at least `margin` from 0 so a finite difference never straddles a kink."""
    return x + margin * np.sign(x)


KINK = np.array([[0.0, -0.0, 1.5, -1.5], [0.0, 0.25, -0.25, 0.0]])  # exact zeros: torch's convention
SATURATED = np.array([-1e4, -1e3, -100.0, -30.0, -17.0, 17.0, 30.0, 100.0, 1e3, 1e4])


def _activation_samples(kwargs_list, kink=True):
    def samples(rng):
        out = []
        for kw in kwargs_list:
            tag = "".join(f"-{k}={v}" for k, v in kw.items())
            out += [
                Sample("2d" + tag, (_away(rng.normal(size=(4, 5)) * 2),), kw),
                Sample("batch1" + tag, (_away(rng.normal(size=(1, 6))),), kw),
                Sample("3d" + tag, (_away(rng.normal(size=(2, 3, 4)) * 3),), kw),
                Sample("empty" + tag, (np.zeros((0, 5)),), kw),
                Sample("saturated" + tag, (SATURATED.copy(),), kw),
            ]
            if kink:
                out.append(Sample("kink0" + tag, (KINK.copy(),), kw, fd=False,
                                  fd_reason="inputs exactly at the kink x=0: the one-sided slopes differ"))
        out.append(Sample("1d", (_away(rng.uniform(-6, 6, size=9)),)))
        return out

    return samples


def _softmax_samples(rng):
    x3 = rng.normal(size=(2, 3, 4)) * 2
    big = np.array([[1e3, -1e3, 0.0, 5.0], [-1e3, -1e3, 1e3, 1e3], [1e3, 999.0, -1e3, 0.0]])
    return [
        Sample("2d-dim1", (rng.normal(size=(4, 5)) * 2,), {"dim": 1}),
        Sample("2d-dim0", (rng.normal(size=(4, 5)) * 2,), {"dim": 0}),
        Sample("2d-dim-1", (rng.normal(size=(3, 6)),), {"dim": -1}),
        Sample("3d-dim0", (x3,), {"dim": 0}),
        Sample("3d-dim1", (x3,), {"dim": 1}),
        Sample("3d-dim2", (x3,), {"dim": 2}),
        Sample("1d", (rng.normal(size=7),), {"dim": 0}),
        Sample("batch1", (rng.normal(size=(1, 5)),), {"dim": 1}),
        Sample("logits1e3", (big,), {"dim": 1}),
        Sample("wide-range", (rng.uniform(-50, 50, size=(4, 6)),), {"dim": 1}),
        Sample("empty", (np.zeros((0, 5)),), {"dim": 1}),
        Sample("masked-inf", (np.array([[0.5, -np.inf, 2.0], [-np.inf, -np.inf, 1.0]]),), {"dim": 1},
               fd=False, fd_reason="an input of -inf (a masked logit) cannot be perturbed"),
    ]


def _linear_samples(rng):
    n = rng.normal
    full = ("input", "weight", "bias")
    return [
        Sample("2d", (n(size=(4, 3)), n(size=(5, 3)), n(size=5)), diff=full),
        Sample("no-bias", (n(size=(4, 3)), n(size=(5, 3))), diff=full[:2]),
        Sample("batch1", (n(size=(1, 3)), n(size=(2, 3)), n(size=2)), diff=full),
        Sample("1d", (n(size=3), n(size=(2, 3)), n(size=2)), diff=full),
        Sample("3d", (n(size=(2, 3, 4)), n(size=(5, 4)), n(size=5)), diff=full),
        Sample("4d-no-bias", (n(size=(2, 2, 3, 4)), n(size=(3, 4))), diff=full[:2]),
        Sample("wide", (n(size=(8, 16)) * 3, n(size=(10, 16)), n(size=10)), diff=full),
        Sample("empty", (np.zeros((0, 3)), n(size=(5, 3)), n(size=5)), diff=full),
    ]


def _mse_samples(rng):
    n = rng.normal
    out = [Sample(f"2d-{r}", (n(size=(4, 5)), n(size=(4, 5))), {"reduction": r}) for r in REDUCTIONS]
    out += [
        Sample("3d-mean", (n(size=(2, 3, 4)), n(size=(2, 3, 4))), {"reduction": "mean"}),
        Sample("1d-sum", (n(size=6), n(size=6)), {"reduction": "sum"}),
        Sample("batch1-mean", (n(size=(1, 3)), n(size=(1, 3))), {"reduction": "mean"}),
        Sample("large-none", (n(size=(3, 4)) * 1e3, n(size=(3, 4))), {"reduction": "none"}),
    ]
    out += [Sample(f"empty-{r}", (np.zeros((0, 5)), np.zeros((0, 5))), {"reduction": r}) for r in ("sum", "none")]
    return out


def _bce_samples(rng):
    x, t = rng.normal(size=(4, 5)) * 2, rng.uniform(size=(4, 5))
    w, pw = rng.uniform(0.2, 2.0, size=5), rng.uniform(0.5, 3.0, size=5)
    hard = (rng.uniform(size=(4, 5)) > 0.5).astype(float)
    big = np.array([[1e3, -1e3, 1e3, -1e3], [-1e3, 1e3, 20.0, -20.0]])
    big_t = np.array([[1.0, 0.0, 0.0, 1.0], [1.0, 0.0, 1.0, 0.0]])
    out = []
    for r in REDUCTIONS:
        out += [
            Sample(f"soft-{r}", (x, t), {"reduction": r}),
            Sample(f"weight-{r}", (x, hard), {"weight": w, "reduction": r}),
            Sample(f"pos_weight-{r}", (x, t), {"pos_weight": pw, "reduction": r}),
            Sample(f"logits1e3-{r}", (big, big_t), {"reduction": r}),
        ]
    out += [
        Sample("weight+pos_weight-mean", (x, t), {"weight": rng.uniform(0.2, 2.0, size=(4, 5)),
                                                  "pos_weight": pw, "reduction": "mean"}),
        Sample("3d-mean", (rng.normal(size=(2, 3, 4)), rng.uniform(size=(2, 3, 4))), {"reduction": "mean"}),
        Sample("batch1-sum", (rng.normal(size=(1, 3)), rng.uniform(size=(1, 3))), {"reduction": "sum"}),
        Sample("empty-sum", (np.zeros((0, 5)), np.zeros((0, 5))), {"reduction": "sum"}),
        Sample("empty-none", (np.zeros((0, 5)), np.zeros((0, 5))), {"reduction": "none"}),
    ]
    return out


def _softmax_np(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _ce_samples(rng):
    N, C = 5, 4
    x = rng.normal(size=(N, C)) * 2
    y = rng.integers(0, C, size=N)
    w = rng.uniform(0.3, 2.0, size=C)
    y_ign = y.copy()
    y_ign[[1, 3]] = -100
    p = _softmax_np(rng.normal(size=(N, C)), 1)
    x4, y4 = rng.normal(size=(2, C, 3, 2)), rng.integers(0, C, size=(2, 3, 2))
    y4_ign = np.where(rng.uniform(size=(2, 3, 2)) < 0.3, 2, y4)
    big = np.array([[1e3, -1e3, 0.0, 3.0], [-1e3, 1e3, 1e3, -1e3], [1e3, 0.0, -1e3, 1e3]])
    out = []
    for r in REDUCTIONS:
        out += [
            Sample(f"index-{r}", (x, y), {"reduction": r}),
            Sample(f"weight-{r}", (x, y), {"weight": w, "reduction": r}),
            Sample(f"ignore-{r}", (x, y_ign), {"reduction": r}),
            Sample(f"smoothing-{r}", (x, y), {"label_smoothing": 0.1, "reduction": r}),
            Sample(f"probs-{r}", (x, p), {"reduction": r}),
            Sample(f"4d-{r}", (x4, y4), {"reduction": r}),
            Sample(f"logits1e3-{r}", (big, np.array([0, 2, 3])), {"reduction": r}),
        ]
    out += [
        Sample("weight+ignore+smoothing-mean", (x, y_ign), {"weight": w, "label_smoothing": 0.2, "reduction": "mean"}),
        Sample("weight+smoothing-none", (x, y), {"weight": w, "label_smoothing": 0.3, "reduction": "none"}),
        Sample("ignore_index=2-4d-weight-mean", (x4, y4_ign), {"weight": w, "ignore_index": 2, "reduction": "mean"}),
        Sample("ignore_index=2-4d-smoothing-none", (x4, y4_ign), {"ignore_index": 2, "label_smoothing": 0.1,
                                                                  "reduction": "none"}),
        Sample("probs+weight-mean", (x, p), {"weight": w, "reduction": "mean"}),
        Sample("probs+weight+smoothing-none", (x, p), {"weight": w, "label_smoothing": 0.2, "reduction": "none"}),
        Sample("probs+smoothing-sum", (x, p), {"label_smoothing": 0.15, "reduction": "sum"}),
        Sample("probs-4d-mean", (x4, _softmax_np(rng.normal(size=x4.shape), 1)), {"reduction": "mean"}),
        Sample("1d-mean", (rng.normal(size=C), np.array(2)), {"reduction": "mean"}),
        Sample("1d-none", (rng.normal(size=C), np.array(1)), {"reduction": "none"}),
        Sample("1d-probs-sum", (rng.normal(size=C), _softmax_np(rng.normal(size=C), 0)), {"reduction": "sum"}),
        Sample("batch1-mean", (rng.normal(size=(1, C)), np.array([3])), {"reduction": "mean"}),
        Sample("all-ignored-sum", (x[:2], np.array([-100, -100])), {"reduction": "sum"}),
        Sample("empty-sum", (np.zeros((0, C)), np.zeros(0, dtype=np.int64)), {"reduction": "sum"}),
        Sample("empty-none", (np.zeros((0, C)), np.zeros(0, dtype=np.int64)), {"reduction": "none"}),
    ]
    return [_as_int64(s) for s in out]


def _as_int64(s: Sample) -> Sample:
    args = tuple(a.astype(np.int64) if np.issubdtype(a.dtype, np.integer) else a for a in s.args)
    return Sample(s.id, args, s.kwargs, s.diff, s.fd, s.fd_reason)


# -- tolerances --------------------------------------------------------------------------------
# Per op and dtype, (rtol, atol) a factor ~3-10 above the worst error measured over every sample
# on NumPy and torch-cpu (the measured worst is in the reason). eps64 = 2.2e-16, eps32 = 1.2e-7.
# torch-cuda is not measured here (no GPU on the machine that set these): CUDA's exp/tanh/erf
# may differ from NumPy's by an ulp or two more, which the factor is meant to absorb.

def _tols(t64, t32):
    return {dt: t if isinstance(t, Tol) else Tol(*t) for dt, t in (("float64", t64), ("float32", t32))}


EXACT = Tol(0.0, 0.0, "exact: one comparison and at most one multiply per element, identical in IEEE "
                      "arithmetic on every backend (measured: 0)")

TOLS = {
    "linear": _tols(
        (1e-14, 1e-14, "dot products in a different summation order (BLAS vs torch); "
                       "measured abs 7e-15 on outputs of size ~30"),
        (1e-6, 3e-6, "float32 dot products of 16 terms in a different order; measured 9e-7 abs "
                     "beyond rtol 1e-6, on outputs of size ~30")),
    "relu": _tols(EXACT, EXACT),
    "leaky_relu": _tols(EXACT, EXACT),
    "elu": _tols(
        (1e-14, 1e-17, "expm1/exp of NumPy vs torch, within an ulp; measured rel 3e-16"),
        (1e-6, 1e-8, "float32 expm1/exp differ by an ulp; measured rel 1.2e-7")),
    "gelu": _tols(
        (1e-14, 5e-15, "1 + tanh(u) and Phi(x) cancel for x ~ -9: ~|x| eps absolute; measured abs 1.6e-15"),
        (3e-6, 5e-7, "float32 erf/tanh cancel for negative x (|x| ~ 9): measured abs 1.7e-7 beyond rtol 1e-6")),
    "sigmoid": _tols(
        (1e-14, 1e-16, "exp of NumPy vs torch within an ulp; measured rel 4e-16"),
        (1e-6, 2e-7, "float32 s (1 - s) with s rounded: measured abs 7e-8 beyond rtol 1e-6")),
    "tanh": _tols(
        (1e-14, 1e-15, "1 - t^2 cancels as t -> 1: ~eps |g| absolute; measured abs 4e-16"),
        (1e-6, 5e-7, "float32 1 - t^2 cancels as t -> 1: ~eps32 |g| absolute; measured abs 2e-7")),
    "softmax": _tols(
        (1e-14, 1e-16, "g - sum(g y) cancels; measured abs 1e-16 (rel 3e-15)"),
        (1e-6, 5e-7, "float32 g - sum(g y) cancels; measured abs 1.7e-7 beyond rtol 1e-6")),
    "log_softmax": _tols(
        (1e-14, 1e-16, "log-sum-exp in a different order; measured abs 1.3e-15 on outputs ~2e3 (rel 2e-15)"),
        (2e-6, 1e-7, "float32 log-sum-exp; measured rel 9e-7 (logits 1e3 lose nothing: the shift is exact)")),
    "mse_loss": _tols(
        (1e-14, 1e-16, "sums of up to 60 positive terms in a different order (a GPU reduction tree "
                       "included) stay within ~n eps; measured rel 2e-16 on NumPy and torch-cpu"),
        (1e-6, 1e-8, "float32 sums in a different order; measured rel 1.2e-7")),
    "binary_cross_entropy_with_logits": _tols(
        (1e-14, 1e-16, "log1p/exp of NumPy vs torch; measured abs 4.5e-13 on losses ~1e3 (rel 1.3e-15)"),
        (2e-6, 3e-7, "float32 log1p/exp and sums; measured abs 1.1e-7 beyond rtol 1e-6")),
    "cross_entropy": _tols(
        (1e-14, 1e-16, "log-sum-exp and class sums in a different order; measured rel 1e-15"),
        (2e-6, 1e-7, "float32 log-sum-exp and class sums; measured abs 1.6e-8 beyond rtol 1e-6")),
}

OPS: list[OpInfo] = [
    OpInfo("linear", TF.linear, _linear_samples, ("input", "weight", "bias")),
    OpInfo("relu", TF.relu, _activation_samples([{}])),
    OpInfo("leaky_relu", TF.leaky_relu, _activation_samples([{}, {"negative_slope": 0.2}])),
    OpInfo("elu", TF.elu, _activation_samples([{}, {"alpha": 0.5}])),
    OpInfo("gelu", TF.gelu, _activation_samples([{"approximate": "none"}, {"approximate": "tanh"}], kink=False)),
    OpInfo("sigmoid", torch.sigmoid, _activation_samples([{}], kink=False), from_output=True),
    OpInfo("tanh", torch.tanh, _activation_samples([{}], kink=False), from_output=True),
    OpInfo("softmax", TF.softmax, _softmax_samples, from_output=True),
    OpInfo("log_softmax", TF.log_softmax, _softmax_samples, from_output=True),
    OpInfo("mse_loss", TF.mse_loss, _mse_samples, ("input", "target")),
    OpInfo("binary_cross_entropy_with_logits", TF.binary_cross_entropy_with_logits, _bce_samples,
           ("input", "target")),
    OpInfo("cross_entropy", TF.cross_entropy, _ce_samples, ("input", "target")),
]
OPS_BY_NAME = {op.name: op for op in OPS}

SEED = 20240611


def samples(op: OpInfo) -> list[Sample]:
    """The op's samples, drawn from a generator seeded by the op's name (stable across runs)."""
    seed = SEED + sum(map(ord, op.name))
    return op.samples(np.random.default_rng(seed))


def all_cases(dtypes=DTYPES):
    """(op, sample, dtype) for every registered op, sample and supported dtype."""
    for op in OPS:
        for s in samples(op):
            for dt in dtypes:
                if dt in op.dtypes:
                    yield op, s, dt


__all__ = ["OPS", "OPS_BY_NAME", "OpInfo", "Sample", "Tol", "all_cases", "samples", "DTYPES"]
