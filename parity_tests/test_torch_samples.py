"""PyTorch's own sample inputs through manual: forward and backward against torch autograd.

Where parity_tests/test_ops.py runs the registry's samples (torch_ref/opinfo.py, written here),
this file runs the ones PyTorch tests itself with: every OpInfo of
`torch.testing._internal.common_methods_invocations.op_db` whose name is a manual.functional op,
`sample_inputs(device, dtype, requires_grad=True)` on CPU in float64, each sample called on NumPy
arrays and on torch tensors (manual with torch inputs). The manual forward is compared with
torch's output, then `<op>_backward` with a random upstream gradient g (one gradient per
positional array argument, the registry's `grad_names`) with `torch.autograd.grad` of the same
<g, output>, for every argument torch's sample marks requires_grad.

The same for modules: every ModuleInfo of `torch.testing._internal.common_modules.module_db` whose
class is in manual.nn, each `module_inputs_func` input in training and (where the ModuleInfo says
they differ) eval mode: the manual module built with the same constructor arguments, the torch
module's state_dict (randomized first) loaded into it, then forward, the state after it, and
`module.backward(g)` against autograd for the input and every parameter.

float32 too, with another oracle (float32 results of two correct codes differ by rounding that grows
with the sums): torch autograd in float64 on the upcast sample is the truth, and manual's float32 output
and gradients must be no further from it than 4x torch's own float32 ones (plus 8 eps of their scale).

A sample whose arguments manual does not take is never skipped silently: it matches one entry
of UNSUPPORTED below, each with its reason, and the test asserts manual refuses it with a clear
error (the exception type and a message naming the argument). An entry that no sample uses any
longer fails too, so the list stays short and true.

torch's test internals need `expecttest` (the dev extra); without it the module is skipped.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import warnings
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
import torch

pytest.importorskip("expecttest", reason="torch.testing._internal needs expecttest (pip install -e .[dev])")
try:
    from torch.testing._internal.common_methods_invocations import op_db
except Exception as exc:  # noqa: BLE001 - torch's internals are not a public API: any import failure skips
    pytest.skip(f"torch.testing._internal.common_methods_invocations does not import: {exc!r}", allow_module_level=True)

import manual.functional as MF  # noqa: E402
from torch_ref.opinfo import OPS_BY_NAME  # noqa: E402

# float64 on both sides: only rounding in a different order separates manual from torch. Measured over
# every sample, op and module below, on both backends: the worst element uses 11% of atol + rtol |e|
# (layer_norm, abs 1.1e-13 on a gradient near 0), every other op under 5%. One tolerance for all.
RTOL, ATOL = 1e-10, 1e-12
# manual on NumPy arrays, on torch CPU tensors and on CUDA tensors (the samples are made on the CPU and
# copied to the GPU for manual; torch's CPU autograd stays the reference)
BACKENDS = ("numpy", "torch", pytest.param("torch-cuda", marks=[
    pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to torch")]))

# torch OpInfo name -> manual.functional op name
OP_NAMES = {
    "softmax": "softmax",
    "log_softmax": "log_softmax",
    "tanh": "tanh",
    "sigmoid": "sigmoid",
    "flatten": "flatten",
    **{f"nn.functional.{n}": n for n in (
        "cross_entropy", "adaptive_avg_pool2d", "binary_cross_entropy_with_logits", "relu", "conv1d", "conv2d",
        "group_norm", "layer_norm", "leaky_relu", "avg_pool2d", "max_pool2d", "linear", "elu",
        "scaled_dot_product_attention", "batch_norm", "gelu", "dropout", "embedding", "mse_loss")},
}


@dataclass(frozen=True)
class Unsupported:
    """A kind of torch sample manual deliberately refuses: `when(sample)` picks it, manual must raise
    `exc` with a message matching `match` (naming the argument and what is supported)."""

    op: str  # manual op name
    when: Callable  # SampleInput -> bool
    reason: str
    exc: type = ValueError
    match: str = ""


def _kw(name, test):
    return lambda s: name in s.kwargs and test(s.kwargs[name])


# The deliberately unsupported cases, each with its reason. Everything else must match torch.
UNSUPPORTED = [
    # a 1-D input (torch's sample: shape (0,) with empty running statistics; torch refuses any non-empty
    # 1-D input, its channel dim being dim 1): manual asks (N, C, *) always
    Unsupported("batch_norm", lambda s: s.input.ndim < 2, "a 1-D input: (N, C) or (N, C, *) only",
                ValueError, r"batch_norm: expected input of shape \(N, C\) or \(N, C, \*\) with at least 2 "
                            r"dimensions, got shape \(0,\)"),
]


# (manual op, argument) whose gradient torch computes but manual's backward deliberately does not
# return (it returns None or nothing there): the losses' targets are data, not parameters
# (manual.functional.losses: "Each <loss>_backward returns the gradient of the input").
NO_GRAD = {
    ("mse_loss", "target"): "a loss's target is data: <loss>_backward returns the input's gradient only",
    ("binary_cross_entropy_with_logits", "target"): "a loss's target is data",
    ("cross_entropy", "target"): "a loss's target (class probabilities) is data",
}


# torch's elu backward at a NaN input: NaN from its vectorized CPU loop, the upstream gradient from its
# scalar loop, which takes only what is left over after whole pairs of SIMD vectors (a 9-element float32
# sample entirely): which one a position gets depends on the array's length and on the machine's vector
# width. manual gives NaN everywhere, the vectorized loop's answer (what any array of 64+ elements gets
# at every position), and torch's gradient is read as that at NaN inputs (_at_nan_inputs).
NAN_INPUT_GIVES_NAN = {"elu": "torch's vectorized elu_backward: x > 0 ? g : g alpha e^x, NaN at NaN"}


def _at_nan_inputs(op, name, grad, sample):
    if op not in NAN_INPUT_GIVES_NAN or name != "input" or grad is None:
        return grad
    nan = torch.isnan(sample.input.detach()).to(grad.device)
    return torch.where(nan, torch.full_like(grad, float("nan")), grad)


# -- running one sample ----------------------------------------------------------------------

def _device(backend):
    """manual's device= for a backend: "numpy", "cpu" (torch tensors) or "cuda"."""
    return {"numpy": "numpy", "torch": "cpu", "torch-cuda": "cuda"}[backend]


def _to_manual(v, backend):
    """A torch sample value as manual gets it: a new NumPy array or torch tensor (same dtype, strides kept;
    on the GPU for the torch-cuda backend)."""
    if isinstance(v, torch.Tensor):
        t = v.detach()
        if backend == "numpy":
            return np.copy(t.numpy(), order="K")
        return t.clone() if backend == "torch" else t.to("cuda", copy=True)
    if isinstance(v, (tuple, list)):
        return type(v)(_to_manual(x, backend) for x in v)
    if isinstance(v, dict):
        return {k: _to_manual(x, backend) for k, x in v.items()}
    return v


def _to_torch(v):
    """A fresh leaf copy for torch's side (batch norm updates its running statistics in place)."""
    if isinstance(v, torch.Tensor):
        return v.detach().clone().requires_grad_(v.requires_grad)
    if isinstance(v, (tuple, list)):
        return type(v)(_to_torch(x) for x in v)
    if isinstance(v, dict):
        return {k: _to_torch(x) for k, x in v.items()}
    return v


def _np(v):
    return v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)


def _seed(*parts):
    return zlib.crc32("/".join(map(str, parts)).encode())


@contextlib.contextmanager
def _seeded(*parts):
    """torch's sample makers draw from the global generator: seeded by the op's name, so that each op gets
    the same samples whichever tests ran before it (or whether xdist split them), and the rest of the
    session's random state is left as it was."""
    with torch.random.fork_rng():
        torch.manual_seed(_seed(*parts))
        yield


@dataclass
class Call:
    """One sample in manual's calling convention: positional args, kwargs, and how torch computes it."""

    args: tuple
    kwargs: dict
    ref: Callable  # (*args, **kwargs) on torch tensors -> output (torch autograd)


def _adapt(op: str, opinfo, s, seed) -> Call:
    """torch's sample (input, *args, **kwargs) as manual's call; the reference is torch's own op."""
    args, kwargs = (s.input, *s.args), dict(s.kwargs)
    ref = opinfo.op
    if op == "embedding":  # torch's OpInfo takes (weight, idx): manual (and F.embedding) take (idx, weight)
        args = (args[1], args[0]) + args[2:]
        ref = torch.nn.functional.embedding
    elif op == "dropout":
        p, training = kwargs.get("p", 0.5), kwargs.get("training", True)
        if training and p > 0:
            # torch draws its keep-mask inside; the same seed on a tensor of ones shows it, and manual
            # gets it as mask= (its way of taking a given mask); the reference is torch's dropout itself
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                keep = torch.nn.functional.dropout(torch.ones_like(s.input, requires_grad=False), p, True) != 0
            kwargs["mask"] = keep

            def ref(input, *a, mask=None, **kw):
                with torch.random.fork_rng():
                    torch.manual_seed(seed)
                    return torch.nn.functional.dropout(input, *a, **kw)
        else:
            ref = torch.nn.functional.dropout
    elif op == "scaled_dot_product_attention" and kwargs.get("dropout_p", 0.0) > 0:
        # torch draws the attention dropout inside; torch's math kernel takes a given keep-mask
        # (aten::_scaled_dot_product_attention_math(..., dropout_mask=)), and so does manual
        q, k = args[0], args[1]
        lead = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], args[2].shape[:-2])
        gen = torch.Generator().manual_seed(seed)
        keep = torch.rand(lead + (q.shape[-2], k.shape[-2]), generator=gen, dtype=torch.float64) >= kwargs["dropout_p"]
        kwargs["dropout_mask"] = keep

        def ref(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, dropout_mask=None):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "Dropout mask should only be used for testing purposes."
                return torch.ops.aten._scaled_dot_product_attention_math(
                    query, key, value, attn_mask, dropout_p, is_causal, dropout_mask, scale=scale)[0]
    return Call(args, kwargs, ref)


def _first(out):
    """max_pool2d(return_indices=True) returns (output, indices): the gradient flows through output."""
    return out[0] if isinstance(out, tuple) else out


@functools.lru_cache(maxsize=None)
def _signature(fn):
    return inspect.signature(fn)


def _bind(fn, args, kwargs) -> dict:
    """name -> value of a call to manual's fn (positional and keyword alike)."""
    return dict(_signature(fn).bind(*args, **kwargs).arguments)


def _close(actual, expected, what):
    torch.testing.assert_close(torch.as_tensor(np.array(actual, order="C")), torch.as_tensor(np.array(expected, order="C")),
                               rtol=RTOL, atol=ATOL, equal_nan=True, msg=lambda m: f"{what}: {m}")


def run_sample(op: str, opinfo, s, index: int, backend: str) -> str:
    """Run one torch sample through manual on `backend`; returns what was checked ("unsupported: ..." or
    "ok"). Raises AssertionError naming op, sample and tensor on any divergence."""
    info = OPS_BY_NAME[op]
    fwd, bwd = getattr(MF, op), getattr(MF, op + "_backward")
    tag = f"{op}[{opinfo.variant_test_name or 'default'} #{index}] on {backend}"  # the test adds s.summary()
    seed = _seed(op, opinfo.variant_test_name, index)
    call = _adapt(op, opinfo, s, seed)
    m_args, m_kwargs = _to_manual(call.args, backend), _to_manual(call.kwargs, backend)

    refused = [u for u in UNSUPPORTED if u.op == op and u.when(s)]
    if refused:
        u = refused[0]
        with pytest.raises(u.exc, match=u.match):
            fwd(*m_args, **m_kwargs)
        return "unsupported: " + u.reason

    # torch: the reference under autograd, on fresh leaf copies
    t_args, t_kwargs = _to_torch(call.args), _to_torch(call.kwargs)
    with torch.enable_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's own notes ("padding='same' with even kernel ...")
        t_out = call.ref(*t_args, **t_kwargs)
    t_named = _bind(fwd, t_args, t_kwargs)
    diff = {n: v for n, v in t_named.items() if isinstance(v, torch.Tensor) and v.requires_grad}

    # manual forward
    m_named = _bind(fwd, m_args, m_kwargs)
    before = {n: np.array(_np(v)) for n, v in m_named.items()
              if isinstance(v, (np.ndarray, torch.Tensor)) and n not in info.mutates}
    m_out = _forward_like(fwd, m_args, m_kwargs, t_out, tag)
    y = _first(m_out)
    expected_type = np.ndarray if backend == "numpy" else torch.Tensor
    assert isinstance(y, expected_type) or (backend == "numpy" and isinstance(y, np.generic)), \
        f"{tag}: expected a {expected_type.__name__}, got {type(y).__name__}"
    if backend == "torch-cuda":
        assert y.device.type == "cuda", f"{tag}: the output left the GPU ({y.device})"
    t_dtype = _first(t_out).dtype  # the input's, or softmax's dtype= when given
    assert str(y.dtype).replace("torch.", "") == str(t_dtype).replace("torch.", ""), \
        f"{tag}: output dtype {y.dtype}, torch's {t_dtype}"
    for n in info.mutates:  # running statistics, updated in place by both
        if t_named.get(n) is not None:
            _close(_np(m_named[n]), _np(t_named[n]), f"{tag}: {n} after the forward")

    if not diff:
        return "ok (no differentiable argument)"
    # backward: the same upstream gradient on both sides
    t_y = _first(t_out)
    g = np.random.default_rng(seed).standard_normal(tuple(t_y.shape))
    t_g = torch.as_tensor(g, dtype=t_y.dtype)
    t_grads = {n: _at_nan_inputs(op, n, e, s)
               for n, e in zip(diff, torch.autograd.grad(t_y, list(diff.values()), t_g, allow_unused=True))}
    m_g = np.asarray(g, dtype=_np(y).dtype) if backend == "numpy" else _to_manual(t_g, backend)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(all="warn", under="ignore"):
            grads = bwd(m_g, *m_args, **m_kwargs)  # the forward's arguments again (dropout: its mask)
    grads = grads if isinstance(grads, tuple) else (grads,)
    named = dict(zip(info.grads, grads))
    for n, e in t_grads.items():
        got = named.get(n)
        if (op, n) in NO_GRAD:
            assert got is None, f"{tag}: grad_{n} is listed in NO_GRAD but manual returned one"
            continue
        assert got is not None, f"{tag}: torch differentiates {n}, manual's backward returned no grad_{n}"
        e = torch.zeros_like(diff[n]) if e is None else e
        _close(_np(got), _np(e), f"{tag}: grad_{n}")
    if info.from_output:  # <op>_backward(g, output=y) too
        extra = {"input_dtype": s.input.dtype} if "dtype" in m_kwargs else {}  # softmax's dtype=: x's dtype
        _close(_np(bwd(m_g, output=y, **m_kwargs, **extra, **_rest_kwargs(fwd, m_args))), _np(t_grads["input"]),
               f"{tag}: grad_input(output=)")
    after = {n: np.array(_np(m_named[n])) for n in before}
    for n in before:
        assert np.array_equal(after[n], before[n], equal_nan=True), f"{tag}: manual changed its argument {n}"
    return "ok"


def _forward_like(fn, args, kwargs, t_out, tag):
    """manual's forward, any overflow or invalid-value warning an error (a divergence too), its output(s)
    compared with torch's t_out; returns manual's output."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(all="warn", under="ignore"):
            m_out = fn(*args, **kwargs)
    if isinstance(t_out, tuple):
        assert isinstance(m_out, tuple) and len(m_out) == len(t_out), f"{tag}: expected a tuple of {len(t_out)}"
        for i, (a, e) in enumerate(zip(m_out, t_out)):
            _close(_np(a), _np(e), f"{tag}: output[{i}]")
    else:
        _close(_np(m_out), _np(t_out), f"{tag}: output")
    return m_out


def _rest_kwargs(fn, args):
    """For backward(g, output=y, ...): the forward's positional args after the input, by name."""
    names = list(_signature(fn).parameters)
    return dict(zip(names[1:], args[1:]))


# -- the tests -------------------------------------------------------------------------------

OPINFOS = [o for o in op_db if o.name in OP_NAMES]
SHARDS = {"nn.functional.max_pool2d": 4}  # 1440 samples (~4 s a backend): split, so that xdist spreads them


def _samples(opinfo):
    return _samples_of(opinfo.name, opinfo.variant_test_name)


@functools.lru_cache(maxsize=None)
def _samples_of(name, variant):
    """torch's samples, made once a process (max_pool2d's 1440 take ~0.5 s); run_sample never writes into them."""
    opinfo = next(o for o in OPINFOS if (o.name, o.variant_test_name) == (name, variant))
    with _seeded(name, variant, "float64"):
        return tuple(opinfo.sample_inputs("cpu", torch.float64, requires_grad=True))


def _op_cases():
    for o in OPINFOS:
        name = o.name + (f".{o.variant_test_name}" if o.variant_test_name else "")
        n = SHARDS.get(o.name, 1)
        for k in range(n):
            yield pytest.param(o, k, n, id=name if n == 1 else f"{name}-{k + 1}of{n}")


def test_every_op_has_torch_samples():
    """Each manual op named above has an OpInfo in this torch's op_db (a renamed one would drop out silently)."""
    assert set(OP_NAMES) <= {o.name for o in OPINFOS}, sorted(set(OP_NAMES) - {o.name for o in OPINFOS})
    assert all(hasattr(MF, op) and hasattr(MF, op + "_backward") for op in OP_NAMES.values())


def test_unsupported_entries_are_used():
    """Every UNSUPPORTED entry still matches a torch sample: the list names only real, current cases."""
    for u in UNSUPPORTED:
        assert any(u.when(s) for o in OPINFOS if OP_NAMES[o.name] == u.op for s in _samples(o)), u


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("opinfo, shard, shards", list(_op_cases()))
def test_torch_sample_inputs(opinfo, shard, shards, backend):
    _run_all(opinfo, _samples(opinfo), shard, shards, backend, run_sample)


def _run_all(opinfo, samples, shard, shards, backend, run, every=1):
    """run(op, opinfo, sample, index, backend) on this shard's samples (every `every`-th)."""
    op = OP_NAMES[opinfo.name]
    _every_case(((f"#{i} {s.summary()}", functools.partial(run, op, opinfo, s, i, backend))
                 for i, s in enumerate(samples) if i % shards == shard and not i % every), "samples", opinfo.name)


def _every_case(cases, what, name):
    """Run every (label, thunk) case, all of them even after a failure; one assertion listing every divergence,
    and one that something ran."""
    failures, outcomes = [], []
    for label, run in cases:
        try:
            outcomes.append(run())
        except Exception as exc:  # noqa: BLE001 - every case runs; all divergences reported together
            failures.append(f"{label}: {type(exc).__name__}: {exc}".replace("\n", " ")[:600])
    assert not failures, (f"{len(failures)} of {len(outcomes) + len(failures)} {what} diverge (the first 12):\n"
                          + "\n".join(failures[:12]))
    assert outcomes, f"{name}: no {what} ran"


# -- float32: as accurate as torch's own float32, against the float64 truth -------------------------
# float32 results of two correct implementations differ by rounding, which grows with the sums
# (a 1.5e-5 absolute difference on a conv2d output of 3.2; 7e-5 on an attention gradient of 30),
# so no fixed tolerance between them is honest. The oracle instead: torch autograd in float64 on the
# same (upcast) sample is the truth, and manual's float32 error against it must not exceed torch's
# own float32 error by more than a factor 4 (plus 8 float32 eps of the tensor's scale, for where
# torch happens to be exact). Dropout samples with p > 0 are left to the float64 test above.
#
# Where torch's float32 is more accurate than float32 arithmetic promises (its CPU norm kernels accumulate
# in float64), the comparison is instead with the problem's own conditioning: the same float64 truth on
# inputs (and upstream gradient) moved by one float32 rounding, x (1 + u eps), u ~ U(-1, 1), twice. An
# algorithm whose result is the exact one for such inputs (backward stable, as float32 sums are) cannot
# do better than that spread; manual must stay within 4x of it. Measured on batch_norm's sample #5 (a
# weight gradient of 1.08 summed from 36 terms of total size 25): torch-f32 2.3e-8, manual-f32 1.1e-6,
# input-rounding spread 4.5e-7 and 5.9e-7 of the largest value (the two probes).
F32_FACTOR, F32_SLACK = 4.0, 8 * float(np.finfo(np.float32).eps)
EPS32 = float(np.finfo(np.float32).eps)


def _to_torch_as(v, dtype, rng=None):
    """_to_torch, floating tensors cast to dtype (a leaf with requires_grad kept); with rng, each floating
    value moved by one float32 rounding, v (1 + u eps32), u ~ U(-1, 1) (the conditioning probe)."""
    if isinstance(v, torch.Tensor):
        t = v.detach().clone()
        t = t.to(dtype) if t.is_floating_point() else t
        if rng is not None and t.is_floating_point():
            t = t * torch.as_tensor(1.0 + EPS32 * rng.uniform(-1.0, 1.0, tuple(t.shape)), dtype=dtype)
        return t.requires_grad_(v.requires_grad)
    if isinstance(v, (tuple, list)):
        return type(v)(_to_torch_as(x, dtype, rng) for x in v)
    if isinstance(v, dict):
        return {k: _to_torch_as(x, dtype, rng) for k, x in v.items()}
    return v


def _rel_err(a, truth):
    """max |a - truth| over the finite entries of truth, in units of max |truth| (NaN/inf must match)."""
    a, t = np.asarray(_np(a), dtype=np.float64), np.asarray(_np(truth), dtype=np.float64)
    fin = np.isfinite(t)
    assert np.array_equal(np.isnan(a), np.isnan(t)) and np.array_equal(a[np.isinf(t)], t[np.isinf(t)])
    if not fin.any():
        return 0.0
    scale = max(float(np.max(np.abs(t[fin]))), 1e-30)
    return float(np.max(np.abs(a[fin] - t[fin]))) / scale


def _spread(probe, truth):
    """_rel_err of a conditioning probe; 0 where moving the inputs by one rounding moved a NaN or an inf."""
    try:
        return _rel_err(probe, truth)
    except AssertionError:
        return 0.0


def run_sample_f32(op: str, opinfo, s, index: int, backend: str) -> str:
    """One float32 torch sample: manual's output and gradients against the float64 truth, no worse than
    torch's float32 ones."""
    info = OPS_BY_NAME[op]
    fwd, bwd = getattr(MF, op), getattr(MF, op + "_backward")
    tag = f"{op}[{opinfo.variant_test_name or 'default'} #{index}, float32] on {backend}"
    if any(u.op == op and u.when(s) for u in UNSUPPORTED) or (op == "dropout" and s.kwargs.get("p", 0.5) > 0
                                                                and s.kwargs.get("training", True)) \
            or s.kwargs.get("dropout_p", 0.0) > 0:
        return "not compared"
    call = _adapt(op, opinfo, s, _seed(op, opinfo.variant_test_name, index))
    outs, grads = {}, {}
    probes = ("rounded-1", "rounded-2")  # the float64 truth on inputs moved by one float32 rounding
    for name, dt in (("truth", torch.float64), ("torch", torch.float32)) + tuple((p, torch.float64) for p in probes):
        rng = np.random.default_rng(_seed(tag, name)) if name in probes else None
        a, kw = _to_torch_as(call.args, dt, rng), _to_torch_as(call.kwargs, dt, rng)
        with torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            outs[name] = call.ref(*a, **kw)
        named = _bind(fwd, a, kw)
        grads[name] = {n: v for n, v in named.items() if isinstance(v, torch.Tensor) and v.requires_grad}
    m_args, m_kwargs = _to_manual(call.args, backend), _to_manual(call.kwargs, backend)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # float32 overflow where torch overflows too
        m_out = fwd(*m_args, **m_kwargs)
    errs = {"output": (_rel_err(_first(m_out), _first(outs["truth"])),
                       _rel_err(_first(outs["torch"]), _first(outs["truth"])),
                       max(_spread(_first(outs[p]), _first(outs["truth"])) for p in probes))}
    if grads["truth"]:
        # the upstream gradient in the output's dtype (float32; float64 for softmax's dtype=float64), the same
        # values on every side
        g32 = torch.as_tensor(np.random.default_rng(_seed(tag)).standard_normal(tuple(_first(outs["torch"]).shape)),
                              dtype=torch.float32).to(_first(outs["torch"]).dtype)
        t_g = {}
        upstream = {"truth": g32.double(), "torch": g32}
        upstream.update({p: _to_torch_as(g32, torch.float64, np.random.default_rng(_seed(tag, p, "g"))) for p in probes})
        for name, gg in upstream.items():
            t_g[name] = {n: _at_nan_inputs(op, n, e, s) for n, e in zip(
                grads[name], torch.autograd.grad(_first(outs[name]), list(grads[name].values()), gg, allow_unused=True))}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            m_grads = bwd(_to_manual(g32, backend), *m_args, **m_kwargs)
        named = dict(zip(info.grads, m_grads if isinstance(m_grads, tuple) else (m_grads,)))
        for n, truth in t_g["truth"].items():
            if (op, n) in NO_GRAD:
                continue
            zero = torch.zeros_like(grads["truth"][n])
            truth = zero if truth is None else truth
            tg = t_g["torch"][n]
            errs[f"grad_{n}"] = (_rel_err(named[n], truth), _rel_err(zero if tg is None else tg, truth),
                                 max(_spread(zero if t_g[p][n] is None else t_g[p][n], truth) for p in probes))
    for what, (e_m, e_t, e_c) in errs.items():
        assert e_m <= F32_FACTOR * max(e_t, e_c) + F32_SLACK, \
            (f"{tag}: {what}: manual's float32 error {e_m:.3g} (of the largest value) against torch's {e_t:.3g} "
             f"and the input-rounding spread {e_c:.3g}")
    return "ok"


@functools.lru_cache(maxsize=None)
def _samples_f32(name, variant):
    opinfo = next(o for o in OPINFOS if (o.name, o.variant_test_name) == (name, variant))
    with _seeded(name, variant, "float32"):
        return tuple(opinfo.sample_inputs("cpu", torch.float32, requires_grad=True))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("opinfo, shard, shards", list(_op_cases()))
def test_torch_sample_inputs_float32_as_accurate_as_torch(opinfo, shard, shards, backend):
    every = 5 if OP_NAMES[opinfo.name] == "max_pool2d" else 1  # max_pool2d: every 5th of its 1440
    _run_all(opinfo, _samples_f32(opinfo.name, opinfo.variant_test_name), shard, shards, backend, run_sample_f32,
             every)


# -- reference_inputs: the larger sets PyTorch checks its own references with ---------------------
# For the OpInfos that define them (relu, elu, sigmoid, tanh, flatten, group_norm here), torch's
# reference_inputs add to the samples large arrays of extremal values (NaN, +-inf, huge and tiny
# numbers, 128 x 128 and non-contiguous): enough elements for torch's vectorized CPU loops, which is
# where elu's backward at NaN differs from its scalar loop (manual follows the vectorized one).
REF_OPINFOS = [o for o in OPINFOS if o.reference_inputs_func is not None]


@functools.lru_cache(maxsize=None)
def _reference_inputs(name, variant, dtype):
    opinfo = next(o for o in OPINFOS if (o.name, o.variant_test_name) == (name, variant))
    with _seeded(name, variant, "reference", dtype):
        return tuple(opinfo.reference_inputs("cpu", getattr(torch, dtype), requires_grad=True))


def test_reference_inputs_cover_more_than_the_samples():
    """The reference sets exist in this torch and add samples (a torch that dropped them would leave the
    test below running the same samples again)."""
    assert {OP_NAMES[o.name] for o in REF_OPINFOS} >= {"relu", "elu", "sigmoid", "tanh"}
    for o in REF_OPINFOS:
        assert len(_reference_inputs(o.name, o.variant_test_name, "float64")) > len(_samples(o)), o.name


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("opinfo", REF_OPINFOS, ids=lambda o: o.name)
def test_torch_reference_inputs(opinfo, backend):
    _run_all(opinfo, _reference_inputs(opinfo.name, opinfo.variant_test_name, "float64"), 0, 1, backend, run_sample)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("opinfo", REF_OPINFOS, ids=lambda o: o.name)
def test_torch_reference_inputs_float32_as_accurate_as_torch(opinfo, backend):
    _run_all(opinfo, _reference_inputs(opinfo.name, opinfo.variant_test_name, "float32"), 0, 1, backend,
             run_sample_f32)


def test_the_float32_oracle_catches_a_float32_sized_error(monkeypatch):
    """A gradient 2e-5 off in relative terms (about 170 float32 eps; torch's own float32 error on the same sample
    is at the eps level) fails the truth-relative check, and the real gradient passes it."""
    opinfo = next(o for o in OPINFOS if o.name == "nn.functional.gelu")
    real = MF.gelu_backward
    monkeypatch.setattr(MF, "gelu_backward", lambda *a, **k: real(*a, **k) * (1 + 2e-5))
    s = _samples_f32(opinfo.name, opinfo.variant_test_name)[1]
    with pytest.raises(AssertionError, match="grad_input: manual's float32 error"):
        run_sample_f32("gelu", opinfo, s, 1, "numpy")
    monkeypatch.setattr(MF, "gelu_backward", real)
    assert run_sample_f32("gelu", opinfo, s, 1, "numpy") == "ok"


# -- modules: torch's module_db ----------------------------------------------------------------

from torch.testing._internal.common_modules import module_db  # noqa: E402

import manual.nn as mnn  # noqa: E402

MODULE_NAMES = ("AdaptiveAvgPool2d", "AvgPool2d", "BatchNorm1d", "BatchNorm2d", "Conv1d", "Conv2d", "ELU", "Linear",
                "MaxPool2d", "MSELoss", "BCEWithLogitsLoss", "CrossEntropyLoss", "GELU", "GroupNorm", "LayerNorm",
                "Embedding", "ReLU", "LeakyReLU", "Sigmoid", "Tanh")
MODULE_INFOS = [m for m in module_db if m.module_cls.__name__ in MODULE_NAMES]

# (module, argument of forward) whose gradient torch computes and manual's backward does not return
MODULE_NO_GRAD = {
    ("CrossEntropyLoss", 1): "a loss's target (class probabilities) is data: backward returns the input's gradient",
}

# (No module input is unsupported: every one of module_db's inputs for these modules is compared.)


def _randomize(module: torch.nn.Module, seed: int):
    """torch's defaults (BatchNorm: w = 1, b = 0, running mean 0, var 1) would hide a misplaced w or b:
    every floating parameter and buffer gets seeded random values (variances positive)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if not t.is_floating_point():
                continue
            r = torch.randn(t.shape, generator=gen, dtype=torch.float64)
            t.copy_(r.abs() + 0.5 if name.endswith("running_var") else r)


def run_module_input(minfo, mi, index: int, training: bool, backend: str) -> str:
    """One of torch's module inputs through the manual twin on `backend`; AssertionError on any divergence."""
    name = minfo.module_cls.__name__
    tag = f"{name}[#{index} {mi.desc!r}, {'train' if training else 'eval'}] on {backend}"
    seed = _seed(name, index, training)
    ctor_args, ctor_kwargs = mi.constructor_input.args, mi.constructor_input.kwargs
    fwd_args, fwd_kwargs = mi.forward_input.args, mi.forward_input.kwargs

    t_mod = minfo.module_cls(*_to_torch(ctor_args), **_to_torch(ctor_kwargs)).to(torch.float64)
    _randomize(t_mod, seed)
    t_mod.train(training)
    m_mod = getattr(mnn, name)(*_to_manual(ctor_args, backend), **_to_manual(ctor_kwargs, backend))
    m_mod.to(device=_device(backend), dtype="float64")
    m_mod.load_state_dict({k: v.detach().clone() for k, v in t_mod.state_dict().items()})
    m_mod.train(training)

    t_args, t_kwargs = _to_torch(fwd_args), _to_torch(fwd_kwargs)
    with torch.enable_grad():
        t_out = t_mod(*t_args, **t_kwargs)
    m_args, m_kwargs = _to_manual(fwd_args, backend), _to_manual(fwd_kwargs, backend)
    _forward_like(m_mod, m_args, m_kwargs, t_out, tag)
    m_state = m_mod.state_dict()
    for k, v in t_mod.state_dict().items():  # running statistics and num_batches_tracked after the forward
        _close(_np(m_state[k]), _np(v), f"{tag}: {k} after the forward")

    t_inputs = {i: a for i, a in enumerate(list(t_args) + list(t_kwargs.values()))
                if isinstance(a, torch.Tensor) and a.requires_grad}
    t_params = dict(t_mod.named_parameters())
    if not t_inputs and not t_params:
        return "ok (no differentiable argument)"
    t_y = _first(t_out)
    g = np.random.default_rng(seed).standard_normal(tuple(t_y.shape))
    t_g = torch.as_tensor(g, dtype=t_y.dtype)
    wrt = list(t_inputs.values()) + list(t_params.values())
    t_grads = torch.autograd.grad(t_y, wrt, t_g, allow_unused=True)
    m_g = np.asarray(g, dtype=np.float64) if backend == "numpy" else _to_manual(t_g, backend)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(all="warn", under="ignore"):
            gi = m_mod.backward(m_g)
    for (i, t_in), e in zip(t_inputs.items(), t_grads):
        if (name, i) in MODULE_NO_GRAD:
            continue
        assert i == 0, f"{tag}: torch differentiates forward argument {i}; manual returns the first one's gradient"
        assert gi is not None, f"{tag}: torch differentiates the input, manual's backward returned None"
        _close(_np(gi), _np(torch.zeros_like(t_in) if e is None else e), f"{tag}: grad_input")
    m_params = dict(m_mod.named_parameters())
    for (pname, p), e in zip(t_params.items(), t_grads[len(t_inputs):]):
        got = m_params[pname].grad
        e = torch.zeros_like(p) if e is None else e
        assert got is not None, f"{tag}: no gradient accumulated in {pname}"
        _close(_np(got), _np(e), f"{tag}: {pname}.grad")
    return "ok"


def _module_cases():
    for m in MODULE_INFOS:
        for training in ((True, False) if m.train_and_eval_differ else (True,)):
            yield pytest.param(m, training, id=f"{m.module_cls.__name__}-{'train' if training else 'eval'}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("minfo, training", list(_module_cases()))
def test_torch_module_inputs(minfo, training, backend):
    with _seeded(minfo.module_cls.__name__, training):
        inputs = list(minfo.module_inputs_func(minfo, device="cpu", dtype=torch.float64, requires_grad=True,
                                               training=training))
    _every_case(((f"#{i}", functools.partial(run_module_input, minfo, mi, i, training, backend))
                 for i, mi in enumerate(inputs) if mi.forward_input is not None), "module inputs",
                minfo.module_cls.__name__)


# -- torch's own bad input: error_inputs (OpInfo) and module_error_inputs_func (ModuleInfo) -----------
# Every input torch's tests expect torch to refuse, manual must refuse too: an exception of one of the
# kinds a caller can catch (ValueError, TypeError, IndexError, RuntimeError) whose message says what was
# expected (manual's convention: what was expected and what came).
REFUSALS = (ValueError, TypeError, IndexError, RuntimeError)
ERROR_OPINFOS = [o for o in OPINFOS if o.error_inputs_func is not None]
ERROR_MODULE_INFOS = [m for m in MODULE_INFOS if getattr(m, "module_error_inputs_func", None) is not None]


def _refused(tag, fn):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fn()
        except REFUSALS as exc:
            assert "expected" in str(exc), f"{tag}: refused without saying what was expected: {exc}"
            return "refused"
    raise AssertionError(f"{tag}: accepted an input torch refuses")


def test_torch_error_inputs_exist():
    """This torch still has error inputs for the ops and modules below (conv, pooling, norms, embedding, CE)."""
    assert {OP_NAMES[o.name] for o in ERROR_OPINFOS} >= {"conv1d", "conv2d", "max_pool2d", "avg_pool2d"}
    modules = {"BatchNorm1d", "GroupNorm"}
    if tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 13):
        modules |= {"CrossEntropyLoss", "Embedding"}  # 2.11's module_db has no error inputs for these two
    assert {m.module_cls.__name__ for m in ERROR_MODULE_INFOS} >= modules


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("opinfo", ERROR_OPINFOS, ids=lambda o: o.name)
def test_torch_error_inputs_are_refused(opinfo, backend):
    op = OP_NAMES[opinfo.name]
    cases = list(opinfo.error_inputs("cpu"))

    def run(i, ei):
        call = _adapt(op, opinfo, ei.sample_input, i)
        args, kwargs = _to_manual(call.args, backend), _to_manual(call.kwargs, backend)
        return _refused(f"{op} error input #{i} ({ei.error_regex!r})", lambda: getattr(MF, op)(*args, **kwargs))

    _every_case(((f"#{i}", functools.partial(run, i, ei)) for i, ei in enumerate(cases)), "error inputs", op)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("minfo", ERROR_MODULE_INFOS, ids=lambda m: m.module_cls.__name__)
def test_torch_module_error_inputs_are_refused(minfo, backend):
    """Refused at construction or at the forward (torch's ModuleErrorEnum says which; manual may refuse
    a bad argument earlier than torch does, never later than the forward). In training mode: torch's
    lists do not depend on the mode, and some are errors in training only (BatchNorm's eps = 0)."""
    name = minfo.module_cls.__name__
    training = True
    cases = list(minfo.module_error_inputs_func(minfo, "cpu", torch.float64, False, training=training))

    def run(i, ei):
        mi = ei.module_error_input

        def call():
            mod = getattr(mnn, name)(*_to_manual(mi.constructor_input.args, backend),
                                     **_to_manual(mi.constructor_input.kwargs, backend))
            mod.to(device=_device(backend), dtype="float64")
            mod.train(training)
            mod(*_to_manual(mi.forward_input.args, backend), **_to_manual(mi.forward_input.kwargs, backend))

        return _refused(f"{name} error input #{i} ({ei.error_regex!r})", call)

    _every_case(((f"#{i}", functools.partial(run, i, ei)) for i, ei in enumerate(cases)), "error inputs", name)
