"""Affine layer: forward and hand-derived backward."""

from __future__ import annotations

import math

from .. import _backend as B
from .._backend import check_same_dtype, namespace


def _check(op, input, weight, bias):
    """Validate the arguments; returns how the bias is added (_bias_mode)."""
    if weight.ndim not in (1, 2):
        raise ValueError(f"{op}: expected weight of shape (out_features, in_features), or (in_features,) for an "
                         f"output without the features dim (as torch), got {tuple(weight.shape)}")
    if input.ndim < 1 or input.shape[-1] != weight.shape[-1]:
        raise ValueError(
            f"{op}: expected input with {weight.shape[-1]} features in its last dimension "
            f"(weight is {tuple(weight.shape)}), got input of shape {tuple(input.shape)}"
        )
    check_same_dtype(op, input=input, weight=weight, bias=bias)
    return _bias_mode(op, input, weight, bias)


def _out_shape(input, weight):
    """x W^T: (..., in) -> (..., out); with a 1-D weight (in,), (..., in) -> (...)."""
    return tuple(input.shape[:-1]) + tuple(weight.shape[:-1])


def _bias_mode(op, input, weight, bias):
    """How torch's linear adds the bias (aten linear, contiguous tensors), or a ValueError where torch refuses:

    None     no bias, or the usual bias (out,) on a 2-D weight
    "rows"   a 2-D input, or a bias 1-D or 1-D after squeezing its size-1 dims: torch's addmm(bias, x2, W^T), x2
             the input as (M, in) rows, M the product of its batch dims; the bias broadcasts to (M, out) (so
             (M, 1) is taken, and (3, 1) on a (2, 3, in) input is not); a 1-D weight is refused there
             ('mat2 must be a matrix')
    "out"    any other bias (0-d, or two or more dims of size > 1): x W^T + b, b broadcast to the output's shape
             without widening it (torch adds it in place)
    """
    if bias is None:
        return None
    out_shape, b = _out_shape(input, weight), tuple(bias.shape)
    if weight.ndim == 2 and b == (weight.shape[0],):
        return None
    if input.ndim == 2 or bias.ndim == 1 or sum(n != 1 for n in b) == 1:
        if weight.ndim == 1:
            raise ValueError(
                f"{op}: with a 1-D weight {tuple(weight.shape)}, expected bias=None, or for an input that is not 2-D a "
                f"bias with no dim or at least two dims of size > 1 that broadcasts to the output's shape {out_shape}; "
                f"got bias of shape {b} and input of shape {tuple(input.shape)}, which torch refuses too ('mat2 must "
                "be a matrix': it adds such a bias inside a matrix multiply that needs a 2-D weight)")
        rows = (math.prod(input.shape[:-1]), weight.shape[0])
        if not _expands(b, rows):
            raise ValueError(
                f"{op}: expected bias of shape ({weight.shape[0]},), got {b}: torch adds this bias to the output as "
                f"rows of shape {rows} (the input's batch dims flattened), and it does not broadcast to that")
        return "rows"
    if not _expands(b, out_shape):
        raise ValueError(f"{op}: expected bias of shape ({weight.shape[0]},) or one that broadcasts to the output's "
                         f"shape {out_shape} without widening it, got {b}")
    return "out"


def _expands(shape, to):
    """shape broadcasts to `to` without widening it."""
    return len(shape) <= len(to) and all(s in (1, t) for s, t in zip(reversed(shape), reversed(to)))


def linear(input, weight, bias=None):
    """y = x W^T + b, for x of shape (..., in), W (out, in), b (out,) -> y (..., out).

    As torch, W may be 1-D (in,) (y of shape (...)), and b of another shape torch takes (_bias_mode)."""
    xp = namespace(input, weight, bias, op="linear")
    mode = _check("linear", input, weight, bias)
    if weight.ndim == 2 and mode is None:
        return _linear(input, weight, bias)
    out = xp.matmul(input, weight) if weight.ndim == 1 else xp.matmul(input, xp.matrix_transpose(weight))
    if mode == "rows":  # added to the (M, out) rows, as torch's addmm
        rows = (math.prod(input.shape[:-1]), weight.shape[0])  # not -1: M or out may be 0
        out = xp.reshape(xp.reshape(out, rows) + bias, _out_shape(input, weight))
    elif mode == "out":
        out = out + bias
    return out


def linear_backward(grad_output, input, weight, bias=None):
    """dL/dx = g W;  dL/dW = g^T x (summed over the batch);  dL/db = sum of g over the batch.

    Returns (grad_input, grad_weight, grad_bias); grad_bias is None when bias is None. With a 1-D weight w:
    dL/dx = g w (outer), dL/dw = sum over the batch of g x; a bias of another shape gets g summed to its shape.
    """
    xp = namespace(grad_output, input, weight, bias, op="linear_backward")
    mode = _check("linear_backward", input, weight, bias)
    expected = _out_shape(input, weight)
    if tuple(grad_output.shape) != expected:
        raise ValueError(f"linear_backward: expected grad_output of shape {expected}, got {tuple(grad_output.shape)}")
    check_same_dtype("linear_backward", grad_output=grad_output, input=input)
    if weight.ndim == 2 and mode is None:
        return _linear_backward(xp, grad_output, input, weight, bias is not None)
    if weight.ndim == 1:
        grad_input = grad_output[..., None] * weight  # (...) x (in,) -> (..., in)
        x2 = _rows(input)  # (M, in); a 1-D input is one row
        grad_weight = xp.matmul(xp.reshape(grad_output, (x2.shape[0],)), x2)  # (M,) @ (M, in) -> (in,)
    else:
        grad_input, grad_weight, _ = _linear_backward(xp, grad_output, input, weight, False)
    grad_bias = None
    if mode == "rows":
        rows = (math.prod(input.shape[:-1]), weight.shape[0])
        grad_bias = _sum_to(xp, xp.reshape(grad_output, rows), tuple(bias.shape))
    elif mode == "out":
        grad_bias = _sum_to(xp, grad_output, tuple(bias.shape))
    return grad_input, grad_weight, grad_bias


def _sum_to(xp, g, shape):
    """A gradient of a broadcast operand: g summed over the dims `shape` lacks or holds as 1."""
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, n in enumerate(shape) if n == 1 and g.shape[lead + i] != 1)
    if axes:
        g = xp.sum(g, axis=axes, keepdims=True)
    return xp.reshape(g, shape)


# The kernels: unchecked, called by manual.nn.Linear after it has validated its input once.

def _rows(a):
    """(..., n) -> (B, n), B the product of the batch dims: one matrix multiply instead of a stack of them
    (NumPy multiplies a 3-D array by a 2-D one matrix by matrix, 4-8x slower than the single product)."""
    return a if a.ndim == 2 else a.reshape((math.prod(a.shape[:-1]), a.shape[-1]))  # not -1: n may be 0


def _linear(input, weight, bias):
    x2 = _rows(input)
    if bias is not None and B.backend_name(x2) == "torch":
        out = B.addmm(bias, x2, weight)  # the same x W^T + b, the bias added inside the matrix multiply
    else:
        out = x2 @ weight.T  # (B, in) @ (in, out) -> (B, out), a new array
        if bias is not None:
            out += bias  # in place on our own temporary: saves one (..., out) allocation
    return out if input.ndim == 2 else out.reshape(tuple(input.shape[:-1]) + (weight.shape[0],))


def _linear_backward(xp, grad_output, input, weight, has_bias, input_grad=True):
    g2 = _rows(grad_output)  # (B, out)
    x2 = _rows(input)  # (B, in); B = product of batch dims
    grad_input = None
    if input_grad:
        grad_input = g2 @ weight  # (B, out) @ (out, in) -> (B, in)
        if input.ndim != 2:
            grad_input = grad_input.reshape(tuple(input.shape))
    grad_weight = g2.T @ x2  # (out, in)
    grad_bias = g2.sum(0) if has_bias else None  # (out,); the method: NumPy's np.sum adds ~1 us of dispatch a call
    return grad_input, grad_weight, grad_bias
