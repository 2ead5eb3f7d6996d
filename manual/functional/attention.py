"""Scaled dot-product attention, the transformer's one new op: forward beside its backward.

    S = scale * q k^T + M     M: 0 where a key takes part and -inf where it does not (a boolean
                              mask, True = take part, or is_causal), or the float mask itself
    P = softmax(S)            along the keys; a row whose keys are all masked gets P = 0 (torch)
    O = (P * D / (1 - p)) v   D: the dropout keep-mask (no dropout when dropout_p = 0)

The backward is llm.c's attention_backward written as matrix products:

    dv = P_d^T dO;  dP = (dO v^T) * D / (1 - p);  dS = P * (dP - rowsum(dP * P));
    dq = scale * dS k;  dk = scale * dS^T q;  dM = dS (a float mask is differentiable, as in torch)

Shapes: query (..., L, E), key (..., S, E), value (..., S, Ev) -> output (..., L, Ev); the
leading (batch, head) dimensions broadcast, and each gradient is summed back to its input's shape.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from .. import _backend as B
from .. import init as I
from .._backend import check_same_dtype, namespace
from .regularization import _keep_scale, dropout_mask as _dropout_mask

OP = "scaled_dot_product_attention"


def _shape(a):
    return tuple(a.shape)


def _check(op, query, key, value, attn_mask, dropout_p, is_causal, scale, dropout_mask):
    """Validate the arguments; returns (xp, the output's leading shape, L, S)."""
    xp = namespace(query, key, value, attn_mask, dropout_mask, op=op,
                   names=("query", "key", "value", "attn_mask", "dropout_mask"))
    check_same_dtype(op, query=query, key=key, value=value)
    for name, a in (("query", query), ("key", key), ("value", value)):
        if a.ndim < 2:
            raise ValueError(f"{op}: expected {name} with at least 2 dimensions (..., length, features), "
                             f"got shape {_shape(a)}")
    if query.shape[-1] != key.shape[-1]:
        raise ValueError(f"{op}: expected key with query's {query.shape[-1]} features in its last dimension, "
                         f"got query {_shape(query)} and key {_shape(key)}")
    if key.shape[-2] != value.shape[-2]:
        raise ValueError(f"{op}: expected value with key's length {key.shape[-2]} in dimension -2, "
                         f"got key {_shape(key)} and value {_shape(value)}")
    try:
        lead = np.broadcast_shapes(_shape(query)[:-2], _shape(key)[:-2], _shape(value)[:-2])
    except ValueError:
        raise ValueError(f"{op}: expected leading (batch, head) dimensions that broadcast, got query "
                         f"{_shape(query)}, key {_shape(key)}, value {_shape(value)}") from None
    L, S = query.shape[-2], key.shape[-2]
    if is_causal not in (True, False):
        raise TypeError(f"{op}: expected is_causal to be True or False, got {is_causal!r}")
    if is_causal and attn_mask is not None:
        raise ValueError(f"{op}: expected attn_mask=None when is_causal=True (torch refuses both), got a mask "
                         f"of shape {_shape(attn_mask)}")
    if not isinstance(dropout_p, numbers.Real) or not 0.0 <= dropout_p <= 1.0:
        raise ValueError(f"{op}: expected dropout_p in [0, 1], got {dropout_p!r}")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, numbers.Real)):
        raise TypeError(f"{op}: expected scale to be None or a real number, got {scale!r}")
    # torch takes a float mask of float32 or of the query's dtype (a float32 mask on float64 scores is promoted,
    # its gradient float32): 'Expected attn_mask dtype to be bool or float or to match query dtype'
    for name, m, dtypes in (("attn_mask", attn_mask, "bool, float32 or the query's dtype " + str(query.dtype)),
                            ("dropout_mask", dropout_mask, "bool")):
        if m is None:
            continue
        if not (m.dtype == xp.bool or (name == "attn_mask" and m.dtype in (query.dtype, xp.float32))):
            raise TypeError(f"{op}: expected {name} of dtype {dtypes}, got {m.dtype}")
        try:
            if np.broadcast_shapes(_shape(m), lead + (L, S)) != lead + (L, S):
                raise ValueError
        except ValueError:
            raise ValueError(f"{op}: expected {name} broadcastable to the attention weights' shape "
                             f"{lead + (L, S)} (..., L, S), got {_shape(m)}") from None
    return xp, lead, L, S


def _scale(query, scale):
    return 1.0 / math.sqrt(query.shape[-1]) if scale is None else float(scale)


_CAUSAL: dict = {}


def _causal_bias(xp, L, S, like):
    """(L, S): 0 on and below the diagonal, -inf above (top-left aligned, as torch's is_causal); cached."""
    key = (type(like), L, S, str(like.dtype), str(like.device))
    bias = _CAUSAL.get(key)
    if bias is None:
        dev = like.device
        keep = xp.arange(L, device=dev)[:, None] >= xp.arange(S, device=dev)[None, :]
        zero = xp.zeros((L, S), dtype=like.dtype, device=dev)
        bias = _CAUSAL[key] = xp.where(keep, zero, zero - math.inf)
    return bias


def _scores(xp, query, key, scale, is_causal):
    """scale * q k^T (..., L, S), plus the causal bias (-inf above the diagonal) if is_causal: a new array."""
    if is_causal and _shape(query)[:-2] == _shape(key)[:-2]:  # torch: the scale and the bias inside one baddbmm
        return B.scaled_scores(query, key, scale, _causal_bias(xp, query.shape[-2], key.shape[-2], query))
    s = xp.matmul(query, xp.matrix_transpose(key))  # (..., L, E) @ (..., E, S) -> (..., L, S)
    s *= scale
    if is_causal:
        s += _causal_bias(xp, s.shape[-2], s.shape[-1], s)
    return s


def _weights(xp, query, key, attn_mask, is_causal, scale, stats=None):
    """P = softmax(scale * q k^T + M) along the keys, (..., L, S); fully masked rows -> 0.

    stats: a list that receives the row statistics (m, z), each (..., L, 1), where P = exp(s - m) / z;
    _weights_again rebuilds P from them (a causal mask only)."""
    # One (..., L, S) array, every step after the matmul in place on it (s is this function's own):
    # the scores, then exp(s - max), then the weights.
    # causal: every row keeps key 0, so no row is fully masked (and no attn_mask comes with it: _check)
    s = _scores(xp, query, key, scale, is_causal)
    if attn_mask is not None and attn_mask.dtype == xp.bool:
        s = xp.where(attn_mask, s, xp.asarray(-math.inf, dtype=s.dtype, device=s.device))
    elif attn_mask is not None:
        s = s + attn_mask  # not in place: the mask may broadcast s to a larger shape
    if s.shape[-1] == 0:  # no keys: empty weights, so the output is 0 (as torch), and max has nothing to reduce
        if stats is not None:  # (..., L, 1) statistics all the same: m = 0, z = 1 (a GPT on T = 0 tokens)
            stats[:] = (xp.zeros(s.shape[:-1] + (1,), dtype=s.dtype, device=s.device),
                        xp.ones(s.shape[:-1] + (1,), dtype=s.dtype, device=s.device))
        return s
    m = xp.max(s, axis=-1, keepdims=True)  # (..., L, 1); -inf for a row with every key masked
    if attn_mask is not None:
        m = xp.where(m > -math.inf, m, xp.zeros_like(m))  # so exp(-inf - m) = 0 there, not NaN
    s -= m
    e = B.exp_causal_(s) if is_causal else B.exp_(s)  # causal: no exp of the masked -inf (its slow case)
    z = xp.sum(e, axis=-1, keepdims=True)
    if attn_mask is not None:
        z = xp.where(z > 0, z, xp.ones_like(z))  # a fully masked row: 0 / 1 = 0 (torch's safe softmax)
    e /= z
    if stats is not None:
        stats[:] = (m, z)
    return e


def _weights_again(xp, query, key, scale, m, z):
    """The causal P of _weights(..., is_causal=True, stats=) from its row statistics: the same operations on
    the same values (scores, bias, - m, exp, / z), without the max and sum reductions. For a backward that
    keeps (..., L, 1) statistics instead of the (..., L, S) weights, as flash attention keeps its logsumexp."""
    s = _scores(xp, query, key, scale, True)
    s -= m
    e = B.exp_causal_(s)
    e /= z
    return e


def _sum_to(xp, x, shape):
    """Sum a broadcast gradient back to `shape` (leading dims, and dims where shape has a 1)."""
    shape = tuple(shape)
    if _shape(x) == shape:
        return x
    lead = x.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, n in enumerate(shape) if n == 1 and x.shape[lead + i] != 1)
    return xp.reshape(xp.sum(x, axis=axes, keepdims=True), shape)


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                                 *, dropout_mask=None, generator=None):
    """softmax(q k^T * scale + mask) v, scale = 1/sqrt(E) by default; dropout on the weights.

    attn_mask: boolean (True = take part) or float (added to the scores; float32 or the query's dtype),
    broadcastable to (..., L, S). dropout_mask (not in torch): the boolean keep-mask to use when dropout_p > 0,
    so that a backward can use the same one; without it a mask is drawn from `generator`
    (a NumPy Generator; manual.init's default if None), which no backward can see.
    """
    xp, _, L, S = _check(OP, query, key, value, attn_mask, dropout_p, is_causal, scale, dropout_mask)
    p = _weights(xp, query, key, attn_mask, is_causal, _scale(query, scale))  # (..., L, S)
    if dropout_p > 0.0:
        if dropout_mask is None:
            gen = I.default_generator() if generator is None else generator
            dropout_mask = _dropout_mask(p, dropout_p, generator=gen)  # (..., L, S) boolean keep-mask
        p = p * _keep_scale(xp, dropout_mask, dropout_p, p)
    return xp.matmul(p, value)  # (..., L, S) @ (..., S, Ev) -> (..., L, Ev)


def scaled_dot_product_attention_backward(grad_output, query, key, value, attn_mask=None, dropout_p=0.0,
                                          is_causal=False, scale=None, *, dropout_mask=None, attn_weight=None):
    """dv = P_d^T g;  dS = P * (dP - rowsum(dP P)), dP = g v^T D/(1-p);  dq = scale dS k;  dk = scale dS^T q;  dM = dS.

    Returns (grad_query, grad_key, grad_value, grad_attn_mask); grad_attn_mask is None unless
    attn_mask is a float mask. attn_weight= reuses the forward's softmax P (before dropout).
    """
    op = OP + "_backward"
    xp, lead, L, S = _check(op, query, key, value, attn_mask, dropout_p, is_causal, scale, dropout_mask)
    namespace(grad_output, query, attn_weight, op=op, names=("grad_output", "query", "attn_weight"))
    expected = lead + (L, value.shape[-1])
    if _shape(grad_output) != expected:
        raise ValueError(f"{op}: expected grad_output of shape {expected} (the output's), got {_shape(grad_output)}")
    check_same_dtype(op, grad_output=grad_output, query=query, attn_weight=attn_weight)
    if dropout_p > 0.0 and dropout_mask is None:
        raise ValueError(f"{op}: dropout_p={dropout_p} needs the forward's dropout_mask=, got none")
    if attn_weight is not None and _shape(attn_weight) != lead + (L, S):
        raise ValueError(f"{op}: expected attn_weight of shape {lead + (L, S)}, got {_shape(attn_weight)}")
    sc = _scale(query, scale)
    p = _weights(xp, query, key, attn_mask, is_causal, sc) if attn_weight is None else attn_weight
    d = _keep_scale(xp, dropout_mask, dropout_p, p) if dropout_p > 0.0 else None
    return _backward(xp, grad_output, query, key, value, p, d, sc, attn_mask)


def _backward(xp, g, query, key, value, p, d, scale, attn_mask, rowsum=None):
    """The unchecked kernel: p the softmax weights (..., L, S), d the dropout factor or None.

    rowsum: rowsum(dP * P) (..., L, 1) if the caller has it: it equals rowsum(dO * O), O the forward's output
    (sum_j P_ij D_ij (dO_i . v_j) = dO_i . O_i), half the products of the (..., L, S) form when Ev < S, and no
    (..., L, S) temporary (flash attention's D)."""
    pd = p if d is None else p * d
    grad_value = xp.matmul(xp.matrix_transpose(pd), g)  # (..., S, L) @ (..., L, Ev) -> (..., S, Ev)
    dp = xp.matmul(g, xp.matrix_transpose(value))  # (..., L, Ev) @ (..., Ev, S) -> (..., L, S)
    if d is not None:
        dp = dp * d
    if rowsum is None:
        rowsum = xp.sum(dp * p, axis=-1, keepdims=True)
    # softmax backward ds = p * (dp - rowsum(dp * p)), (..., L, S): in place on dp (this function's own)
    # unless p is larger (a mask that broadcasts the weights beyond the output's batch dims)
    if _shape(dp) == _shape(p):
        dp -= rowsum
        dp *= p
        ds = dp
    else:
        ds = p * (dp - rowsum)
    grad_query = xp.matmul(ds, key)  # (..., L, S) @ (..., S, E) -> (..., L, E)
    grad_key = xp.matmul(xp.matrix_transpose(ds), query)  # (..., S, L) @ (..., L, E) -> (..., S, E)
    grad_query *= scale
    grad_key *= scale
    grad_mask = None
    if attn_mask is not None and attn_mask.dtype != xp.bool:
        grad_mask = _sum_to(xp, ds, _shape(attn_mask))
        if grad_mask.dtype != attn_mask.dtype:  # a float32 mask on float64 scores: its gradient float32, as torch's
            grad_mask = xp.astype(grad_mask, attn_mask.dtype)
    return (_sum_to(xp, grad_query, _shape(query)), _sum_to(xp, grad_key, _shape(key)),
            _sum_to(xp, grad_value, _shape(value)), grad_mask)
