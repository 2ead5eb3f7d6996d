"""Convolution: conv1d and conv2d by im2col and one matrix multiply, backward included.

Forward (torch's conv is a cross-correlation), per group g, with xp the zero-padded input:

    y[n, o, h, w] = b[o] + sum_{c, i, j} W[o, c, i, j] xp[n, c, h*sh + i*dh, w*sw + j*dw]

im2col: the windows of xp are a strided view (no copy); laid out as the matrix cols
(C*kh*kw, OH*OW*N) they make the convolution one product W cols. Inside, a narrow map's input is held
batch-last, (C, H, W, N), so that a window row is one contiguous run of OW*N numbers: the copy
into cols (and col2im's adds) move long runs even for 4x4 maps; a map at least 16 wide is taken
image by image, cols (N, C*kh*kw, OH*OW), with no transposing copies (the layouts: below).
Backward:
- grad_weight = g cols^T (im2col's product, transposed), grad_bias = g summed over N, OH, OW;
- grad_input is the correlation of grad_output with the flipped kernel: g spread back on the
  stride grid, padded by d (k - 1), correlated with W rotated 180 degrees, in/out channels
  swapped within each group. Computed as col2im(W^T g): the same numbers, and cheaper than
  an im2col of the padded g when out_channels * H * W > in_channels * OH * OW (LeNet's conv2: 5x).

Memory: the column matrix is (C*kh*kw)/(sh*sw) times the input's size (25x for a 5x5 kernel), so it is
built COL_BYTES at a time, a chunk of images at a time, in forward and again in backward (from the
padded input the module keeps); the column gradient likewise. A step holds columns for a few images,
never for the batch, as torch's own convolution does not.

`conv2d_naive` / `conv2d_backward_naive` below are the definitions as loops, kept as the
readable reference the fast version is tested against.
"""

from __future__ import annotations

import numpy as np

from .. import _backend as B
from .._backend import check_same_dtype, namespace


# -- arguments ----------------------------------------------------------------------------------

def _ntuple(op, name, value, n, minimum):
    """An int or a sequence of n ints (or of 1, used for every dim, as torch), each >= minimum, as a tuple of n ints."""
    vals = (value,) * n if B.is_int(value) else value
    if isinstance(vals, (tuple, list)) and len(vals) == 1:
        vals = tuple(vals) * n
    if not isinstance(vals, (tuple, list)) or len(vals) != n or not all(B.is_int(v) for v in vals):
        sizes = f"1 or {n}" if n > 1 else "1"
        raise TypeError(f"{op}: expected {name} to be an int or a tuple of {sizes} ints, got {value!r}")
    if any(v < minimum for v in vals):
        what = "positive" if minimum == 1 else "non-negative"
        raise ValueError(f"{op}: expected {name} to be {what} (>= {minimum}), got {value!r}")
    return tuple(int(v) for v in vals)  # np.int64 as a Python int


class _Geometry:
    """Everything conv's forward and backward need besides the arrays, checked once."""

    __slots__ = ("stride", "dilation", "pads", "groups", "out_hw", "unbatched")


def _conv_geometry(op, input, weight, bias, stride, padding, dilation, groups, nd):
    """Validate conv{nd}d's arguments as torch does; spatial arguments as 2-tuples (conv1d: H = 1)."""
    if weight.ndim != nd + 2:
        dims = "(out_channels, in_channels/groups, kL)" if nd == 1 else "(out_channels, in_channels/groups, kH, kW)"
        raise ValueError(f"{op}: expected weight of shape {dims}, got {tuple(weight.shape)}")
    if input.ndim not in (nd + 1, nd + 2):
        lay = "(N, C, L) or (C, L)" if nd == 1 else "(N, C, H, W) or (C, H, W)"
        raise ValueError(f"{op}: expected a {nd + 2}-D input {lay}, got shape {tuple(input.shape)}")
    if not B.is_int(groups) or groups < 1:
        raise ValueError(f"{op}: expected groups to be a positive int, got {groups!r}")
    out_ch, cin_g = weight.shape[0], weight.shape[1]
    channels = input.shape[-nd - 1]
    if out_ch == 0:  # torch: 'expected weight to be at least 1 at dimension 0'
        raise ValueError(f"{op}: expected weight with at least one output channel (weight.shape[0] >= 1, as torch), "
                         f"got weight of shape {tuple(weight.shape)}")
    if out_ch % groups:
        raise ValueError(f"{op}: groups={groups} must divide out_channels: expected weight.shape[0] divisible "
                         f"by {groups}, got weight of shape {tuple(weight.shape)}")
    if cin_g * groups != channels:
        raise ValueError(f"{op}: groups={groups}, weight of shape {tuple(weight.shape)}: expected input with "
                         f"{cin_g * groups} channels (weight.shape[1] * groups), got {channels} channels "
                         f"(input of shape {tuple(input.shape)})")
    if bias is not None and tuple(bias.shape) != (out_ch,):
        raise ValueError(f"{op}: expected bias of shape ({out_ch},), got {tuple(bias.shape)}")
    check_same_dtype(op, input=input, weight=weight, bias=bias)
    s = _ntuple(op, "stride", stride, nd, 1)
    d = _ntuple(op, "dilation", dilation, nd, 1)
    k = tuple(weight.shape[2:])
    if isinstance(padding, str):
        if padding == "valid":
            pads = ((0, 0),) * nd
        elif padding == "same":
            if any(v != 1 for v in s):
                raise ValueError(f"{op}: padding='same' is not supported for strided convolutions, got stride={stride!r}")
            # total d (k - 1), the odd one out on the far side (torch's choice)
            pads = tuple((dd * (kk - 1) // 2, dd * (kk - 1) - dd * (kk - 1) // 2) for kk, dd in zip(k, d))
        else:
            raise ValueError(f"{op}: expected padding to be an int, a tuple of {nd} ints, 'valid' or 'same', got {padding!r}")
    else:
        pads = tuple((p, p) for p in _ntuple(op, "padding", padding, nd, 0))
    size = tuple(input.shape[-nd:])
    padded = tuple(n + a + b for n, (a, b) in zip(size, pads))
    extent = tuple(dd * (kk - 1) + 1 for kk, dd in zip(k, d))
    if any(e > p for e, p in zip(extent, padded)):
        raise ValueError(f"{op}: kernel larger than the padded input: expected a (dilated) kernel extent of at most "
                         f"{padded} (input {size} plus padding), got kernel {k} with dilation {d}, extent {extent}")
    g = _Geometry()
    g.out_hw = tuple((p - e) // ss + 1 for p, e, ss in zip(padded, extent, s))
    g.groups, g.unbatched = int(groups), input.ndim == nd + 1
    if nd == 1:  # conv1d is conv2d over a height of 1
        g.stride, g.dilation, g.pads, g.out_hw = (1, s[0]), (1, d[0]), ((0, 0), pads[0]), (1, g.out_hw[0])
    else:
        g.stride, g.dilation, g.pads = s, d, pads
    return g


# -- the kernels: 4-D input (N, C, H, W), 4-D weight (O, C/G, kh, kw), checked arguments ---------------
#
# Layout: two, by the output's width OW (_image_major).
# - Batch-last, for narrow outputs: inside a convolution the input is handled channel-first and
#   batch-last, (C, H, W, N), so that a window's rows are contiguous runs of OW*N elements (stride 1)
#   instead of OW: im2col, the matmul's output and col2im all move long runs (the digits CNN's OW is 4).
#   The price is three transposing copies: the input into (C, H, W, N), the output and grad_output
#   between (N, O, OH, OW) and (O, OH, OW, N).
# - Image-major, for outputs at least IMAGE_MAJOR_OW wide, on the CPU: the padded input as it is,
#   (N, C, Hp, Wp), and columns (N, C*kh*kw, OH*OW) image by image: W cols is then (N, O, OH*OW), the
#   output's own layout, with no transposing copy anywhere, and runs of OW are long enough to copy fast.
#   LeNet's first layer (28 wide, one channel): forward and backward 3.3 -> 1.8 ms on this 2-core CPU;
#   its second (10 wide) was 0.5 ms slower this way, so it stays batch-last.
# The public arrays stay (N, C, H, W) either way.

IMAGE_MAJOR_OW = 16


def _image_major(x, geo):
    """Whether this convolution runs image-major (above): an output at least IMAGE_MAJOR_OW wide, not on CUDA
    (there the batch-last path with torch's fold is the one measured). A function of the input's type and the
    geometry alone, so that forward and backward agree on the layout of what forward keeps."""
    return geo.out_hw[1] >= IMAGE_MAJOR_OW and (type(x) is np.ndarray or not x.is_cuda)


def _keep_input(x, geo, xp):
    """What forward keeps for backward: the padded input, image-major (N, C, Hp, Wp) or batch-last (C, Hp, Wp, N)."""
    return _pad(x, geo.pads, xp) if _image_major(x, geo) else _pad_chwn(x, geo.pads, xp)


def _im2col_images(xpad, kernel, stride, dilation, out_hw, xp):
    """(N, C*kh*kw, OH*OW) from the padded input (N, C, Hp, Wp): row (c, i, j) of image n holds tap (i, j) of
    channel c for every window (oh, ow); the windows a strided view, the reshape the one copy."""
    n, c = xpad.shape[0], xpad.shape[1]
    (oh, ow), (kh, kw) = out_hw, kernel
    win = B.windows(xpad, out_hw, kernel, stride, dilation)  # (N, C, OH, OW, kh, kw) view
    return xp.reshape(xp.permute_dims(win, (0, 1, 4, 5, 2, 3)), (n, c * kh * kw, oh * ow))


def _conv2d_images(x, weight, bias, geo, xp):
    """_conv2d, image-major: per chunk of images, (G, O/G, K/G) @ (nc, G, K/G, OH*OW) -> (nc, O, OH, OW)."""
    n = x.shape[0]
    o, cg, kh, kw = weight.shape
    G, (oh, ow) = geo.groups, geo.out_hw
    xpad = _pad(x, geo.pads, xp)
    w3 = xp.reshape(weight, (G, o // G, cg * kh * kw))
    chunks = _batch_chunks(n, _col_bytes(xpad, weight, geo))
    out = None if len(chunks) == 1 else xp.empty((n, o, oh, ow), dtype=x.dtype, device=x.device)
    for s in chunks:
        nc = s.stop - s.start
        cols = _im2col_images(xpad if nc == n else xpad[s], (kh, kw), geo.stride, geo.dilation, geo.out_hw, xp)
        y = xp.reshape(w3 @ xp.reshape(cols, (nc, G, cg * kh * kw, oh * ow)), (nc, o, oh, ow))  # a new array
        del cols  # before the next chunk's are built: one chunk of columns held at a time
        if bias is not None:
            y += xp.reshape(bias, (o, 1, 1))  # in place on our own product
        if out is None:
            return y, xpad
        out[s] = y  # a write into our own fresh array
        del y
    return out, xpad


def _conv2d_backward_images(grad_output, x_shape, xpad, weight, has_bias, geo, xp, input_grad=True):
    """_conv2d_backward, image-major: per chunk of images, dL/dW = sum over the images of g cols^T (per group),
    and dL/dcols = W^T g sent back to the input by one strided add per kernel tap (col2im)."""
    n, c, h, w = x_shape
    o, cg, kh, kw = weight.shape
    G, (oh, ow), (sh, sw), (dh, dw) = geo.groups, geo.out_hw, geo.stride, geo.dilation
    K = cg * kh * kw
    grad_bias = xp.sum(grad_output, axis=(0, 2, 3)) if has_bias else None
    (pt, _), (pl, _) = geo.pads
    gpad = xp.zeros(tuple(xpad.shape), dtype=grad_output.dtype, device=grad_output.device) if input_grad else None
    w3t = xp.permute_dims(xp.reshape(weight, (G, o // G, K)), (0, 2, 1))  # (G, K, O/G)
    grad_weight = None
    for s in _batch_chunks(n, _col_bytes(xpad, weight, geo)):
        nc = s.stop - s.start
        whole = nc == n
        cols = xp.reshape(_im2col_images(xpad if whole else xpad[s], (kh, kw), geo.stride, geo.dilation,
                                         geo.out_hw, xp), (nc, G, K, oh * ow))
        g = xp.reshape(grad_output if whole else grad_output[s], (nc, G, o // G, oh * ow))  # a view when contiguous
        # dL/dW = sum over the chunk's images of g cols^T: (nc, G, O/G, P) @ (nc, G, P, K) -> (G, O/G, K)
        gw = xp.sum(g @ xp.permute_dims(cols, (0, 1, 3, 2)), axis=0)
        del cols
        grad_weight = gw if grad_weight is None else grad_weight + gw
        if not input_grad:
            continue
        # dL/dcols = W^T g, (G, K, O/G) @ (nc, G, O/G, P) -> (nc, G, K, P), channel c = group * C/G + c';
        # col2im: tap (i, j) of window (oh, ow) goes back to x_pad[n, c, oh*sh + i*dh, ow*sw + j*dw]
        dcols = xp.reshape(w3t @ g, (nc, c, kh, kw, oh, ow))
        gq = gpad if whole else gpad[s]  # a view: the adds land in gpad
        for i in range(kh):
            rows = slice(i * dh, i * dh + (oh - 1) * sh + 1, sh)
            for j in range(kw):
                view = gq[:, :, rows, j * dw:j * dw + (ow - 1) * sw + 1:sw]
                view += dcols[:, :, i, j]  # in place through the view (our own fresh array)
        del dcols
    grad_weight = xp.reshape(grad_weight, (o, cg, kh, kw))
    if not input_grad:
        return None, grad_weight, grad_bias
    return gpad[:, :, pt:pt + h, pl:pl + w], grad_weight, grad_bias


def _pad(x, pads, xp, value=0.0):
    """A new array: x inside a border of `value` ((top, bottom), (left, right)); x itself if no border."""
    (t, b), (l, r) = pads
    if not (t or b or l or r):
        return x
    n, c, h, w = x.shape
    out = xp.full((n, c, h + t + b, w + l + r), value, dtype=x.dtype, device=x.device)
    out[:, :, t:t + h, l:l + w] = x  # a write into our own fresh array
    return out


def _pad_chwn(x, pads, xp):
    """A new (C, H + t + b, W + l + r, N) array: x (N, C, H, W) batch-last, inside a border of zeros."""
    (t, b), (l, r) = pads
    n, c, h, w = x.shape
    if not (t or b or l or r):  # the transposing copy alone (a reshape that cannot be a view)
        return xp.reshape(xp.reshape(xp.permute_dims(x, (1, 2, 3, 0)), (c, h, w * n)), (c, h, w, n))
    out = xp.zeros((c, h + t + b, w + l + r, n), dtype=x.dtype, device=x.device)
    out[:, t:t + h, l:l + w, :] = xp.permute_dims(x, (1, 2, 3, 0))  # a write into our own fresh array
    return out


def _im2col(xq, kernel, stride, dilation, out_hw, xp):
    """(C*kh*kw, OH*OW*N): row (c, i, j) holds tap (i, j) of channel c for every window (oh, ow, n).

    xq is the padded input batch-last, (C, Hp, Wp, N); its windows are a strided view, the reshape the one copy.
    """
    c, n = xq.shape[0], xq.shape[3]
    (oh, ow), (kh, kw) = out_hw, kernel
    win = B.windows(xp.permute_dims(xq, (0, 3, 1, 2)), out_hw, kernel, stride, dilation)  # (C, N, OH, OW, kh, kw) view
    win = xp.permute_dims(win, (0, 4, 5, 2, 3, 1))  # (C, kh, kw, OH, OW, N), still a view
    return xp.reshape(win, (c * kh * kw, oh * ow * n))


COL_BYTES = 1 << 22  # the im2col matrix, and its gradient, are built for at most this many bytes of it at a time


def _batch_chunks(n, per_image):
    """Slices of the batch whose im2col matrix holds at most COL_BYTES (per_image bytes an image): one slice
    when the whole batch fits. Forward and backward build the columns chunk by chunk, so a convolution
    holds its (C*kh*kw)/(stride^2) times larger column matrix for a few images at a time, never for the
    batch (LeNet's first layer: 9.6 MiB of columns for 128 images)."""
    step = max(1, COL_BYTES // max(1, per_image))
    return [slice(s, min(n, s + step)) for s in range(0, n, step)] or [slice(0, 0)]


def _col_bytes(xq, weight, geo):
    """Bytes of one image's im2col matrix: (C*kh*kw) x (OH*OW) elements, C = (C/G) * G (either layout of xq)."""
    itemsize = xq.itemsize if isinstance(xq, np.ndarray) else xq.element_size()
    c = weight.shape[1] * geo.groups
    return c * weight.shape[2] * weight.shape[3] * geo.out_hw[0] * geo.out_hw[1] * itemsize


def _conv_cols(cols, weight, geo, xp):
    """W cols: (O, K) @ (K, M) -> (O, M), per group; M = OH*OW*(images)."""
    o, cg, kh, kw = weight.shape
    G = geo.groups
    if G == 1:  # the one matmul
        return xp.reshape(weight, (o, cg * kh * kw)) @ cols
    # (G, O/G, K/G) @ (G, K/G, M), one batched matmul
    return xp.reshape(xp.reshape(weight, (G, o // G, cg * kh * kw)) @ xp.reshape(cols, (G, cg * kh * kw, -1)),
                      (o, -1))


def _conv2d(x, weight, bias, geo, xp):
    """(output (N, O, OH, OW), xq): xq, the padded input batch-last (C, Hp, Wp, N) (image-major (N, C, Hp, Wp)
    where _image_major), is what Conv2d keeps for the weight gradient (backward rebuilds the columns from
    it, chunk by chunk)."""
    if _image_major(x, geo):
        return _conv2d_images(x, weight, bias, geo, xp)
    n = x.shape[0]
    o, _, kh, kw = weight.shape
    oh, ow = geo.out_hw
    xq = _pad_chwn(x, geo.pads, xp)
    chunks = _batch_chunks(n, _col_bytes(xq, weight, geo))
    out = None if len(chunks) == 1 else xp.empty((n, o, oh, ow), dtype=x.dtype, device=x.device)
    for s in chunks:
        nc = s.stop - s.start
        y = _conv_cols(_im2col(xq if nc == n else xq[..., s], (kh, kw), geo.stride, geo.dilation, geo.out_hw, xp),
                       weight, geo, xp)  # (O, OH*OW*nc)
        if bias is not None:
            y += xp.reshape(bias, (o, 1))  # in place on our own product
        y = xp.permute_dims(xp.reshape(y, (o, oh, ow, nc)), (3, 0, 1, 2))  # (nc, O, OH, OW), a view
        if out is None:  # the whole batch at once: one copy to (N, O, OH, OW) in order
            return xp.reshape(xp.reshape(y, (-1,)), (n, o, oh, ow)), xq
        out[s] = y  # a write into our own fresh array
    return out, xq


def _conv2d_backward(grad_output, x_shape, xq, weight, has_bias, geo, xp, input_grad=True):
    """(grad_input, grad_weight, grad_bias) from grad_output (N, O, OH, OW) and the forward's padded
    batch-last input xq, a chunk of images at a time (_batch_chunks): each chunk's columns are rebuilt,
    used for dL/dW and freed, and its column gradient is sent back to the input and freed. (xq image-major
    where _image_major: _conv2d_backward_images.)"""
    if _image_major(grad_output, geo):
        return _conv2d_backward_images(grad_output, x_shape, xq, weight, has_bias, geo, xp, input_grad)
    n, c, h, w = x_shape
    o, cg, kh, kw = weight.shape
    G, (oh, ow), (sh, sw), (dh, dw) = geo.groups, geo.out_hw, geo.stride, geo.dilation
    K = cg * kh * kw
    grad_bias = xp.sum(grad_output, axis=(0, 2, 3)) if has_bias else None
    (pt, pb), (pl, pr) = geo.pads
    # accumulated batch-last, (C, H, W, N) as the columns are laid out, so that every tap's add moves runs
    # of OW*N; handed back as the (N, C, H, W) view of it
    gpad = xp.zeros((c, h + pt + pb, w + pl + pr, n), dtype=grad_output.dtype, device=grad_output.device) \
        if input_grad else None
    grad_weight = None
    for s in _batch_chunks(n, _col_bytes(xq, weight, geo)):
        nc = s.stop - s.start
        whole = nc == n
        cols = _im2col(xq if whole else xq[..., s], (kh, kw), geo.stride, geo.dilation, geo.out_hw, xp)
        g = grad_output if whole else grad_output[s]
        gmat = xp.reshape(xp.permute_dims(g, (1, 2, 3, 0)), (o, oh * ow * nc))  # (O, OH*OW*nc), cols' order
        # dL/dW = g cols^T, per group, summed over the chunks
        if G == 1:
            gw = B.matmul_nt(gmat, cols)  # gmat @ cols^T
        else:
            gw = xp.reshape(gmat, (G, o // G, -1)) @ xp.permute_dims(xp.reshape(cols, (G, K, -1)), (0, 2, 1))
        del cols
        if grad_weight is None:
            grad_weight = gw
        else:
            grad_weight += gw  # our own array
        if not input_grad:
            continue
        # dL/dcols = W^T g; col2im sends column (oh, ow, n)'s entry for tap (i, j) back to the input
        # it was read from, x_pad[n, c, oh*sh + i*dh, ow*sw + j*dw]: one strided add per kernel tap
        # over all positions at once (kh*kw adds, no loop over positions). The result equals the
        # full correlation of g (on the stride grid) with the flipped kernel (parity_tests/test_conv.py).
        gq = gpad if whole else gpad[..., s]  # a view: the adds land in gpad
        if B.folds(g):  # CUDA: the same sums as one col2im kernel (torch's fold), not kh*kw launches
            # W^T g per group and image, straight into fold's (nc, C*kh*kw, OH*OW) layout from g's own:
            # (G, K, O/G) @ (nc, G, O/G, OH*OW) -> (nc, G, K, OH*OW), channel c = group * C/G + c'
            dcols = xp.permute_dims(xp.reshape(weight, (G, o // G, K)), (0, 2, 1)) @ xp.reshape(g, (nc, G, o // G, oh * ow))
            B.col2im_add_(gq, xp.reshape(dcols, (nc, G * K, oh * ow)), (kh, kw), (sh, sw), (dh, dw))
            del dcols
            continue
        if G == 1:
            dcols = xp.permute_dims(xp.reshape(weight, (o, K)), (1, 0)) @ gmat  # (K, OH*OW*nc)
        else:
            dcols = xp.permute_dims(xp.reshape(weight, (G, o // G, K)), (0, 2, 1)) @ xp.reshape(gmat, (G, o // G, -1))
        dcols = xp.reshape(dcols, (c, kh, kw, oh, ow, nc))
        for i in range(kh):
            rows = slice(i * dh, i * dh + (oh - 1) * sh + 1, sh)
            for j in range(kw):
                gq[:, rows, j * dw:j * dw + (ow - 1) * sw + 1:sw, :] += dcols[:, i, j]  # our own fresh array
        del dcols
    grad_weight = xp.reshape(grad_weight, (o, cg, kh, kw))
    if not input_grad:
        return None, grad_weight, grad_bias
    return xp.permute_dims(gpad[:, pt:pt + h, pl:pl + w, :], (3, 0, 1, 2)), grad_weight, grad_bias


# -- public ops ------------------------------------------------------------------------------

def _as4d(x, w, geo, nd, xp):
    """input and weight as (N, C, H, W) / (O, C/G, kh, kw)."""
    if geo.unbatched:
        x = xp.expand_dims(x, axis=0)
    if nd == 1:
        x, w = xp.expand_dims(x, axis=2), xp.expand_dims(w, axis=2)
    return x, w


def _from4d(y, geo, nd, xp):
    if nd == 1:
        y = y[:, :, 0, :]
    return y[0, ...] if geo.unbatched else y


def _conv(op, nd, input, weight, bias, stride, padding, dilation, groups):
    xp = namespace(input, weight, bias, op=op)
    geo = _conv_geometry(op, input, weight, bias, stride, padding, dilation, groups, nd)
    x4, w4 = _as4d(input, weight, geo, nd, xp)
    return _from4d(_conv2d(x4, w4, bias, geo, xp)[0], geo, nd, xp)


def _conv_bwd(op, nd, grad_output, input, weight, bias, stride, padding, dilation, groups):
    xp = namespace(grad_output, input, weight, bias, op=op)
    geo = _conv_geometry(op, input, weight, bias, stride, padding, dilation, groups, nd)
    o = weight.shape[0]
    out_sp = geo.out_hw[1:] if nd == 1 else geo.out_hw
    expected = ((o,) if geo.unbatched else (input.shape[0], o)) + tuple(out_sp)
    if tuple(grad_output.shape) != expected:
        raise ValueError(f"{op}: expected grad_output of shape {expected} (the output's), got {tuple(grad_output.shape)}")
    check_same_dtype(op, grad_output=grad_output, input=input)
    x4, w4 = _as4d(input, weight, geo, nd, xp)
    g4 = xp.expand_dims(grad_output, axis=0) if geo.unbatched else grad_output
    if nd == 1:
        g4 = xp.expand_dims(g4, axis=2)
    gi, gw, gb = _conv2d_backward(g4, tuple(x4.shape), _keep_input(x4, geo, xp), w4, bias is not None, geo, xp)
    return _from4d(gi, geo, nd, xp), (gw[:, :, 0, :] if nd == 1 else gw), gb


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """y[n,o,h,w] = b[o] + sum_{c,i,j} W[o,c,i,j] x_pad[n, c, h*sh + i*dh, w*sw + j*dw] (c within o's group)."""
    return _conv("conv2d", 2, input, weight, bias, stride, padding, dilation, groups)


def conv2d_backward(grad_output, input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """dL/dx = g (*) rot180(W) (full correlation, g on the stride grid);  dL/dW = g^T im2col(x);  dL/db = sum g.

    Returns (grad_input, grad_weight, grad_bias); grad_bias is None when bias is None.
    """
    return _conv_bwd("conv2d_backward", 2, grad_output, input, weight, bias, stride, padding, dilation, groups)


def conv1d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """y[n,o,l] = b[o] + sum_{c,i} W[o,c,i] x_pad[n, c, l*s + i*d] (c within o's group)."""
    return _conv("conv1d", 1, input, weight, bias, stride, padding, dilation, groups)


def conv1d_backward(grad_output, input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """dL/dx = g (*) flip(W) (full correlation, g on the stride grid);  dL/dW = g^T im2col(x);  dL/db = sum g.

    Returns (grad_input, grad_weight, grad_bias); grad_bias is None when bias is None.
    """
    return _conv_bwd("conv1d_backward", 1, grad_output, input, weight, bias, stride, padding, dilation, groups)


# -- the definitions as loops: the readable reference (NumPy, float64; tests only) --------------

def conv2d_naive(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """conv2d by its definition, one output element at a time (CS231n's conv_forward_naive, with groups)."""
    import numpy as np

    geo = _conv_geometry("conv2d_naive", x, w, b, stride, padding, dilation, groups, 2)
    xp = np.pad(x, ((0, 0), (0, 0)) + geo.pads)
    n, o, (oh, ow), (sh, sw), (dh, dw) = x.shape[0], w.shape[0], geo.out_hw, geo.stride, geo.dilation
    cg, og = w.shape[1], o // groups
    y = np.zeros((n, o, oh, ow))
    for i, k, r, s in np.ndindex(n, o, oh, ow):
        c0 = (k // og) * cg  # first input channel of output channel k's group
        field = xp[i, c0:c0 + cg, r * sh:r * sh + dh * (w.shape[2] - 1) + 1:dh, s * sw:s * sw + dw * (w.shape[3] - 1) + 1:dw]
        y[i, k, r, s] = np.sum(field * w[k]) + (0.0 if b is None else b[k])
    return y


def conv2d_backward_naive(g, x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """The chain rule as loops: each output element sends g * W back to the inputs it read, and g * x to W."""
    import numpy as np

    geo = _conv_geometry("conv2d_backward_naive", x, w, b, stride, padding, dilation, groups, 2)
    (pt, _), (pl, _) = geo.pads
    xp = np.pad(x, ((0, 0), (0, 0)) + geo.pads)
    gx, gw = np.zeros_like(xp), np.zeros_like(w)
    n, o, (oh, ow), (sh, sw), (dh, dw) = x.shape[0], w.shape[0], geo.out_hw, geo.stride, geo.dilation
    cg, og, kh, kw = w.shape[1], o // groups, w.shape[2], w.shape[3]
    for i, k, r, s in np.ndindex(n, o, oh, ow):
        c0 = (k // og) * cg
        rows = slice(r * sh, r * sh + dh * (kh - 1) + 1, dh)
        cols = slice(s * sw, s * sw + dw * (kw - 1) + 1, dw)
        gx[i, c0:c0 + cg, rows, cols] += g[i, k, r, s] * w[k]
        gw[k] += g[i, k, r, s] * xp[i, c0:c0 + cg, rows, cols]
    gb = None if b is None else g.sum(axis=(0, 2, 3))
    return gx[:, :, pt:pt + x.shape[2], pl:pl + x.shape[3]], gw, gb


__all__ = ["conv1d", "conv1d_backward", "conv2d", "conv2d_backward"]
