"""Dropout, embedding and flatten: forward beside backward.

    dropout:    y = x * D / (1 - p), D a boolean keep-mask (True with probability 1 - p);  dx = g * D / (1 - p)
    embedding:  y[i] = W[idx[i]];  dW[k] = sum of g[i] over every i with idx[i] = k (a scatter-add), 0 at padding_idx
    flatten:    a reshape;  dx = g reshaped back to x's shape
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from .. import _backend as B
from .._backend import check_same_dtype, namespace


def _shape(a):
    return tuple(a.shape)


def _check_grad(op, grad_output, expected, like):
    if _shape(grad_output) != tuple(expected):
        raise ValueError(f"{op}: expected grad_output of shape {tuple(expected)} (the output's), got {_shape(grad_output)}")
    check_same_dtype(op, grad_output=grad_output, input=like)


# -- dropout -------------------------------------------------------------------------------

def _dropout_check(op, input, p, training, mask):
    xp = namespace(input, mask, op=op, names=("input", "mask"))
    B.check_float(op, input)  # torch refuses integer, bool and complex input too (int once came back float64)
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= p <= 1.0:
        raise ValueError(f"{op}: expected dropout probability p in [0, 1], got {p!r}")
    if training not in (True, False):
        raise TypeError(f"{op}: expected training to be True or False, got {training!r}")
    if mask is not None:
        if mask.dtype != xp.bool:
            raise TypeError(f"{op}: expected mask of dtype bool (True = keep), got {mask.dtype}")
        if _shape(mask) != _shape(input):
            raise ValueError(f"{op}: expected mask of shape {_shape(input)} (the input's), got {_shape(mask)}")
    return xp


def _active(p, training):
    return training and p > 0.0


def dropout_mask(input, p=0.5, *, generator=None):
    """A boolean keep-mask shaped like `input` (True with probability 1 - p), on input's backend and device.

    Drawn from `generator` (a NumPy Generator; a fresh unseeded one if None), so a seeded run
    is identical on NumPy, torch CPU and CUDA.
    """
    _dropout_check("dropout_mask", input, p, True, None)
    rng = generator if generator is not None else np.random.default_rng()
    return B.place_bool(rng.random(_shape(input)) >= p, B.device_of(input))


def _keep_scale(xp, mask, p, like):
    """D / (1 - p) in like's dtype; p = 1 keeps nothing (all zeros, as torch)."""
    p = float(p)  # an np.float64 p would promote a float32 product to float64
    d = xp.astype(mask, like.dtype)
    return d * (1.0 / (1.0 - p)) if p < 1.0 else d * 0.0


def dropout(input, p=0.5, training=True, inplace=False, *, mask=None, generator=None):
    """y = x * D / (1 - p) in training (identity in eval or at p = 0);  D the keep-mask.

    mask (not in torch): the boolean keep-mask to use, so that `dropout_backward` can take the
    same one; without it a mask is drawn from `generator` with `dropout_mask`, which no backward
    can see (the module `Dropout` keeps its mask for you). inplace is refused: backward functions
    here never see overwritten inputs.
    """
    xp = _dropout_check("dropout", input, p, training, mask)
    if inplace:
        raise ValueError("dropout: inplace=True is not supported (the input is kept intact), got inplace=True")
    if not _active(p, training):
        return input + 0.0  # a new array, as torch returns for p = 0 in training
    if mask is None:
        mask = dropout_mask(input, p, generator=generator)
    return input * _keep_scale(xp, mask, p, input)


def dropout_backward(grad_output, input, p=0.5, training=True, *, mask=None):
    """d dropout/dx = D / (1 - p) in training (1 in eval or at p = 0): the forward's keep-mask D is required.

    Returns grad_input.
    """
    op = "dropout_backward"
    xp = _dropout_check(op, input, p, training, mask)
    namespace(grad_output, input, op=op, names=("grad_output", "input"))
    _check_grad(op, grad_output, _shape(input), input)
    if not _active(p, training):
        return grad_output + 0.0
    if mask is None:
        raise ValueError(f"{op}: p={p} in training needs the forward's keep-mask as mask=, got none")
    return grad_output * _keep_scale(xp, mask, p, grad_output)


# -- embedding -----------------------------------------------------------------------------

def _emb_check(op, input, weight, padding_idx):
    xp = namespace(input, weight, op=op, names=("input", "weight"))
    if weight.ndim != 2:
        raise ValueError(f"{op}: expected weight of shape (num_embeddings, embedding_dim), got {_shape(weight)}")
    if input.dtype not in (xp.int64, xp.int32):  # torch takes no other index dtype
        raise TypeError(f"{op}: expected input of integer indices (int64 or int32), got dtype {input.dtype}")
    n = weight.shape[0]
    if padding_idx is not None:
        if isinstance(padding_idx, bool) or not isinstance(padding_idx, numbers.Integral) or not -n <= padding_idx < n:
            raise ValueError(f"{op}: expected padding_idx None or an integer in [{-n}, {n}) "
                             f"(weight has {n} rows), got {padding_idx!r}")
        padding_idx = int(padding_idx) % n  # torch: a negative padding_idx counts from the end
    if math.prod(_shape(input)):
        lo, hi = B.min_max(input)  # one pass (torch: aminmax) and one device sync
    if math.prod(_shape(input)) and (lo < 0 or hi >= n):
        raise IndexError(f"{op}: expected indices in [0, {n}) (weight has {n} rows), got index {lo if lo < 0 else hi}")
    return xp, padding_idx


def embedding(input, weight, padding_idx=None):
    """y[..., :] = W[idx[...], :], a row lookup: (*) integer indices, W (num_embeddings, dim) -> (*, dim).

    padding_idx changes only the gradient (its row gets none), as in torch.
    """
    xp, _ = _emb_check("embedding", input, weight, padding_idx)
    out = xp.take(weight, xp.reshape(input, (-1,)), axis=0)  # (prod(*), dim)
    return xp.reshape(out, _shape(input) + (weight.shape[1],))


def embedding_backward(grad_output, input, weight, padding_idx=None):
    """dW[k] = sum_{i: idx[i] = k} g[i] (repeated indices add up), dW[padding_idx] = 0;  no gradient for the indices.

    Returns (None, grad_weight): one per positional array argument, None for the integer indices.
    """
    op = "embedding_backward"
    xp, pad = _emb_check(op, input, weight, padding_idx)
    namespace(grad_output, weight, op=op, names=("grad_output", "weight"))
    n, d = weight.shape
    _check_grad(op, grad_output, _shape(input) + (d,), weight)
    idx = xp.reshape(input, (-1,))
    g = xp.reshape(grad_output, (-1, d))  # (prod(*), dim)
    if pad is not None:
        g = g * xp.astype(idx != pad, g.dtype)[:, None]  # padding rows contribute nothing
    flat = xp.reshape(idx[:, None] * d + xp.arange(d, dtype=idx.dtype, device=idx.device)[None, :], (-1,))
    grad_weight = xp.reshape(B.scatter_add(flat, g, n * d), (n, d))
    return None, grad_weight


# -- flatten -------------------------------------------------------------------------------

def _flatten_dims(op, input, start_dim, end_dim):
    nd = max(input.ndim, 1)
    for name, v in (("start_dim", start_dim), ("end_dim", end_dim)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not -nd <= v < nd:
            raise IndexError(f"{op}: expected {name} in [{-nd}, {nd}) for input of shape {_shape(input)}, got {v!r}")
    s, e = start_dim % nd, end_dim % nd
    if s > e:
        raise ValueError(f"{op}: expected start_dim <= end_dim (after wrapping negatives), got start_dim={start_dim}, "
                         f"end_dim={end_dim} for input of shape {_shape(input)}")
    shape = _shape(input)
    if input.ndim == 0:
        return (1,)
    return shape[:s] + (math.prod(shape[s:e + 1]),) + shape[e + 1:]


def flatten(input, start_dim=0, end_dim=-1):
    """torch.flatten: dims start_dim..end_dim merged into one (nn.Flatten uses start_dim=1)."""
    xp = namespace(input, op="flatten")
    return xp.reshape(input, _flatten_dims("flatten", input, start_dim, end_dim))


def flatten_backward(grad_output, input, start_dim=0, end_dim=-1):
    """d flatten/dx = the identity, reshaped: dx = reshape(g, x.shape)."""
    op = "flatten_backward"
    xp = namespace(grad_output, input, op=op)
    _check_grad(op, grad_output, _flatten_dims(op, input, start_dim, end_dim), input)
    return xp.asarray(xp.reshape(grad_output, _shape(input)), copy=True)  # a new array, never a view of g
