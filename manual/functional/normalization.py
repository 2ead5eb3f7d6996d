"""Normalization: batch norm, layer norm, group norm, each forward beside its backward.

All three normalise x over a set of M values (a channel across the batch, a sample's last
dimensions, a group of channels), then scale and shift per feature:

    mu = mean(x);  var = mean((x - mu)^2) (biased);  rstd = 1 / sqrt(var + eps)
    xhat = (x - mu) * rstd;  y = w * xhat + b

and share one backward (llm.c's layernorm_backward, Karpathy's batch-norm one-liner), with
gh = g * w the gradient reaching xhat and the means taken over the same M values:

    dx = rstd * (gh - mean(gh) - xhat * mean(gh * xhat));  dw = sum(g * xhat);  db = sum(g)

The statistics are recomputed in the backward from the input (pure: nothing is cached
between the two calls), as llm.c recomputes `norm`.

Cost (issue 9): on torch tensors each whole-array operation pays a dispatch and a pass over
memory, so the backward reuses what it already has instead of taking more passes. Where w is
constant over the normalised set (batch norm: one w per channel) it leaves the mean:
mean(gh) = w sum(g) / M and mean(gh xhat) = w sum(g xhat) / M, the very sums db and dw, so

    dx = w rstd (g - sum(g) / M - xhat sum(g xhat) / M)                  (_norm_backward_channel)

Where w varies over the normalised set (layer norm) the two row means are matrix-vector
products, mean(gh) = g @ (w / D) and mean(gh xhat) = (g xhat) @ (w / D), the product g xhat
being dw's too (_norm_backward_rows). Temporaries an op made itself are updated in place
(`t -= ...`); its arguments never are. parity_tests/test_norm_fast.py checks both against
_norm_backward.
"""

from __future__ import annotations

import math
import numbers

from .. import _backend as B
from .._backend import check_same_dtype, namespace


def _shape(a):
    return tuple(a.shape)


def _check_eps(op, eps, negative_ok=False):
    """eps >= 0 for the modules (checked at construction); layer_norm and group_norm take any real eps, as
    torch's do (its own sample inputs use eps = -0.5: rstd = 1/sqrt(var + eps), NaN where var < -eps, as in
    torch); batch_norm asks eps > 0 in training and eps >= 0 in eval, as torch's (_bn_check)."""
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or math.isnan(eps) or not (negative_ok or eps >= 0):
        raise ValueError(f"{op}: expected eps to be a real number{'' if negative_ok else ' >= 0'}, got {eps!r}")


def _check_affine(op, weight, bias, shape, what):
    for name, a in (("weight", weight), ("bias", bias)):
        if a is not None and _shape(a) != tuple(shape):
            raise ValueError(f"{op}: expected {name} of shape {tuple(shape)} ({what}), got {_shape(a)}")


def _check_grad(op, grad_output, input):
    if _shape(grad_output) != _shape(input):
        raise ValueError(f"{op}: expected grad_output of shape {_shape(input)} (the input's), got {_shape(grad_output)}")
    check_same_dtype(op, grad_output=grad_output, input=input)


def _moments(xp, x, axes, eps):
    """(xhat, rstd, mean, biased var) over `axes` (kept as size-1 dims): two passes, so no cancellation in
    var. (torch's one-reduction var_mean measured 8x slower than these on 256 x 256 float32 rows here.)
    Batch norm's training forward also needs the mean and variance, for its running statistics."""
    mu = xp.mean(x, axis=axes, keepdims=True)
    xc = x - mu
    var = xp.mean(xc * xc, axis=axes, keepdims=True)
    rstd = B.rsqrt(var, float(eps))  # float(): an np.float64 eps would promote float32
    xc *= rstd  # xhat = (x - mu) * rstd, in the temporary made above (x itself is never written)
    return xc, rstd, mu, var


def _stats(xp, x, axes, eps):
    """(xhat, rstd) of _moments."""
    return _moments(xp, x, axes, eps)[:2]


def _norm_backward(xp, gh, xhat, rstd, axes):
    """dx = rstd * (gh - mean(gh) - xhat * mean(gh * xhat)), the means over `axes` (the reference form)."""
    return rstd * (gh - xp.mean(gh, axis=axes, keepdims=True) - xhat * xp.mean(gh * xhat, axis=axes, keepdims=True))


def _norm_backward_channel(grad_output, weight, xhat, rstd, sum_g, sum_gxhat, m):
    """_norm_backward when w is constant over the normalised set (batch norm; weight (1, C, 1, ...) or None):
    dx = w rstd (g - sum(g) / M - xhat sum(g xhat) / M), sum_g and sum_gxhat over the M values, kept dims."""
    dx = grad_output - sum_g / m
    B.sub_mul_(dx, xhat, sum_gxhat / m)  # dx -= xhat sum(g xhat) / M
    dx *= rstd if weight is None else weight * rstd
    return dx


def _norm_backward_rows(xp, grad_output, weight, xhat, rstd, gxhat, k):
    """_norm_backward over the last k dims (layer norm; weight of those dims' shape, or None):
    dx = rstd (gh - mean(gh) - xhat mean(gh xhat)), gh = g w, D values a row, with the row means as
    products mean(gh) = g @ (w / D) and mean(gh xhat) = (g xhat) @ (w / D) (gxhat = g xhat, dw's too; its
    buffer may become dx's, so the caller must be done with it)."""
    shape = _shape(xhat)
    d = math.prod(shape[len(shape) - k:])
    if weight is None:
        axes = tuple(range(len(shape) - k, len(shape)))
        dx = grad_output - xp.sum(grad_output, axis=axes, keepdims=True) / d
        mean_ghx = xp.sum(gxhat, axis=axes, keepdims=True) / d
    else:  # the means at once: mean(gh) = g @ (w / D), mean(gh xhat) = (g xhat) @ (w / D)
        rows, wd = math.prod(shape[:len(shape) - k]), xp.reshape(weight, (d,)) / d
        mean_ghx = xp.reshape(xp.reshape(gxhat, (rows, d)) @ wd, _shape(rstd))
        mean_gh = xp.reshape(xp.reshape(grad_output, (rows, d)) @ wd, _shape(rstd))
        dx = B.mul_sub_reusing(gxhat, grad_output, weight, mean_gh)  # g w - mean(gh); NumPy: into gxhat
    B.sub_mul_(dx, xhat, mean_ghx)  # dx -= xhat mean(gh xhat)
    dx *= rstd
    return dx


# -- layer norm ----------------------------------------------------------------------------

def _ln_check(op, input, normalized_shape, weight, bias, eps):
    xp = namespace(input, weight, bias, op=op, names=("input", "weight", "bias"))
    check_same_dtype(op, input=input, weight=weight, bias=bias)
    if isinstance(normalized_shape, numbers.Integral):
        normalized_shape = (int(normalized_shape),)
    shape = tuple(int(n) for n in normalized_shape)
    k = len(shape)
    if k == 0 or input.ndim < k or _shape(input)[input.ndim - k:] != shape:
        raise ValueError(f"{op}: expected input whose last dimensions are normalized_shape {shape}, "
                         f"got input of shape {_shape(input)}")
    _check_affine(op, weight, bias, shape, "normalized_shape")
    _check_eps(op, eps, negative_ok=True)
    return xp, tuple(range(input.ndim - k, input.ndim))


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """y = w * (x - mean(x)) / sqrt(var(x) + eps) + b, the statistics over the last len(normalized_shape) dims."""
    xp, axes = _ln_check("layer_norm", input, normalized_shape, weight, bias, eps)
    xhat, _ = _stats(xp, input, axes, eps)
    return _affine(xhat, weight, bias)


def layer_norm_backward(grad_output, input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """dx = rstd (gh - mean(gh) - xhat mean(gh xhat)), gh = g w;  dw = sum(g xhat);  db = sum(g) (over the batch dims).

    Returns (grad_input, grad_weight, grad_bias); grad_weight / grad_bias are None without weight / bias.
    """
    op = "layer_norm_backward"
    xp, axes = _ln_check(op, input, normalized_shape, weight, bias, eps)
    namespace(grad_output, input, op=op, names=("grad_output", "input"))
    _check_grad(op, grad_output, input)
    xhat, rstd = _stats(xp, input, axes, eps)
    gxhat = grad_output * xhat
    batch = tuple(range(input.ndim - len(axes)))  # the dims w and b are shared across
    grad_weight = None if weight is None else xp.sum(gxhat, axis=batch)
    grad_bias = None if bias is None else xp.sum(grad_output, axis=batch)
    return _norm_backward_rows(xp, grad_output, weight, xhat, rstd, gxhat, len(axes)), grad_weight, grad_bias


def _affine(xhat, weight, bias):
    """xhat w + b, a new array (xhat itself when neither is given)."""
    if weight is None:
        return xhat if bias is None else xhat + bias
    return xhat * weight if bias is None else B.mul_add(xhat, weight, bias)


# -- batch norm ----------------------------------------------------------------------------

def _channel_view(xp, a, ndim):
    """A per-channel (C,) array as (1, C, 1, ..., 1), to broadcast against an (N, C, *) input."""
    return xp.reshape(a, (1, a.shape[0]) + (1,) * (ndim - 2))


def _bn_check(op, input, running_mean, running_var, weight, bias, training, momentum, eps):
    xp = namespace(input, running_mean, running_var, weight, bias, op=op,
                   names=("input", "running_mean", "running_var", "weight", "bias"))
    check_same_dtype(op, input=input, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias)
    if input.ndim < 2:
        raise ValueError(f"{op}: expected input of shape (N, C) or (N, C, *) with at least 2 dimensions, "
                         f"got shape {_shape(input)}")
    c = input.shape[1]
    for name, a in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight), ("bias", bias)):
        if a is not None and _shape(a) != (c,):
            raise ValueError(f"{op}: expected {name} of shape ({c},) (one per channel of input {_shape(input)}), "
                             f"got {_shape(a)}")
    if training not in (True, False):
        raise TypeError(f"{op}: expected training to be True or False, got {training!r}")
    if not training and (running_mean is None or running_var is None):
        raise ValueError(f"{op}: expected running_mean and running_var when training=False (they are what "
                         f"eval mode normalises with), got None")
    # any real momentum, as torch's batch_norm (its sample inputs use -1.2 and -1.0); the modules ask [0, 1]
    if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real) or math.isnan(momentum):
        raise ValueError(f"{op}: expected momentum to be a real number, got {momentum!r}")
    _check_eps(op, eps, negative_ok=True)
    if eps < 0 or (training and eps == 0):  # torch's batch_norm refuses both too
        raise ValueError(f"{op}: expected eps > 0 when normalising with the batch's statistics (training) and eps >= 0 "
                         f"with the running ones, as torch; got eps={eps!r} with training={training} (1/sqrt(var + eps) "
                         f"is inf for a channel of equal values)")
    m = math.prod(_shape(input)) // c if c else 0
    if training and m == 1:  # m = 0 (an empty batch) is fine, as in torch: an empty output, the statistics kept
        raise ValueError(f"{op}: expected more than 1 value per channel when training (the batch variance of "
                         f"one value is undefined; torch refuses too), got input of shape {_shape(input)}")
    return xp, (0,) + tuple(range(2, input.ndim)), m


def _update_running(stat, batch_value, momentum):
    """stat <- (1 - momentum) stat + momentum batch_value, in place (the same two roundings as the expression)."""
    momentum = float(momentum)  # an np.float64 would round momentum * batch_value in float64
    stat *= 1.0 - momentum
    stat += momentum * batch_value


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    """y = w * (x - mu) / sqrt(var + eps) + b per channel (dim 1); mu, var: the batch's (training) or the running ones.

    Training also updates the running statistics in place, as torch does:
    running_mean <- (1 - momentum) running_mean + momentum mu,
    running_var  <- (1 - momentum) running_var  + momentum var * M / (M - 1)   (unbiased, M values per channel).
    """
    xp, axes, m = _bn_check("batch_norm", input, running_mean, running_var, weight, bias, training, momentum, eps)
    nd = input.ndim
    if training and m == 0:  # an empty batch: nothing to normalise, no statistics to learn (torch keeps them)
        xhat = input + 0.0
    elif training:
        xhat, _, mu, var = _moments(xp, input, axes, eps)  # as batch_norm_backward's _stats: the same xhat
        if running_mean is not None:
            _update_running(running_mean, xp.reshape(mu, (-1,)), momentum)
        if running_var is not None:
            _update_running(running_var, xp.reshape(var, (-1,)) * (m / (m - 1)), momentum)
    else:
        xhat = (input - _channel_view(xp, running_mean, nd)) / _channel_view(xp, xp.sqrt(running_var + float(eps)), nd)
    return _affine(xhat, None if weight is None else _channel_view(xp, weight, nd),
                   None if bias is None else _channel_view(xp, bias, nd))


def batch_norm_backward(grad_output, input, running_mean, running_var, weight=None, bias=None, training=False,
                        momentum=0.1, eps=1e-5):
    """training: dx = rstd (gh - mean(gh) - xhat mean(gh xhat));  eval: dx = gh rstd_running;  gh = g w;  dw = sum(g xhat);  db = sum(g).

    Returns (grad_input, None, None, grad_weight, grad_bias): one per positional array argument,
    None for the running statistics (not differentiable) and for an absent weight / bias. Pure:
    the running statistics are read (eval) but never updated here.
    """
    op = "batch_norm_backward"
    xp, axes, m = _bn_check(op, input, running_mean, running_var, weight, bias, training, momentum, eps)
    namespace(grad_output, input, op=op, names=("grad_output", "input"))
    _check_grad(op, grad_output, input)
    nd = input.ndim
    wc = None if weight is None else _channel_view(xp, weight, nd)
    if training and m == 0:  # an empty batch: an empty grad_input, zero dw and db (the sums below are empty)
        xhat = rstd = input + 0.0
    elif training:
        xhat, rstd = _stats(xp, input, axes, eps)
    else:
        rstd = 1.0 / _channel_view(xp, xp.sqrt(running_var + float(eps)), nd)
        xhat = (input - _channel_view(xp, running_mean, nd)) * rstd
    sum_g = xp.sum(grad_output, axis=axes, keepdims=True)
    sum_gxhat = xp.sum(grad_output * xhat, axis=axes, keepdims=True)
    if training and m == 0:
        grad_input = grad_output + 0.0
    elif training:
        grad_input = _norm_backward_channel(grad_output, wc, xhat, rstd, sum_g, sum_gxhat, m)
    else:
        grad_input = grad_output * rstd if wc is None else grad_output * (wc * rstd)
    grad_weight = None if weight is None else xp.reshape(sum_gxhat, (-1,))
    grad_bias = None if bias is None else xp.reshape(sum_g, (-1,))
    return grad_input, None, None, grad_weight, grad_bias


# -- group norm ----------------------------------------------------------------------------

def _gn_check(op, input, num_groups, weight, bias, eps):
    xp = namespace(input, weight, bias, op=op, names=("input", "weight", "bias"))
    check_same_dtype(op, input=input, weight=weight, bias=bias)
    if input.ndim < 2:
        raise ValueError(f"{op}: expected input of shape (N, C, *) with at least 2 dimensions, got shape {_shape(input)}")
    c = input.shape[1]
    if isinstance(num_groups, bool) or not isinstance(num_groups, numbers.Integral) or num_groups < 1 or c % num_groups:
        raise ValueError(f"{op}: expected num_groups a positive integer that divides the {c} channels of input "
                         f"{_shape(input)}, got {num_groups!r}")
    _check_affine(op, weight, bias, (c,), "one per channel")
    _check_eps(op, eps, negative_ok=True)
    return xp


def _grouped(xp, x, num_groups):
    """(N, C, *) -> (N, G, C/G * prod(*)): each group's values in one row (sizes explicit: N may be 0)."""
    return xp.reshape(x, (x.shape[0], num_groups, math.prod(_shape(x)[1:]) // num_groups))


def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5):
    """y = w * (x - mu_g) / sqrt(var_g + eps) + b: the statistics over each sample's group of C/G channels (and space)."""
    xp = _gn_check("group_norm", input, num_groups, weight, bias, eps)
    xhat, _ = _stats(xp, _grouped(xp, input, num_groups), (2,), eps)
    nd = input.ndim
    return _affine(xp.reshape(xhat, _shape(input)), None if weight is None else _channel_view(xp, weight, nd),
                   None if bias is None else _channel_view(xp, bias, nd))


def group_norm_backward(grad_output, input, num_groups, weight=None, bias=None, eps=1e-5):
    """dx = rstd (gh - mean(gh) - xhat mean(gh xhat)) per group, gh = g w;  dw = sum(g xhat);  db = sum(g) (over N and space).

    Returns (grad_input, grad_weight, grad_bias); None for an absent weight / bias.
    """
    op = "group_norm_backward"
    xp = _gn_check(op, input, num_groups, weight, bias, eps)
    namespace(grad_output, input, op=op, names=("grad_output", "input"))
    _check_grad(op, grad_output, input)
    nd, shape = input.ndim, _shape(input)
    xhat, rstd = _stats(xp, _grouped(xp, input, num_groups), (2,), eps)  # (N, G, M)
    gh = grad_output if weight is None else grad_output * _channel_view(xp, weight, nd)
    grad_input = xp.reshape(_norm_backward(xp, _grouped(xp, gh, num_groups), xhat, rstd, (2,)), shape)
    axes = (0,) + tuple(range(2, nd))
    grad_weight = None if weight is None else xp.sum(grad_output * xp.reshape(xhat, shape), axis=axes)
    grad_bias = None if bias is None else xp.sum(grad_output, axis=axes)
    return grad_input, grad_weight, grad_bias
