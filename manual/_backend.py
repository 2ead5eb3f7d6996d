"""The one place where `manual` touches a specific array library.

Everything else in `manual` is written against the Array API standard through
`array-api-compat`: `xp = namespace(x)` at the top of each op. This module holds

* `namespace`: `array_namespace`, cached per array type and with a clear error for
  mixed backends (a NumPy array next to a torch tensor);
* the functions the standard does not have (`erf` for GELU);
* placement: turning a `device=` / `dtype=` pair into arrays of the right backend.

Backends: NumPy (the default, `device=None` or `"numpy"`) and torch tensors on any torch
device (`"cpu"`, `"cuda"`, `"cuda:1"`, a `torch.device`). Torch tensors are used as plain
arrays: `manual` never asks torch for a gradient.
"""

from __future__ import annotations

import math
import numbers
import operator

import numpy as np
from array_api_compat import array_namespace

try:  # torch is a dependency, but keep `manual` importable in a NumPy-only environment
    import torch
except ImportError:  # pragma: no cover
    torch = None

_NAMESPACES: dict[type, object] = {}


def backend_name(x) -> str:
    """'numpy' or 'torch'; raises TypeError for anything else."""
    if isinstance(x, np.ndarray) or isinstance(x, np.generic):
        return "numpy"
    if torch is not None and isinstance(x, torch.Tensor):
        return "torch"
    raise TypeError(f"expected a NumPy array or a torch tensor, got {type(x).__name__}")


def _is_array(x) -> bool:
    return isinstance(x, (np.ndarray, np.generic)) or (torch is not None and isinstance(x, torch.Tensor))


def namespace(*arrays, op: str = "manual", names=None):
    """The Array API namespace of `arrays`, all of which must share one backend and device.

    names: the arguments' names, for the error (else "argument i", counting `arrays`).

    Cached per array type: `array_namespace` costs microseconds per call, and the hot
    path (one training step of a small MLP) makes dozens of calls. The common case (every
    argument of one type, on one device) returns after a dict lookup and a short loop.
    """
    first = arrays[0] if arrays else None
    t = type(first)
    xp = _NAMESPACES.get(t)
    if xp is not None:  # plain loops: measurably cheaper than all(<generator>) at this call rate
        if t is np.ndarray:
            for a in arrays:
                if a is not None and type(a) is not t:
                    break
            else:
                return xp
        else:
            dev = first.device
            for a in arrays:
                if a is not None and (type(a) is not t or a.device != dev):
                    break
            else:
                return xp
    return _namespace_checked(arrays, op, names)


def _namespace_checked(arrays, op, names=None):
    """The slow path of `namespace`: validate every argument and explain what is wrong."""
    first = None
    arg = (lambda i: names[i - 1]) if names else (lambda i: f"argument {i}")  # noqa: E731
    for i, a in enumerate(arrays, 1):
        if a is None:
            continue
        if not _is_array(a):
            raise TypeError(f"{op}: expected a NumPy array or a torch tensor as {arg(i)}, got {type(a).__name__}")
        if first is None:
            first, like = a, (names[i - 1] if names else "the first argument")
            continue
        if backend_name(a) != backend_name(first):
            raise TypeError(
                f"{op}: mixed backends: expected every array on {backend_name(first)} "
                f"(like {like}), got a {backend_name(a)} array as {arg(i)}"
            )
        if backend_name(a) == "torch" and a.device != first.device:
            raise ValueError(
                f"{op}: mixed devices: expected every tensor on {first.device}, got one on {a.device}"
            )
    if first is None:
        raise TypeError(f"{op}: expected at least one array")
    t = type(first)
    xp = _NAMESPACES.get(t)
    if xp is None:
        xp = _NAMESPACES[t] = array_namespace(first)
    return xp


_NP_F32, _NP_F64 = np.dtype(np.float32), np.dtype(np.float64)
_T32, _T64 = (torch.float32, torch.float64) if torch is not None else (None, None)


def check_float(op: str, x, what: str = "input") -> None:
    """Refuse, by name, every dtype but float32 and float64 (float16 sums overflow or round to 0,
    complex and integer inputs are not what the derivatives here are written for)."""
    dt = x.dtype
    if dt is _NP_F64 or dt is _NP_F32 or dt is _T32 or dt is _T64:  # identities: ~50 ns on the hot path
        return
    if isinstance(dt, np.dtype) and dt.kind == "f" and dt.itemsize in (4, 8):  # non-native byte order
        return
    raise TypeError(f"{op}: expected {what} of dtype float32 or float64 (the dtypes manual supports), got {dt}")


def as_float(op: str, name: str, value) -> float:
    """A scalar hyperparameter as a Python float. torch takes any real number (a NumPy scalar too)
    and keeps the input's dtype; NumPy would promote float32 arrays times an np.float64 to float64."""
    if not isinstance(value, numbers.Real):
        raise TypeError(f"{op}: expected {name} to be a real number, got {type(value).__name__} {value!r}")
    return float(value)


def is_int(v) -> bool:
    """An int as torch takes one: a NumPy integer too (np.int64 from array arithmetic), not a bool."""
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


def as_int(op: str, name: str, value) -> int:
    """An integer argument (ignore_index) as a Python int. torch takes an int, a NumPy integer or an integer
    tensor of one element, and refuses a bool or a float (TypeError, 'must be int, not float')."""
    try:
        if isinstance(value, (bool, np.bool_)):
            raise TypeError
        return int(operator.index(value))
    except TypeError:
        raise TypeError(f"{op}: expected {name} to be an integer, got {type(value).__name__} {value!r}") from None


def check_same_dtype(op: str, **arrays) -> None:
    """Raise TypeError naming `op` when floating arrays disagree in dtype (no silent promotion), or
    when the first is not float32 or float64 (check_float)."""
    dtype = None
    for name, a in arrays.items():
        if a is None:
            continue
        if dtype is None:
            check_float(op, a, name)
            dtype = a.dtype
        elif a.dtype != dtype:
            got = ", ".join(f"{n}={a.dtype}" for n, a in arrays.items() if a is not None)
            raise TypeError(f"{op}: mixed dtypes: expected one floating dtype for all inputs, got {got}")


_ZEROS: dict = {}


def zero_like(x):
    """A cached 0-d zero of x's dtype and device, for `xp.maximum(x, zero)` (no per-call allocation)."""
    key = (type(x), x.dtype, getattr(x, "device", None))
    z = _ZEROS.get(key)
    if z is None:
        xp = namespace(x)
        z = _ZEROS[key] = xp.zeros((), dtype=x.dtype, device=x.device)
    return z


def erf(x, out=None):
    """Error function, elementwise, on either backend (not in the Array API standard); out= (an array of
    x's shape, backend and dtype, x itself allowed) receives the result instead of a new array.

    torch: `torch.special.erf`. NumPy float32: `_erf_float32` below (whole-array NumPy operations,
    2-2.5x faster than SciPy's scalar loop, at most 0.85 float32 ulp from the true value). Other NumPy
    dtypes (float64): `scipy.special.erf`, accurate to float64 rounding, which is what the float64
    parity tests need.
    """
    if backend_name(x) == "torch":
        if out is None:
            return torch.special.erf(x)
        if out is x:  # in place: autograd records it when x requires grad (out= it refuses)
            return x.erf_()
        if x.requires_grad or out.requires_grad:
            return out.copy_(torch.special.erf(x))
        return torch.special.erf(x, out=out)
    if x.dtype.kind == "f" and x.dtype.itemsize == 4:
        return _erf_float32(x, out)
    from scipy.special import erf as _erf  # accurate to float64 rounding

    if out is not None and out.dtype == x.dtype:
        return _erf(x, out=out)
    res = _erf(x).astype(x.dtype, copy=False)
    if out is not None:
        out[...] = res
        return out
    return res


# erf(x) = x R(x^2) for |x| <= float32(3.95): the odd rational x P(x^2) / Q(x^2) of Eigen's and XLA's
# float32 erf, here with P and Q of degree 5 in t = x^2, written as the continued fraction
#   R(t) = A0 + B0 / (t + A1 + B1 / (t + A2 + B2 / (t + A3 + B3 / (t + A4 + B4 / (t + A5)))))
# (the same rational P(t) / Q(t) in 15 NumPy operations instead of Horner's 21). Fitted here, not copied:
# minimax (Lawson's iteratively reweighted linearised least squares) of the relative error of
# erf(sqrt t) / sqrt t on t in [0, 3.95^2], then converted to the continued fraction in 50-digit arithmetic
# (every tail t + A_k + ... stays >= 2.5 on that range: no division comes near 0). Relative error of R:
# 2.07e-8 (checked against mpmath's erf), i.e. at most 0.35 float32 ulp, plus 0.5 ulp for the final rounding.
_ERF32_A = (0.053550348468469205, 17.422967849477374, -15.141243697725749,
            26.957956834433823, -14.061370338254754, 15.767343111499326)
_ERF32_B = (5.867950928965285, -48.20517644897031, 551.977129869859, 4.856739404427415, 263.44307026122704)
# |x| >= 3.95: erf(x) > 1 - 2^-25 rounds to 1 in float32 (erfc(3.95) = 2.3e-8), and R(3.95^2) 3.95 rounds
# to exactly 1.0, so clamping gives erf(+-inf) = +-1 and no overflow; NaN passes through the clip.
_ERF32_CLAMP = np.float32(3.95)
_ERF32_CHUNK = 16384  # elements per pass: three float64 scratch rows of 128 KiB, reused chunk after chunk


def _erf_float32(x, into=None):
    """erf of a float32 NumPy array (or scalar) in float64 arithmetic, rounded once to float32.

    Approximation: x R(x^2), R the degree-(5, 5) rational of `_ERF32_A` / `_ERF32_B` (above), evaluated
    as a continued fraction in float64 (rounding error ~2e-15, nothing next to the fit's 2.07e-8) over
    chunks of `_ERF32_CHUNK` elements (small scratch, no whole-array float64 temporaries). Accuracy, measured against
    `scipy.special.erf` in float64 on every one of the 1,082,130,433 float32 in [0, 4] (subnormals
    included; erf(-x) = -erf(x) bit for bit by construction, and |x| > 3.95 is the clamp): max error
    0.847 ulp of the float32 result (R's relative error 2.07e-8, up to 0.35 ulp, plus the final
    rounding; reached at x = 3.2290947 and near 0), max absolute error 5.05e-8 (at x = 3.2290947).
    erf(+-0) = +-0, erf(+-inf) = +-1 exactly, NaN in NaN out. Eigen's/XLA's float32 rationals (the
    older [-4, 4] one and the newer degree-9/12 one), evaluated in float32 NumPy (no fused multiply-add),
    measured 7.2 and 5.3 ulp on every 97th float32 in [0, 5]: hence float64 arithmetic here.
    18 NumPy passes over float64: 2-2.5x faster than SciPy here (7.1 against 16.8 ms on 1M elements,
    2 cores at load 2.7); torch.erf is faster still, but torch is not called from NumPy code (its
    thread pool contended with NumPy's).

    Same semantics as the ufunc it replaces: shape kept, a 0-d array or a NumPy scalar gives a NumPy
    float32 scalar, dtype float32 (a non-native byte order is kept), the input is never written.
    """
    a0, a1, a2, a3, a4, a5 = _ERF32_A
    b0, b1, b2, b3, b4 = _ERF32_B
    c = _ERF32_CLAMP
    flat = np.ravel(x)  # a view when x is contiguous; read only
    n = flat.size
    direct = (into is not None and into.dtype == np.float32 and into.flags.c_contiguous
              and into.shape == np.shape(x))
    # a view of into: each chunk reads flat[s:e] before it writes out[s:e], so into may be x itself
    out = into.reshape(-1) if direct else np.empty(n, np.float32)
    size = min(n, _ERF32_CHUNK)
    if size:
        y, t, r = np.empty((3, size))
        with np.errstate(under="ignore"):  # erf of a subnormal x rounds to a subnormal float32
            for s in range(0, n, size):
                e = min(s + size, n)
                if e - s != size:  # the last, shorter chunk
                    y, t, r = y[: e - s], t[: e - s], r[: e - s]
                np.clip(flat[s:e], -c, c, out=y)  # to float64, exactly
                np.multiply(y, y, out=t)  # exact in float64
                np.add(t, a5, out=r)
                for a, b in ((a4, b4), (a3, b3), (a2, b2), (a1, b1)):
                    np.divide(b, r, out=r)
                    np.add(r, t, out=r)
                    np.add(r, a, out=r)
                np.divide(b0, r, out=r)
                np.add(r, a0, out=r)
                np.multiply(y, r, out=out[s:e])  # the one rounding to float32
    if into is not None:
        if not direct:  # into could not be written chunk by chunk: copy the result in
            into[...] = out.reshape(np.shape(x))
        return into
    res = out.reshape(np.shape(x))
    if res.dtype != x.dtype:  # non-native byte order, as scipy's erf(x).astype(x.dtype) gave
        res = res.astype(x.dtype)
    return res if res.ndim else res[()]


# -- fused kernels: one pass where the plain expression in manual.functional takes several ---------
# Each is tested equal to the plain expression it stands for (parity_tests/test_fused.py); the
# functional op keeps that expression as its NumPy path and as the reference.

def threshold_backward(grad_output, input, threshold):
    """where(input <= threshold, 0, grad_output): NaN in input passes the gradient (input <= t is False),
    and a NaN or inf gradient where input <= t gives +0, as torch. torch: torch's one fused kernel
    (aten.threshold_backward, what autograd's own ReLU backward runs), ~11 us on 256x256 float32 here
    against ~150 us for the plain where. NumPy: np.where is ~9x slower than a mask multiply, and a mask
    multiply gets NaN (0 * NaN) and -0 where torch gets +0; so the select is done on the bits: the
    gradient's bits AND all-ones where kept, AND 0 (= +0.0) where dropped (~1.3x the multiply's time)."""
    if type(grad_output) is not np.ndarray:
        return torch.ops.aten.threshold_backward.default(grad_output, input, threshold)
    dt = grad_output.dtype
    bits = _BITS.get(dt.itemsize)  # the signed integer of the float's width
    # the integer mask is made in the result itself and ANDed there: nothing but the result is as large as
    # the gradient (a boolean and an integer mask beside it were 1.25x a float32 gradient). All-ones or
    # all-zeros masks are the same in either byte order, so any float layout is kept as it is.
    out = np.empty(grad_output.shape, dt)
    mask = out.view(bits)
    np.less_equal(input, threshold, out=mask)  # 1 where dropped, 0 where kept
    np.subtract(mask, 1, out=mask)  # 0 where dropped, -1 (every bit set) where kept
    return np.bitwise_and(mask, grad_output.view(bits), out=mask).view(dt)


_BITS = {4: np.dtype(np.int32), 8: np.dtype(np.int64)}


def min_max(x):
    """(min, max) of an integer array as Python ints, in one pass on torch (aminmax); x non-empty."""
    if type(x) is np.ndarray:
        return int(x.min()), int(x.max())
    lo, hi = torch.aminmax(x)
    if x.is_cuda:  # one copy to the host (one wait for the GPU), not one per value
        lo, hi = torch.stack((lo, hi)).tolist()
    return int(lo), int(hi)


def take_rows(a, cols):
    """a[i, cols[i]] for each row i of a (M, C), as (M,): a gather (torch.gather; NumPy's take_along_axis),
    without the Array API wrapper's argument handling (8 of its 11 us on 256 x 10 here)."""
    if type(a) is np.ndarray:
        return np.take_along_axis(a, np.reshape(cols.astype(np.int64, copy=False), (-1, 1)), axis=1).reshape(-1)
    return torch.gather(a, 1, cols.reshape(-1, 1).to(torch.int64)).reshape(-1)


def index_add_rows_(g, cols, values):
    """g[i, cols[i]] += values[i] (or the scalar values) for every row i, in place: one entry per row, so no
    two updates meet. torch: one scatter_add_; NumPy: a fancy-indexed +=."""
    n = g.shape[0]
    if type(g) is np.ndarray:
        g[np.arange(n), cols] += values
        return g
    v = values.reshape(n, 1) if isinstance(values, torch.Tensor) else torch.full((n, 1), values, dtype=g.dtype,
                                                                                 device=g.device)
    return g.scatter_add_(1, cols.reshape(n, 1), v)


def addmm(bias, x, weight):
    """x W^T + b for x (B, in), W (out, in), b (out,) on torch tensors, in one call: torch.addmm adds the bias
    inside the matrix multiply (what autograd's F.linear runs), one pass over the (B, out) output fewer than
    x @ W.T then += b. Equal to that plain form to rounding, not bit for bit: the BLAS may add b before the
    last partial sums (parity_tests/test_fused.py bounds the difference)."""
    return torch.addmm(bias, x, weight.T)


def exp_(a):
    """exp(a) written into a (an array the caller made and owns; not in the Array API): NumPy's out=,
    torch's Tensor.exp_."""
    if type(a) is np.ndarray:
        return np.exp(a, out=a)
    return a.exp_()


# Just above the log of each float dtype's smallest normal number (its ceiling, plus 1): exp of anything
# below that log is subnormal or 0, which torch's and NumPy's vectorized exps compute 10-100x slower than a
# normal result (on this repository's 2-core CPU, torch float32: exp(-88) 120x, exp(-inf) 20x; float64
# exp(-708) 17x; NumPy float32 exp(-88) 7x, float64 exp(-720) 60x). Measured fast: -86 and -707.
_EXP_FLOOR = {n: math.ceil(math.log(np.finfo(n).tiny)) + 1.0 for n in ("float16", "float32", "float64")}


def exp_causal_(s):
    """exp(s) written into s, for causal attention's shifted scores (..., L, S) (s - rowmax, -inf above the
    diagonal): exactly 0 above the diagonal, as exp(-inf), and exp(max(s, floor)) on and below it, floor just
    above the log of the dtype's smallest normal number `tiny` (-86 in float32, -707 in float64), so that
    the exp never makes a subnormal or 0, its slow case: the half of the scores that the mask removes would
    otherwise take most of the exp's time (gpt-256x4's step: 1.1 of the 1.2 ms of each exp). A score more
    than |floor| below its row's maximum gets a weight below e^2 tiny / rowsum instead of a subnormal or
    0: far below the rounding of any weight that counts (parity_tests/test_fused.py). NumPy float32 takes
    the plain exp: its exp(-inf) is a fast case there, so the clamp and the mask would only add two
    passes; a score below the floor then gets exp's own subnormal or 0 (the same bound holds). CUDA takes
    the plain exp too."""
    floor = _EXP_FLOOR.get(str(s.dtype).replace("torch.", ""))
    if type(s) is np.ndarray:
        if s.dtype == np.float32 or floor is None:
            return np.exp(s, out=s)
        np.maximum(s, floor, out=s)
        np.exp(s, out=s)
        s *= np.tri(s.shape[-2], s.shape[-1], dtype=bool)  # 0 above the diagonal
        return s
    if s.is_cuda:  # a GPU's exp takes -inf and subnormals at full speed: one kernel, not three launches
        return s.exp_()
    if floor is not None:
        s.clamp_(min=floor)
    return s.exp_().tril_()


def rsqrt(var, eps):
    """1 / sqrt(var + eps) (torch: rsqrt, one operation fewer)."""
    if type(var) is np.ndarray:
        return 1.0 / np.sqrt(var + eps)
    return torch.rsqrt(var + eps)


def mul_add(a, w, b):
    """a * w + b, a new array (torch: one addcmul instead of a product and an add)."""
    if type(a) is np.ndarray:
        out = a * w
        out += b  # into the product made above
        return out
    return torch.addcmul(b, a, w)


def mul_reusing(buf, a, b):
    """a * b. NumPy: written into buf, an array of the product's shape and dtype that the caller made and no
    longer needs (one array fewer held at once; the same bits). torch: a new tensor (out= is refused on
    tensors that require grad)."""
    if type(buf) is np.ndarray and buf.shape == np.broadcast_shapes(np.shape(a), np.shape(b)) \
            and buf.dtype == np.result_type(a, b):
        return np.multiply(a, b, out=buf)
    return a * b


def mul_sub_reusing(buf, a, b, c):
    """a * b - c, c broadcast against the product. NumPy: the product written into buf as mul_reusing, then c
    subtracted there (the same bits). torch: one addcmul(-c, a, b), a pass over the result fewer (to
    rounding: where the kernel fuses the multiply and the add, one rounding instead of two)."""
    if type(buf) is np.ndarray:
        out = mul_reusing(buf, a, b)
        out -= c
        return out
    return torch.addcmul(-c, a, b)


def sub_mul_(d, a, m):
    """d -= a * m in place on d, an array the caller owns (torch: one addcmul_ instead of a product and a
    subtraction). NumPy, with a of d's shape and m broadcast against it (the norms' (rows, 1) or (1, C)
    statistics): blocks of rows of at most SUB_PIECE elements, so that the product a * m is held a block
    at a time, not as another array of d's size; the same bits as the whole expression."""
    if type(d) is not np.ndarray:
        return d.addcmul_(a, m, value=-1.0)
    n = d.shape[0] if d.ndim else 0
    mn = np.ndim(m)
    if (d.size <= SUB_PIECE or np.shape(a) != d.shape or mn > d.ndim
            or (mn == d.ndim and m.shape[0] not in (1, n))):
        d -= a * m
        return d
    rows = max(1, SUB_PIECE // (d.size // n))
    by_row = mn == d.ndim and m.shape[0] == n  # m varies along the blocks' axis
    for s in range(0, n, rows):
        b = slice(s, s + rows)
        db = d[b]  # a view, updated in place (d[b] -= ... would also copy the view onto itself)
        db -= a[b] * (m[b] if by_row else m)
    return d


SUB_PIECE = 1 << 14  # elements of sub_mul_'s product held at once on NumPy: 64 KiB of float32


PIECE = 1 << 18  # elements per piece of the elementwise paths (GELU): 1 MiB of float32 temporaries


CUDA_PIECE = 1 << 22  # on a GPU: a piece is a kernel launch (~5 us of CPU each, measured on an H200),
# so pieces there are 16 MiB of float32: whole arrays for every model in the bench


def _pieces(*arrays, chunk=PIECE):
    """Flat-slice pieces of `chunk` elements (CUDA_PIECE on a GPU) when every array is contiguous, of one
    shape and larger than one piece (the temporaries are then held for a piece at a time); None to take
    the whole arrays at once."""
    a = arrays[0]
    if type(a) is np.ndarray:
        n = a.size
    else:
        n = a.numel()
        if a.is_cuda:
            chunk = max(chunk, CUDA_PIECE)
    if n <= chunk or not all(_flat_view_ok(a, b) for b in arrays):
        return None
    return [slice(s, min(n, s + chunk)) for s in range(0, n, chunk)]


def _flat(a):
    return a.reshape(-1)  # a view: contiguous


def gelu_erf(x, keep_erf=True):
    """(gelu(x), e) with e = erf(x / sqrt 2): the expressions of manual.functional.activations._gelu_erf
    (0.5 x (1 + e)) with the same roundings in the same order, bit for bit, but the temporaries written
    in place: 3 new arrays instead of 5. (Each new large array is fresh pages from the OS when glibc has
    trimmed its heap, which a chain of freed temporaries makes it do: in the GPT step those faults cost
    more than the arithmetic.) keep_erf=False: (gelu(x), None), the same bits computed PIECE
    elements at a time, so that no erf or (1 + e) of the whole array is ever held."""
    if isinstance(x, (np.ndarray, np.generic)) and x.ndim == 0:  # NumPy scalars: nothing to write into
        e = erf(x / SQRT_2)
        return 0.5 * x * (1.0 + e), (e if keep_erf else None)
    pieces = None if keep_erf else _pieces(x)
    if pieces is None:
        e = x / SQRT_2
        erf(e, out=e)
        out = x * 0.5  # 0.5 * x
        t = e + 1.0
        out *= t  # (0.5 x) (1 + e)
        return out, (e if keep_erf else None)
    out = x * 0.5  # 0.5 * x, then (1 + e) multiplied in piece by piece
    fx, fo = _flat(x), _flat(out)
    for s in pieces:
        e = fx[s] / SQRT_2
        erf(e, out=e)
        e += 1.0  # 1 + e, in our own piece
        o = fo[s]  # a view, multiplied in place (fo[s] *= e would also copy the view onto itself)
        o *= e
    return out, None


def gelu_backward_erf(grad_output, x, e=None, reuse_e=False):
    """g (cdf + x pdf), cdf = 0.5 (1 + e), pdf = exp(-0.5 x x) / sqrt(2 pi): the expressions of
    manual.functional.activations._gelu_backward_erf, same roundings in the same order, bit for bit,
    with 2 new arrays instead of 9. e = erf(x / sqrt 2) as forward kept it, or None to recompute it
    (the forward's expression) PIECE elements at a time: then the result is the only new array of
    x's size, its temporaries held for a piece at a time. reuse_e=True: e is the caller's own, read
    for the last time here, and becomes the result (one new array instead of 2)."""
    if isinstance(x, (np.ndarray, np.generic)) and x.ndim == 0:  # scalars: the plain expression
        e = erf(x / SQRT_2) if e is None else e
        return grad_output * (0.5 * (1.0 + e) + x * (INV_SQRT_2PI * np.exp(-0.5 * x * x)))
    pieces = _pieces(x, grad_output) if e is None else None
    if pieces is None:
        if e is None:  # our own: it becomes the result below
            e = x / SQRT_2
            erf(e, out=e)
            reuse_e = True
        t = x * -0.5  # -0.5 * x
        t *= x
        exp_(t)
        t *= INV_SQRT_2PI  # pdf
        t *= x  # x * pdf
        if reuse_e and type(e) is type(t) and e.shape == t.shape and e.dtype == t.dtype:
            out = e
            out += 1.0
        else:
            out = e + 1.0
        out *= 0.5  # cdf
        out += t
        out *= grad_output
        return out
    out = x * -0.5  # -0.5 * x, the rest piece by piece into it
    fx, fg, fo = _flat(x), _flat(grad_output), _flat(out)
    for s in pieces:
        xs, t = fx[s], fo[s]
        t *= xs
        exp_(t)
        t *= INV_SQRT_2PI  # pdf
        t *= xs  # x * pdf
        c = xs / SQRT_2
        erf(c, out=c)
        c += 1.0
        c *= 0.5  # cdf
        t += c  # x pdf + cdf: the same sum as cdf + x pdf, into out's piece (no copy back)
        t *= fg[s]
    return out


UPDATE_CHUNK = 1 << 16  # elements per piece of an in-place update: a 256 KiB (float32) temporary at most


def sub_scaled_(d, lr, x):
    """d -= lr * x, in place, with the plain expression's two roundings (bit for bit), but with the (lr x)
    temporary bounded to UPDATE_CHUNK elements instead of the parameter's size: a large parameter is
    updated piece by piece through flat views. (torch.optim.SGD's d.add_(x, alpha=-lr) has no
    temporary, but it may fuse the two roundings into one multiply-add, and the guide's worked numbers
    are checked exactly.)"""
    pieces = _pieces(d, x, chunk=UPDATE_CHUNK)
    if pieces is None:
        d -= lr * x
        return d
    fd, fx = _flat(d), _flat(x)
    for s in pieces:
        v = fd[s]  # a view, updated in place (fd[s] -= ... would also copy the view onto itself)
        v -= lr * fx[s]
    return d


def sub_scaled_all_(ds, lr, xs):
    """sub_scaled_(d, lr, x) for each pair, the same bits. torch: the parameters no larger than UPDATE_CHUNK
    in two foreach kernels (torch._foreach_mul, then _foreach_sub_: the same two roundings), instead of
    two dispatches per parameter, which is most of a small model's optimizer step; larger ones piece by piece."""
    if ds and torch is not None and type(ds[0]) is not np.ndarray:
        small = [d.numel() <= (CUDA_PIECE if d.is_cuda else UPDATE_CHUNK) for d in ds]
        if sum(small) > 1:
            torch._foreach_sub_([d for d, k in zip(ds, small) if k],
                                torch._foreach_mul([x for x, k in zip(xs, small) if k], lr))
            for d, x, k in zip(ds, xs, small):
                if not k:
                    sub_scaled_(d, lr, x)
            return ds
    for d, x in zip(ds, xs):
        sub_scaled_(d, lr, x)
    return ds


def _flat_view_ok(d, x):
    if type(d) is np.ndarray:
        return d.flags.c_contiguous and x.flags.c_contiguous and d.shape == x.shape
    return d.is_contiguous() and x.is_contiguous() and d.shape == x.shape


SQRT_2 = math.sqrt(2.0)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


# -- placement: device= and dtype= -------------------------------------------------------

_DTYPE_NAMES = {"float32": "float32", "float": "float32", "float64": "float64", "double": "float64"}


def dtype_name(dtype) -> str:
    """'float32' or 'float64' from a string, a NumPy dtype or a torch dtype."""
    if dtype is None:
        return "float32"  # torch's default, so that both twins start alike
    if isinstance(dtype, str):
        key = dtype
    elif torch is not None and isinstance(dtype, torch.dtype):
        key = str(dtype).replace("torch.", "")
    else:
        key = np.dtype(dtype).name
    if key not in _DTYPE_NAMES:
        raise TypeError(f"dtype: expected float32 or float64, got {dtype!r}")
    return _DTYPE_NAMES[key]


def astype_name(x, name):
    """x as 'float32' / 'float64' on its own backend and device (a copy only when the dtype changes)."""
    if backend_name(x) == "torch":
        return x.to(getattr(torch, name))
    return x.astype(np.dtype(name), copy=False)


def parse_device(device):
    """('numpy', None) or ('torch', torch.device) from a device= argument."""
    if device is None or (isinstance(device, str) and device == "numpy"):
        return "numpy", None
    if torch is None:  # pragma: no cover
        raise ValueError(f"device={device!r} needs torch, which is not installed")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(
            f"device: expected None or 'numpy' (NumPy), or a torch device such as 'cpu' or 'cuda', "
            f"got {device!r}"
        ) from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r}: CUDA was asked for, but torch sees no CUDA GPU")
    return "torch", dev


def device_of(x):
    """The device= value that places a new array next to `x` ('numpy' or a torch.device)."""
    return "numpy" if backend_name(x) == "numpy" else x.device


def place(data, device=None, dtype=None):
    """Convert `data` (NumPy array, torch tensor, list, scalar) to the given backend/device/dtype."""
    kind, dev = parse_device(device)
    name = dtype_name(dtype)
    if kind == "numpy":
        if torch is not None and isinstance(data, torch.Tensor):
            data = data.detach().cpu().numpy()
        return np.asarray(data, dtype=name)
    tdtype = getattr(torch, name)
    if isinstance(data, torch.Tensor):
        return data.detach().to(device=dev, dtype=tdtype)
    return torch.as_tensor(np.asarray(data), dtype=tdtype, device=dev)


def _is_floating(x) -> bool:
    """A real floating dtype (NumPy or torch)."""
    if isinstance(x, np.ndarray) or isinstance(x, np.generic):
        return x.dtype.kind == "f"
    return x.dtype.is_floating_point


def place_like(value, like):
    """`value` (NumPy or torch) on `like`'s backend and device, in `like`'s dtype (any dtype, integers too)."""
    if isinstance(like, np.ndarray):
        return np.asarray(to_numpy(value), dtype=like.dtype)
    if not isinstance(value, torch.Tensor):
        value = torch.from_numpy(np.asarray(value))
    return value.detach().to(device=like.device, dtype=like.dtype)


def to_numpy(x) -> np.ndarray:
    """A NumPy copy-or-view of an array from either backend (for logging and comparisons)."""
    if torch is not None and isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def fill_(dst, values: np.ndarray):
    """Write NumPy `values` into the existing array `dst` in place (used by manual.init)."""
    if backend_name(dst) == "torch":
        dst.copy_(torch.from_numpy(np.ascontiguousarray(values)))
    else:
        dst[...] = values
    return dst


# -- convolution and pooling: strided windows and a scatter-add (manual.functional.conv, pooling) --

def windows(x, out_hw, kernel, stride, dilation):
    """A read-only (N, C, OH, OW, kh, kw) view of the 4-D array x, no copy:
    view[n, c, oh, ow, i, j] = x[n, c, oh*sh + i*dh, ow*sw + j*dw]."""
    (oh, ow), (kh, kw), (sh, sw), (dh, dw) = out_hw, kernel, stride, dilation
    shape = (x.shape[0], x.shape[1], oh, ow, kh, kw)
    if backend_name(x) == "torch":  # strides in elements, from the storage offset of x
        s0, s1, s2, s3 = x.stride()
        return x.as_strided(shape, (s0, s1, s2 * sh, s3 * sw, s2 * dh, s3 * dw), x.storage_offset())
    s0, s1, s2, s3 = x.strides  # in bytes
    return np.lib.stride_tricks.as_strided(x, shape, (s0, s1, s2 * sh, s3 * sw, s2 * dh, s3 * dw), writeable=False)


def folds(a):
    """True where conv2d_backward sends its column gradient back to the input with torch's fold (col2im)
    instead of one strided add per kernel tap: CUDA tensors, where each add is a kernel launch (LeNet's
    step on an H200 was launch-bound: 195 kernels against autograd's 65, the GPU busy a seventh of it).
    Not on the CPU: there the fold made LeNet's step 10.0 -> 16.1 ms."""
    return type(a) is not np.ndarray and a.is_cuda


def col2im_add_(gq, cols, kernel, stride, dilation):
    """gq (C, Hp, Wp, N) += col2im of cols (N, C*kh*kw, OH*OW), image by image: each input position gets the
    sum of its windows' entries, what conv2d_backward's per-tap strided adds make (the same terms, added
    in another order), as one torch.nn.functional.fold. (Hp, Wp): the padded input's size, which gives
    exactly OH x OW windows."""
    out = torch.nn.functional.fold(cols, tuple(gq.shape[1:3]), kernel, dilation=dilation, stride=stride)
    gq += torch.permute(out, (1, 2, 3, 0))
    return gq


def matmul_nt(a, b):
    """a @ b^T for a short, wide a (O, M) and b (K, M): a convolution's weight gradient, M the positions.
    NumPy: as (b @ a^T)^T, which OpenBLAS runs 1.3-1.8x faster for these shapes (LeNet's layers, in
    interleaved timings); torch: a @ b^T, its faster order there."""
    if type(a) is np.ndarray:
        return (b @ a.T).T
    return a @ b.T


def bmm_operand(a):
    """a as an operand of several batched matmuls: torch's batched matmul copies a strided (permuted) operand
    on every call, so one copy up front (contiguous) serves them all; NumPy's matmul takes a strided stack
    without copying it, so a NumPy array is returned as it is (a copy measured slower)."""
    if type(a) is np.ndarray:
        return a
    return a.contiguous()


def scaled_scores(q, k, scale, bias):
    """scale * q @ k^T + bias over the leading dims: q (..., L, E), k (..., S, E), bias (L, S) -> (..., L, S),
    a new array. torch: one baddbmm (the scale and the bias inside the matrix multiply, as addmm adds a
    Linear's bias), two passes over the (..., L, S) scores fewer; NumPy: the matmul, then *= and += on it.
    The same numbers to rounding (the scale times a sum, plus 0 or -inf, rounds once either way; the BLAS
    may order the sum differently)."""
    if type(q) is np.ndarray or q.ndim < 3:
        s = q @ np.swapaxes(k, -1, -2) if type(q) is np.ndarray else q @ k.transpose(-1, -2)
        s *= scale
        s += bias
        return s
    L, S = q.shape[-2], k.shape[-2]
    lead = tuple(q.shape[:-2])
    n = math.prod(lead)  # not -1: a reshape of 0 elements (L or S = 0, a GPT on T = 0 tokens) cannot infer it
    s = torch.baddbmm(bias, q.reshape((n, L, q.shape[-1])), k.reshape((n, S, k.shape[-1])).transpose(1, 2),
                      alpha=scale)
    return s.reshape(lead + (L, S))


def scatter_add(index, values, size, unique=False):
    """A new 1-D array of `size` zeros of values' dtype, plus values[k] at index[k] (repeats add up).

    unique=True promises no index repeats (max pooling's windows that do not overlap): on NumPy the values
    are then written in place of the zeros, instead of bincount's float64 sums cast back to the dtype
    (3x a float32 result's size, held at once). The same numbers: each sum has a single term."""
    if backend_name(values) == "torch":
        out = torch.zeros(size, dtype=values.dtype, device=values.device)
        return out.index_add_(0, index.reshape(-1), values.reshape(-1))
    if unique:
        out = np.zeros(size, dtype=values.dtype)
        out[index.reshape(-1)] = values.reshape(-1)  # a write into our own fresh array
        return out
    return np.bincount(index.reshape(-1), weights=values.reshape(-1), minlength=size).astype(values.dtype, copy=False)


def place_raw(values: np.ndarray, device=None):
    """A NumPy array on the given backend/device, keeping its dtype (a boolean mask, integer ids)."""
    kind, dev = parse_device(device)
    if kind == "numpy":
        return np.asarray(values)
    return torch.as_tensor(np.asarray(values), device=dev)


def place_labels(labels, device=None):
    """Integer class indices (targets, token ids) as int64 on the given backend/device: what
    cross_entropy and embedding take, on NumPy and torch alike."""
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"place_labels: expected integer class indices, got dtype {labels.dtype}")
    return place_raw(labels.astype(np.int64, copy=False), device)


def place_bool(mask, device=None):
    """A boolean mask (a dropout keep-mask) on the given backend/device, still boolean."""
    return place_raw(np.asarray(mask, dtype=bool), device)
