"""Activations (guide: "Activation Functions"), each forward beside its derivative.

Conventions at the kinks follow torch: relu'(0) = 0, leaky_relu'(0) = negative_slope,
elu'(0) = alpha; and at NaN: relu passes the upstream gradient (torch's mask is "not x <= 0"),
leaky_relu scales it by negative_slope (torch's is "x > 0"), elu gives NaN (torch's vectorized
kernel: "x > 0 ? g : g alpha e^x"; its scalar loop, which only the last few elements of an array
that are fewer than two SIMD vectors reach, passes the gradient instead). Backward functions
are pure and avoid `xp.where` on the hot path: a mask multiply (`g * astype(x > 0)`) is several
times faster in NumPy and equally exact. Inputs must be float32 or float64 (check_float).
"""

from __future__ import annotations

from .. import _backend as B
from .._backend import check_float, check_same_dtype, namespace


def _backward_args(op, grad_output, input, output=None):
    """Namespace of a backward's arrays, checking grad_output against the input (or output=):
    same backend, device, dtype and shape, so nothing broadcasts or promotes silently."""
    xp = namespace(grad_output, input, output, op=op, names=("grad_output", "input", "output"))
    ref = output if output is not None else input
    if ref is None:
        raise TypeError(f"{op}: expected the forward's input (or its output=), got neither")
    check_float(op, ref, "input" if output is None else "output")
    if grad_output.shape != ref.shape:
        raise ValueError(f"{op}: expected grad_output of shape {tuple(ref.shape)} (the input's), got {tuple(grad_output.shape)}")
    check_same_dtype(op, grad_output=grad_output, input=input, output=output)
    return xp


def _mask(cond, like, xp):
    return xp.astype(cond, like.dtype)


def relu(input):
    """relu(x) = max(0, x)."""
    xp = namespace(input, op="relu")
    check_float("relu", input)
    return xp.maximum(input, B.zero_like(input))  # a cached 0-d zero: clip() costs 3x more in NumPy


def relu_backward(grad_output, input=None, *, output=None):
    """d relu/dx = 0 if x <= 0 else 1  (so NaN passes the gradient, as torch).

    output=relu(x) gives the same mask (relu(x) <= 0 exactly where x <= 0, NaN stays NaN): the module
    keeps its output, which the next layer keeps anyway, instead of a second array (as autograd does)."""
    _backward_args("relu_backward", grad_output, input, output)
    # where(x <= 0, 0, g) in one fused pass on either backend (tested equal to _relu_backward_plain, bit for bit)
    return B.threshold_backward(grad_output, input if output is None else output, 0)


def _relu_backward_plain(grad_output, input):
    """relu_backward as one expression on any backend: the reference B.threshold_backward is tested against."""
    xp = B.namespace(grad_output, input)
    return xp.where(input <= 0, B.zero_like(grad_output), grad_output)


def leaky_relu(input, negative_slope=0.01):
    """leaky_relu(x) = x if x > 0 else negative_slope * x."""
    xp = namespace(input, op="leaky_relu")
    check_float("leaky_relu", input)
    negative_slope = B.as_float("leaky_relu", "negative_slope", negative_slope)
    return xp.where(input > 0, input, input * negative_slope)


def leaky_relu_backward(grad_output, input, negative_slope=0.01):
    """d leaky_relu/dx = 1 if x > 0 else negative_slope."""
    xp = _backward_args("leaky_relu_backward", grad_output, input)
    negative_slope = B.as_float("leaky_relu_backward", "negative_slope", negative_slope)
    pos = _mask(input > 0, grad_output, xp)
    return grad_output * (pos + (1.0 - pos) * negative_slope)


def elu(input, alpha=1.0):
    """elu(x) = x if x > 0 else alpha * (e^x - 1)."""
    xp = namespace(input, op="elu")
    check_float("elu", input)
    alpha = B.as_float("elu", "alpha", alpha)
    neg = alpha * xp.expm1(xp.clip(input, max=0.0))  # clip: no overflow in the unused branch
    return xp.where(input > 0, input, neg)


def elu_backward(grad_output, input, alpha=1.0):
    """d elu/dx = 1 if x > 0 else alpha * e^x  (so NaN gives NaN, as torch's vectorized kernel)."""
    xp = _backward_args("elu_backward", grad_output, input)
    alpha = B.as_float("elu_backward", "alpha", alpha)
    pos_side = input > 0
    pos = _mask(pos_side, grad_output, xp)
    neg = alpha * xp.exp(xp.where(pos_side, B.zero_like(input), input))  # no overflow in the unused branch
    return grad_output * (pos + (1.0 - pos) * neg)


_GELU_APPROX = ("none", "tanh")
_KAPPA = 0.044715


def _check_approx(op, approximate):
    if approximate not in _GELU_APPROX:
        raise ValueError(f"{op}: expected approximate to be one of {_GELU_APPROX}, got {approximate!r}")


def gelu(input, approximate="none"):
    """gelu(x) = x * Phi(x);  tanh form: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    namespace(input, op="gelu")
    check_float("gelu", input)
    _check_approx("gelu", approximate)
    if approximate == "tanh":
        xp = namespace(input)
        inner = B.SQRT_2_OVER_PI * (input + _KAPPA * input * input * input)
        return 0.5 * input * (1.0 + xp.tanh(inner))
    return B.gelu_erf(input, keep_erf=False)[0]


def _gelu_erf(x):
    """(gelu(x), erf(x / sqrt 2)): the module keeps the erf for its backward (the costly part on NumPy).
    The reference expression: B.gelu_erf computes it with fewer temporaries, bit for bit (test_fused)."""
    e = B.erf(x / B.SQRT_2)
    return 0.5 * x * (1.0 + e), e


def _gelu_backward_erf(grad_output, x, e, xp):
    """g (Phi(x) + x phi(x)) with Phi(x) = (1 + e) / 2 from e = erf(x / sqrt 2). The reference expression:
    B.gelu_backward_erf computes it with 2 new arrays instead of 9, bit for bit (test_fused)."""
    cdf = 0.5 * (1.0 + e)
    pdf = B.INV_SQRT_2PI * xp.exp(-0.5 * x * x)
    return grad_output * (cdf + x * pdf)


def gelu_backward(grad_output, input, approximate="none"):
    """d gelu/dx = Phi(x) + x phi(x);  tanh form: 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)."""
    xp = _backward_args("gelu_backward", grad_output, input)
    _check_approx("gelu_backward", approximate)
    if approximate == "tanh":
        x2 = input * input
        t = xp.tanh(B.SQRT_2_OVER_PI * (input + _KAPPA * x2 * input))
        d = 0.5 * (1.0 + t) + 0.5 * input * (1.0 - t * t) * B.SQRT_2_OVER_PI * (1.0 + 3.0 * _KAPPA * x2)
        return grad_output * d
    return B.gelu_backward_erf(grad_output, input)  # erf(x / sqrt 2) recomputed inside, a piece at a time


def sigmoid(input):
    """sigmoid(x) = 1 / (1 + e^-x), computed from e^-|x| so that no exp overflows."""
    xp = namespace(input, op="sigmoid")
    check_float("sigmoid", input)
    e = xp.exp(-xp.abs(input))  # in (0, 1]
    r = 1.0 / (1.0 + e)
    return xp.where(input >= 0, r, e * r)


def sigmoid_backward(grad_output, input=None, *, output=None):
    """d sigmoid/dx = s (1 - s), with s = sigmoid(x) (pass output= to reuse the forward's)."""
    _backward_args("sigmoid_backward", grad_output, input, output)
    s = sigmoid(input) if output is None else output
    return grad_output * s * (1.0 - s)


def tanh(input):
    """tanh(x) = (e^x - e^-x) / (e^x + e^-x)."""
    xp = namespace(input, op="tanh")
    check_float("tanh", input)
    return xp.tanh(input)


def tanh_backward(grad_output, input=None, *, output=None):
    """d tanh/dx = 1 - tanh(x)^2 (pass output= to reuse the forward's)."""
    xp = _backward_args("tanh_backward", grad_output, input, output)
    t = xp.tanh(input) if output is None else output
    return grad_output * (1.0 - t * t)


def _check_dim(op, x, dim):
    """dim as torch takes it: an int in [-ndim, ndim), and 0 or -1 for a 0-d input (a 1-element axis)."""
    if not B.is_int(dim):  # np.int64 too, as torch
        hint = " (torch's implicit choice of dim is deprecated: pass dim=)" if dim is None else ""
        raise TypeError(f"{op}: expected dim to be an int, got {type(dim).__name__} {dim!r}{hint}")
    dim = int(dim)
    n = max(x.ndim, 1)
    if not -n <= dim < n:
        raise IndexError(f"{op}: expected dim in [{-n}, {n}) for input of shape {tuple(x.shape)}, got {dim}")
    return dim


def _edge(x, dim):
    """0-d input or an empty reduced dim: the result is computed on a (1,)-shaped view / is empty."""
    return x.ndim == 0 or x.shape[dim] == 0


def _cast(op, input, dtype):
    """torch's dtype= on softmax / log_softmax: the input is cast to dtype (float32 or float64) first."""
    if dtype is None:
        return input
    namespace(input, op=op)
    try:
        name = B.dtype_name(dtype)
    except TypeError:
        raise TypeError(f"{op}: expected dtype None, float32 or float64, got {dtype!r}") from None
    return B.astype_name(input, name)


def _backward_cast(op, input, dtype, input_dtype):
    """For a backward with dtype=: (the input cast to dtype, the dtype its gradient returns in: x's own).
    From output= alone x's dtype is unknown, so input_dtype= must name it."""
    if dtype is None:
        return input, None
    if input is not None:
        return _cast(op, input, dtype), input.dtype
    if input_dtype is None:
        raise ValueError(f"{op}: with dtype={dtype!r} the gradient is returned in the input's dtype: pass "
                         f"input= or input_dtype= (the dtype the forward's input had), got neither")
    return None, input_dtype


def _in_dtype(grad_input, dtype):
    """The gradient of the cast: back in `dtype` (None: as it is)."""
    return grad_input if dtype is None else B.astype_name(grad_input, B.dtype_name(dtype))


def softmax(input, dim, dtype=None):
    """softmax(x)_i = e^(x_i - m) / sum_j e^(x_j - m), m = max_j x_j (log-sum-exp shift). dtype: cast x first."""
    input = _cast("softmax", input, dtype)
    xp = namespace(input, op="softmax")
    check_float("softmax", input)
    dim = _check_dim("softmax", input, dim)
    if _edge(input, dim):  # 0-d: softmax of one value is 1; an empty dim: nothing to normalise
        return xp.reshape(softmax(xp.reshape(input, (1,)), 0), ()) if input.ndim == 0 else input + 0
    e = xp.exp(input - xp.max(input, axis=dim, keepdims=True))
    return e / xp.sum(e, axis=dim, keepdims=True)


def softmax_backward(grad_output, input=None, dim=-1, *, output=None, dtype=None, input_dtype=None):
    """d softmax: dx = y * (g - sum(g * y)), the sum along dim (dtype=: computed in dtype,
    returned in x's; with output= and no input, input_dtype= names x's dtype)."""
    input, back = _backward_cast("softmax_backward", input, dtype, input_dtype)
    xp = _backward_args("softmax_backward", grad_output, input, output)
    dim = _check_dim("softmax_backward", grad_output, dim)
    y = softmax(input, dim) if output is None else output
    if grad_output.ndim == 0:
        dx = y * (grad_output - grad_output * y)
    else:
        dx = y * (grad_output - xp.sum(grad_output * y, axis=dim, keepdims=True))
    return _in_dtype(dx, back)


def log_softmax(input, dim, dtype=None):
    """log_softmax(x)_i = x_i - m - log sum_j e^(x_j - m). dtype: cast x first."""
    input = _cast("log_softmax", input, dtype)
    xp = namespace(input, op="log_softmax")
    check_float("log_softmax", input)
    dim = _check_dim("log_softmax", input, dim)
    if _edge(input, dim):
        return xp.reshape(log_softmax(xp.reshape(input, (1,)), 0), ()) if input.ndim == 0 else input + 0
    shifted = input - xp.max(input, axis=dim, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=dim, keepdims=True))


def log_softmax_backward(grad_output, input=None, dim=-1, *, output=None, dtype=None, input_dtype=None):
    """d log_softmax: dx = g - softmax(x) * sum(g), the sum along dim (dtype=: computed in dtype,
    returned in x's; with output= and no input, input_dtype= names x's dtype)."""
    input, back = _backward_cast("log_softmax_backward", input, dtype, input_dtype)
    xp = _backward_args("log_softmax_backward", grad_output, input, output)
    dim = _check_dim("log_softmax_backward", grad_output, dim)
    p = softmax(input, dim) if output is None else xp.exp(output)
    if grad_output.ndim == 0:
        dx = grad_output - p * grad_output
    else:
        dx = grad_output - p * xp.sum(grad_output, axis=dim, keepdims=True)
    return _in_dtype(dx, back)
