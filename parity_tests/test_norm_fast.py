"""The fast normalization backwards (issue 9) against the reference expression they replace.

`_norm_backward_channel` (batch norm: w constant over the normalised set, the sums shared with
dw and db) and `_norm_backward_rows` (layer norm: the row means as matrix-vector products with
w / D) compute the same dx = rstd (gh - mean(gh) - xhat mean(gh xhat)) as `_norm_backward`, with
the sums taken in another order. They agree to a rounding bound, not bit for bit:

    |dx_fast - dx_ref| <= 4 M eps rstd max|gh| (1 + max|xhat|^2)

(M values summed per mean; each sum of M terms is off by at most ~M eps of the sum of their
magnitudes, and the terms are bounded by max|gh| and max|gh| max|xhat|^2). What is bit for bit:
the in-place steps (xhat in x - mu's own temporary, out += b in the product's, the running
statistics), checked below, and that no argument is ever written.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

import manual
from manual import _backend as B
from manual.functional import normalization as N

BACKENDS = ["numpy", "cpu"]
DTYPES = ["float64", "float32"]


def _dev(backend):
    return None if backend == "numpy" else backend


def _np(a):
    return B.to_numpy(a).astype(np.float64)


def _bound(dtype, m, rstd, gh, xhat):
    eps = np.finfo(np.float32 if dtype == "float32" else np.float64).eps
    return 4 * m * eps * float(np.max(_np(rstd), initial=0.0)) * float(np.max(np.abs(_np(gh)), initial=0.0)) * (
        1 + float(np.max(np.abs(_np(xhat)), initial=0.0)) ** 2)


def _assert_within(fast, ref, bound):
    diff = float(np.max(np.abs(_np(fast) - _np(ref)), initial=0.0))
    assert np.all(np.isfinite(_np(fast))) or not np.all(np.isfinite(_np(ref)))
    assert diff <= bound, f"max |fast - ref| = {diff:.3g} > bound {bound:.3g}"


def _inputs(rng, shape, backend, dtype, constant=None):
    x = rng.normal(size=shape) * 2 + 0.5
    if constant is not None:
        x[constant] = -0.4  # variance 0 in that row / channel: rstd = 1/sqrt(eps) ~ 316
    g = rng.normal(size=shape)
    return B.place(x, _dev(backend), dtype), B.place(g, _dev(backend), dtype)


BN_CASES = [((6, 3), None), ((4, 3, 5), None), ((2, 3, 4, 5), None), ((2, 3), None),
            ((5, 3), (slice(None), 1))]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape, constant", BN_CASES)
def test_channel_backward_matches_reference(shape, constant, affine, dtype, backend):
    rng = np.random.default_rng(0)
    x, g = _inputs(rng, shape, backend, dtype, constant)
    xp = B.namespace(x)
    nd, c = len(shape), shape[1]
    axes = (0,) + tuple(range(2, nd))
    m = int(np.prod(shape)) // c
    w = N._channel_view(xp, B.place(rng.normal(size=c), _dev(backend), dtype), nd) if affine else None
    xhat, rstd = N._stats(xp, x, axes, 1e-5)
    gh = g if w is None else g * w
    ref = N._norm_backward(xp, gh, xhat, rstd, axes)
    sum_g = xp.sum(g, axis=axes, keepdims=True)
    sum_gxhat = xp.sum(g * xhat, axis=axes, keepdims=True)
    fast = N._norm_backward_channel(g, w, xhat, rstd, sum_g, sum_gxhat, m)
    assert fast.dtype == x.dtype and tuple(fast.shape) == shape
    _assert_within(fast, ref, _bound(dtype, m, rstd, gh, xhat))


LN_CASES = [((4, 6), 1, None), ((2, 3, 4), 2, None), ((1, 7), 1, None), ((3, 5), 1, 1), ((2, 2, 5), 1, None),
            ((0, 4), 1, None), ((256, 256), 1, None)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape, k, constant", LN_CASES)
def test_rows_backward_matches_reference(shape, k, constant, affine, dtype, backend):
    rng = np.random.default_rng(1)
    x, g = _inputs(rng, shape, backend, dtype, constant)
    xp = B.namespace(x)
    axes = tuple(range(len(shape) - k, len(shape)))
    d = int(np.prod(shape[len(shape) - k:]))
    w = B.place(rng.normal(size=shape[len(shape) - k:]), _dev(backend), dtype) if affine else None
    xhat, rstd = N._stats(xp, x, axes, 1e-5)
    gh = g if w is None else g * w
    ref = N._norm_backward(xp, gh, xhat, rstd, axes)
    fast = N._norm_backward_rows(xp, g, w, xhat, rstd, g * xhat, k)
    assert fast.dtype == x.dtype and tuple(fast.shape) == shape
    _assert_within(fast, ref, _bound(dtype, d, rstd, gh, xhat))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_in_place_steps_are_bit_for_bit(dtype, backend):
    """xhat made in x - mu's temporary, out += b in the product's, the running statistics in place:
    the same roundings as the expressions they replace. On torch tensors rstd is torch.rsqrt and
    xhat w + b one addcmul, which may round differently from 1 / sqrt and a product then a sum (measured:
    1 ulp): there, within 4 eps (relative, and absolute where the sum cancels); on NumPy, bit for bit."""
    rng = np.random.default_rng(2)
    x, _ = _inputs(rng, (8, 5), backend, dtype)
    xp = B.namespace(x)
    eps = float(np.finfo(dtype).eps)  # the values are of order 1: 4 eps absolute too (w xhat + b may cancel)
    same = np.testing.assert_array_equal if backend == "numpy" else functools.partial(
        np.testing.assert_allclose, rtol=4 * eps, atol=4 * eps)
    mu = xp.mean(x, axis=(1,), keepdims=True)
    xc = x - mu
    rstd = 1.0 / xp.sqrt(xp.mean(xc * xc, axis=(1,), keepdims=True) + 1e-5)
    xhat, rstd2 = N._stats(xp, x, (1,), 1e-5)
    same(B.to_numpy(xhat), B.to_numpy(xc * rstd))
    same(B.to_numpy(rstd2), B.to_numpy(rstd))
    w, b = (B.place(rng.normal(size=5), _dev(backend), dtype) for _ in range(2))
    for ww, bb in ((w, b), (None, b), (w, None)):
        want = xhat if ww is None else xhat * ww
        want = want if bb is None else want + bb
        same(B.to_numpy(N._affine(xhat, ww, bb)), B.to_numpy(want))
    np.testing.assert_array_equal(B.to_numpy(xhat), B.to_numpy(xc * rstd))  # _affine left xhat alone
    rm, v = (B.place(rng.normal(size=5), _dev(backend), dtype) for _ in range(2))
    want = (1.0 - 0.1) * rm + 0.1 * v
    N._update_running(rm, v, 0.1)
    np.testing.assert_array_equal(B.to_numpy(rm), B.to_numpy(want))


def _snapshot(args):
    return [None if a is None else B.to_numpy(a).copy() for a in args]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_functional_ops_never_write_their_arguments(dtype, backend):
    rng = np.random.default_rng(3)
    P = lambda a: B.place(a, _dev(backend), dtype)  # noqa: E731
    x, g = P(rng.normal(size=(6, 4))), P(rng.normal(size=(6, 4)))
    w, b = P(rng.normal(size=4)), P(rng.normal(size=4))
    rm, rv = P(rng.normal(size=4)), P(rng.uniform(0.5, 2, size=4))
    calls = [
        lambda: N.layer_norm(x, (4,), w, b), lambda: N.layer_norm(x, (4,)),
        lambda: N.layer_norm_backward(g, x, (4,), w, b), lambda: N.layer_norm_backward(g, x, (4,)),
        lambda: N.batch_norm_backward(g, x, rm, rv, w, b, training=True),
        lambda: N.batch_norm_backward(g, x, rm, rv, None, None, training=True),
        lambda: N.batch_norm_backward(g, x, rm, rv, w, b, training=False),
        lambda: N.batch_norm(x, rm, rv, w, b, training=False), lambda: N.batch_norm(x, None, None, w, b, training=True),
    ]
    for call in calls:
        before = _snapshot((x, g, w, b, rm, rv))
        call()
        for a, s in zip(_snapshot((x, g, w, b, rm, rv)), before):
            np.testing.assert_array_equal(a, s)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls", ["LayerNorm", "BatchNorm1d"])
def test_modules_match_reference_backward(cls, dtype, backend):
    """The modules' backward (saved xhat, rstd; the fast forms) against _norm_backward on the same forward."""
    rng = np.random.default_rng(4)
    x, g = _inputs(rng, (16, 8), backend, dtype)
    m = getattr(manual.nn, cls)(8, device=_dev(backend), dtype=dtype)
    B.fill_(m.weight.data, rng.normal(size=8))
    B.fill_(m.bias.data, rng.normal(size=8))
    xp = B.namespace(x)
    axes = (1,) if cls == "LayerNorm" else (0,)
    xhat, rstd = N._stats(xp, x, axes, m.eps)
    w = m.weight.data if cls == "LayerNorm" else N._channel_view(xp, m.weight.data, 2)
    m(x)
    got = m.backward(g)
    _assert_within(got, N._norm_backward(xp, g * w, xhat, rstd, axes), _bound(dtype, 16 if axes == (0,) else 8,
                                                                             rstd, g * w, xhat))
    np.testing.assert_allclose(_np(m.weight.grad), _np(xp.sum(g * xhat, axis=(0,))),
                               rtol=0, atol=_bound(dtype, 16, rstd, g, xhat))
    np.testing.assert_allclose(_np(m.bias.grad), _np(xp.sum(g, axis=(0,))), rtol=0, atol=_bound(dtype, 16, rstd, g, xhat))
