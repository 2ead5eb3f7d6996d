"""The parity engine behind parity_tests and `backprop-lab verify`.

`check_op`: one op on one sample, dtype and backend, manual forward + `<op>_backward` against
torch autograd, with the same random upstream gradient g on both sides (llm.c's
`fakeloss = (out * g).sum()`): the backward is d<g, f(x)>/dx, never d sum f(x)/dx.
`check_model`: a whole manual model against `torch_ref.twin(model)`, naming the first layer
whose gradient diverges in backward order. `finite_diff`: central differences in float64.
"""

from __future__ import annotations


import warnings
import zlib
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.testing import assert_close

import manual.functional as MF
from manual import _backend as B
from torch_ref import to_torch, twin, twin_loss
from torch_ref.opinfo import OpInfo, Sample, Tol, activations

from ._threads import one_thread

BACKENDS = ("numpy", "torch-cpu", "torch-cuda")
DEVICE = {"numpy": "numpy", "torch-cpu": "cpu", "torch-cuda": "cuda"}  # manual's device=
TORCH_DEVICE = {"numpy": "cpu", "torch-cpu": "cpu", "torch-cuda": "cuda"}  # where the oracle runs
FROM_OUTPUT = "grad_input(output=)"  # key of the gradient computed by <op>_backward(g, output=y)


def available_backends() -> list[str]:
    return [b for b in BACKENDS if b != "torch-cuda" or torch.cuda.is_available()]


def seed_of(*parts) -> int:
    """A stable seed from names (Python's hash() is salted per process)."""
    return zlib.crc32("/".join(map(str, parts)).encode())


def upstream(shape, seed) -> np.ndarray:
    """A random upstream gradient in float64: never ones, so no error can cancel in a sum."""
    return np.random.default_rng(seed).standard_normal(tuple(shape))


def place(value, backend: str, dtype: str):
    """A sample value on a backend, always a new array: floating arrays in `dtype`, integer (int64)
    and boolean arrays keep their dtype."""
    if not isinstance(value, np.ndarray):
        return value
    if np.issubdtype(value.dtype, np.integer) or value.dtype == bool:
        return value.copy() if backend == "numpy" else torch.as_tensor(value.copy(), device=DEVICE[backend])
    return B.place(value.copy(), DEVICE[backend], dtype)


def _errors(actual: np.ndarray, expected: np.ndarray, floor: float = 0.0) -> tuple[float, float]:
    """(max |a - e|, max |a - e| / |e| over |e| > floor), in float64; inf on shape mismatch or NaN.

    floor = atol: the relative error is reported where the relative part of the tolerance decides.
    """
    if actual.shape != expected.shape:
        return float("inf"), float("inf")
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    with np.errstate(invalid="ignore"):
        d = np.where(a == e, 0.0, np.abs(a - e))  # equal infinities count as exact
    if d.size == 0:
        return 0.0, 0.0
    if np.isnan(d).any():
        return float("inf"), float("inf")
    nz = np.abs(e) > floor
    rel = float(np.max(d[nz] / np.abs(e[nz]))) if nz.any() else 0.0
    return float(d.max()), rel


def _used(actual, expected, tol: Tol) -> float:
    if actual.shape != expected.shape:
        return float("inf")
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.where(a == e, 0.0, np.abs(a - e))
        u = np.where(d == 0, 0.0, d / (tol.atol + tol.rtol * np.abs(e)))
    return float(np.nan_to_num(u, nan=np.inf).max()) if u.size else 0.0


@dataclass
class Result:
    """Manual (`actual`) against the oracle (`expected`), as NumPy, keyed "output", "grad_input", ..."""

    op: str
    sample: str
    dtype: str
    backend: str
    actual: dict
    expected: dict
    tol: Tol
    native: dict = field(default_factory=dict)  # manual's results as returned (backend arrays)
    errors: dict = field(default_factory=dict)  # key -> (max abs error, max relative error)
    problems: list = field(default_factory=list)  # warnings, wrong dtype/device, missing keys
    passed: bool = False

    @property
    def header(self) -> str:
        return f"{self.op}[{self.sample}] on {self.backend} in {self.dtype}"

    @property
    def abs_err(self) -> float:
        return max((a for a, _ in self.errors.values()), default=0.0)

    @property
    def rel_err(self) -> float:
        return max((r for _, r in self.errors.values()), default=0.0)

    @property
    def used(self) -> dict:
        """Per key, the largest share of its tolerance an element uses: max |a - e| / (atol + rtol |e|)."""
        return {k: _used(self.actual[k], self.expected[k], self.tol) for k in self.errors}

    @property
    def worst(self) -> str:
        """The key closest to (or furthest beyond) its tolerance."""
        used = self.used
        return max(used, key=used.get) if used else ""

    def assert_close(self):
        """torch.testing.assert_close on the mappings, the message naming op, sample, backend, dtype, tensor."""
        assert not self.problems, f"{self.header}: " + "; ".join(self.problems)
        assert_close(self.actual, self.expected, rtol=self.tol.rtol, atol=self.tol.atol,
                     msg=lambda m: f"{self.header}: {m}\n(tolerance: {self.tol})")


def _name_grads(info: OpInfo, grads) -> dict:
    if not isinstance(grads, tuple):
        grads = (grads,)
    return {f"grad_{n}": g for n, g in zip(info.grads, grads) if g is not None}


def _placement_problems(native: dict, dtype: str, backend: str) -> list[str]:
    out = []
    for k, v in native.items():
        got = str(v.dtype).replace("torch.", "")
        if got != dtype:
            out.append(f"{k}: expected dtype {dtype} (the input's), got {got}")
        if backend == "numpy" and not isinstance(v, (np.ndarray, np.generic)):
            out.append(f"{k}: expected a NumPy array, got {type(v).__name__}")
        if backend != "numpy" and not (isinstance(v, torch.Tensor) and v.device.type == TORCH_DEVICE[backend]):
            out.append(f"{k}: expected a torch tensor on {TORCH_DEVICE[backend]}, got {type(v).__name__} "
                       f"on {getattr(v, 'device', 'numpy')}")
    return out


def run_manual(info: OpInfo, sample: Sample, dtype: str, backend: str, backward=None, seed=None, forward=None):
    """(placed args, placed kwargs, upstream g, {key: manual result}, [warnings]) for one case."""
    fwd = forward if forward is not None else getattr(MF, info.name)
    bwd = backward if backward is not None else getattr(MF, info.name + "_backward")
    args = [place(a, backend, dtype) for a in sample.args]
    kwargs = {k: place(v, backend, dtype) for k, v in sample.kwargs.items()}
    seed = seed_of(info.name, sample.id) if seed is None else seed
    with warnings.catch_warnings(record=True) as caught, np.errstate(all="warn", under="ignore"):
        warnings.simplefilter("always")
        out = fwd(*args, **kwargs)
        after = {f"{n}(after)": a + 0.0 for n, a in zip(info.arg_names, args) if n in info.mutates and a is not None}
        g = place(upstream(out.shape, seed), backend, dtype)
        native = {"output": out, **after, **_name_grads(info, bwd(g, *args, **kwargs))}
        if info.from_output:
            native[FROM_OUTPUT] = bwd(g, output=out, **kwargs)
    return args, kwargs, g, native, [f"{w.category.__name__}: {w.message}" for w in caught]


def run_reference(info: OpInfo, sample: Sample, dtype: str, backend: str, g) -> dict:
    """The torch reference under autograd, on the matching device and dtype, backward with g."""
    dev, tdtype = TORCH_DEVICE[backend], getattr(torch, dtype)

    def t(v, grad=False):
        if not isinstance(v, np.ndarray):
            return v
        if np.issubdtype(v.dtype, np.integer) or v.dtype == bool:
            return torch.as_tensor(v.copy(), device=dev)
        return torch.tensor(v, dtype=tdtype, device=dev, requires_grad=grad)

    with torch.enable_grad():
        targs = [t(a, n in sample.diff) for n, a in zip(info.arg_names, sample.args)]
        out = info.ref(*targs, **{k: t(v) for k, v in sample.kwargs.items()})
        out.backward(to_torch(g, device=dev, dtype=tdtype))
    expected = {"output": out.detach()}
    for n, a in zip(info.arg_names, targs):  # what the forward updated in place (running statistics)
        if n in info.mutates and a is not None:
            expected[f"{n}(after)"] = a.detach()
    for n, a in zip(info.arg_names, targs):
        if n in sample.diff:
            expected[f"grad_{n}"] = a.grad if a.grad is not None else torch.zeros_like(a)
    if info.from_output:
        expected[FROM_OUTPUT] = expected["grad_input"]
    return expected


def check_op(info: OpInfo, sample: Sample, dtype: str, backend: str, backward=None, seed=None, forward=None) -> Result:
    """Manual forward and backward against torch autograd: manual.functional.<info.name> and its
    `_backward`, or the `forward` / `backward` given (your own op, before it is in manual)."""
    with one_thread():
        _, _, g, native, caught = run_manual(info, sample, dtype, backend, backward, seed, forward)
        expected = {k: B.to_numpy(v) for k, v in run_reference(info, sample, dtype, backend, g).items()}
    actual = {k: np.array(B.to_numpy(v)) for k, v in native.items()}
    r = Result(info.name, sample.id, dtype, backend, actual, expected, sample.tols.get(dtype) or info.tol(dtype), native)
    r.problems = caught + _placement_problems(native, dtype, backend)
    if set(actual) != set(expected):
        r.problems.append(f"expected results {sorted(expected)}, got {sorted(actual)}")
    r.errors = {k: _errors(actual[k], expected[k], r.tol.atol) for k in expected if k in actual}
    try:
        r.assert_close()
        r.passed = True
    except AssertionError:
        r.passed = False
    return r


# -- finite differences ------------------------------------------------------------------------

FD_STEP = 1e-3
FD_TOL = Tol(1e-8, 1e-9, "4th-order central difference, h=1e-3: truncation ~h^4 f^(5), rounding ~eps |f| / h; "
                         "measured 3.5e-10 beyond rtol 1e-8 (BCE on logits 1e3, where |f| ~ 1e3)")


def finite_diff(fn, args, kwargs, arg_names, diff, grad_output, h=FD_STEP) -> dict:
    """d<g, fn(args)>/d arg by the 4th-order central difference [-f(+2h) + 8f(+h) - 8f(-h) + f(-2h)] / 12h.

    float64 NumPy throughout; the outputs are subtracted before the dot with g, so an element
    the perturbation does not touch contributes exactly zero.
    """
    args = [np.array(a, dtype=np.float64) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a
            for a in args]
    grads = {}
    for name in diff:
        i = arg_names.index(name)
        x = args[i]
        grad = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            f = {}
            for k in (-2, -1, 1, 2):
                xk = x.copy()
                xk[idx] += k * h
                f[k] = np.asarray(fn(*args[:i], xk, *args[i + 1:], **kwargs), dtype=np.float64)
            slope = (f[-2] - f[2] + 8.0 * (f[1] - f[-1])) / (12.0 * h)
            grad[idx] = np.sum(grad_output * slope)
        grads[f"grad_{name}"] = grad
    return grads


# -- whole models -------------------------------------------------------------------------------

# One tolerance policy for every whole-model comparison (verify's rows, the hypothesis whole-model
# tests, the module tests), element-wise:
#     |manual - torch| <= rtol * (|torch| + max |torch|) + atol * G
# rtol: rounding in a deep model scales with the tensor, so an entry that is a cancellation of larger
# terms (a small gradient among large ones) is held to its tensor's scale (the max over the tensor).
# atol * G, G the largest gradient anywhere in the model: a gradient that is 0 (or nearly, up to
# eps / var) by an invariance (the weight and bias of a layer feeding a batch norm, which removes any
# per-channel scale and shift) comes out on both sides as rounding noise of the gradients flowing
# through, whose scale is G, not its own. (Loss and output: G = 1.)
MODEL_TOL = {
    "float64": Tol(2e-13, 5e-14, "rtol: rounding of up to 6 layers and normalization statistics in a different "
                                 "order, measured worst 3e-15 of the tensor's scale over 300 random MLPs (2e-14 over "
                                 "2,100 earlier); atol: gradients ~0 by invariance measured up to 1.05e-14 G over "
                                 "250 random residual/normalization nets"),
    "float32": Tol(3e-5, 5e-6, "rtol: float32 rounding (6e-8 per op) of up to 6 layers of up to 32 units in a "
                               "different order, measured worst 4.7e-6 of the tensor's scale over 300 random MLPs "
                               "(8e-6 over 1,300 earlier); atol: a gradient ~0 by a batch norm's invariance (a "
                               "Linear's rows before it) measured up to 1.55e-6 G over 250 random residual/"
                               "normalization nets with 8 or 16 values per channel"),
}


def model_close(a: np.ndarray, e: np.ndarray, tol: Tol, grad_scale: float = 1.0) -> bool:
    """The model tolerance policy (above): |a - e| <= rtol (|e| + max |e|) + atol * grad_scale, element-wise."""
    if a.shape != e.shape:
        return False
    e64 = e.astype(np.float64)
    scale = float(np.max(np.abs(e64), initial=0.0))
    with np.errstate(invalid="ignore"):
        d = np.where(a == e, 0.0, np.abs(a.astype(np.float64) - e64))
    return bool(np.all(d <= tol.rtol * (np.abs(e64) + scale) + tol.atol * grad_scale))


def _is_grad_key(key: str) -> bool:
    return key not in ("loss", "output") and not key.endswith("(after)")


@dataclass
class ModelResult:
    dtype: str
    backend: str
    tol: Tol
    errors: dict = field(default_factory=dict)  # name -> (max abs, max rel, passed), in backward order
    actual: dict = field(default_factory=dict)  # name -> NumPy (manual)
    expected: dict = field(default_factory=dict)  # name -> NumPy (torch twin)
    first_divergent: str | None = None  # the layer (module name) where a wrong gradient enters
    first_divergent_tensor: str | None = None
    passed: bool = False
    grad_scale: float = 0.0  # G: the largest |gradient| in the model, the scale of the policy's atol


def _leaves(model):
    return [(n, m) for n, m in model.named_modules() if not list(m.children())]


def check_model(model, criterion, x, y, tol: Tol | None = None, seed=0) -> ModelResult:
    """Loss, output and every gradient of a manual model against torch_ref.twin(model), by name.

    Per leaf layer, in backward order (closest to the loss first): its parameters' gradients
    ("2.weight", "2.bias") and the gradient of its input ("2.grad_input"). The first layer with
    a diverging tensor is where a wrong derivative enters: its upstream gradient still agreed.
    """
    with one_thread():
        return _check_model(model, criterion, x, y, tol, seed)


def _check_model(model, criterion, x, y, tol, seed):
    floats = [v for v in model.state_dict().values() if B._is_floating(v)]
    first = floats[0] if floats else x  # a model with no parameters (activations, Flatten): the input's
    backend = "numpy" if B.backend_name(first) == "numpy" else f"torch-{first.device.type}"
    dtype = str(first.dtype).replace("torch.", "")
    tol = tol or MODEL_TOL[dtype]
    dev = TORCH_DEVICE[backend]
    leaves = _leaves(model)
    float_input = B._is_floating(x)

    # the twin first: buffers (batch norm's running statistics) as they were before this forward
    tmodel = twin(model, device=dev)
    tcrit = twin_loss(criterion, device=dev)

    # manual: record each leaf's returned grad_input by wrapping its backward for this call
    grad_in = {}
    saved = {}
    for name, m in leaves:
        saved[name] = m.__dict__.get("backward")
        inner = m.backward
        object.__setattr__(m, "backward",
                           lambda g, _n=name, _f=inner, **kw: grad_in.setdefault(_n, _f(g, **kw)))
    try:
        out = model(x)
        loss = criterion(out, y)
        c = upstream(np.shape(loss), seed)
        model.zero_grad()
        grad_x = model.backward(criterion.backward(B.place(c, B.device_of(out), dtype)))
    finally:
        for name, m in leaves:
            if saved[name] is None:
                del m.__dict__["backward"]
            else:
                object.__setattr__(m, "backward", saved[name])

    # torch: the twin, with each leaf's input kept for its .grad
    tin = {}

    def keep(name):
        def hook(_mod, inputs):
            x0 = inputs[0]
            if x0.requires_grad:  # a view of its own: the gradient through this layer alone, not the sum
                x0 = x0.view_as(x0)  # over every use of the same tensor (a skip connection's two paths)
                x0.retain_grad()
            tin[name] = x0
            return (x0, *inputs[1:])
        return hook

    handles = [m.register_forward_pre_hook(keep(n)) for n, m in tmodel.named_modules() if n in dict(leaves)]
    tx = to_torch(x, device=dev)
    if float_input:
        tx.requires_grad_(True)
    with torch.enable_grad():
        tout = tmodel(tx)
        tloss = tcrit(tout, to_torch(y, device=dev))
        tloss.backward(torch.as_tensor(c, dtype=tloss.dtype, device=dev))
    for h in handles:
        h.remove()
    tgrads = {n: p.grad for n, p in tmodel.named_parameters()}
    mgrads = {n: p.grad for n, p in model.named_parameters()}
    tbuf = dict(tmodel.named_buffers())

    pairs = [("loss", loss, tloss.detach()), ("output", out, tout.detach())]
    pairs += [(f"{n}(after)", b, tbuf.get(n)) for n, b in model.named_buffers()]  # running statistics
    if float_input:
        pairs.append(("grad_input(model)", grad_x, tx.grad))
    order = []
    for name, m in reversed(leaves):
        for pname, _ in m.named_parameters():
            full = f"{name}.{pname}" if name else pname
            if full not in mgrads:  # a tied parameter (a GPT's lm_head.weight): compared under its first name
                continue
            pairs.append((full, mgrads[full], tgrads[full]))
            order.append((name, full))
        key = f"{name}.grad_input" if name else "grad_input"
        pairs.append((key, grad_in.get(name), tin[name].grad if name in tin else None))
        order.append((name, key))

    res = ModelResult(dtype, backend, tol)
    arrays = {key: (np.asarray(B.to_numpy(a)), B.to_numpy(e)) for key, a, e in pairs if a is not None and e is not None}
    res.grad_scale = max((float(np.max(np.abs(e), initial=0.0)) for k, (_, e) in arrays.items() if _is_grad_key(k)),
                         default=0.0)
    if res.grad_scale == 0.0 and "output" in arrays:  # every gradient exactly 0 in torch (a 1-class softmax):
        res.grad_scale = float(np.max(np.abs(arrays["output"][1]), initial=0.0))  # the terms that cancelled
    for key, a, e in pairs:
        if a is None or e is None:
            res.errors[key] = (float("inf"), float("inf"), a is None and e is None)
            continue
        a, e = arrays[key]
        res.actual[key], res.expected[key] = a, e
        ab, rel = _errors(a, e, tol.atol)
        g = res.grad_scale if _is_grad_key(key) else 1.0
        res.errors[key] = (ab, rel, model_close(a, e, tol, g))
    for layer, key in order:
        if not res.errors[key][2]:
            res.first_divergent, res.first_divergent_tensor = layer, key
            break
    res.passed = all(ok for _, _, ok in res.errors.values())
    return res


ACTIVATIONS = activations()  # id -> (manual.nn class name, its arguments), from the module registry
LOSSES = ("mse", "bce", "cross_entropy")


def mlp_case(activation: str, loss: str, dtype: str, backend: str, seed=0, batch=7):
    """(model, criterion, x, y): Linear(5, 8), act, Linear(8, 6), act, Linear(6, 3) and a loss, seeded."""
    from manual import nn

    rng = np.random.default_rng(seed_of("mlp", activation, loss, seed))
    dev = DEVICE[backend]
    cls, kw = ACTIVATIONS[activation]
    act = lambda: getattr(nn, cls)(**kw)  # noqa: E731
    model = nn.mlp((5, 8, 6, 3), activation=act, device=dev, dtype=dtype, generator=rng)
    x = place(rng.normal(size=(batch, 5)) * 2, backend, dtype)
    if loss == "mse":
        return model, nn.MSELoss(), x, place(rng.normal(size=(batch, 3)), backend, dtype)
    if loss == "bce":
        pw = place(rng.uniform(0.5, 2.0, size=3), backend, dtype)
        return model, nn.BCEWithLogitsLoss(pos_weight=pw), x, place(rng.uniform(size=(batch, 3)), backend, dtype)
    if loss == "cross_entropy":
        w = place(rng.uniform(0.5, 2.0, size=3), backend, dtype)
        crit = nn.CrossEntropyLoss(weight=w, label_smoothing=0.05)
        return model, crit, x, place(rng.integers(0, 3, size=batch), backend, dtype)
    raise ValueError(f"mlp_case: expected loss in {LOSSES}, got {loss!r}")


def gpt_case(dtype: str, backend: str, seed=0, batch=3):
    """(model, criterion, x, y): a 2-block GPT (vocab 11, n_embd 16, 2 heads, block 8) with every parameter
    random (layer-norm weights 1 + noise), token ids x (batch, 7), and MSELoss on the (B, T, V) logits
    against a random target (a loss that needs no reshape on either side)."""
    from manual import nn

    rng = np.random.default_rng(seed_of("gpt", seed))
    dev = DEVICE[backend]
    cfg = nn.GPTConfig(block_size=8, vocab_size=11, n_layer=2, n_head=2, n_embd=16)
    model = nn.GPT(cfg, device=dev, dtype=dtype, generator=rng)
    for name, p in model.named_parameters():
        base = 1.0 if ".ln_" in f".{name}" and name.endswith("weight") else 0.0
        B.fill_(p.data, base + rng.normal(size=p.shape) * (0.1 if base else 0.3))
    x = B.place_raw(rng.integers(0, cfg.vocab_size, size=(batch, 7)), dev)
    return model, nn.MSELoss(), x, place(rng.normal(size=(batch, 7, cfg.vocab_size)), backend, dtype)


NETS = ("resnet[batchnorm]", "resnet[layernorm]", "resnet[groupnorm]", "embedding-mlp", "cnn")


def net_case(name: str, mode: str, dtype: str, backend: str, seed=0, batch=8):
    """(model, criterion, x, y) for verify's network rows, in mode "train" or "eval" (batch norm's
    statistics, dropout): residual blocks around a normalization, an embedding front end, a small CNN."""
    from manual import nn

    if name not in NETS:
        raise ValueError(f"net_case: expected one of {NETS}, got {name!r}")
    rng = np.random.default_rng(seed_of("net", name, seed))
    dev = DEVICE[backend]
    lin = lambda i, o, **kw: nn.Linear(i, o, generator=rng, **kw)  # noqa: E731
    if name.startswith("resnet"):
        norm = {"batchnorm": lambda: nn.BatchNorm1d(8), "layernorm": lambda: nn.LayerNorm(8),
                "groupnorm": lambda: nn.GroupNorm(2, 8)}[name[7:-1]]
        block = lambda: nn.Residual(nn.Sequential(lin(8, 8, bias=False), norm(), nn.Tanh()))  # noqa: E731
        model = nn.Sequential(lin(5, 8), block(), block(), lin(8, 3))
        x = rng.normal(size=(batch, 5))
    elif name == "embedding-mlp":
        model = nn.Sequential(nn.Embedding(9, 4, padding_idx=0, generator=rng), nn.Flatten(), lin(12, 8), nn.GELU(),
                              nn.Dropout(0.3), nn.LayerNorm(8), lin(8, 3))
        x = rng.integers(0, 9, size=(batch, 3))
    else:
        model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False, generator=rng), nn.BatchNorm2d(4), nn.ReLU(),
                              nn.MaxPool2d(2), nn.Residual(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, generator=rng),
                                                                         nn.GroupNorm(2, 4), nn.ELU())),
                              nn.AdaptiveAvgPool2d(1), nn.Flatten(), lin(4, 3))
        x = rng.normal(size=(batch, 1, 8, 8))
    model = model.to(device=dev, dtype=dtype)
    for n, p in model.named_parameters():  # norm weights away from 1 and biases away from 0
        if len(p.shape) == 1:
            B.fill_(p.data, (1.0 if n.endswith("weight") else 0.0) + rng.normal(size=p.shape) * 0.3)
    if mode == "eval":
        for _, m in model.named_modules():
            if type(m).__name__.startswith("BatchNorm"):
                B.fill_(m.running_mean, rng.normal(size=m.running_mean.shape) * 0.3)
                B.fill_(m.running_var, rng.uniform(0.5, 2.0, size=m.running_var.shape))
    if name == "embedding-mlp" and mode == "train":
        model[4].p = 0.0  # dropout's masks cannot be shared with the twin: train mode checks the rest at p = 0
    getattr(model, mode)()
    x = place(x, backend, dtype)
    t = place(rng.integers(0, 3, size=batch), backend, dtype)
    return model, nn.CrossEntropyLoss(label_smoothing=0.1), x, t
