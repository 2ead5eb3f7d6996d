"""The one registry: every op and every module the parity machinery knows, and nothing else.

Never imports `manual` (the oracle stays independent): a manual op is named by its string
(`manual.functional.<name>` and `<name>_backward`), a module by its class name in `manual.nn`.
Samples are NumPy: floating arrays are float64 (placed in the tested dtype later), indices
int64, masks bool.

Register an op (one OpInfo in OPS) and the generic tests pick it up with no other change:
parity against torch autograd (parity_tests/test_ops.py, every sample x dtype x backend), central
finite differences (test_finite_diff.py), the contracts (test_contracts.py), the error inputs
(test_registry.py) and `backprop-lab verify`:

    OpInfo("softplus", TF.softplus, _activation_samples([{}]),
           tols=_tols((1e-14, 1e-16, "why, with the measured error"), (1e-6, 1e-7, "...")),
           errors=lambda rng: [ErrorInput("beta=0", (rng.normal(size=3),), {"beta": 0}, ValueError, "beta")])

    name        manual.functional.<name> and <name>_backward
    ref         the torch reference, called on torch tensors with the sample's args and kwargs
    samples     rng -> [Sample(id, args, kwargs, diff=(names of the differentiable args), fd=...)]
    tols        {"float64": Tol, "float32": Tol}, each with the reason and the measured error
    arg_names   the forward's positional args, in order
    grad_names  what <name>_backward returns, in order (default: arg_names); one entry per
                positional *array* argument, None where not differentiable (indices, running stats)
    from_output <name>_backward also takes output= (checked as its own key)
    mutates     args the forward updates in place (batch norm's running statistics): compared
                with torch's after the forward, and exempt from the "inputs unchanged" contract
    errors      rng -> [ErrorInput(id, args, kwargs, exception type, regex the message must match)]

Register a module (one ModuleInfo in MODULES) and torch_ref.twin builds it, inside any model:

    ModuleInfo("Softplus", lambda m, build, tensor: torch.nn.Softplus(m.beta), kind="activation", op="softplus",
               examples={"softplus": {}}, draw=lambda rng: {"beta": float(rng.uniform(0.5, 2))})

    name        the class name in manual.nn (and the class name torch_ref.twin dispatches on)
    twin        (manual module, build, tensor) -> torch.nn.Module with the same constructor arguments;
                build(child) twins a child module, tensor(array) makes a torch tensor on the twin's device
    kind        "activation" (elementwise: listed by the whole-model tests, `verify` and the
                experiments), "layer", "container" or "loss"
    examples    id -> constructor kwargs (one module test per example; activations: the MLP rows of verify)
    draw        rng -> random constructor kwargs, for the hypothesis whole-model tests
    input       example input shape for the generic module test (features last = 6); index_high:
                integer inputs in [0, index_high) instead of floats
    op          an activation's manual.functional op (the experiments plot its derivative)

Tolerances were measured: a small factor above the worst error over every sample on NumPy and
torch-cpu, per op and dtype, the measurement in the reason (`backprop-lab verify --json`
records every error again on each run).
"""

from __future__ import annotations

import inspect
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
    args: tuple  # positional args, NumPy (float64, int64 indices, bool masks) or plain values
    kwargs: dict = field(default_factory=dict)  # may hold NumPy arrays (BCE weight, a dropout mask, ...)
    diff: tuple = ("input",)  # names (from OpInfo.arg_names) of the differentiable args
    fd: bool = True  # False: exactly on a kink (or at -inf), where a finite difference is meaningless
    fd_reason: str = ""
    tols: dict = field(default_factory=dict)  # dtype -> Tol replacing the op's for this sample only, with its reason


@dataclass(frozen=True)
class ErrorInput:
    """A bad call and the error it must raise: `exc` whose message matches the regex `match`."""

    id: str
    args: tuple
    kwargs: dict = field(default_factory=dict)
    exc: type = ValueError
    match: str = ""
    backward: bool = False  # call <name>_backward(*args, **kwargs) instead of the forward


@dataclass(frozen=True)
class OpInfo:
    name: str  # manual.functional.<name> and <name>_backward
    ref: Callable  # torch reference on torch tensors
    samples: Callable  # samples(rng) -> list[Sample]
    tols: dict  # dtype -> Tol, each with its reason (required: no global table to forget)
    arg_names: tuple = ("input",)
    grad_names: tuple | None = None  # what <name>_backward returns, in order; None: arg_names
    from_output: bool = False  # <name>_backward also accepts output= (checked as its own key)
    mutates: tuple = ()  # args updated in place by the forward (compared after it, as "<arg>(after)")
    errors: Callable | None = None  # errors(rng) -> list[ErrorInput]

    def __post_init__(self):
        missing = [dt for dt in DTYPES if not isinstance(self.tols.get(dt), Tol)]
        if missing:
            raise ValueError(f"OpInfo({self.name!r}): expected a Tol for each of {DTYPES} in tols=, missing {missing}")

    def tol(self, dtype: str) -> Tol:
        return self.tols[dtype]

    @property
    def grads(self) -> tuple:
        """Names of the gradients <name>_backward returns, in order."""
        return self.grad_names if self.grad_names is not None else self.arg_names


@dataclass(frozen=True)
class ModuleInfo:
    name: str  # manual.nn.<name>
    twin: Callable  # twin(module, build, tensor) -> torch.nn.Module
    kind: str = "layer"  # "activation", "layer", "container" or "loss"
    examples: dict = field(default_factory=lambda: {"default": {}})  # id -> constructor kwargs
    draw: Callable | None = None  # rng -> random constructor kwargs (hypothesis whole-model tests)
    input: tuple = (5, 6)  # example input shape for the generic module test
    index_high: int | None = None  # integer inputs in [0, index_high) (an embedding's token ids)
    op: str | None = None  # an activation: the manual.functional op it applies (its OpInfo has the torch ref)


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
        # torch takes a 1-D weight (in,): the output has no features dim
        Sample("1d-weight", (n(size=(4, 3)), n(size=3)), diff=full[:2]),
        Sample("1d-weight-1d-input", (n(size=3), n(size=3)), diff=full[:2]),
        Sample("1d-weight-3d-0d-bias", (n(size=(2, 3, 4)), n(size=4), np.asarray(n())), diff=full),
        # a bias of another shape torch takes: broadcast to the output (2-D input: to its rows)
        Sample("bias-1xout", (n(size=(4, 3)), n(size=(5, 3)), n(size=(1, 5))), diff=full),
        Sample("bias-Nx1", (n(size=(4, 3)), n(size=(5, 3)), n(size=(4, 1))), diff=full),
        Sample("bias-0d", (n(size=(4, 3)), n(size=(5, 3)), np.asarray(n())), diff=full),
        Sample("3d-bias-broadcast", (n(size=(2, 3, 4)), n(size=(5, 4)), n(size=(2, 1, 5))), diff=full),
        Sample("3d-bias-rows", (n(size=(2, 3, 4)), n(size=(5, 4)), n(size=(6, 1))), diff=full),  # torch: (M, 1), M = 2 * 3
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
    return Sample(s.id, args, s.kwargs, s.diff, s.fd, s.fd_reason, s.tols)


# -- samples for normalization, dropout, embedding, flatten ----------------------------------

# Variance 0 (a constant row, channel or group): the exact xhat is 0, but x - mean keeps rounding
# noise (torch's Welford mean is not exact even where ours is) that rstd = 1/sqrt(eps) ~ 316 magnifies.
_VAR0 = {
    "float64": Tol(1e-13, 3e-13, "variance 0: x - mean's rounding noise (~eps |x|) times rstd = 316 on one side; "
                                 "measured abs 1.1e-13 (group_norm grad_weight)"),
    "float32": Tol(2e-5, 1e-4, "variance 0: x - mean's float32 rounding noise (~1e-7 |x|) times rstd = 316; "
                               "measured abs 3.1e-5 (group_norm grad_input)"),
}


def _layer_norm_samples(rng):
    n = rng.normal
    full = ("input", "weight", "bias")
    const = n(size=(3, 5)) * 2
    const[1] = 0.7  # one row of equal values: variance 0, xhat = 0, rstd = 1/sqrt(eps)
    return [
        Sample("2d", (n(size=(4, 6)) * 2 + 1, (6,), n(size=6), n(size=6)), diff=full),
        Sample("3d-last2", (n(size=(2, 3, 4)), (3, 4), n(size=(3, 4)), n(size=(3, 4))), diff=full),
        Sample("no-affine", (n(size=(3, 5)), (5,)), diff=("input",)),
        Sample("weight-only", (n(size=(2, 2, 5)), (5,), n(size=5)), diff=("input", "weight")),
        Sample("batch1", (n(size=(1, 7)), (7,), n(size=7), n(size=7)), diff=full),
        Sample("eps0.1", (n(size=(4, 3)) * 0.3, (3,), n(size=3), n(size=3)), {"eps": 0.1}, diff=full),
        Sample("constant-row", (const, (5,), n(size=5), n(size=5)), diff=full, fd=False, tols=_VAR0,
               fd_reason="variance 0: a step of 1e-3 moves the variance to ~1e-7, the size of eps, so the "
                         "output is not locally polynomial at that scale (constant-row-eps0.1 checks it)"),
        Sample("constant-row-eps0.1", (const, (5,), n(size=5), n(size=5)), {"eps": 0.1}, diff=full),
        Sample("empty", (np.zeros((0, 4)), (4,), n(size=4), n(size=4)), diff=full),
        # a negative eps, as torch's own samples use: every row's variance here is far above 0.5
        Sample("eps-negative", (n(size=(3, 6)) * 3, (6,), n(size=6), n(size=6)), {"eps": -0.5}, diff=full),
    ]


def _batch_norm_samples(rng):
    n, u = rng.normal, rng.uniform
    full = ("input", "weight", "bias")

    def stats(c):
        return n(size=c), u(0.5, 2.0, size=c)  # running mean, running var (positive)

    const = n(size=(5, 3)) * 2
    const[:, 1] = -0.4  # channel 1 constant over the batch: batch variance 0
    out = []
    for shape, tag in (((6, 3), "1d"), ((4, 3, 5), "3d"), ((2, 3, 4, 5), "2d")):
        for training in (True, False):
            rm, rv = stats(3)
            out.append(Sample(f"{tag}-{'train' if training else 'eval'}", (n(size=shape) * 2 + 0.5, rm, rv,
                              n(size=3), n(size=3)), {"training": training}, diff=full))
    rm, rv = stats(3)
    out += [
        Sample("no-affine-train", (n(size=(5, 3)), rm, rv), {"training": True}),
        Sample("no-running-train", (n(size=(5, 3)), None, None, n(size=3), n(size=3)), {"training": True}, diff=full),
        Sample("momentum0.3-eps1e-3-train", (n(size=(4, 3, 2)), rm, rv, n(size=3), n(size=3)),
               {"training": True, "momentum": 0.3, "eps": 1e-3}, diff=full),
        Sample("batch1-spatial-train", (n(size=(1, 3, 2, 2)), rm, rv, n(size=3), n(size=3)), {"training": True}, diff=full),
        Sample("batch2-train", (n(size=(2, 3)), rm, rv, n(size=3), n(size=3)), {"training": True}, diff=full),
        Sample("constant-channel-train", (const, rm, rv, n(size=3), n(size=3)), {"training": True}, diff=full, fd=False,
               fd_reason="batch variance 0 in channel 1: a step of 1e-3 moves it to the size of eps "
                         "(constant-channel-eps0.1-train checks it)"),
        Sample("constant-channel-eps0.1-train", (const, rm, rv, n(size=3), n(size=3)), {"training": True, "eps": 0.1},
               diff=full),
        Sample("empty-eval", (np.zeros((0, 3)), rm, rv, n(size=3), n(size=3)), {"training": False}, diff=full),
        # an empty batch in training: torch gives an empty output and keeps the running statistics
        Sample("empty-train", (np.zeros((0, 3, 2)), rm, rv, n(size=3), n(size=3)), {"training": True}, diff=full),
        # momentum outside [0, 1] (torch's own samples: -1.2, -1.0): the running average extrapolates
        Sample("momentum-1.2-train", (n(size=(4, 3, 2)), rm, rv, n(size=3), n(size=3)),
               {"training": True, "momentum": -1.2}, diff=full),
        Sample("momentum1.5-eval", (n(size=(4, 3)), rm, rv, n(size=3), n(size=3)),
               {"training": False, "momentum": 1.5}, diff=full),
    ]
    return out


def _group_norm_samples(rng):
    n = rng.normal
    full = ("input", "weight", "bias")
    const = n(size=(2, 4, 3))
    const[1, 2:] = 1.25  # sample 1, group 1 constant: variance 0
    return [
        Sample("4d-g2", (n(size=(2, 6, 3, 2)) * 2, 2, n(size=6), n(size=6)), diff=full),
        Sample("3d-g3", (n(size=(3, 6, 5)), 3, n(size=6), n(size=6)), diff=full),
        Sample("2d-g1", (n(size=(4, 6)), 1, n(size=6), n(size=6)), diff=full),
        Sample("instance-g=C", (n(size=(2, 4, 3, 3)), 4, n(size=4), n(size=4)), diff=full),
        Sample("no-affine", (n(size=(2, 4, 5)), 2), diff=("input",)),
        Sample("batch1", (n(size=(1, 4, 2, 2)), 2, n(size=4), n(size=4)), {"eps": 1e-3}, diff=full),
        Sample("constant-group", (const, 2, n(size=4), n(size=4)), diff=full, fd=False, tols=_VAR0,
               fd_reason="group variance 0: a step of 1e-3 moves it to the size of eps (constant-group-eps0.1 checks it)"),
        Sample("constant-group-eps0.1", (const, 2, n(size=4), n(size=4)), {"eps": 0.1}, diff=full),
        Sample("empty-batch", (np.zeros((0, 4, 3)), 2, n(size=4), n(size=4)), diff=full),
    ]


def _keep(rng, shape, p):
    """A boolean keep-mask, True with probability 1 - p, with at least one kept element."""
    m = rng.random(shape) >= p
    m.flat[0] = True
    return m


def _dropout_samples(rng):
    n = rng.normal
    x, x3 = n(size=(4, 5)), n(size=(2, 3, 4))
    return [
        Sample("p0.5", (x,), {"p": 0.5, "mask": _keep(rng, x.shape, 0.5)}),
        Sample("p0.2-3d", (x3,), {"p": 0.2, "mask": _keep(rng, x3.shape, 0.2)}),
        Sample("p0.99", (x * 3,), {"p": 0.99, "mask": _keep(rng, x.shape, 0.99)}),
        Sample("p0-train", (x,), {"p": 0.0, "training": True}),
        Sample("eval", (x3,), {"p": 0.5, "training": False}),
        Sample("p1", (x,), {"p": 1.0, "mask": np.zeros(x.shape, dtype=bool)}),
        Sample("default-p", (x,), {"mask": _keep(rng, x.shape, 0.5)}),
        Sample("empty", (np.zeros((0, 3)),), {"p": 0.5, "mask": np.zeros((0, 3), dtype=bool)}),
    ]


def _dropout_ref(input, p=0.5, training=True, mask=None):
    if mask is None:  # p = 0 or eval: deterministic, torch's own
        return TF.dropout(input, p, training)
    return input * mask.to(input.dtype) * (1.0 / (1.0 - p)) if p < 1.0 else TF.dropout(input, p, training)  # torch: x * mask * scale


_PAD = ("padding_idx: torch defines the padding row's gradient as 0 although the forward reads that row, so a "
        "finite difference (which sees the lookup) differs there by design")


def _embedding_samples(rng):
    n = rng.normal
    w = n(size=(7, 4))
    i = np.int64
    return [
        Sample("2d-repeats", (np.array([[1, 2, 1], [0, 6, 1]], dtype=i), w), diff=("weight",)),
        Sample("1d-all-same", (np.array([3, 3, 3, 3], dtype=i), w), diff=("weight",)),
        Sample("padding_idx", (np.array([[1, 0, 1], [4, 1, 2]], dtype=i), w), {"padding_idx": 1}, diff=("weight",),
               fd=False, fd_reason=_PAD),
        Sample("padding_idx-neg", (np.array([6, 0, 6, 5], dtype=i), w), {"padding_idx": -1}, diff=("weight",),
               fd=False, fd_reason=_PAD),
        Sample("0d", (np.array(5, dtype=i), n(size=(6, 3))), diff=("weight",)),
        Sample("3d", (rng.integers(0, 5, size=(2, 2, 3)).astype(i), n(size=(5, 2))), diff=("weight",)),
        Sample("empty", (np.zeros(0, dtype=i), w), diff=("weight",)),
    ]


def _flatten_samples(rng):
    n = rng.normal
    return [
        Sample("all", (n(size=(2, 3, 4)),)),
        Sample("start1", (n(size=(2, 3, 4)),), {"start_dim": 1}),
        Sample("mid", (n(size=(2, 3, 4, 2)),), {"start_dim": 1, "end_dim": 2}),
        Sample("negative", (n(size=(2, 3, 4)),), {"start_dim": -2, "end_dim": -1}),
        Sample("one-dim", (n(size=(2, 3, 4)),), {"start_dim": 1, "end_dim": 1}),
        Sample("0d", (np.array(1.5),)),
        Sample("empty", (np.zeros((0, 2, 3)),), {"start_dim": 1}),
    ]


# -- error inputs: bad calls and the message each must give -------------------------------------

def _linear_errors(rng):
    n = rng.normal
    return [
        ErrorInput("in-features", (n(size=(4, 3)), n(size=(5, 2))), {}, ValueError, r"expected input with 2 features"),
        ErrorInput("bias-shape", (n(size=(4, 3)), n(size=(5, 3)), n(size=4)), {}, ValueError,
                   r"expected bias of shape \(5,\)"),
        ErrorInput("bias-3d-rows", (n(size=(2, 3, 4)), n(size=(5, 4)), n(size=(3, 1))), {}, ValueError,  # torch: expand
                   r"expected bias of shape \(5,\), got \(3, 1\): torch adds this bias to the output as rows of shape \(6, 5\)"),
        ErrorInput("1d-weight-bias", (n(size=(4, 3)), n(size=3), n(size=4)), {}, ValueError,  # torch: 'mat2 must be a matrix'
                   r"with a 1-D weight \(3,\), expected bias=None.*got bias of shape \(4,\)"),
        ErrorInput("3d-weight", (n(size=(4, 3)), n(size=(2, 5, 3))), {}, ValueError,
                   r"expected weight of shape \(out_features, in_features\), or \(in_features,\)"),
    ]


def _softmax_errors(rng):
    return [ErrorInput("dim-out-of-range", (rng.normal(size=(2, 3)),), {"dim": 2}, IndexError,
                       r"expected dim in \[-2, 2\).*got 2")]


def _mse_errors(rng):
    n = rng.normal
    return [ErrorInput("target-shape", (n(size=(2, 3)), n(size=(3, 2))), {}, ValueError, r"expected target of shape \(2, 3\)"),
            ErrorInput("reduction", (n(size=3), n(size=3)), {"reduction": "avg"}, ValueError, r"reduction.*'avg'")]


def _layer_norm_errors(rng):
    n = rng.normal
    return [
        ErrorInput("normalized_shape", (n(size=(2, 5)), (4,)), {}, ValueError,
                   r"layer_norm: expected input whose last dimensions are normalized_shape \(4,\), got input of shape \(2, 5\)"),
        ErrorInput("weight-shape", (n(size=(2, 5)), (5,), n(size=4)), {}, ValueError, r"expected weight of shape \(5,\)"),
        ErrorInput("eps", (n(size=(2, 5)), (5,)), {"eps": "1e-5"}, ValueError, r"eps to be a real number, got '1e-5'"),
        ErrorInput("eps-nan", (n(size=(2, 5)), (5,)), {"eps": float("nan")}, ValueError, r"eps .*got nan"),
    ]


def _batch_norm_errors(rng):
    n = rng.normal
    rm, rv = np.zeros(3), np.ones(3)
    return [
        ErrorInput("one-value-per-channel", (n(size=(1, 3)), rm, rv), {"training": True}, ValueError,
                   r"batch_norm: expected more than 1 value per channel when training.*got input of shape \(1, 3\)"),
        ErrorInput("one-value-per-channel-4d", (n(size=(1, 3, 1, 1)), rm, rv), {"training": True}, ValueError,
                   r"more than 1 value per channel.*\(1, 3, 1, 1\)"),
        ErrorInput("channels", (n(size=(4, 2)), rm, rv), {"training": True}, ValueError,
                   r"expected running_mean of shape \(2,\) \(one per channel of input \(4, 2\)\), got \(3,\)"),
        ErrorInput("1d-input", (n(size=3), rm, rv), {}, ValueError, r"at least 2 dimensions, got shape \(3,\)"),
        ErrorInput("eval-without-stats", (n(size=(4, 3)), None, None), {"training": False}, ValueError,
                   r"expected running_mean and running_var when training=False"),
        ErrorInput("momentum", (n(size=(4, 3)), rm, rv), {"training": True, "momentum": None}, ValueError,
                   r"momentum to be a real number, got None"),
        ErrorInput("backward-one-value", (n(size=(1, 3)), n(size=(1, 3)), rm, rv), {"training": True}, ValueError,
                   r"batch_norm_backward: expected more than 1 value per channel", backward=True),
    ]


def _group_norm_errors(rng):
    n = rng.normal
    return [
        ErrorInput("groups-divide", (n(size=(2, 6, 3)), 4), {}, ValueError,
                   r"group_norm: expected num_groups a positive integer that divides the 6 channels .*got 4"),
        ErrorInput("groups-zero", (n(size=(2, 6)), 0), {}, ValueError, r"num_groups .*got 0"),
        ErrorInput("weight-channels", (n(size=(2, 6)), 3, n(size=4)), {}, ValueError, r"expected weight of shape \(6,\)"),
    ]


def _dropout_errors(rng):
    x = rng.normal(size=(2, 3))
    return [
        ErrorInput("p>1", (x,), {"p": 1.5}, ValueError, r"dropout: expected dropout probability p in \[0, 1\], got 1.5"),
        ErrorInput("p<0", (x,), {"p": -0.1}, ValueError, r"p in \[0, 1\], got -0.1"),
        ErrorInput("mask-dtype", (x,), {"p": 0.5, "mask": np.ones((2, 3))}, TypeError, r"expected mask of dtype bool"),
        ErrorInput("mask-shape", (x,), {"p": 0.5, "mask": np.ones((3, 2), dtype=bool)}, ValueError,
                   r"expected mask of shape \(2, 3\)"),
        ErrorInput("backward-without-mask", (x, x), {"p": 0.5}, ValueError, r"needs the forward's keep-mask as mask=",
                   backward=True),
    ]


def _embedding_errors(rng):
    w = rng.normal(size=(7, 4))
    return [
        ErrorInput("index-too-large", (np.array([1, 7], dtype=np.int64), w), {}, IndexError,
                   r"embedding: expected indices in \[0, 7\) \(weight has 7 rows\), got index 7"),
        ErrorInput("index-negative", (np.array([-1, 2], dtype=np.int64), w), {}, IndexError, r"got index -1"),
        ErrorInput("float-indices", (np.array([1.0, 2.0]), w), {}, TypeError, r"expected input of integer indices"),
        ErrorInput("padding_idx", (np.array([1], dtype=np.int64), w), {"padding_idx": 7}, ValueError,
                   r"padding_idx None or an integer in \[-7, 7\)"),
        ErrorInput("backward-index", (rng.normal(size=(2, 4)), np.array([0, 9], dtype=np.int64), w), {}, IndexError,
                   r"embedding_backward: expected indices in \[0, 7\)", backward=True),
    ]


def _flatten_errors(rng):
    x = rng.normal(size=(2, 3, 4))
    return [
        ErrorInput("start>end", (x,), {"start_dim": 2, "end_dim": 1}, ValueError, r"start_dim <= end_dim"),
        ErrorInput("dim-range", (x,), {"start_dim": 3}, IndexError, r"start_dim in \[-3, 3\).*got 3"),
    ]


_QKV = ("query", "key", "value")


def _sdpa_samples(rng):
    """Attention: (batch, heads, L, E) and any other leading dims, causal and not, bool (True = take
    part) and float masks, one head and many, L = 1, L != S, broadcast key/value heads, dropout masks."""
    n = rng.normal
    q, k, v = n(size=(2, 2, 4, 3)), n(size=(2, 2, 5, 3)), n(size=(2, 2, 5, 2))  # small: finite differences
    qs = [n(size=(1, 2, 5, 3)) for _ in range(3)]  # self-attention shapes (L = S)
    keep = rng.uniform(size=(4, 5)) > 0.4
    keep[:, 0] = True  # every row keeps a key
    row_off = keep.copy()
    row_off[2] = False  # a query with no key at all: torch gives it zero weights, output and gradient
    fm = n(size=(2, 1, 4, 5))
    fm_inf = fm.copy()
    fm_inf[0, 0, 1, [1, 4]] = -np.inf
    drop = rng.uniform(size=(1, 2, 5, 5)) >= 0.3
    full = _QKV + ("attn_mask",)
    return [
        Sample("4d", (q, k, v), diff=_QKV),
        Sample("scale=0.3", (q, k, v), {"scale": 0.3}, diff=_QKV),
        Sample("causal", tuple(qs), {"is_causal": True}, diff=_QKV),
        Sample("causal-L<S", (q, k, v), {"is_causal": True}, diff=_QKV),
        Sample("bool-mask", (q, k, v, keep), diff=_QKV),
        Sample("bool-mask-row-masked", (q, k, v, row_off), diff=_QKV),
        Sample("float-mask", (q, k, v, fm), diff=full),
        Sample("float-mask-inf", (q, k, v, fm_inf), diff=full),
        Sample("one-head-3d", (n(size=(2, 4, 3)), n(size=(2, 5, 3)), n(size=(2, 5, 2))), diff=_QKV),
        Sample("2d", (n(size=(4, 3)), n(size=(5, 3)), n(size=(5, 2))), diff=_QKV),
        Sample("L=1-causal", tuple(n(size=(2, 2, 1, 3)) for _ in range(3)), {"is_causal": True}, diff=_QKV),
        Sample("5d-causal", tuple(n(size=(2, 1, 2, 3, 2)) for _ in range(3)), {"is_causal": True}, diff=_QKV),
        Sample("broadcast-kv-heads", (q, k[:, :1], v[:, :1]), diff=_QKV),
        Sample("large-scores", (q * 6, k * 6, v), diff=_QKV),
        Sample("dropout-causal", tuple(qs), {"dropout_p": 0.3, "is_causal": True, "dropout_mask": drop}, diff=_QKV),
    ]


def _sdpa_ref(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, dropout_mask=None):
    """torch's own op; with a dropout keep-mask (torch draws its own), the formula in torch ops."""
    if dropout_mask is None:
        return TF.scaled_dot_product_attention(query, key, value, attn_mask, dropout_p, is_causal, scale=scale)
    L, S = query.shape[-2], key.shape[-2]
    s = query @ key.transpose(-1, -2) * (scale if scale is not None else query.shape[-1] ** -0.5)
    if is_causal:
        s = s.masked_fill(~torch.ones(L, S, dtype=torch.bool, device=s.device).tril(), float("-inf"))
    return (torch.softmax(s, -1) * dropout_mask.to(s.dtype) / (1.0 - dropout_p)) @ value


def _sdpa_errors(rng):
    q = rng.normal(size=(2, 5, 4))
    return [
        ErrorInput("E-mismatch", (q, q[..., :3], q), {}, ValueError, r"key with query's 4 features"),
        ErrorInput("S-mismatch", (q, q, q[:, :2]), {}, ValueError, r"value with key's length 5"),
        ErrorInput("1d", (q[0, 0], q[0, 0], q[0, 0]), {}, ValueError, r"at least 2 dimensions"),
        ErrorInput("mask+causal", (q, q, q, np.ones((5, 5), dtype=bool)), {"is_causal": True}, ValueError,
                   r"attn_mask=None when is_causal=True"),
        ErrorInput("mask-shape", (q, q, q, np.ones((4, 5), dtype=bool)), {}, ValueError,
                   r"broadcastable to the attention weights' shape \(2, 5, 5\)"),
        ErrorInput("dropout_p", (q, q, q), {"dropout_p": 1.5}, ValueError, r"dropout_p in \[0, 1\]"),
        ErrorInput("backward-no-mask", (q, q, q, q), {"dropout_p": 0.5}, ValueError, r"needs the forward's dropout_mask",
                   backward=True),
    ]


# -- convolution and pooling (manual/functional/conv.py, pooling.py) ----------------------------------

_CONV_DIFF = ("input", "weight", "bias")


def _conv_ref(fn):
    """torch's conv, without its note that 'same' padding of an even kernel costs a padded copy."""
    def ref(*args, **kwargs):
        import warnings

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Using padding='same' with even kernel lengths")
            return fn(*args, **kwargs)
    return ref


def _conv2d_samples(rng):
    """Strides, padding (int, tuple, 'valid', 'same' with odd and even kernels), dilation, groups
    (depthwise too), 1x1 kernels, kernels as large as the padded input, batch of 1, unbatched, empty."""
    n = rng.normal

    def s(sid, xs, ws, bias=True, **kw):
        args = (n(size=xs), n(size=ws)) + ((n(size=ws[0]),) if bias else ())
        return Sample(sid, args, kw, diff=_CONV_DIFF if bias else _CONV_DIFF[:2])

    return [
        s("3x3", (2, 3, 5, 4), (4, 3, 3, 3)),
        s("no-bias", (2, 2, 5, 5), (3, 2, 2, 2), bias=False),
        s("stride2-pad1", (2, 3, 6, 5), (2, 3, 3, 3), stride=2, padding=1),
        s("tuple-args", (1, 2, 6, 7), (3, 2, 2, 3), stride=(2, 1), padding=(1, 0), dilation=(1, 2)),
        s("dilation2", (1, 2, 7, 7), (2, 2, 3, 3), dilation=2),
        s("groups2", (2, 4, 5, 5), (6, 2, 3, 3), groups=2),
        s("depthwise", (2, 3, 5, 5), (3, 1, 3, 3), groups=3, padding=1),
        s("depthwise-x2", (1, 2, 5, 5), (4, 1, 3, 3), groups=2, stride=2),
        s("same-odd", (1, 2, 5, 5), (3, 2, 3, 3), padding="same"),
        s("same-even-dilated", (1, 2, 6, 5), (2, 2, 2, 4), padding="same", dilation=(2, 1)),  # asymmetric padding
        s("valid", (1, 2, 5, 6), (2, 2, 3, 2), padding="valid"),
        s("1x1", (2, 4, 4, 3), (3, 4, 1, 1)),
        s("kernel=input", (2, 2, 4, 4), (3, 2, 4, 4)),
        s("kernel=padded-input", (1, 2, 3, 2), (2, 2, 5, 4), padding=1),
        s("stride>kernel", (1, 2, 7, 7), (2, 2, 2, 2), stride=3, padding=1),  # inputs no window reads
        s("batch1", (1, 3, 4, 4), (2, 3, 3, 3)),
        s("unbatched", (3, 5, 4), (2, 3, 2, 2), stride=(1, 2)),
        s("empty-batch", (0, 2, 4, 4), (3, 2, 3, 3)),
        s("1-tuples", (1, 2, 6, 5), (3, 2, 3, 2), stride=(2,), padding=(1,), dilation=(1,)),  # one value for both dims
    ]


def _conv1d_samples(rng):
    n = rng.normal

    def s(sid, xs, ws, bias=True, **kw):
        args = (n(size=xs), n(size=ws)) + ((n(size=ws[0]),) if bias else ())
        return Sample(sid, args, kw, diff=_CONV_DIFF if bias else _CONV_DIFF[:2])

    return [
        s("k3", (2, 3, 8), (4, 3, 3)),
        s("stride2-pad1-no-bias", (2, 2, 9), (3, 2, 3), bias=False, stride=2, padding=1),
        s("dilation-groups", (1, 4, 10), (2, 2, 3), dilation=3, groups=2),
        s("depthwise-same", (2, 3, 7), (3, 1, 4), groups=3, padding="same"),
        s("tuple-args", (1, 2, 9), (2, 2, 2), stride=(3,), padding=(2,), dilation=(2,)),
        s("kernel=input", (2, 2, 5), (3, 2, 5)),
        s("unbatched", (3, 6), (2, 3, 1)),
    ]


def _distinct(rng, shape, gap=0.05):
    """Values at least `gap` apart, shuffled: no ties, so a finite difference never moves an argmax."""
    size = int(np.prod(shape))
    return (rng.permutation(size) - size / 2).reshape(shape) * gap


def _plateaus(rng, shape):
    """Integers in [-2, 2]: windows full of ties (torch keeps the first maximum in row-major order)."""
    return rng.integers(-2, 3, size=shape).astype(float)


_TIES = "ties: the max is not differentiable there (torch's choice of the first maximum is a convention)"


def _max_pool_samples(rng):
    d = lambda *shape: _distinct(rng, shape)  # noqa: E731
    return [
        Sample("2x2", (d(2, 3, 6, 6),), {"kernel_size": 2}),
        Sample("3x3-s2-p1", (d(2, 2, 7, 6),), {"kernel_size": 3, "stride": 2, "padding": 1}),
        Sample("overlap-s1-p1", (d(1, 2, 5, 5),), {"kernel_size": 3, "stride": 1, "padding": 1}),
        Sample("negative-padded", (d(1, 2, 5, 4) - 10.0,), {"kernel_size": 2, "padding": 1}),  # -inf padding never wins
        Sample("ceil_mode", (d(2, 2, 6, 7),), {"kernel_size": 3, "stride": 2, "ceil_mode": True}),
        Sample("ceil_mode-pad", (d(1, 2, 5, 5),), {"kernel_size": 2, "stride": 2, "padding": 1, "ceil_mode": True}),
        Sample("dilation2", (d(1, 2, 7, 7),), {"kernel_size": 2, "dilation": 2}),
        Sample("tuple-args", (d(2, 2, 6, 7),), {"kernel_size": (2, 3), "stride": (1, 2), "padding": (1, 1),
                                                "dilation": (2, 1)}),
        Sample("kernel=input", (d(2, 3, 4, 5),), {"kernel_size": (4, 5)}),
        Sample("batch1", (d(1, 3, 4, 4),), {"kernel_size": 2, "stride": 1}),
        Sample("unbatched", (d(3, 4, 6),), {"kernel_size": 2}),
        Sample("ties-plateau", (np.ones((2, 2, 4, 4)),), {"kernel_size": 2}, fd=False, fd_reason=_TIES),
        Sample("ties-overlap", (_plateaus(rng, (2, 3, 6, 6)),), {"kernel_size": 3, "stride": 1, "padding": 1},
               fd=False, fd_reason=_TIES),
        Sample("ties-ceil-dilated", (_plateaus(rng, (1, 2, 7, 6)),), {"kernel_size": 2, "stride": 2, "dilation": 2,
                                                                      "ceil_mode": True}, fd=False, fd_reason=_TIES),
        Sample("1-tuples", (d(1, 2, 7, 6),), {"kernel_size": (3,), "stride": (2,), "padding": (1,), "dilation": (1,)}),
    ]


def _avg_pool_samples(rng):
    n = rng.normal
    return [
        Sample("2x2", (n(size=(2, 3, 6, 6)),), {"kernel_size": 2}),
        Sample("3x3-s2-p1", (n(size=(2, 2, 7, 6)),), {"kernel_size": 3, "stride": 2, "padding": 1}),
        Sample("exclude-pad", (n(size=(1, 2, 5, 5)),), {"kernel_size": 3, "stride": 1, "padding": 1,
                                                        "count_include_pad": False}),
        Sample("ceil_mode", (n(size=(2, 2, 6, 7)),), {"kernel_size": 3, "stride": 2, "ceil_mode": True}),
        Sample("ceil_mode-pad-exclude", (n(size=(1, 2, 5, 5)),), {"kernel_size": 2, "stride": 2, "padding": 1,
                                                                  "ceil_mode": True, "count_include_pad": False}),
        Sample("ceil_mode-pad-include", (n(size=(1, 2, 5, 6)),), {"kernel_size": 3, "stride": 2, "padding": 1,
                                                                  "ceil_mode": True}),
        Sample("divisor_override", (n(size=(1, 2, 5, 4)),), {"kernel_size": 2, "padding": 1, "divisor_override": 3}),
        Sample("tuple-args", (n(size=(2, 2, 6, 7)),), {"kernel_size": (2, 3), "stride": (1, 2), "padding": (1, 1)}),
        Sample("kernel=input", (n(size=(2, 3, 4, 5)),), {"kernel_size": (4, 5)}),
        Sample("unbatched", (n(size=(3, 4, 6)),), {"kernel_size": 2, "stride": 1}),
        Sample("1-tuples-empty-stride", (n(size=(1, 2, 6, 7)),), {"kernel_size": (3,), "stride": (), "padding": (1,)}),
    ]


def _adaptive_avg_pool_samples(rng):
    n = rng.normal
    return [
        Sample("7x6->3x4", (n(size=(2, 3, 7, 6)),), {"output_size": (3, 4)}),
        Sample("global", (n(size=(2, 4, 5, 3)),), {"output_size": 1}),
        Sample("None-keeps-a-size", (n(size=(1, 2, 5, 6)),), {"output_size": (None, 2)}),
        Sample("larger-than-input", (n(size=(1, 2, 3, 4)),), {"output_size": (5, 7)}),  # overlapping windows
        Sample("same-size", (n(size=(2, 2, 3, 3)),), {"output_size": (3, 3)}),
        Sample("unbatched", (n(size=(3, 5, 5)),), {"output_size": 2}),
    ]


def _conv_errors(nd):
    op = f"conv{nd}d"

    def errors(rng):
        n = rng.normal
        sp, k3, k2 = (8,) * nd, (3,) * nd, (2,) * nd
        return [
            ErrorInput("channels", (n(size=(2, 5) + sp), n(size=(4, 3) + k3)), {}, ValueError,
                       rf"{op}: groups=1, weight of shape \(4, 3(, 3)+\): expected input with 3 channels "
                       r"\(weight.shape\[1\] \* groups\), got 5 channels"),
            ErrorInput("groups-channels", (n(size=(2, 6) + sp), n(size=(4, 3) + k3)), {"groups": 4}, ValueError,
                       r"groups=4, weight of shape .*: expected input with 12 channels .*got 6 channels"),
            ErrorInput("groups-divide-out", (n(size=(2, 6) + sp), n(size=(5, 3) + k3)), {"groups": 2}, ValueError,
                       r"groups=2 must divide out_channels: expected weight.shape\[0\] divisible by 2"),
            ErrorInput("groups-zero", (n(size=(2, 6) + sp), n(size=(4, 3) + k3)), {"groups": 0}, ValueError,
                       r"expected groups to be a positive int, got 0"),
            ErrorInput("kernel-too-large", (n(size=(2, 3) + k2), n(size=(4, 3) + k3)), {}, ValueError,
                       rf"{op}: kernel larger than the padded input: expected a \(dilated\) kernel extent of at most "
                       r"\(2,( 2)?\).*got kernel \(3,( 3)?\)"),
            ErrorInput("dilated-kernel-too-large", (n(size=(1, 3) + (4,) * nd), n(size=(2, 3) + k3)),
                       {"dilation": 2, "padding": 0}, ValueError, r"kernel larger than the padded input.*extent \(5"),
            ErrorInput("stride-0", (n(size=(2, 3) + sp), n(size=(4, 3) + k3)), {"stride": 0}, ValueError,
                       r"expected stride to be positive \(>= 1\), got 0"),
            ErrorInput("padding-negative", (n(size=(2, 3) + sp), n(size=(4, 3) + k3)), {"padding": -1}, ValueError,
                       r"expected padding to be non-negative \(>= 0\), got -1"),
            ErrorInput("same-strided", (n(size=(2, 3) + sp), n(size=(4, 3) + k3)), {"padding": "same", "stride": 2},
                       ValueError, r"padding='same' is not supported for strided convolutions"),
            ErrorInput("bias-shape", (n(size=(2, 3) + sp), n(size=(4, 3) + k3), n(size=3)), {}, ValueError,
                       r"expected bias of shape \(4,\), got \(3,\)"),
            ErrorInput("backward-grad-shape", (n(size=(2, 4) + sp), n(size=(2, 3) + sp), n(size=(4, 3) + k3)), {},
                       ValueError, rf"{op}_backward: expected grad_output of shape \(2, 4(, 6)+\) \(the output's\), "
                                   rf"got \(2, 4(, 8)+\)", backward=True),
        ]

    return errors


def _pool_errors(op):
    def errors(rng):
        x = rng.normal(size=(1, 2, 8, 8))
        out = [
            ErrorInput("stride-0", (x,), {"kernel_size": 2, "stride": 0}, ValueError,
                       rf"{op}: expected stride to be positive \(>= 1\), got 0"),
            ErrorInput("kernel-0", (x,), {"kernel_size": 0}, ValueError, r"expected kernel_size to be positive"),
            ErrorInput("kernel-too-large", (x[..., :2, :2],), {"kernel_size": 3}, ValueError,
                       rf"{op}: output size too small: input \(2, 2\) with kernel_size=\(3, 3\).*output of \(0, 0\)"),
            ErrorInput("padding>half-kernel", (x,), {"kernel_size": 3, "padding": 2}, ValueError,
                       r"expected padding of at most half the kernel size \(1, 1\) .*got padding=\(2, 2\)"),
            ErrorInput("2d-input", (x[0, 0],), {"kernel_size": 2}, ValueError,
                       r"expected a 3-D \(C, H, W\) or 4-D \(N, C, H, W\) input, got shape \(8, 8\)"),
            ErrorInput("integer-input", (np.zeros((1, 2, 4, 4), dtype=np.int64),), {"kernel_size": 2}, TypeError,
                       rf"{op}: expected input of dtype float32 or float64 .*got (torch\.)?int64"),
            ErrorInput("backward-grad-shape", (x[..., :3, :3], x), {"kernel_size": 2}, ValueError,
                       rf"{op}_backward: expected grad_output of shape \(1, 2, 4, 4\) \(the output's\), got \(1, 2, 3, 3\)",
                       backward=True),
        ]
        return out

    return errors


def _adaptive_errors(rng):
    x = rng.normal(size=(2, 3, 4, 4))
    return [
        ErrorInput("empty-height", (np.zeros((2, 3, 0, 4)),), {"output_size": 2}, ValueError,
                   r"adaptive_avg_pool2d: expected non-zero channel, height and width, got input of shape \(2, 3, 0, 4\)"),
        ErrorInput("integer-input", (np.zeros((1, 2, 4, 4), dtype=np.int64),), {"output_size": 2}, TypeError,
                   r"adaptive_avg_pool2d: expected input of dtype float32 or float64 .*got (torch\.)?int64"),
        ErrorInput("output_size-3", (x,), {"output_size": (2, 2, 2)}, ValueError,
                   r"expected output_size to be a non-negative int or a tuple of 2 .*got \(2, 2, 2\)"),
        ErrorInput("backward-grad-shape", (x[..., :1, :1], x), {"output_size": 2}, ValueError,
                   r"adaptive_avg_pool2d_backward: expected grad_output of shape \(2, 3, 2, 2\)", backward=True),
    ]


# -- tolerances --------------------------------------------------------------------------------
# Per op and dtype, (rtol, atol) a factor ~3-10 above the worst error measured over every sample
# on NumPy and torch-cpu (the measured worst is in the reason). eps64 = 2.2e-16, eps32 = 1.2e-7.
# torch-cuda is not measured here (no GPU on the machine that set these): CUDA's exp/tanh/erf
# may differ from NumPy's by an ulp or two more, which the factor is meant to absorb.

def _tols(t64, t32):
    return {dt: t if isinstance(t, Tol) else Tol(*t) for dt, t in (("float64", t64), ("float32", t32))}


EXACT = Tol(0.0, 0.0, "exact: one comparison and at most one multiply per element, identical in IEEE "
                      "arithmetic on every backend (measured: 0)")

OPS: list[OpInfo] = [
    OpInfo("linear", TF.linear, _linear_samples, arg_names=("input", "weight", "bias"), errors=_linear_errors, tols=_tols(
        (1e-14, 1e-14, "dot products in a different summation order (BLAS vs torch); "
                       "measured abs 7e-15 on outputs of size ~30"),
        (1e-6, 3e-6, "float32 dot products of 16 terms in a different order; measured 9e-7 abs "
                     "beyond rtol 1e-6, on outputs of size ~30"))),
    OpInfo("relu", TF.relu, _activation_samples([{}]), from_output=True, tols=_tols(EXACT, EXACT)),
    OpInfo("leaky_relu", TF.leaky_relu, _activation_samples([{}, {"negative_slope": 0.2}]), tols=_tols(EXACT, EXACT)),
    OpInfo("elu", TF.elu, _activation_samples([{}, {"alpha": 0.5}]), tols=_tols(
        (1e-14, 1e-17, "expm1/exp of NumPy vs torch, within an ulp; measured rel 3e-16"),
        (1e-6, 1e-8, "float32 expm1/exp differ by an ulp; measured rel 1.2e-7"))),
    OpInfo("gelu", TF.gelu, _activation_samples([{"approximate": "none"}, {"approximate": "tanh"}], kink=False), tols=_tols(
        (1e-14, 5e-15, "1 + tanh(u) and Phi(x) cancel for x ~ -9: ~|x| eps absolute; measured abs 1.6e-15"),
        (3e-6, 5e-7, "float32 erf/tanh cancel for negative x (|x| ~ 9): measured abs 1.7e-7 beyond rtol 1e-6"))),
    OpInfo("sigmoid", torch.sigmoid, _activation_samples([{}], kink=False), from_output=True, tols=_tols(
        (1e-14, 1e-16, "exp of NumPy vs torch within an ulp; measured rel 4e-16"),
        (1e-6, 2e-7, "float32 s (1 - s) with s rounded: measured abs 7e-8 beyond rtol 1e-6"))),
    OpInfo("tanh", torch.tanh, _activation_samples([{}], kink=False), from_output=True, tols=_tols(
        (1e-14, 1e-15, "1 - t^2 cancels as t -> 1: ~eps |g| absolute; measured abs 4e-16"),
        (1e-6, 5e-7, "float32 1 - t^2 cancels as t -> 1: ~eps32 |g| absolute; measured abs 2e-7"))),
    OpInfo("softmax", TF.softmax, _softmax_samples, from_output=True, errors=_softmax_errors, tols=_tols(
        (1e-14, 1e-16, "g - sum(g y) cancels; measured abs 1e-16 (rel 3e-15)"),
        (1e-6, 5e-7, "float32 g - sum(g y) cancels; measured abs 1.7e-7 beyond rtol 1e-6"))),
    OpInfo("log_softmax", TF.log_softmax, _softmax_samples, from_output=True, errors=_softmax_errors, tols=_tols(
        (1e-14, 1e-16, "log-sum-exp in a different order; measured abs 1.3e-15 on outputs ~2e3 (rel 2e-15)"),
        (2e-6, 1e-7, "float32 log-sum-exp; measured rel 9e-7 (logits 1e3 lose nothing: the shift is exact)"))),
    OpInfo("mse_loss", TF.mse_loss, _mse_samples, arg_names=("input", "target"), errors=_mse_errors, tols=_tols(
        (1e-14, 1e-16, "sums of up to 60 positive terms in a different order (a GPU reduction tree "
                       "included) stay within ~n eps; measured rel 2e-16 on NumPy and torch-cpu"),
        (1e-6, 1e-8, "float32 sums in a different order; measured rel 1.2e-7"))),
    OpInfo("binary_cross_entropy_with_logits", TF.binary_cross_entropy_with_logits, _bce_samples,
           arg_names=("input", "target"), tols=_tols(
        (1e-14, 1e-16, "log1p/exp of NumPy vs torch; measured abs 4.5e-13 on losses ~1e3 (rel 1.3e-15)"),
        (2e-6, 3e-7, "float32 log1p/exp and sums; measured abs 1.1e-7 beyond rtol 1e-6"))),
    OpInfo("cross_entropy", TF.cross_entropy, _ce_samples, arg_names=("input", "target"), tols=_tols(
        (1e-14, 1e-16, "log-sum-exp and class sums in a different order; measured rel 1e-15"),
        (2e-6, 1e-7, "float32 log-sum-exp and class sums; measured abs 1.6e-8 beyond rtol 1e-6"))),
    OpInfo("layer_norm", TF.layer_norm, _layer_norm_samples, arg_names=("input", "normalized_shape", "weight", "bias"),
           grad_names=("input", "weight", "bias"), errors=_layer_norm_errors, tols=_tols(
        (5e-14, 3e-15, "means and sums over the row in a different order, rstd by 1/sqrt vs rsqrt; measured abs "
                       "1.1e-15 (no-affine grad_input ~2), rel 6.6e-15"),
        (2e-5, 3e-6, "float32 statistics in a different order, the backward's two means cancel: measured abs "
                     "1.2e-6 on grad_input ~2 (no-affine), rel 2e-5 on entries ~0.05"))),
    OpInfo("batch_norm", TF.batch_norm, _batch_norm_samples,
           arg_names=("input", "running_mean", "running_var", "weight", "bias"),
           mutates=("running_mean", "running_var"), errors=_batch_norm_errors, tols=_tols(
        (1e-13, 1e-14, "batch statistics over up to 40 values in a different order (torch: Welford); measured "
                       "abs 5.3e-15 on grad_weight ~10, rel 1.1e-13 on small entries; batch2-train's grad_input is "
                       "a cancellation (~eps/var of g: two values per channel) measured abs 4.8e-16"),
        (1e-5, 3e-6, "float32 statistics in a different order: measured abs 1.9e-6 on grad_weight ~15 (2d-eval), "
                     "abs 3.2e-7 on batch2-train's cancelled grad_input (~1e-5)"))),
    OpInfo("group_norm", TF.group_norm, _group_norm_samples, arg_names=("input", "num_groups", "weight", "bias"),
           grad_names=("input", "weight", "bias"), errors=_group_norm_errors, tols=_tols(
        (1e-13, 1e-14, "group statistics in a different order (torch: Welford); measured abs 3.6e-15, rel 5.6e-14"),
        (1e-5, 3e-6, "float32 group statistics in a different order: measured abs 1.4e-6 on grad_input ~5, "
                     "rel 9.6e-5 on entries ~0.01"))),
    OpInfo("dropout", _dropout_ref, _dropout_samples, errors=_dropout_errors, tols=_tols(EXACT, EXACT)),
    OpInfo("embedding", TF.embedding, _embedding_samples, arg_names=("input", "weight"), errors=_embedding_errors,
           tols=_tols((1e-15, 1e-16, "repeated indices summed in a different order (bincount vs index_add); measured 0"),
                      (1e-6, 3e-7, "float32: repeated indices summed in a different order (NumPy's bincount "
                                   "accumulates in float64); measured abs 2.4e-7 on grad_weight ~2"))),
    OpInfo("flatten", torch.flatten, _flatten_samples, errors=_flatten_errors, tols=_tols(EXACT, EXACT)),
    OpInfo("scaled_dot_product_attention", _sdpa_ref, _sdpa_samples, arg_names=_QKV + ("attn_mask",),
           errors=_sdpa_errors, tols=_tols(
               (1e-13, 1e-15, "matmuls and the softmax's row sums in a different order; the backward's "
                              "dP - rowsum(dP P) cancels where scores are large (sample large-scores): measured "
                              "abs 4e-17 beyond rtol 1e-13 (1.8e-16 beyond rtol 1e-14)"),
               (1e-5, 5e-7, "float32 matmuls and row sums (torch-cpu: a flash kernel) in a different order, "
                            "cancelling in dP - rowsum(dP P): measured abs 8e-8 beyond rtol 1e-5 (large-scores)"))),
    OpInfo("conv2d", _conv_ref(TF.conv2d), _conv2d_samples, arg_names=_CONV_DIFF, errors=_conv_errors(2), tols=_tols(
        (1e-13, 1e-15, "dot products of up to 72 terms (im2col matmul vs torch's kernel) in a different order: "
                       "measured abs 9.5e-16 beyond rtol 1e-14, 6.7e-17 beyond rtol 1e-13"),
        (2e-6, 2e-6, "float32 dot products of up to 72 terms in a different order, weight gradients up to ~10: "
                     "measured abs 4.5e-7 beyond rtol 2e-6 (groups2 grad_weight, torch-cpu)"))),
    OpInfo("conv1d", _conv_ref(TF.conv1d), _conv1d_samples, arg_names=_CONV_DIFF, errors=_conv_errors(1), tols=_tols(
        (1e-13, 1e-15, "dot products of up to 24 terms in a different order: measured rel 9e-15, abs 1.8e-15"),
        (2e-6, 3e-7, "float32 dot products in a different order: measured abs 9.6e-8 beyond rtol 1e-6"))),
    OpInfo("max_pool2d", TF.max_pool2d, _max_pool_samples, errors=_pool_errors("max_pool2d"), tols=_tols(
        (1e-15, 1e-16, "a max is exact and each input's gradient is the same sum in the same order on CPU "
                       "(measured 0); overlapping windows add up to 9 gradients, in any order on CUDA (atomics)"),
        (2e-6, 1e-7, "overlapping windows: NumPy's bincount adds up to 9 gradients in float64 and rounds once, "
                     "torch in float32: measured rel 1.2e-6 (ties-overlap), abs 5e-9 beyond rtol 1e-6"))),
    OpInfo("avg_pool2d", TF.avg_pool2d, _avg_pool_samples, errors=_pool_errors("avg_pool2d"), tols=_tols(
        (1e-14, 1e-16, "window sums of up to 20 terms in a different order, then / divisor: measured abs "
                       "3.2e-17 beyond rtol 1e-14"),
        (1e-6, 5e-8, "float32 window sums in a different order: measured abs 1.3e-8 beyond rtol 1e-6"))),
    OpInfo("adaptive_avg_pool2d", TF.adaptive_avg_pool2d, _adaptive_avg_pool_samples, errors=_adaptive_errors,
           tols=_tols(
               (1e-14, 1e-16, "window sums (a 0/1 matrix product) in a different order, then / count: measured "
                              "abs 2.6e-18 beyond rtol 1e-14"),
               (1e-6, 1e-8, "float32 window sums in a different order: measured abs 2.9e-9 beyond rtol 1e-6"))),
]
OPS_BY_NAME = {op.name: op for op in OPS}

SEED = 20240611


def samples(op: OpInfo) -> list[Sample]:
    """The op's samples, drawn from a generator seeded by the op's name (stable across runs)."""
    seed = SEED + sum(map(ord, op.name))
    return op.samples(np.random.default_rng(seed))


def error_inputs(op: OpInfo) -> list[ErrorInput]:
    """The op's bad calls (none if it has no `errors=`), seeded like its samples."""
    seed = SEED + sum(map(ord, op.name)) + 1
    return op.errors(np.random.default_rng(seed)) if op.errors is not None else []


def all_cases(dtypes=DTYPES):
    """(op, sample, dtype) for every registered op, sample and dtype."""
    for op in OPS:
        for s in samples(op):
            for dt in dtypes:
                yield op, s, dt


# -- modules: the twin of each manual.nn class ------------------------------------------------

class Residual(torch.nn.Module):
    """torch twin of manual.nn.Residual: y = x + block(x) (torch has no such class)."""

    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, x):
        return x + self.block(x)


def _seq(m, build, tensor):
    return torch.nn.Sequential(*[build(c) for c in m.children()])


def _norm(cls, m, *args, **kwargs):
    """torch's norm module `cls(*args, **kwargs)`, without a bias where the manual one has a weight but no bias
    (bias=False): torch's own bias= where this torch's constructor takes it (2.13's BatchNorm and GroupNorm
    do, 2.11's do not), else built affine and its bias removed (F.batch_norm and F.group_norm take None)."""
    if m.weight is None or m.bias is not None:
        return cls(*args, **kwargs)
    if "bias" in inspect.signature(cls.__init__).parameters:
        return cls(*args, bias=False, **kwargs)
    tm = cls(*args, **kwargs)
    tm.register_parameter("bias", None)
    return tm


def _bn(cls):
    def twin(m, build, tensor):
        return _norm(cls, m, m.num_features, eps=m.eps, momentum=m.momentum, affine=m.affine,
                     track_running_stats=m.track_running_stats)
    return twin


def _gpt_twin(m):
    from .gpt import build  # nanoGPT's model from torch.nn layers, config from the manual GPT

    return build(m)


MODULES: list[ModuleInfo] = [
    ModuleInfo("Sequential", _seq, kind="container", examples={}),
    ModuleInfo("Residual", lambda m, build, tensor: Residual(build(m.block)), kind="container", examples={}),
    ModuleInfo("Linear", lambda m, build, tensor: torch.nn.Linear(m.in_features, m.out_features, bias=m.bias is not None),
               examples={"default": {"in_features": 6, "out_features": 4}, "no-bias": {"in_features": 6, "out_features": 3,
                                                                                        "bias": False}}),
    ModuleInfo("ReLU", lambda m, build, tensor: torch.nn.ReLU(), kind="activation", op="relu", examples={"relu": {}}),
    ModuleInfo("LeakyReLU", lambda m, build, tensor: torch.nn.LeakyReLU(m.negative_slope), kind="activation", op="leaky_relu",
               examples={"leaky_relu": {"negative_slope": 0.1}},
               draw=lambda rng: {"negative_slope": float(rng.uniform(0.001, 0.5))}),
    ModuleInfo("ELU", lambda m, build, tensor: torch.nn.ELU(m.alpha), kind="activation", op="elu", examples={"elu": {"alpha": 0.7}},
               draw=lambda rng: {"alpha": float(rng.uniform(0.1, 2.0))}),
    ModuleInfo("GELU", lambda m, build, tensor: torch.nn.GELU(approximate=m.approximate), kind="activation", op="gelu",
               examples={"gelu": {}, "gelu_tanh": {"approximate": "tanh"}},
               draw=lambda rng: {"approximate": str(rng.choice(["none", "tanh"]))}),
    ModuleInfo("Sigmoid", lambda m, build, tensor: torch.nn.Sigmoid(), kind="activation", op="sigmoid", examples={"sigmoid": {}}),
    ModuleInfo("Tanh", lambda m, build, tensor: torch.nn.Tanh(), kind="activation", op="tanh", examples={"tanh": {}}),
    ModuleInfo("LayerNorm", lambda m, build, tensor: torch.nn.LayerNorm(
        m.normalized_shape, eps=m.eps, elementwise_affine=m.elementwise_affine, bias=m.bias is not None),
        examples={"default": {"normalized_shape": 6}, "no-bias": {"normalized_shape": (6,), "bias": False},
                  "no-affine": {"normalized_shape": [6], "elementwise_affine": False}}),
    ModuleInfo("BatchNorm1d", _bn(torch.nn.BatchNorm1d),
               examples={"default": {"num_features": 6}, "momentum-None": {"num_features": 6, "momentum": None},
                         "no-affine": {"num_features": 6, "affine": False},
                         "no-running": {"num_features": 6, "track_running_stats": False},
                         "no-bias": {"num_features": 6, "bias": False}}),
    ModuleInfo("BatchNorm2d", _bn(torch.nn.BatchNorm2d), input=(3, 6, 4, 5),
               examples={"default": {"num_features": 6}, "eps-momentum": {"num_features": 6, "eps": 1e-3, "momentum": 0.5}}),
    ModuleInfo("GroupNorm", lambda m, build, tensor: _norm(torch.nn.GroupNorm, m, m.num_groups, m.num_channels,
                                                           eps=m.eps, affine=m.affine), input=(3, 6, 4),
               examples={"default": {"num_groups": 3, "num_channels": 6},
                         "no-affine": {"num_groups": 2, "num_channels": 6, "affine": False},
                         "no-bias": {"num_groups": 3, "num_channels": 6, "bias": False}}),
    ModuleInfo("Dropout", lambda m, build, tensor: torch.nn.Dropout(m.p), examples={"p0": {"p": 0.0}}),
    ModuleInfo("Embedding", lambda m, build, tensor: torch.nn.Embedding(m.num_embeddings, m.embedding_dim,
                                                                        padding_idx=m.padding_idx),
               input=(3, 5), index_high=9,
               examples={"default": {"num_embeddings": 9, "embedding_dim": 4},
                         "padding_idx": {"num_embeddings": 9, "embedding_dim": 3, "padding_idx": 2}}),
    ModuleInfo("Flatten", lambda m, build, tensor: torch.nn.Flatten(m.start_dim, m.end_dim), input=(3, 2, 4, 5),
               examples={"default": {}, "middle": {"start_dim": 1, "end_dim": 2}}),
    ModuleInfo("Conv2d", lambda m, build, tensor: torch.nn.Conv2d(
        m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups, m.bias is not None),
        input=(2, 4, 7, 6),
        examples={"default": {"in_channels": 4, "out_channels": 6, "kernel_size": 3},
                  "strided-grouped": {"in_channels": 4, "out_channels": 6, "kernel_size": (3, 2), "stride": 2,
                                      "padding": 1, "dilation": (1, 2), "groups": 2, "bias": False},
                  "depthwise-same": {"in_channels": 4, "out_channels": 4, "kernel_size": 3, "groups": 4,
                                     "padding": "same"}}),
    ModuleInfo("Conv1d", lambda m, build, tensor: torch.nn.Conv1d(
        m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups, m.bias is not None),
        input=(2, 4, 9),
        examples={"default": {"in_channels": 4, "out_channels": 3, "kernel_size": 3},
                  "strided-dilated-grouped": {"in_channels": 4, "out_channels": 6, "kernel_size": 2, "stride": 2,
                                              "padding": 1, "dilation": 2, "groups": 2}}),
    ModuleInfo("MaxPool2d", lambda m, build, tensor: torch.nn.MaxPool2d(
        m.kernel_size, m.stride, m.padding, m.dilation, ceil_mode=m.ceil_mode), input=(2, 3, 7, 6),
        examples={"default": {"kernel_size": 2}, "overlap-ceil": {"kernel_size": 3, "stride": 2, "padding": 1,
                                                                  "ceil_mode": True}}),
    ModuleInfo("AvgPool2d", lambda m, build, tensor: torch.nn.AvgPool2d(
        m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad, m.divisor_override), input=(2, 3, 7, 6),
        examples={"default": {"kernel_size": 2}, "ceil-exclude-pad": {"kernel_size": 3, "stride": 2, "padding": 1,
                                                                      "ceil_mode": True, "count_include_pad": False}}),
    ModuleInfo("AdaptiveAvgPool2d", lambda m, build, tensor: torch.nn.AdaptiveAvgPool2d(m.output_size),
               input=(2, 3, 7, 6), examples={"default": {"output_size": (3, 2)}, "global": {"output_size": 1}}),
    ModuleInfo("GPT", lambda m, build, tensor: _gpt_twin(m), kind="container", examples={}),  # torch_ref/gpt.py
    ModuleInfo("MSELoss", lambda m, build, tensor: torch.nn.MSELoss(reduction=m.reduction), kind="loss"),
    ModuleInfo("BCEWithLogitsLoss", lambda m, build, tensor: torch.nn.BCEWithLogitsLoss(
        weight=tensor(m.weight), reduction=m.reduction, pos_weight=tensor(m.pos_weight)), kind="loss"),
    ModuleInfo("CrossEntropyLoss", lambda m, build, tensor: torch.nn.CrossEntropyLoss(
        weight=tensor(m.weight), ignore_index=m.ignore_index, reduction=m.reduction,
        label_smoothing=m.label_smoothing), kind="loss"),
]
MODULES_BY_NAME = {m.name: m for m in MODULES}


def activations() -> dict:
    """id -> (manual.nn class name, constructor kwargs) for every activation example: the one list of
    activations (verify's MLP rows, the whole-model tests, the experiments)."""
    return {eid: (m.name, kw) for m in MODULES if m.kind == "activation" for eid, kw in m.examples.items()}


__all__ = ["OPS", "OPS_BY_NAME", "MODULES", "MODULES_BY_NAME", "OpInfo", "ModuleInfo", "ErrorInput", "Sample", "Tol",
           "Residual", "activations", "all_cases", "error_inputs", "samples", "DTYPES"]
