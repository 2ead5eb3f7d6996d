"""Affine layer: forward and hand-derived backward."""

from __future__ import annotations

import math

from .. import _backend as B
from .._backend import check_same_dtype, namespace


def _check(op, input, weight, bias):
    if weight.ndim != 2:
        raise ValueError(f"{op}: expected weight of shape (out_features, in_features), got {tuple(weight.shape)}")
    if input.ndim < 1 or input.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"{op}: expected input with {weight.shape[1]} features in its last dimension "
            f"(weight is {tuple(weight.shape)}), got input of shape {tuple(input.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"{op}: expected bias of shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    check_same_dtype(op, input=input, weight=weight, bias=bias)


def linear(input, weight, bias=None):
    """y = x W^T + b, for x of shape (..., in), W (out, in), b (out,) -> y (..., out)."""
    namespace(input, weight, bias, op="linear")
    _check("linear", input, weight, bias)
    return _linear(input, weight, bias)


def linear_backward(grad_output, input, weight, bias=None):
    """dL/dx = g W;  dL/dW = g^T x (summed over the batch);  dL/db = sum of g over the batch.

    Returns (grad_input, grad_weight, grad_bias); grad_bias is None when bias is None.
    """
    xp = namespace(grad_output, input, weight, bias, op="linear_backward")
    _check("linear_backward", input, weight, bias)
    expected = tuple(input.shape[:-1]) + (weight.shape[0],)
    if tuple(grad_output.shape) != expected:
        raise ValueError(f"linear_backward: expected grad_output of shape {expected}, got {tuple(grad_output.shape)}")
    check_same_dtype("linear_backward", grad_output=grad_output, input=input)
    return _linear_backward(xp, grad_output, input, weight, bias is not None)


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
