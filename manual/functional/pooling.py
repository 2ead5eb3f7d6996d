"""Pooling: max_pool2d, avg_pool2d, adaptive_avg_pool2d, each beside its backward.

The windows are strided views of the padded input (no copy): average pooling is one sum over
the window axes, max pooling one comparison per kernel tap over all windows at once; no loop
over positions. Backward:
- max: the gradient goes to the one input the window chose (its first maximum in row-major
  window order, as torch; a NaN wins over numbers, the last NaN of a window as in torch); windows
  that overlap add up: a scatter-add of g at the chosen flat indices into a fresh array;
- avg: each input in a window gets g / divisor: the same scatter-add, of every window position;
- adaptive avg: the pool is a linear map per axis, y = (P_h x P_w^T) / counts, so dL/dx = P_h^T (g / counts) P_w.
"""

from __future__ import annotations

import math

import numpy as np

from .. import _backend as B
from .._backend import check_same_dtype, namespace
from .conv import _ntuple, _pad

_NEG_INF = -math.inf


class _PoolGeometry:
    __slots__ = ("kernel", "stride", "dilation", "pads", "out_hw", "padding", "unbatched")


def _check_input(op, input):
    if input.ndim not in (3, 4):
        raise ValueError(f"{op}: expected a 3-D (C, H, W) or 4-D (N, C, H, W) input, got shape {tuple(input.shape)}")
    if input.shape[-1] == 0 or input.shape[-2] == 0 or input.shape[-3] == 0:
        raise ValueError(f"{op}: expected non-zero channel, height and width, got input of shape {tuple(input.shape)}")
    check_same_dtype(op, input=input)  # float32 or float64, named


def _pool_out(size, k, p, s, d, ceil_mode):
    """torch's pooling_output_shape: with ceil_mode, the last window must start inside the input or the left padding."""
    out = (size + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def _pool_geometry(op, input, kernel_size, stride, padding, dilation, ceil_mode):
    _check_input(op, input)
    k = _ntuple(op, "kernel_size", kernel_size, 2, 1)
    s = k if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0) else _ntuple(op, "stride", stride, 2, 1)
    p = _ntuple(op, "padding", padding, 2, 0)
    d = _ntuple(op, "dilation", dilation, 2, 1)
    if any(pp > kk // 2 for pp, kk in zip(p, k)):
        raise ValueError(f"{op}: expected padding of at most half the kernel size ({k[0] // 2}, {k[1] // 2}) "
                         f"for kernel_size={k}, got padding={p}")
    size = tuple(input.shape[-2:])
    out = tuple(_pool_out(n, kk, pp, ss, dd, ceil_mode) for n, kk, pp, ss, dd in zip(size, k, p, s, d))
    if any(o < 1 for o in out):
        raise ValueError(f"{op}: output size too small: input {size} with kernel_size={k}, stride={s}, padding={p}, "
                         f"dilation={d} gives an output of {out}; expected at least 1 x 1")
    g = _PoolGeometry()
    g.kernel, g.stride, g.dilation, g.padding, g.out_hw = k, s, d, p, out
    # the far border: as much as the last window reaches (more than padding in ceil_mode, maybe less)
    g.pads = tuple((pp, max((o - 1) * ss + dd * (kk - 1) + 1 - n - pp, 0))
                   for n, kk, pp, ss, dd, o in zip(size, k, p, s, d, out))
    g.unbatched = input.ndim == 3
    return g


def _check_grad(op, grad_output, input, out_hw):
    expected = tuple(input.shape[:-2]) + tuple(out_hw)
    if tuple(grad_output.shape) != expected:
        raise ValueError(f"{op}: expected grad_output of shape {expected} (the output's), got {tuple(grad_output.shape)}")
    check_same_dtype(op, grad_output=grad_output, input=input)


def _4d(x, xp):
    return xp.expand_dims(x, axis=0) if x.ndim == 3 else x


def _window_rows(xp, out, k, s, d, device):
    """(out, k) integer offsets into the padded axis: o*s + i*d."""
    return (xp.reshape(xp.arange(out, device=device) * s, (out, 1))
            + xp.reshape(xp.arange(k, device=device) * d, (1, k)))


# -- max pooling ----------------------------------------------------------------------------

_BASES = {}  # (shape, geometry, backend, device) -> each window's flat index of its first tap; a few kept


def _window_base(x, geo, xp, dtype):
    """(N, C, OH, OW): the flat index in x (N, C, H, W) of each window's tap (0, 0), (n C + c) H W + (oh sh - pt) W
    + (ow sw - pl). The same for every batch of one shape: built once, reused (never written to)."""
    n, c, h, w = x.shape
    (oh, ow), (sh, sw) = geo.out_hw, geo.stride
    (pt, _), (pl, _) = geo.pads
    key = (tuple(x.shape), geo.out_hw, geo.stride, pt, pl, type(x), str(x.device), dtype)
    base = _BASES.get(key)
    if base is None:
        dev = x.device
        start = (xp.reshape(xp.arange(oh, dtype=dtype, device=dev) * (sh * w) - pt * w, (oh, 1))
                 + xp.reshape(xp.arange(ow, dtype=dtype, device=dev) * sw - pl, (1, ow)))  # (OH, OW)
        base = xp.reshape(xp.arange(n * c, dtype=dtype, device=dev) * (h * w), (n, c, 1, 1)) + start
        if len(_BASES) >= 16:
            _BASES.pop(next(iter(_BASES)))
        _BASES[key] = base
    return base


def _max_pool2d(x, geo, xp, with_index=True, index_dtype=None):
    """(output (N, C, OH, OW), flat index of each chosen input in x (N, C, H, W) viewed as 1-D, or None).

    torch's own rule, tap by tap in row-major window order: a value replaces the running maximum
    when it is greater, or NaN; so ties keep the first maximum and a NaN the last NaN. One
    strided view per kernel tap over all windows at once (kh*kw steps, no loop over positions).
    index_dtype: int64 (default, as torch's indices) or int32 where the flat size allows (backward's own).
    """
    n, c, h, w = x.shape
    (oh, ow), (kh, kw), (sh, sw), (dh, dw) = geo.out_hw, geo.kernel, geo.stride, geo.dilation
    xpad = _pad(x, geo.pads, xp, _NEG_INF)
    taps = [xpad[:, :, i * dh:i * dh + (oh - 1) * sh + 1:sh, j * dw:j * dw + (ow - 1) * sw + 1:sw]
            for i in range(kh) for j in range(kw)]  # kh*kw strided views (N, C, OH, OW), no copies
    runs = [taps[0] if len(taps) > 1 else xp.asarray(taps[0], copy=True)]  # a 1x1 window: a copy, not a view
    for v in taps[1:]:
        runs.append(xp.maximum(runs[-1], v))  # the running maximum over taps 0..t; NaN propagates, as in torch
    best = runs[-1]
    if not with_index:  # evaluation: the value alone
        return best, None
    idt = xp.int64 if index_dtype is None else index_dtype
    offset = [i * dh * w + j * dw for i in range(kh) for j in range(kw)]
    if not bool(xp.any(best != best)):  # no NaN: the first tap equal to the maximum
        # the running maximum only grows, so the first tap holding the maximum is the number of running
        # maxima still below it; its offset, telescoped: sum_t [run_t < best] (offset[t+1] - offset[t])
        off = _window_base(x, geo, xp, idt)
        for t in range(len(taps) - 1):
            off = off + xp.astype(runs[t] < best, idt) * (offset[t + 1] - offset[t])
        return best, off
    # torch's loop itself: a value replaces the running maximum when greater, or NaN
    run, off = taps[0], xp.zeros(best.shape, dtype=idt, device=x.device)
    for t, v in enumerate(taps[1:], 1):
        better = (v > run) | (v != v)  # v != v: NaN
        run, off = xp.where(better, v, run), xp.where(better, xp.asarray(offset[t], dtype=idt, device=x.device), off)
    return best, off + _window_base(x, geo, xp, idt)


def _disjoint(geo):
    """No two windows share an input (stride >= the dilated kernel's extent, in both dimensions): then each
    input is chosen by one window at most, and the scatter below has no repeated index."""
    return all(s >= d * (k - 1) + 1 for s, d, k in zip(geo.stride, geo.dilation, geo.kernel))


def _max_pool2d_backward(grad_output, x_shape, index, xp, disjoint=False):
    """dL/dx[chosen] = sum of g over the windows that chose it: a scatter-add into fresh zeros (disjoint
    windows: a scatter, each input chosen once at most)."""
    return xp.reshape(B.scatter_add(index, grad_output, math.prod(x_shape), unique=disjoint), x_shape)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """y[n,c,h,w] = max_{i,j} x_pad[n, c, h*sh + i*dh, w*sw + j*dw] (padding is -inf).

    return_indices=True also returns, as torch, each maximum's flat index within its (H, W) plane.
    """
    xp = namespace(input, op="max_pool2d")
    geo = _pool_geometry("max_pool2d", input, kernel_size, stride, padding, dilation, ceil_mode)
    out, index = _max_pool2d(_4d(input, xp), geo, xp)
    if geo.unbatched:
        out, index = out[0, ...], index[0, ...]
    if not return_indices:
        return out
    h, w = input.shape[-2:]
    return out, index % (h * w)


def max_pool2d_backward(grad_output, input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                        return_indices=False):
    """d y[n,c,h,w] / d x = 1 at the window's argmax (its first maximum, as torch), 0 elsewhere; overlaps add.

    grad_output is the gradient of the pooled values (the indices of return_indices=True have none);
    return_indices is taken, and ignored, so that the forward's arguments can be passed again.
    """
    xp = namespace(grad_output, input, op="max_pool2d_backward")
    geo = _pool_geometry("max_pool2d_backward", input, kernel_size, stride, padding, dilation, ceil_mode)
    _check_grad("max_pool2d_backward", grad_output, input, geo.out_hw)
    x = _4d(input, xp)
    _, index = _max_pool2d(x, geo, xp, index_dtype=xp.int32 if math.prod(x.shape) < 2 ** 31 else None)
    gi = _max_pool2d_backward(_4d(grad_output, xp), tuple(x.shape), index, xp, _disjoint(geo))
    return gi[0, ...] if geo.unbatched else gi


# -- average pooling ------------------------------------------------------------------------

def _avg_divisor(geo, size, count_include_pad, divisor_override, like, xp):
    """(OH, OW) divisors, as torch: the window clipped to input + padding (count_include_pad) or to the input."""
    if divisor_override is not None:
        return float(divisor_override)
    counts = []
    for n, o, k, s, p in zip(size, geo.out_hw, geo.kernel, geo.stride, geo.padding):
        start = np.arange(o) * s - p
        end = np.minimum(start + k, n + p)
        counts.append(end - start if count_include_pad else np.minimum(end, n) - np.maximum(start, 0))
    return B.place(np.outer(*counts).astype(np.float64), B.device_of(like), like.dtype)


def _avg_pool_args(op, input, kernel_size, stride, padding, ceil_mode, divisor_override):
    geo = _pool_geometry(op, input, kernel_size, stride, padding, 1, ceil_mode)
    if divisor_override is not None and (not isinstance(divisor_override, int) or divisor_override == 0):
        raise ValueError(f"{op}: expected divisor_override to be None or a non-zero int, got {divisor_override!r}")
    return geo


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """y[n,c,h,w] = (1 / divisor[h,w]) sum_{i,j} x_pad[n, c, h*sh + i, w*sw + j] (padding is 0)."""
    xp = namespace(input, op="avg_pool2d")
    geo = _avg_pool_args("avg_pool2d", input, kernel_size, stride, padding, ceil_mode, divisor_override)
    x = _4d(input, xp)
    win = B.windows(_pad(x, geo.pads, xp), geo.out_hw, geo.kernel, geo.stride, geo.dilation)
    out = xp.sum(win, axis=(4, 5)) / _avg_divisor(geo, x.shape[2:], count_include_pad, divisor_override, x, xp)
    return out[0, ...] if geo.unbatched else out


def avg_pool2d_backward(grad_output, input, kernel_size, stride=None, padding=0, ceil_mode=False,
                        count_include_pad=True, divisor_override=None):
    """d y[n,c,h,w] / d x = 1 / divisor[h,w] for each x in the window, 0 elsewhere; overlaps add."""
    op = "avg_pool2d_backward"
    xp = namespace(grad_output, input, op=op)
    geo = _avg_pool_args(op, input, kernel_size, stride, padding, ceil_mode, divisor_override)
    _check_grad(op, grad_output, input, geo.out_hw)
    x, g = _4d(input, xp), _4d(grad_output, xp)
    n, c, h, w = x.shape
    (oh, ow), (kh, kw), (sh, sw) = geo.out_hw, geo.kernel, geo.stride
    (pt, pb), (pl, pr) = geo.pads
    hp, wp = h + pt + pb, w + pl + pr
    share = g / _avg_divisor(geo, (h, w), count_include_pad, divisor_override, x, xp)  # (N, C, OH, OW)
    dev = x.device
    rows = xp.reshape(_window_rows(xp, oh, kh, sh, 1, dev), (oh, 1, kh, 1))
    cols = xp.reshape(_window_rows(xp, ow, kw, sw, 1, dev), (1, ow, 1, kw))
    plane = xp.reshape(xp.arange(n * c, device=dev) * (hp * wp), (n, c, 1, 1, 1, 1))
    index = plane + rows * wp + cols  # (N, C, OH, OW, kh, kw) flat indices into the padded input
    values = xp.broadcast_to(xp.reshape(share, (n, c, oh, ow, 1, 1)), (n, c, oh, ow, kh, kw))
    gpad = xp.reshape(B.scatter_add(index, values, n * c * hp * wp), (n, c, hp, wp))
    gi = gpad[:, :, pt:pt + h, pl:pl + w]
    return gi[0, ...] if geo.unbatched else gi


# -- adaptive average pooling ---------------------------------------------------------------

def _adaptive_size(op, input, output_size):
    _check_input(op, input)
    sizes = (output_size, output_size) if output_size is None or B.is_int(output_size) else output_size
    if (not isinstance(sizes, (tuple, list)) or len(sizes) != 2
            or not all(v is None or (B.is_int(v) and v >= 0) for v in sizes)):
        raise ValueError(f"{op}: expected output_size to be a non-negative int or a tuple of 2 (non-negative int "
                         f"or None), got {output_size!r}")
    return tuple(n if v is None else int(v) for n, v in zip(input.shape[-2:], sizes))


def _adaptive_maps(size, out, like):
    """(P_h, P_w) 0/1 matrices (out, size), P[i, j] = 1 for j in [floor(i n / o), ceil((i + 1) n / o)), and their counts."""
    mats, counts = [], []
    for n, o in zip(size, out):
        i = np.arange(o)
        start, end = (i * n) // o, -((-(i + 1) * n) // o)
        j = np.arange(n)
        mats.append(B.place(((j >= start[:, None]) & (j < end[:, None])).astype(np.float64), B.device_of(like), like.dtype))
        counts.append(end - start)
    return mats, B.place(np.outer(*counts).astype(np.float64), B.device_of(like), like.dtype)


def adaptive_avg_pool2d(input, output_size):
    """y[n,c,h,w] = mean of x[n, c, floor(h H/OH) : ceil((h+1) H/OH), floor(w W/OW) : ceil((w+1) W/OW)]."""
    xp = namespace(input, op="adaptive_avg_pool2d")
    out = _adaptive_size("adaptive_avg_pool2d", input, output_size)
    (ph, pw), counts = _adaptive_maps(tuple(input.shape[-2:]), out, input)
    return (ph @ input @ xp.permute_dims(pw, (1, 0))) / counts  # (OH, H) @ (..., H, W) @ (W, OW)


def adaptive_avg_pool2d_backward(grad_output, input, output_size):
    """dL/dx = P_h^T (g / counts) P_w, P the 0/1 window-membership matrix of each axis."""
    op = "adaptive_avg_pool2d_backward"
    xp = namespace(grad_output, input, op=op)
    out = _adaptive_size(op, input, output_size)
    _check_grad(op, grad_output, input, out)
    (ph, pw), counts = _adaptive_maps(tuple(input.shape[-2:]), out, input)
    return xp.permute_dims(ph, (1, 0)) @ (grad_output / counts) @ pw  # (H, OH) @ (..., OH, OW) @ (OW, W)


__all__ = ["adaptive_avg_pool2d", "adaptive_avg_pool2d_backward", "avg_pool2d", "avg_pool2d_backward",
           "max_pool2d", "max_pool2d_backward"]
