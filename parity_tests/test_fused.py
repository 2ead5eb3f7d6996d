"""The fused and in-place paths (issue 12) equal the plain expressions they stand for, bit for bit.

manual.functional keeps the readable expression as the reference; where a backend has one kernel
for it (torch's aten.threshold_backward), or where a module can skip re-validating what its
forward validated (CrossEntropyLoss's common case), the fast path must give the same bits:
the expected values come from the reference expression, on the same inputs, including the
values where the two could part (NaN, +-0, +-inf inputs; ignored targets, ignore_index that is a
real class, every target ignored).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from manual import _backend as B
from manual import nn
from manual.functional import activations as A
from manual.functional import cross_entropy, cross_entropy_backward, relu_backward


def _bits_equal(a, b):
    a, b = B.to_numpy(a), B.to_numpy(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes(), f"max |diff| {np.max(np.abs(a.astype(float) - b.astype(float)))}"


SPECIAL = [0.0, -0.0, np.nan, np.inf, -np.inf, 1e-45, -1e-45, 3.0, -3.0]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(), (7,), (4, 9), (2, 3, 5), (3, 5, 70000)])  # the last: NumPy in 5 pieces
def test_relu_backward_threshold_kernel_equals_the_where_expression(dtype, shape):
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape)
    g = rng.normal(size=shape)
    if x.size:  # the values where `x <= 0` could be read differently, and gradients that are not finite
        flat_x, flat_g = x.reshape(-1), g.reshape(-1)
        k = min(len(SPECIAL), flat_x.size)
        flat_x[:k] = SPECIAL[:k]
        flat_g[-k:] = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 2.0, 5.0][:k]
        x, g = flat_x.reshape(shape), flat_g.reshape(shape)
    xt, gt = (torch.as_tensor(a, dtype=getattr(torch, dtype)) for a in (x, g))
    _bits_equal(relu_backward(gt, xt), A._relu_backward_plain(gt, xt))
    xn, gn = x.astype(dtype), g.astype(dtype)  # NumPy: the select on the bits, against np.where
    _bits_equal(relu_backward(gn, xn), A._relu_backward_plain(gn, xn))
    _bits_equal(relu_backward(gn, xn), relu_backward(gt, xt))  # and the two backends agree, +0 and NaN included
    _bits_equal(relu_backward(gn, output=np.maximum(xn, 0)), A._relu_backward_plain(gn, xn))


@pytest.mark.parametrize("shape", [(6, 8), (3, 40000)])
def test_relu_backward_numpy_keeps_strided_and_big_endian_inputs(shape):
    rng = np.random.default_rng(3)
    x, g = rng.normal(size=shape), rng.normal(size=shape)
    xs, gs = x[:, ::2], g.T[::2, :].T  # non-contiguous views
    _bits_equal(relu_backward(gs, xs), A._relu_backward_plain(gs, xs))
    xb, gb = x.astype(">f8"), g.astype(">f8")
    got = relu_backward(gb, xb)
    np.testing.assert_array_equal(got, np.where(x <= 0, 0.0, g))


def _gelu_inputs(backend, dtype, shape, contiguous):
    rng = np.random.default_rng(4)
    x = np.asarray(rng.normal(size=shape) * 3)
    g = np.asarray(rng.normal(size=shape))
    if x.size:
        flat = x.reshape(-1)
        k = min(flat.size, 10)
        flat[:k] = [0.0, -0.0, np.nan, np.inf, -np.inf, 1e-45, -40.0, 40.0, 3e38, -3e38][:k]
    x, g = x.astype(dtype), g.astype(dtype)
    if not contiguous:
        x, g = x.T, g.T
    if backend == "torch":
        x, g = torch.as_tensor(x), torch.as_tensor(g)
    return x, g


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape,contiguous", [((), True), ((7,), True), ((4, 9), True), ((4, 9), False),
                                              ((3, 5, 70000), True)])
@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")  # x = 3e38: x * x overflows, as in the plain form
def test_gelu_in_place_paths_equal_the_plain_expressions(backend, dtype, shape, contiguous):
    """B.gelu_erf / B.gelu_backward_erf write their temporaries in place (the GELU module and F.gelu use them):
    the same bits as A._gelu_erf / A._gelu_backward_erf, the readable expressions, including NaN, +-0, +-inf,
    a subnormal, huge values and a float32 array larger than the erf's chunk and B.PIECE (4 pieces)."""
    x, g = _gelu_inputs(backend, dtype, shape, contiguous)
    xp = B.namespace(x)
    x0 = B.to_numpy(x).copy()
    out, e = B.gelu_erf(x)
    ref_out, ref_e = A._gelu_erf(x)
    _bits_equal(out, ref_out)
    _bits_equal(e, ref_e)
    _bits_equal(B.gelu_backward_erf(g, x, e), A._gelu_backward_erf(g, x, ref_e, xp))
    # without the kept erf: recomputed, PIECE elements at a time on the large contiguous shape
    out2, none = B.gelu_erf(x, keep_erf=False)
    assert none is None
    _bits_equal(out2, ref_out)
    _bits_equal(B.gelu_backward_erf(g, x), A._gelu_backward_erf(g, x, ref_e, xp))
    # the GELU module hands over its kept erf, which becomes the result (NumPy)
    e_copy = e + 0.0
    got = B.gelu_backward_erf(g, x, e_copy, reuse_e=True)
    _bits_equal(got, A._gelu_backward_erf(g, x, ref_e, xp))
    assert backend == "torch" or shape == () or got is e_copy
    assert B.to_numpy(x).tobytes() == x0.tobytes()  # the input is never written


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_erf_out_writes_into_the_given_array(dtype):
    rng = np.random.default_rng(5)
    x = (rng.normal(size=(300, 301)) * 2).astype(dtype)
    ref = B.erf(x)
    buf = x.copy()
    assert B.erf(buf, out=buf) is buf  # in place
    _bits_equal(buf, ref)
    other = np.empty((301, 300), dtype).T  # not contiguous: the result is copied in
    assert B.erf(x, out=other) is other
    _bits_equal(np.ascontiguousarray(other), ref)


def _ce_case(backend, dtype, ignore_index, ignored):
    rng = np.random.default_rng(1)
    n, c = 13, 5
    x = rng.normal(size=(n, c)) * 3
    y = rng.integers(0, c, size=n)
    if ignored == "some":
        y[[1, 4, 5]] = ignore_index
    elif ignored == "all":
        y[:] = ignore_index
    if backend == "torch":
        return torch.as_tensor(x, dtype=getattr(torch, dtype)), torch.as_tensor(y)
    return x.astype(dtype), y


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("ignore_index,ignored", [(-100, "none"), (-100, "some"), (2, "some"), (2, "none"),
                                                  (-100, "all")])
def test_cross_entropy_common_case_equals_the_general_path_to_rounding(backend, dtype, ignore_index, ignored):
    """CrossEntropyLoss's common case (index targets, no weight, no smoothing, mean) keeps logp and gathers
    instead of the general path's one-hot products: the loss and the gradient equal cross_entropy /
    cross_entropy_backward's to a few ulps (not bit for bit: p = exp(logp) here, exp(x - m) / z there); ignored
    rows get exactly +0, every row ignored gives a NaN loss and a zero gradient, as the general path."""
    x, y = _ce_case(backend, dtype, ignore_index, ignored)
    xp = B.namespace(x)
    one = xp.ones((), dtype=x.dtype, device=x.device) if backend == "torch" else np.ones((), dtype)
    ref_loss = B.to_numpy(cross_entropy(x, y, ignore_index=ignore_index))
    ref = B.to_numpy(cross_entropy_backward(one, x, y, ignore_index=ignore_index))
    crit = nn.CrossEntropyLoss(ignore_index=ignore_index)
    loss = crit(x, y)
    assert crit._fast  # the common-case path was taken
    got = B.to_numpy(crit.backward())
    eps = np.finfo(dtype).eps
    if ignored == "all":
        assert np.isnan(B.to_numpy(loss)) and np.isnan(ref_loss)
    else:
        np.testing.assert_allclose(B.to_numpy(loss), ref_loss, rtol=8 * eps, atol=0)
    np.testing.assert_allclose(got, ref, rtol=0, atol=8 * eps * np.max(np.abs(ref), initial=0.0) + 1e-300)
    rows = B.to_numpy(y) == ignore_index
    assert not np.signbit(got[rows]).any() and (got[rows] == 0).all()  # +0 on ignored rows
    with pytest.raises(RuntimeError):  # one backward per forward
        crit.backward()


def test_cross_entropy_common_case_with_a_seed_and_out_of_case_inputs():
    x, y = _ce_case("numpy", "float64", -100, "some")
    crit = nn.CrossEntropyLoss()
    crit(x, y)
    np.testing.assert_allclose(crit.backward(np.asarray(2.5)),
                               2.5 * cross_entropy_backward(np.ones(()), x, y), rtol=1e-15, atol=1e-17)
    crit(x, y)
    with pytest.raises(ValueError, match="grad_output"):
        crit.backward(np.ones(3))
    bad = y.copy()
    bad[0] = 5  # out of range: the full check's message
    with pytest.raises(IndexError, match=r"expected class indices in \[0, 5\) or ignore_index=-100, got 5"):
        crit(x, bad)
    crit(x[0], y[0])  # a single (C,) row: the general path
    assert not crit._fast
    crit(x[:0], y[:0])  # an empty batch: the general path
    assert not crit._fast


@pytest.mark.parametrize("kwargs", [dict(label_smoothing=0.1), dict(reduction="sum"),
                                    dict(weight=np.array([0.5, 1.0, 2.0, 1.0, 0.25]))])
def test_cross_entropy_module_outside_the_common_case_takes_the_general_backward(kwargs):
    x, y = _ce_case("numpy", "float64", -100, "some")
    crit = nn.CrossEntropyLoss(**kwargs)
    crit(x, y)
    got = crit.backward()
    one = np.ones((), "float64")
    _bits_equal(got, cross_entropy_backward(one, x, y, **kwargs))
    with pytest.raises(RuntimeError):  # one backward per forward, on both paths
        crit.backward()


def test_cross_entropy_common_case_keeps_the_one_backward_contract():
    x, y = _ce_case("numpy", "float64", -100, "none")
    crit = nn.CrossEntropyLoss()
    crit(x, y)
    crit.backward()
    with pytest.raises(RuntimeError):
        crit.backward()


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("shape", [(64, 33), (1000, 300), (B.UPDATE_CHUNK + 5,)])
def test_sgd_update_in_place_equals_the_plain_expression(backend, shape):
    """B.sub_scaled_ (SGD's d -= lr * x) updates in place, piece by piece for a parameter larger than
    UPDATE_CHUNK (no parameter-sized temporary), with the same bits as the plain expression."""
    rng = np.random.default_rng(2)
    d0, x = rng.normal(size=shape).astype("float32"), rng.normal(size=shape).astype("float32")
    lr = 0.37
    ref = d0 - lr * x
    d = d0.copy() if backend == "numpy" else torch.as_tensor(d0).clone()
    out = B.sub_scaled_(d, lr, x if backend == "numpy" else torch.as_tensor(x))
    assert out is d
    _bits_equal(d, ref)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_sgd_update_of_many_parameters_equals_the_plain_expression(backend):
    """B.sub_scaled_all_ (SGD's step over a group: torch's foreach kernels for the small parameters, piece by
    piece for a large one) gives each parameter the bits of d - lr * x."""
    rng = np.random.default_rng(6)
    shapes = [(3,), (16, 2), (), (B.UPDATE_CHUNK + 7,), (5, 5), (1,)]
    d0 = [rng.normal(size=s).astype("float32") for s in shapes]
    xs = [rng.normal(size=s).astype("float32") for s in shapes]
    lr = 0.1
    refs = [d - lr * x for d, x in zip(d0, xs)]
    conv = (lambda a: a.copy()) if backend == "numpy" else (lambda a: torch.as_tensor(a).clone())
    ds = [conv(d) for d in d0]
    B.sub_scaled_all_(ds, lr, [conv(x) for x in xs])
    for d, ref in zip(ds, refs):
        _bits_equal(d, np.asarray(ref))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(1, 1, 1), (5, 3, 4), (64, 256, 128), (2048, 256, 768)])
def test_addmm_equals_matmul_plus_bias_to_rounding(dtype, shape):
    """The torch Linear forward's addmm against x @ W.T + b: the same sum of in + 1 terms, in another order at
    most, so both within the textbook bound of a summation of in + 1 terms, (in + 1) eps * (sum |x_k w_k| + |b|),
    of the exact (float64-accumulated) value; a wrong bias, a transposed W or a dropped term is off by O(1)."""
    from manual.functional.linear import _linear

    n, i, o = shape
    rng = np.random.default_rng(8)
    x, w, b = (torch.as_tensor(rng.normal(size=s), dtype=getattr(torch, dtype)) for s in ((n, i), (o, i), (o,)))
    got = _linear(x, w, b)
    plain = x @ w.T + b
    scale = (x.abs() @ w.abs().T + b.abs()).double()
    bound = (i + 1) * torch.finfo(x.dtype).eps * scale
    exact = x.double() @ w.double().T + b.double()  # float32: exact products, float64 sums (2^-29 relative)
    for y in (got, plain):
        err = (y.double() - exact).abs()
        assert bool((err <= bound).all()), float((err / scale).max())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape,m_shape", [((256, 256), (256, 1)), ((256, 256), (1, 256)), ((300, 257), (300, 1)),
                                           ((5, 64, 130), (5, 64, 1)), ((5, 64, 130), (1, 64, 1)),
                                           ((3, 70000), (70000,)), ((40000,), (1,)), ((40000,), ()), ((7, 3), (7, 1))])
def test_sub_mul_in_blocks_equals_the_whole_expression(dtype, shape, m_shape):
    """B.sub_mul_ (the norms' dx -= xhat * stat) takes NumPy's product a block of rows at a time when d is
    larger than B.SUB_PIECE: the same bits as d - a * m, whatever the broadcast of m; torch's addcmul_ is
    checked against the same expression to rounding (it may fuse the multiply and the subtraction)."""
    rng = np.random.default_rng(5)
    d, a = rng.normal(size=shape).astype(dtype), rng.normal(size=shape).astype(dtype)
    m = np.asarray(rng.normal(size=m_shape)).astype(dtype)
    want = d - a * m
    got = B.sub_mul_(d.copy(), a, m)
    _bits_equal(got, want)
    _bits_equal(B.sub_mul_(d.copy(), a.T.copy().T, m), want)  # a of another layout
    t = B.sub_mul_(torch.from_numpy(d.copy()), torch.from_numpy(a), torch.from_numpy(m))
    np.testing.assert_allclose(t.numpy(), want, rtol=1e-6 if dtype == "float32" else 1e-14, atol=1e-6)


@pytest.mark.parametrize("backend", ["numpy", "torch", pytest.param("torch-cuda", marks=[
    pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to torch")])])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("L_,S_", [(7, 7), (4, 9), (9, 4), (3, 3)])
def test_exp_causal_equals_exp_of_the_masked_scores(backend, dtype, L_, S_):
    """B.exp_causal_ (causal attention's exp, no exp of the masked -inf nor of a score whose exp is subnormal), on
    scores shifted by their row's maximum as attention's are: exactly 0 above the diagonal, the same bits as the
    backend's exp where the score is at least the floor, and exp(floor), a normal number below e^2 tiny,
    where it is lower (-200 and -1000 below the row's maximum: exp gives a subnormal or 0 there; NumPy
    float32 and CUDA keep that plain exp); the
    softmax built from it equals the plain one to rounding."""
    rng = np.random.default_rng(4)
    s = rng.standard_normal((2, 3, L_, S_)) * 4
    above = np.triu(np.ones((L_, S_), bool), 1)
    s[..., above] = -np.inf
    s -= s.max(-1, keepdims=True)
    s[..., 2, 0] = -200.0  # below float32's floor (about -86); row 2 keeps 3 keys, so its maximum stays
    s[..., 2, 1] = -1000.0  # below float64's floor (about -707)
    s[..., 2, 2] = 0.0
    dev = {"numpy": "numpy", "torch": "cpu", "torch-cuda": "cuda"}[backend]
    got = B.to_numpy(B.exp_causal_(B.place(s.copy(), dev, dtype)))
    plain = B.to_numpy(B.exp_(B.place(s.copy(), dev, dtype)))  # place may return s itself
    floor = B._EXP_FLOOR[dtype]
    assert np.all(got[..., above] == 0)
    low = (s.astype(dtype) < floor) & ~above
    kept = ~low & ~above
    assert got[kept].tobytes() == plain[kept].tobytes()
    tiny = np.finfo(dtype).tiny
    assert low.any() and np.all(got[low] < tiny * np.e ** 2) and np.all(got[low] >= 0)
    if backend == "torch" or dtype == "float64" and backend == "numpy":  # else the plain exp: 0 or subnormal
        assert np.all(got[low] == B.to_numpy(B.exp_(B.place(np.full(1, floor), dev, dtype)))[0])
    np.testing.assert_allclose(got / got.sum(-1, keepdims=True), plain / plain.sum(-1, keepdims=True),
                               rtol=1e-6 if dtype == "float32" else 1e-14, atol=tiny * 8)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_scaled_scores_equal_the_product_scaled_plus_the_mask(backend, dtype):
    """B.scaled_scores (torch: one baddbmm with the scale and the causal bias inside) equals q k^T, times the
    scale, plus the bias, to rounding, with -inf exactly where the bias has it; leading dims kept."""
    from manual.functional.attention import _causal_bias

    rng = np.random.default_rng(6)
    dev = "numpy" if backend == "numpy" else "cpu"
    q, k = (B.place(rng.standard_normal((2, 3, 7, 5)), dev, dtype) for _ in range(2))
    bias = _causal_bias(B.namespace(q), 7, 7, q)
    got = B.to_numpy(B.scaled_scores(q, k, 0.37, bias))
    qn, kn = B.to_numpy(q).astype(np.float64), B.to_numpy(k).astype(np.float64)
    want = qn @ np.swapaxes(kn, -1, -2) * 0.37 + B.to_numpy(bias)
    assert got.shape == (2, 3, 7, 7) and got.dtype == np.dtype(dtype)
    assert np.array_equal(np.isneginf(got), np.isneginf(want))
    keep = ~np.isneginf(want)
    f32 = dtype == "float32"  # sums of 5 products of O(1) values, then one scale: a few ulp
    np.testing.assert_allclose(got[keep], want[keep], rtol=1e-5 if f32 else 1e-13, atol=1e-6 if f32 else 1e-14)
