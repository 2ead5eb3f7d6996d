"""Losses (guide: "MSE and Cost Functions"), forward beside hand-derived backward.

Every loss takes reduction "mean" | "sum" | "none" as torch does. Each `<loss>_backward`
returns the gradient of the input (targets are data, not parameters).
"""

from __future__ import annotations

import numpy as np

from .. import _backend as B
from .._backend import check_float, check_same_dtype, namespace, to_numpy
from ._util import check_grad_output, check_reduction, check_same_shape, reduce, reduce_backward
from .activations import log_softmax, sigmoid, softmax


# -- mean squared error ------------------------------------------------------------------

def mse_loss(input, target, reduction="mean"):
    """MSE = (1/n) sum_i (y_i - yhat_i)^2."""
    xp = namespace(input, target, op="mse_loss")
    _check_mse("mse_loss", input, target, reduction)
    dtype = _mse_loss_dtype(xp, input, target)
    diff = (input if input.dtype == dtype else xp.astype(input, dtype)) - _like_input(target, input, dtype)
    return reduce(diff * diff, reduction, xp)


def mse_loss_backward(grad_output, input, target, reduction="mean"):
    """d MSE/d yhat_i = (2/n) (yhat_i - y_i)  (the guide's -2/n (y_i - yhat_i))."""
    namespace(grad_output, input, target, op="mse_loss_backward")
    _check_mse("mse_loss_backward", input, target, reduction)
    check_grad_output("mse_loss_backward", grad_output, input.shape, reduction)
    loss_dtype = _mse_loss_dtype(namespace(input), input, target)
    if loss_dtype == input.dtype:
        check_same_dtype("mse_loss_backward", grad_output=grad_output, input=input)
    elif grad_output.dtype != loss_dtype:
        raise TypeError(f"mse_loss_backward: mixed dtypes: expected grad_output of the loss's dtype {loss_dtype} "
                        f"(torch promotes input={input.dtype} with target={target.dtype}), got {grad_output.dtype}")
    return _mse_loss_backward(grad_output, input, target, reduction)


def _mse_loss_backward(grad_output, input, target, reduction):
    """Unchecked kernel (MSELoss validated its input in forward); grad_output may be a float. A float target of
    another float dtype: computed in the promoted dtype, the gradient returned in the input's (as torch's)."""
    xp = namespace(input)
    dtype = _mse_loss_dtype(xp, input, target)
    if dtype == input.dtype:
        return 2.0 * (input - _like_input(target, input)) * reduce_backward(grad_output, reduction, _numel(input))
    grad = 2.0 * (xp.astype(input, dtype) - target) * reduce_backward(grad_output, reduction, _numel(input))
    return xp.astype(grad, input.dtype)


def _mse_loss_dtype(xp, input, target):
    """The loss's dtype: the input's, or for a float target of another float dtype torch.result_type of the two
    (float32 and float64: float64)."""
    if target.dtype == input.dtype or not xp.isdtype(target.dtype, "real floating"):
        return input.dtype
    return xp.result_type(input.dtype, target.dtype)


def _like_input(target, input, dtype=None):
    """An integer or bool target in the input's dtype, as torch's type promotion makes it (float32 input, int64
    target: a float32 loss; NumPy would make float32 - int64 float64); a float target of the input's dtype as it is;
    with dtype (the loss's), the target in that dtype."""
    dtype = input.dtype if dtype is None else dtype
    if target.dtype == dtype:
        return target
    return namespace(input).astype(target, dtype)


def _check_mse(op, input, target, reduction):
    check_reduction(op, reduction)
    if input.shape != target.shape:
        try:  # torch broadcasts them, with only a warning: (N,) against (N, 1) is an (N, N) loss, almost always a bug
            wide = np.broadcast_shapes(tuple(input.shape), tuple(target.shape))
        except ValueError:
            wide = None
        if wide is not None:
            raise ValueError(f"{op}: expected target of shape {tuple(input.shape)} (the input's), got "
                             f"{tuple(target.shape)}: torch would broadcast the two to {wide} (with a warning); "
                             "reshape one of them")
    check_same_shape(op, input, target)
    xp = namespace(input)
    check_float(op, input)
    if not xp.isdtype(target.dtype, ("integral", "bool")):  # an integer target: promoted to the input's dtype
        check_float(op, target, "target")  # float32 with float64: promoted to float64, as torch (the gradient: the input's)


def _numel(x):
    n = 1
    for s in x.shape:
        n *= s
    return n


# -- binary cross-entropy on logits --------------------------------------------------------

def binary_cross_entropy_with_logits(input, target, weight=None, reduction="mean", pos_weight=None):
    """l = -w [p t log s(x) + (1 - t) log(1 - s(x))], p = pos_weight, via softplus(-x) = log1p(e^-|x|) + max(-x, 0)."""
    xp = namespace(input, target, weight, pos_weight, op="binary_cross_entropy_with_logits",
                   names=("input", "target", "weight", "pos_weight"))
    _check_bce("binary_cross_entropy_with_logits", input, target, weight, pos_weight, reduction)
    softplus_neg = xp.log1p(xp.exp(-xp.abs(input))) + xp.clip(-input, min=0.0)  # -log s(x), never overflows
    if pos_weight is None:
        loss = (1.0 - target) * input + softplus_neg
    else:
        loss = (1.0 - target) * input + (1.0 + (pos_weight - 1.0) * target) * softplus_neg
    if weight is not None:
        loss = loss * weight
    return reduce(loss, reduction, xp)


def binary_cross_entropy_with_logits_backward(
    grad_output, input, target, weight=None, reduction="mean", pos_weight=None
):
    """d l/dx = w [(1 + (p - 1) t) s(x) - p t]  (= w (s(x) - t) when p = 1)."""
    namespace(grad_output, input, target, weight, pos_weight, op="binary_cross_entropy_with_logits_backward",
              names=("grad_output", "input", "target", "weight", "pos_weight"))
    _check_bce("binary_cross_entropy_with_logits_backward", input, target, weight, pos_weight, reduction)
    check_grad_output("binary_cross_entropy_with_logits_backward", grad_output, input.shape, reduction)
    check_same_dtype("binary_cross_entropy_with_logits_backward", grad_output=grad_output, input=input)
    s = sigmoid(input)
    if pos_weight is None:
        d = s - target
    else:
        d = (1.0 + (pos_weight - 1.0) * target) * s - pos_weight * target
    if weight is not None:
        d = d * weight
    return d * reduce_backward(grad_output, reduction, _numel(input))


def _check_bce(op, input, target, weight, pos_weight, reduction):
    check_reduction(op, reduction)
    check_same_shape(op, input, target)
    check_same_dtype(op, input=input, target=target, weight=weight, pos_weight=pos_weight)
    for name, w in (("weight", weight), ("pos_weight", pos_weight)):
        if w is not None and not _broadcasts(w.shape, input.shape):
            raise ValueError(f"{op}: expected {name} broadcastable to the input's shape {tuple(input.shape)}, got {tuple(w.shape)}")


def _broadcasts(shape, to):
    if len(shape) > len(to):
        return False
    return all(s in (1, t) for s, t in zip(reversed(shape), reversed(to)))


# -- cross-entropy over classes ------------------------------------------------------------
# Shapes as in torch: input (C,), (N, C) or (N, C, d1, ...); target class indices of the
# input's shape without C (int64; uint8 where torch takes it), or class probabilities of the input's shape.
# Internally the class dim is moved last and the rest flattened: x2 (M, C).

def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """l_i = -(1 - eps) w_y log p_y - (eps/C) sum_c w_c log p_c,  p = softmax(x) over classes."""
    xp = namespace(input, target, weight, op="cross_entropy", names=("input", "target", "weight"))
    ignore_index = B.as_int("cross_entropy", "ignore_index", ignore_index)
    x2, t, C, is_index = _ce_prepare("cross_entropy", xp, input, target, weight, ignore_index, reduction, label_smoothing)
    logp = log_softmax(x2, -1)  # (M, C)
    eps = _ce_smoothing("cross_entropy", label_smoothing)  # <= 0 (or NaN): none, as torch
    if is_index:
        onehot, valid, wy = _ce_index_weights(xp, t, C, weight, ignore_index, x2)
        # gathered, not onehot * logp: a masked (-inf) logit off the target would make 0 * -inf = NaN
        kept, zero = valid > 0, xp.zeros_like(wy)
        loss = xp.where(kept, -_target_logp(xp, logp, t, kept), zero) * wy  # (M,), zero where ignored
        if eps > 0:
            wlogp = logp if weight is None else logp * weight
            loss = (1.0 - eps) * loss - (eps / C) * xp.where(kept, xp.sum(wlogp, axis=1), zero)
        denom = xp.sum(wy)
    else:
        wt = _ce_prob_weights(xp, t, C, weight, eps, _ce_loss_dtype(xp, input, target, weight))
        loss = -xp.sum(logp * wt, axis=1)  # (M,), in the loss's dtype (logp promoted, as torch's product)
        denom = loss.shape[0]
    if reduction == "none":
        return xp.reshape(loss, _ce_loss_shape(input))
    total = xp.sum(loss)
    if reduction == "sum":
        return total
    with np.errstate(invalid="ignore"):  # every target ignored: 0 / 0 = NaN, as torch
        return total / denom


def cross_entropy_backward(
    grad_output, input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0
):
    """Gradient of cross_entropy with respect to its input (logits x), row by row; p = softmax(x).

    Class-index targets y (w_c: class weights, 1 without `weight`; eps: label_smoothing; C classes):
        l_i = -(1 - eps) w_y log p_y - (eps / C) sum_c w_c log p_c
        dl_i/dx = (1 - eps) w_y (p - onehot(y)) + (eps / C) (W p - w),   W = sum_c w_c
      A row whose target is ignore_index has l_i = 0 and gradient exactly 0 (as torch).
      reduction="mean" divides by sum_i w_(y_i) over the non-ignored rows (not by the row count);
      when every row is ignored that sum is 0 and the gradient is 0, as torch's (its loss is NaN).
    Class-probability targets t (rows of the input's shape; smoothing makes t' = (1 - eps) t + eps / C):
        l_i = -sum_c w_c t'_c log p_c,    dl_i/dx = (sum_c w_c t'_c) p - w t'
      reduction="mean" divides by the number of rows.
    """
    xp = namespace(grad_output, input, target, weight, op="cross_entropy_backward",
                   names=("grad_output", "input", "target", "weight"))
    ignore_index = B.as_int("cross_entropy_backward", "ignore_index", ignore_index)
    x2, t, C, is_index = _ce_prepare(
        "cross_entropy_backward", xp, input, target, weight, ignore_index, reduction, label_smoothing
    )
    check_grad_output("cross_entropy_backward", grad_output, _ce_loss_shape(input), reduction)
    loss_dtype = _ce_loss_dtype(xp, input, target, weight)
    if loss_dtype == input.dtype:
        check_same_dtype("cross_entropy_backward", grad_output=grad_output, input=input)
    elif grad_output.dtype != loss_dtype:
        raise TypeError(f"cross_entropy_backward: mixed dtypes: expected grad_output of the loss's dtype {loss_dtype} "
                        f"(torch promotes input={input.dtype} with target={target.dtype}"
                        f"{'' if weight is None else f', weight={weight.dtype}'}), got {grad_output.dtype}")
    p = softmax(x2, -1)  # (M, C)
    eps = _ce_smoothing("cross_entropy_backward", label_smoothing)  # <= 0 (or NaN): none, as torch
    if reduction == "none":
        a = xp.reshape(grad_output, (-1,))  # (M,)
    if is_index:
        onehot, valid, wy = _ce_index_weights(xp, t, C, weight, ignore_index, x2)
        if reduction != "none":
            with np.errstate(divide="ignore", invalid="ignore"):  # every row ignored: 0 / 0, handled below
                a = grad_output / xp.sum(wy) if reduction == "mean" else grad_output
        # ignored rows get exactly 0 even when a is inf or NaN (every row ignored: 0 / 0), as torch's
        a = xp.where(valid > 0, a, xp.zeros_like(a))  # (M,)
        w_total = float(C) if weight is None else xp.sum(weight)
        coef_p = (1.0 - eps) * wy + (eps / C) * w_total * valid  # (M,)
        g = coef_p[:, None] * p - (1.0 - eps) * wy[:, None] * onehot
        if eps > 0:
            w_row = 1.0 if weight is None else weight[None, :]
            g = g - (eps / C) * valid[:, None] * w_row
    else:
        wt = _ce_prob_weights(xp, t, C, weight, eps, loss_dtype)
        if reduction != "none":
            a = grad_output / x2.shape[0] if reduction == "mean" else grad_output
        g = xp.sum(wt, axis=1)[:, None] * p - wt
    with np.errstate(invalid="ignore"):  # a zero-weight class as the only target: NaN, as torch
        g = (a[:, None] if a.ndim == 1 else a) * g
    if g.dtype != input.dtype:  # a float64 target on float32 logits: the gradient in the input's dtype, as torch's
        g = xp.astype(g, input.dtype)
    return _ce_restore(xp, g, input)


def _ce_mean_forward(input, target, ignore_index):
    """(cross_entropy(input, target, ignore_index=...), logp) in the common case, or None outside it: input (N, C)
    with N >= 1, class indices all in [0, C) or ignore_index, no weight, no smoothing, reduction "mean". The
    module's fast path (CrossEntropyLoss.forward); the formula of cross_entropy with w = 1, eps = 0:
        l = -(1 / n_valid) sum_(i valid) logp_(i, y_i),   logp = log_softmax(x)
    with one min/max of the targets as the range check (cross_entropy's own check when that is not conclusive)
    and a gather of logp instead of a one-hot product: ~10 array operations instead of ~35. logp is returned for
    _ce_mean_backward_logp (p = exp(logp), as torch's log_softmax backward takes it). Equal to the general
    path to rounding (parity_tests/test_fused.py)."""
    xp = namespace(input, target, op="cross_entropy")
    if input.ndim != 2 or target.dtype != xp.int64 or tuple(target.shape) != (input.shape[0],):
        return None  # uint8 targets and refused dtypes take the full path (its dtype check)
    n, C = input.shape
    if n == 0 or C == 0:
        return None
    check_float("cross_entropy", input)
    lo, hi = B.min_max(target)
    if not (0 <= lo and hi < C) or lo <= ignore_index <= hi:  # a bad index or an ignored row: the full check
        _ce_prepare("cross_entropy", xp, input, target, None, ignore_index, "mean", 0.0)  # raises on a bad index
    logp = log_softmax(input, 1)  # (N, C)
    if not lo <= ignore_index <= hi:  # no row ignored
        return -xp.mean(_target_logp(xp, logp, target)), logp, None
    kept = target != ignore_index
    picked = _target_logp(xp, logp, target, kept)
    # a select, not picked * valid: an ignored row's column 0 may hold a masked (-inf) logit, and 0 * -inf is NaN
    picked = xp.where(kept, picked, xp.zeros_like(picked))
    with np.errstate(invalid="ignore"):  # every target ignored: 0 / 0 = NaN, as torch
        return -xp.sum(picked) / xp.sum(xp.astype(kept, input.dtype)), logp, kept


def _target_logp(xp, logp, t, kept=None):
    """logp[i, t_i] for each row i of logp (M, C), as (M,): a gather, not a one-hot product (0 * -inf, a masked
    logit off the target, would be NaN). With kept, an ignored row reads column 0 (its value left to the
    caller to drop, by a select)."""
    if kept is not None:
        t = xp.where(kept, t, xp.zeros_like(t))
    return B.take_rows(logp, t)


def _ce_mean_backward_logp(logp, target, kept):
    """d l / d x for _ce_mean_forward's case, from its logp and kept (None: no row ignored):
    (p - onehot(y)) * valid / n_valid, p = exp(logp); an ignored row gets exactly +0 (every row ignored: all 0,
    as torch)."""
    xp = namespace(logp, target)
    n = logp.shape[0]
    g = xp.exp(logp)
    if kept is None:
        B.index_add_rows_(g, target, -1.0)  # g[i, y_i] -= 1
        g *= 1.0 / n
        return g
    valid = xp.astype(kept, logp.dtype)
    g *= xp.reshape(valid, (n, 1))
    B.index_add_rows_(g, xp.where(kept, target, xp.zeros_like(target)), -valid)  # 0 (+ -0) where ignored
    g *= 1.0 / max(float(xp.sum(valid)), 1.0)
    return g


def _ce_prepare(op, xp, input, target, weight, ignore_index, reduction, label_smoothing):
    check_reduction(op, reduction)
    if input.ndim < 1:
        raise ValueError(f"{op}: expected input of shape (C,), (N, C) or (N, C, d1, ...), got a 0-d array")
    _ce_smoothing(op, label_smoothing)
    C = input.shape[0] if input.ndim == 1 else input.shape[1]
    if weight is not None and tuple(weight.shape) != (C,):
        raise ValueError(f"{op}: expected weight of shape ({C},) (one per class), got {tuple(weight.shape)}")
    is_index = xp.isdtype(target.dtype, "integral")
    if is_index or (target.dtype == xp.bool and target.ndim != input.ndim):
        _ce_check_index_dtype(op, xp, input, target, weight is not None and label_smoothing > 0 and reduction == "mean")
    if is_index:
        expected = tuple(input.shape[:1]) + tuple(input.shape[2:]) if input.ndim > 1 else ()
        if tuple(target.shape) != expected:
            raise ValueError(
                f"{op}: expected class-index target of shape {expected} (the input's without its class "
                f"dim of size {C}), got {tuple(target.shape)}"
            )
        bad = (target != ignore_index) & ((target < 0) | (target >= C))
        if bool(xp.any(bad)):
            got = to_numpy(target)[to_numpy(bad)][0]
            raise IndexError(
                f"{op}: expected class indices in [0, {C}) or ignore_index={ignore_index}, got {int(got)}"
            )
        check_same_dtype(op, input=input, weight=weight)
    else:
        check_same_shape(op, input, target, what="class-probability target")
        # each float32 or float64, not necessarily one dtype: torch promotes them (torch.result_type), the loss
        # in the widest, the gradient in the input's
        check_float(op, input)
        check_float(op, target, "class-probability target")
        if weight is not None:
            check_float(op, weight, "weight")
        if ignore_index != -100:  # torch: "ignore_index is not supported for floating point target"
            raise ValueError(f"{op}: expected ignore_index=-100 (the default) with a class-probability target "
                             f"(ignore_index applies to class indices only, as in torch), got ignore_index={ignore_index} "
                             f"and a target of dtype {str(target.dtype).replace('torch.', '')}")
    x2 = _ce_flatten(xp, input, C)
    t = xp.reshape(target, (-1,)) if is_index else _ce_flatten(xp, target, C)
    return x2, t, C, is_index


def _ce_smoothing(op, label_smoothing):
    """eps as torch uses it: smoothing only when label_smoothing > 0 (so a negative value, or NaN, is 0: no
    smoothing, as torch's `if (label_smoothing > 0.0)`), and above 1 refused (torch: 'label_smoothing must be
    between 0.0 and 1.0'). A Python float: an np.float64 would promote float32 to float64."""
    eps = B.as_float(op, "label_smoothing", label_smoothing)
    if eps > 1.0:
        raise ValueError(f"{op}: expected label_smoothing at most 1 (in [0, 1]; torch reads a value <= 0 as no "
                         f"smoothing), got {label_smoothing}")
    return eps if eps > 0.0 else 0.0


def _ce_check_index_dtype(op, xp, input, target, gathers_weight):
    """Class indices as torch takes them: int64, or uint8 for (C,) and (N, C) input (its nll_loss; the
    (N, C, d1, ...) kernel takes int64 only). torch: 'expected target dtype to be Long or Byte, but got Int'.
    gathers_weight: weight, label_smoothing > 0 and reduction "mean", where torch's mean gathers the class
    weights by the target and refuses uint8 ('gather(): Expected dtype int32/int64 for index')."""
    if target.dtype == xp.int64 or (target.dtype == xp.uint8 and input.ndim <= 2 and not gathers_weight):
        return
    expected = ("int64 (uint8 not with weight, label_smoothing > 0 and reduction 'mean')" if gathers_weight else
                "int64 or uint8" if input.ndim <= 2 else f"int64 (uint8 only for input of 1 or 2 dims, got {input.ndim})")
    got = str(target.dtype).replace("torch.", "")
    raise TypeError(f"{op}: expected class-index target of dtype {expected}, got {got}; make labels int64 "
                    f"(manual._backend.place_labels)")


def _ce_flatten(xp, a, C):
    """(C,) -> (1, C); (N, C) -> (N, C); (N, C, d1, ...) -> (N*d1*..., C)."""
    if a.ndim > 2:
        a = xp.permute_dims(a, (0,) + tuple(range(2, a.ndim)) + (1,))
    return xp.reshape(a, (-1, C))


def _ce_restore(xp, g2, input):
    """Inverse of _ce_flatten for a gradient of shape (M, C)."""
    if input.ndim <= 2:
        return xp.reshape(g2, tuple(input.shape))
    moved = (input.shape[0],) + tuple(input.shape[2:]) + (input.shape[1],)
    g = xp.reshape(g2, moved)
    nd = input.ndim
    return xp.permute_dims(g, (0, nd - 1) + tuple(range(1, nd - 1)))


def _ce_loss_shape(input):
    return () if input.ndim == 1 else (input.shape[0],) + tuple(input.shape[2:])


def _ce_index_weights(xp, t, C, weight, ignore_index, like):
    """onehot (M, C) (all zeros where ignored), valid (M,) in {0, 1}, wy (M,) = w[y] or 0 where ignored."""
    dev = like.device
    classes = xp.arange(C, device=dev)
    kept = t != ignore_index  # ignore_index may be a real class (0 <= ignore_index < C)
    onehot = xp.astype((t[:, None] == classes[None, :]) & kept[:, None], like.dtype)
    valid = xp.astype(kept, like.dtype)
    wy = valid if weight is None else xp.sum(onehot * weight, axis=1)
    return onehot, valid, wy


def _ce_prob_weights(xp, t, C, weight, eps, dtype):
    """Smoothed, class-weighted probability target (M, C) in the loss's dtype. As torch: smoothed in the target's
    own dtype, then promoted; the weight promoted before the product (torch's (logp * t) * w is in the loss's
    dtype throughout: a float32 t * w would round where torch does not)."""
    if eps > 0:
        t = t * (1.0 - eps) + eps / C
    if t.dtype != dtype:
        t = xp.astype(t, dtype)
    if weight is None:
        return t
    return t * (weight if weight.dtype == dtype else xp.astype(weight, dtype))


def _ce_loss_dtype(xp, input, target, weight):
    """The loss's dtype: the input's for class indices; for class probabilities torch.result_type of input,
    target and weight (float32 and float64: float64)."""
    if not xp.isdtype(target.dtype, "real floating"):
        return input.dtype
    dtype = input.dtype
    for a in (target, weight):
        if a is not None and a.dtype != dtype:
            dtype = xp.result_type(dtype, a.dtype)
    return dtype
