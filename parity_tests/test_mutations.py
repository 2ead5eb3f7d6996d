"""Tests that prove the tests work: a deliberately wrong derivative must make the suite fail.

Each mutant is passed to check_op as `backward=`; the result must not pass and assert_close must
raise, naming the op. The mutants are small on purpose (a relative error of 1e-4, the wrong
convention at one kink): if the tolerances were loose enough to let them through, this fails.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import test_contracts as contracts
from conftest import DTYPES
from torch.testing import assert_close

import manual.functional as MF
from manual import _backend as B
from manual.functional import attention as A
from manual.functional import normalization as N
from experiments.parity import FD_TOL, check_model, check_op, finite_diff, mlp_case, run_manual
from manual import nn
from torch_ref.opinfo import OPS_BY_NAME, samples

CPU = ["numpy", "torch-cpu"]


def _scaled(fn, factor, which=None):
    """fn's result times `factor` (only the tuple entry `which`, if given)."""
    def wrong(*a, **k):
        r = fn(*a, **k)
        if which is None:
            return r * factor
        return tuple(x * factor if i == which else x for i, x in enumerate(r))
    return wrong


# -- the bugs people write in normalization, dropout and embedding backwards ----------------------

def _ln_without_xhat_term(g, x, shape, w=None, b=None, eps=1e-5):
    """Layer norm's dx without the - xhat mean(gh xhat) term (the variance treated as a constant)."""
    _, gw, gb = MF.layer_norm_backward(g, x, shape, w, b, eps)
    xp = B.namespace(x)
    axes = tuple(range(x.ndim - len(tuple(shape)), x.ndim))
    _, rstd = N._stats(xp, x, axes, eps)
    gh = g if w is None else g * w
    return rstd * (gh - xp.mean(gh, axis=axes, keepdims=True)), gw, gb


def _bn_stats_as_constants(g, x, rm, rv, w=None, b=None, training=False, momentum=0.1, eps=1e-5):
    """Training batch norm's dx = g w rstd: the batch mean and variance treated as constants."""
    gi, _, _, gw, gb = MF.batch_norm_backward(g, x, rm, rv, w, b, training, momentum, eps)
    xp = B.namespace(x)
    _, rstd = N._stats(xp, x, (0,) + tuple(range(2, x.ndim)), eps)
    return g * N._channel_view(xp, w, x.ndim) * rstd, None, None, gw, gb


def _embedding_assign(g, idx, w, padding_idx=None):
    """grad_weight[idx] = g (last write wins) instead of a scatter-add over repeated indices."""
    xp = B.namespace(g)
    gw = xp.zeros_like(w)
    gw[xp.reshape(idx, (-1,))] = xp.reshape(g, (-1, w.shape[1]))
    return None, gw


NORM_MUTANTS = {
    "layer_norm without the xhat term": ("layer_norm", "2d", _ln_without_xhat_term),
    "layer_norm grad_input 1e-4": ("layer_norm", "3d-last2", _scaled(MF.layer_norm_backward, 1 + 1e-4, which=0)),
    "batch_norm stats as constants": ("batch_norm", "2d-train", _bn_stats_as_constants),
    "batch_norm eval with batch stats": ("batch_norm", "1d-eval",
                                         lambda g, x, rm, rv, w, b, training: MF.batch_norm_backward(
                                             g, x, rm, rv, w, b, training=True)),
    "batch_norm grad_weight 1e-4": ("batch_norm", "3d-train", _scaled(MF.batch_norm_backward, 1 + 1e-4, which=3)),
    "group_norm per channel": ("group_norm", "4d-g2",
                               lambda g, x, G, w, b: MF.group_norm_backward(g, x, x.shape[1], w, b)),
    "group_norm grad_input 1e-4": ("group_norm", "3d-g3", _scaled(MF.group_norm_backward, 1 + 1e-4, which=0)),
    "dropout without 1/(1-p)": ("dropout", "p0.2-3d",
                                lambda g, x, p, mask: g * B.namespace(g).astype(mask, g.dtype)),
    "embedding last write wins": ("embedding", "2d-repeats", _embedding_assign),
    "embedding padding_idx ignored": ("embedding", "padding_idx",
                                      lambda g, idx, w, padding_idx: MF.embedding_backward(g, idx, w)),
}

def _sdpa_without_rowsum(g, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None):
    """dS = P * dP: the softmax's Jacobian taken as diagonal (its - rowsum(dP P) term forgotten)."""
    xp = B.namespace(g)
    sc = q.shape[-1] ** -0.5 if scale is None else scale
    p = A._weights(xp, q, k, attn_mask, is_causal, sc)
    ds = p * xp.matmul(g, xp.matrix_transpose(v))
    return xp.matmul(ds, k) * sc, xp.matmul(xp.matrix_transpose(ds), q) * sc, xp.matmul(xp.matrix_transpose(p), g), None


_SDPA_BWD = MF.scaled_dot_product_attention_backward
ATTENTION_MUTANTS = {
    "attention softmax without the rowsum term": ("scaled_dot_product_attention", "causal", _sdpa_without_rowsum),
    "attention grad_key 1e-4": ("scaled_dot_product_attention", "4d", _scaled(_SDPA_BWD, 1 + 1e-4, which=1)),
    "attention causal mask forgotten in backward": ("scaled_dot_product_attention", "causal",
                                                    lambda g, q, k, v, is_causal: _SDPA_BWD(g, q, k, v)),
    "attention scale forgotten in backward": ("scaled_dot_product_attention", "scale=0.3",
                                              lambda g, q, k, v, scale: _SDPA_BWD(g, q, k, v)),
    "attention float-mask gradient 1e-4": ("scaled_dot_product_attention", "float-mask",
                                           _scaled(_SDPA_BWD, 1 + 1e-4, which=3)),
    "attention dropout mask ignored in backward": ("scaled_dot_product_attention", "dropout-causal",
                                                   lambda g, q, k, v, dropout_p, is_causal, dropout_mask:
                                                   _SDPA_BWD(g, q, k, v, is_causal=is_causal)),
}

def _conv2d_unflipped(g, x, w, b=None, **kw):
    """dL/dx correlated with W itself instead of W rotated 180 degrees (the classic conv-backward slip)."""
    xp = B.namespace(g)
    wrong = MF.conv2d_backward(g, x, xp.flip(w, axis=(2, 3)), b, **kw)[0]  # the backward flips it back: unflipped
    return (wrong,) + tuple(MF.conv2d_backward(g, x, w, b, **kw)[1:])


def _max_pool_ties(rule):
    """max_pool2d_backward by loops, sending each window's gradient to its last maximum ("last") or to
    every tied maximum ("all", the masked `dx[x == max] = g` of many hand-written solutions)."""
    def wrong(g, x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
        gn, xn = B.to_numpy(g).astype(np.float64), B.to_numpy(x).astype(np.float64)
        k = (kernel_size,) * 2 if isinstance(kernel_size, int) else kernel_size
        s = k if stride is None else ((stride,) * 2 if isinstance(stride, int) else stride)
        p = (padding,) * 2 if isinstance(padding, int) else padding
        d = (dilation,) * 2 if isinstance(dilation, int) else dilation
        H, W = xn.shape[-2:]
        gx = np.zeros_like(xn)
        for idx in np.ndindex(gn.shape):
            *nc, oh, ow = idx
            rows = [oh * s[0] - p[0] + i * d[0] for i in range(k[0])]
            cols = [ow * s[1] - p[1] + j * d[1] for j in range(k[1])]
            cells = [(r, c) for r in rows for c in cols if 0 <= r < H and 0 <= c < W]
            vals = [xn[(*nc, r, c)] for r, c in cells]
            best = max(vals)
            hits = [rc for rc, v in zip(cells, vals) if v == best]
            for rc in (hits if rule == "all" else hits[-1:]):
                gx[(*nc, *rc)] += gn[idx]
        return B.place(gx, B.device_of(x), x.dtype)
    return wrong


CONV_MUTANTS = {
    "conv2d grad_input with the kernel unflipped": ("conv2d", "3x3", _conv2d_unflipped),
    "conv2d grad_weight 1e-4": ("conv2d", "stride2-pad1", _scaled(MF.conv2d_backward, 1 + 1e-4, which=1)),
    "conv2d grad_input 1e-4 (depthwise)": ("conv2d", "depthwise", _scaled(MF.conv2d_backward, 1 + 1e-4, which=0)),
    "conv1d grad_bias 1e-4": ("conv1d", "dilation-groups", _scaled(MF.conv1d_backward, 1 + 1e-4, which=2)),
    "max_pool2d ties to the last maximum": ("max_pool2d", "ties-overlap", _max_pool_ties("last")),
    "max_pool2d gradient to every tied maximum": ("max_pool2d", "ties-plateau", _max_pool_ties("all")),
    "max_pool2d 1e-4": ("max_pool2d", "3x3-s2-p1", _scaled(MF.max_pool2d_backward, 1 + 1e-4)),
    "avg_pool2d count_include_pad ignored": ("avg_pool2d", "exclude-pad", lambda g, x, count_include_pad, **kw:
                                             MF.avg_pool2d_backward(g, x, **kw)),
    "avg_pool2d divisor_override ignored": ("avg_pool2d", "divisor_override", lambda g, x, divisor_override, **kw:
                                            MF.avg_pool2d_backward(g, x, **kw)),
    "adaptive_avg_pool2d 1e-4": ("adaptive_avg_pool2d", "larger-than-input",
                                 _scaled(MF.adaptive_avg_pool2d_backward, 1 + 1e-4)),
}

MUTANTS = {  # id -> (op, sample id, wrong backward)
    "relu'(0)=1": ("relu", "kink0", lambda g, x=None, output=None: MF.relu_backward(g, x, output=output)
                   + g * ((x if output is None else output) == 0)),  # from output: every x <= 0 (relu(x) = 0)
    "leaky_relu'(0)=1": ("leaky_relu", "kink0-negative_slope=0.2",
                         lambda g, x, negative_slope: MF.leaky_relu_backward(g, x, negative_slope)
                         + g * (x == 0) * (1 - negative_slope)),
    "elu'(0)=1": ("elu", "kink0-alpha=0.5",
                  lambda g, x, alpha: MF.elu_backward(g, x, alpha) + g * (x == 0) * (1 - alpha)),
    "sigmoid sign flip": ("sigmoid", "2d", _scaled(MF.sigmoid_backward, -1.0)),
    "tanh sign flip": ("tanh", "3d", _scaled(MF.tanh_backward, -1.0)),
    "mse factor 0.5 (the 2 forgotten)": ("mse_loss", "2d-none", _scaled(MF.mse_loss_backward, 0.5)),
    "bce mean as sum": ("binary_cross_entropy_with_logits", "soft-mean",
                        lambda g, x, t, reduction: MF.binary_cross_entropy_with_logits_backward(g, x, t, reduction="sum")),
    "bce pos_weight ignored": ("binary_cross_entropy_with_logits", "pos_weight-none",
                               lambda g, x, t, pos_weight, reduction:
                               MF.binary_cross_entropy_with_logits_backward(g, x, t, reduction=reduction)),
    "linear grad_weight 1e-4": ("linear", "3d", _scaled(MF.linear_backward, 1 + 1e-4, which=1)),
    "linear grad_input 1e-4": ("linear", "2d", _scaled(MF.linear_backward, 1 + 1e-4, which=0)),
    "softmax 1e-4": ("softmax", "3d-dim1", _scaled(MF.softmax_backward, 1 + 1e-4)),
    "log_softmax with softmax's formula": ("log_softmax", "2d-dim1", MF.softmax_backward),
    "gelu exact with tanh's derivative": ("gelu", "2d-approximate=none",
                                          lambda g, x, approximate: MF.gelu_backward(g, x, approximate="tanh")),
    "elu 1e-4": ("elu", "2d", _scaled(MF.elu_backward, 1 + 1e-4)),
    "cross_entropy 1e-4": ("cross_entropy", "index-mean", _scaled(MF.cross_entropy_backward, 1 + 1e-4)),
    "cross_entropy weight ignored": ("cross_entropy", "weight-sum",
                                     lambda g, x, t, weight, reduction: MF.cross_entropy_backward(g, x, t, reduction=reduction)),
    "cross_entropy smoothing ignored": ("cross_entropy", "smoothing-none",
                                        lambda g, x, t, label_smoothing, reduction:
                                        MF.cross_entropy_backward(g, x, t, reduction=reduction)),
    **NORM_MUTANTS,
    **ATTENTION_MUTANTS,
    **CONV_MUTANTS,
}


def _sample(op, sid):
    return next(s for s in samples(OPS_BY_NAME[op]) if s.id == sid)


@pytest.mark.parametrize("backend", CPU)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mutant", MUTANTS)
def test_wrong_backward_fails(mutant, dtype, backend):
    op, sid, wrong = MUTANTS[mutant]
    r = check_op(OPS_BY_NAME[op], _sample(op, sid), dtype, backend, backward=wrong)
    assert not r.problems, r.problems  # it must be the values that fail, not a side issue
    assert r.passed is False, f"{mutant} passed: max abs {r.abs_err:.2e} under tolerance {r.tol}"
    header = re.escape(f"{op}[{sid}] on {backend} in {dtype}")
    with pytest.raises(AssertionError, match=rf"(?s){header}.*failure occurred for item \['grad_"):
        r.assert_close()


@pytest.mark.parametrize("mutant", ["linear grad_weight 1e-4", "elu 1e-4", "cross_entropy 1e-4", "softmax 1e-4",
                                    "conv2d grad_weight 1e-4", "adaptive_avg_pool2d 1e-4"])
def test_finite_differences_catch_a_1e4_error(mutant):
    op, sid, wrong = MUTANTS[mutant]
    info, s = OPS_BY_NAME[op], _sample(op, sid)
    _, _, g, native, _ = run_manual(info, s, "float64", "numpy", backward=wrong)
    fd = finite_diff(getattr(MF, op), list(s.args), s.kwargs, info.arg_names, s.diff, g)
    with pytest.raises(AssertionError):
        assert_close({k: native[k] for k in fd}, fd, rtol=FD_TOL.rtol, atol=FD_TOL.atol)


def test_random_upstream_gradient_is_needed():
    """With g = ones, softmax's true gradient is y (1 - sum y) = 0: a backward returning zeros would pass."""
    info, s = OPS_BY_NAME["softmax"], _sample("softmax", "2d-dim1")
    zeros = lambda g, x=None, dim=-1, output=None: g * 0.0  # noqa: E731
    x = s.args[0]
    assert_close(zeros(np.ones_like(x)), MF.softmax_backward(np.ones_like(x), x, 1), atol=1e-15, rtol=0)
    assert check_op(info, s, "float64", "numpy", backward=zeros).passed is False


# -- whole models: the first diverging layer is the one whose backward is wrong ----------------

@pytest.mark.parametrize("backend", CPU)
@pytest.mark.parametrize("dtype", DTYPES)
def test_model_names_the_layer_with_a_wrong_weight_gradient(dtype, backend, monkeypatch):
    model, crit, x, y = mlp_case("tanh", "mse", dtype, backend)
    assert check_model(model, crit, x, y).passed
    lin = model[2]
    real = lin.backward

    def wrong(g, **kw):  # layer "2" accumulates a weight gradient 1e-4 too large
        gi = real(g, **kw)
        lin.weight.grad = lin.weight.grad * (1 + 1e-4)
        return gi

    monkeypatch.setattr(lin, "backward", wrong)
    r = check_model(model, crit, x, y)
    assert r.passed is False
    assert (r.first_divergent, r.first_divergent_tensor) == ("2", "2.weight"), r.errors


@pytest.mark.parametrize("backend", CPU)
@pytest.mark.parametrize("dtype", DTYPES)
def test_model_names_the_activation_with_a_wrong_derivative(dtype, backend, monkeypatch):
    model, crit, x, y = mlp_case("tanh", "cross_entropy", dtype, backend)
    monkeypatch.setattr(nn.Tanh, "_bwd", _scaled(MF.tanh_backward, 1 + 1e-4))  # both Tanh layers, "1" and "3"
    r = check_model(model, crit, x, y)
    assert r.passed is False
    if dtype == "float32":
        # a 1e-4 error is caught in float32, but at 3.grad_input it is within MODEL_TOL's float32 floor
        # (5e-6 of the largest gradient: batch-norm nets' rounding noise), so it surfaces one layer lower;
        # naming the layer itself takes an error 10x the floor
        assert r.first_divergent in ("3", "2"), r.errors
        monkeypatch.setattr(nn.Tanh, "_bwd", _scaled(MF.tanh_backward, 1 + 1e-3))
        r = check_model(model, crit, x, y)
    assert r.first_divergent == "3" and r.first_divergent_tensor == "3.grad_input", r.errors
    assert r.errors["4.weight"][2] and r.errors["4.grad_input"][2], "layer 4 is above the mutant and must agree"


# -- the contract tests catch what they claim to ---------------------------------------------

def test_contracts_catch_a_view(monkeypatch):
    monkeypatch.setattr(MF, "relu_backward", lambda g, x=None, output=None: g[...])  # right on x > 0 only, a view of g
    with pytest.raises(AssertionError, match="shares memory with grad_output"):
        contracts.test_backward_returns_new_arrays(OPS_BY_NAME["relu"], "numpy")


def test_contracts_catch_an_input_written_in_place(monkeypatch):
    real = MF.relu_backward

    def writes_input(g, x=None, output=None):
        out = real(g, x, output=output)
        arr = x if output is None else output
        arr[...] = MF.relu(arr - 1)  # a write into the caller's array
        return out

    monkeypatch.setattr(MF, "relu_backward", writes_input)
    with pytest.raises(AssertionError, match="input was modified"):
        contracts.test_inputs_unchanged(OPS_BY_NAME["relu"], "torch-cpu")


def test_an_overflow_warning_fails_the_check():
    """Naive 1 / (1 + e^-x) gives the right value at x = -1e4 in float32, but only through an overflow."""
    def naive(g, x=None, output=None):
        s = 1.0 / (1.0 + np.exp(-x)) if output is None else output
        return g * s * (1.0 - s)

    r = check_op(OPS_BY_NAME["sigmoid"], _sample("sigmoid", "saturated"), "float32", "numpy", backward=naive)
    assert r.passed is False and any("overflow" in p for p in r.problems), r.problems
    with pytest.raises(AssertionError, match="overflow"):
        r.assert_close()


# -- new layers: a wrong forward side effect, and whole models naming the wrong layer ------------

@pytest.mark.parametrize("backend", CPU)
@pytest.mark.parametrize("dtype", DTYPES)
def test_biased_running_var_fails(dtype, backend):
    """Updating running_var with the biased batch variance (no n/(n-1)) makes 'running_var(after)' fail."""
    def biased(x, rm, rv, w=None, b=None, training=False, momentum=0.1, eps=1e-5):
        old = rv + 0.0
        out = MF.batch_norm(x, rm, rv, w, b, training, momentum, eps)
        xp = B.namespace(x)
        axes = (0,) + tuple(range(2, x.ndim))
        var = xp.mean((x - xp.mean(x, axis=axes, keepdims=True)) ** 2, axis=axes)
        rv[...] = (1 - momentum) * old + momentum * var
        return out

    op = OPS_BY_NAME["batch_norm"]
    r = check_op(op, _sample("batch_norm", "batch2-train"), dtype, backend, forward=biased)
    assert r.passed is False and not r.errors["running_var(after)"][0] == 0, r.errors
    with pytest.raises(AssertionError, match=r"(?s)item \['running_var\(after\)'\]"):
        r.assert_close()


def _residual_norm_net(dtype, backend):
    rng = np.random.default_rng(3)
    dev = {"numpy": "numpy", "torch-cpu": "cpu"}[backend]
    model = nn.Sequential(
        nn.Linear(4, 6, dtype=dtype, generator=rng),
        nn.Residual(nn.Sequential(nn.BatchNorm1d(6, dtype=dtype), nn.Tanh(), nn.Linear(6, 6, dtype=dtype, generator=rng))),
        nn.LayerNorm(6, dtype=dtype), nn.Linear(6, 3, dtype=dtype, generator=rng)).to(device=dev)
    x = B.place(rng.normal(size=(8, 4)), dev, dtype)
    y = B.place(rng.normal(size=(8, 3)), dev, dtype)
    return model, nn.MSELoss(), x, y


@pytest.mark.parametrize("backend", CPU)
@pytest.mark.parametrize("dtype", DTYPES)
def test_model_names_a_residual_that_drops_the_skip_path(dtype, backend, monkeypatch):
    model, crit, x, y = _residual_norm_net(dtype, backend)
    assert check_model(model, crit, x, y).passed
    model, crit, x, y = _residual_norm_net(dtype, backend)
    monkeypatch.setattr(nn.Residual, "backward", lambda self, g, input_grad=True: self.block.backward(g))
    r = check_model(model, crit, x, y)
    assert r.passed is False
    assert (r.first_divergent, r.first_divergent_tensor) == ("0", "0.weight"), r.errors  # the layer below it
    assert r.errors["1.block.2.weight"][2], "inside the block, gradients still agree"


@pytest.mark.parametrize("backend", CPU)
@pytest.mark.parametrize("dtype", DTYPES)
def test_model_names_a_batch_norm_with_constant_statistics(dtype, backend, monkeypatch):
    model, crit, x, y = _residual_norm_net(dtype, backend)
    bn = model[1].block[0]
    real = bn.backward

    def constant_stats(g, **kw):  # dx = g w rstd, as if the batch statistics were constants
        real(g, **kw)
        return g * N._channel_view(B.namespace(g), bn.weight.data, 2) * N._stats(B.namespace(g), x_in[0], (0,), bn.eps)[1]

    x_in = []
    fwd = bn.forward
    monkeypatch.setattr(bn, "forward", lambda inp: (x_in.append(inp), fwd(inp))[1])
    monkeypatch.setattr(bn, "backward", constant_stats)
    r = check_model(model, crit, x, y)
    assert r.passed is False
    assert (r.first_divergent, r.first_divergent_tensor) == ("1.block.0", "1.block.0.grad_input"), r.errors
