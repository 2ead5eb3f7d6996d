"""The fast paths of convolution and max pooling, against the plain expressions they replace.

- max_pool2d's chosen index: the first tap equal to the window's maximum is found as the number of
  running maxima still below it (the running maximum only grows), its offset telescoped tap by tap.
  Checked equal, bit for bit, to the definition (argmax over the window, first maximum) on ties,
  plateaus, overlapping windows, padding, dilation and ceil_mode, in int32 (backward's own) and int64;
- the im2col kernels, batch-last (C, H, W, N) and image-major (N, C, H, W), give the same numbers as the
  loop definition (test_conv.py checks the ops; here the module's own forward/backward on the shapes of
  the bench CNNs).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import DEVICE_OF

from manual import _backend as B
from manual import nn
from manual.functional import pooling as P
from manual.functional.conv import conv2d_backward_naive, conv2d_naive

POOLS = [  # (input shape, kwargs)
    ((2, 3, 8, 8), dict(kernel_size=2)),
    ((2, 3, 9, 7), dict(kernel_size=3, stride=1)),  # overlapping windows
    ((1, 2, 9, 9), dict(kernel_size=3, stride=2, padding=1)),
    ((1, 2, 10, 9), dict(kernel_size=(2, 3), stride=(2, 1), dilation=(2, 1))),
    ((2, 2, 7, 7), dict(kernel_size=2, ceil_mode=True)),
    ((1, 1, 5, 5), dict(kernel_size=1, stride=2)),
]


def _first_max_index(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """The definition: each window's first maximum in row-major window order, as a flat index into x."""
    geo = P._pool_geometry("ref", x, kernel_size, stride, padding, dilation, ceil_mode)
    n, c, h, w = x.shape
    (oh, ow), (kh, kw), (sh, sw), (dh, dw) = geo.out_hw, geo.kernel, geo.stride, geo.dilation
    (pt, _), (pl, _) = geo.pads
    out = np.zeros((n, c, oh, ow), dtype=np.int64)
    for a, b, r, s in np.ndindex(n, c, oh, ow):
        best, where = -np.inf, None
        for i in range(kh):
            for j in range(kw):
                y, z = r * sh + i * dh - pt, s * sw + j * dw - pl
                if 0 <= y < h and 0 <= z < w and (where is None or x[a, b, y, z] > best):
                    best, where = x[a, b, y, z], ((a * c + b) * h + y) * w + z
        out[a, b, r, s] = where
    return out


@pytest.mark.parametrize("backend", ["numpy", "torch-cpu"])
@pytest.mark.parametrize("data", ["normal", "ties", "plateau"])
@pytest.mark.parametrize("shape,kw", POOLS)
def test_max_pool_index_is_the_first_maximum(shape, kw, data, backend):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape)
    if data == "ties":
        x = np.round(x * 1.5)  # a few values: many windows hold their maximum twice or more
    elif data == "plateau":
        x = np.zeros(shape)
    want = _first_max_index(x, **kw)
    xt = B.place(x, DEVICE_OF[backend], "float32")
    xp = B.namespace(xt)
    geo = P._pool_geometry("t", xt, kw["kernel_size"], kw.get("stride"), kw.get("padding", 0), kw.get("dilation", 1),
                           kw.get("ceil_mode", False))
    for idt in (None, xp.int32):
        _, index = P._max_pool2d(xt, geo, xp, index_dtype=idt)
        got = B.to_numpy(index)
        assert got.dtype == (np.int64 if idt is None else np.int32)
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("backend", ["numpy", "torch-cpu"])
def test_max_pool_module_gradient_on_ties_equals_the_scatter_of_the_definition(backend):
    rng = np.random.default_rng(4)
    x = np.round(rng.standard_normal((3, 4, 8, 8)) * 1.5)
    g = rng.standard_normal((3, 4, 4, 4))
    want = np.bincount(_first_max_index(x, 2).reshape(-1), weights=g.reshape(-1), minlength=x.size).reshape(x.shape)
    dev = DEVICE_OF[backend]
    pool = nn.MaxPool2d(2)
    pool(B.place(x, dev, "float64"))
    got = B.to_numpy(pool.backward(B.place(g, dev, "float64")))
    np.testing.assert_array_equal(got, want)  # one value per input at most: exact


@pytest.mark.parametrize("backend", ["numpy", "torch-cpu", "torch-cpu-fold", pytest.param("torch-cuda", marks=[
    pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to torch")])])
@pytest.mark.parametrize("shape,wshape,pad", [((5, 16, 4, 4), (32, 16, 3, 3), 1), ((3, 1, 12, 12), (6, 1, 5, 5), 2),
                                              ((3, 6, 7, 7), (4, 3, 3, 3), 0)])
@pytest.mark.parametrize("per_chunk", [None, 1, 2])  # the whole batch at once; image by image; pairs, one short
@pytest.mark.parametrize("layout", ["batch-last", "image-major"])
def test_im2col_conv_module_equals_the_loop_definition(shape, wshape, pad, backend, per_chunk, layout, monkeypatch):
    """Both layouts (batch-last and image-major, each forced; CUDA is always batch-last), also when the columns
    are built a chunk of images at a time (COL_BYTES): one image per chunk, and two per chunk, the last chunk
    short (batches of 5 and 3)."""
    from manual.functional import conv as C

    monkeypatch.setattr(C, "IMAGE_MAJOR_OW", 0 if layout == "image-major" else 10 ** 9)

    if backend == "torch-cpu-fold":  # the CUDA path (B.fold_add_, torch's col2im) taken on CPU tensors
        monkeypatch.setattr(B, "folds", lambda a: isinstance(a, torch.Tensor))
        backend = "torch-cpu"
    if per_chunk is not None:
        oh = shape[2] + 2 * pad - wshape[2] + 1  # square maps, stride 1
        monkeypatch.setattr(C, "COL_BYTES", per_chunk * shape[1] * wshape[2] * wshape[3] * oh * oh * 8)  # float64
    rng = np.random.default_rng(5)
    groups = shape[1] // wshape[1]
    conv = nn.Conv2d(shape[1], wshape[0], wshape[2], padding=pad, groups=groups).to(device=DEVICE_OF[backend],
                                                                                   dtype="float64")
    x, g = rng.standard_normal(shape), None
    y = conv(B.place(x, DEVICE_OF[backend], "float64"))
    w, b = B.to_numpy(conv.weight.data), B.to_numpy(conv.bias.data)
    np.testing.assert_allclose(B.to_numpy(y), conv2d_naive(x, w, b, padding=pad, groups=groups), rtol=1e-12, atol=1e-12)
    g = rng.standard_normal(tuple(y.shape))
    gi = conv.backward(B.place(g, DEVICE_OF[backend], "float64"))
    rx, rw, rb = conv2d_backward_naive(g, x, w, b, padding=pad, groups=groups)
    for got, ref in ((gi, rx), (conv.weight.grad, rw), (conv.bias.grad, rb)):  # sums in another order: 1e-12
        np.testing.assert_allclose(B.to_numpy(got), ref, rtol=1e-12, atol=1e-12)
    assert isinstance(gi, torch.Tensor) == (backend != "numpy")


@pytest.mark.parametrize("kwargs", [dict(stride=2), dict(stride=(2, 3), dilation=(2, 1), padding=(1, 2)),
                                    dict(padding="same", dilation=2), dict(stride=3, groups=2)])
def test_the_fold_path_equals_the_tap_by_tap_adds(kwargs, monkeypatch):
    """The CUDA path of conv2d_backward (B.fold_add_: one torch fold) gives the per-tap strided adds' sums, on
    strides, dilations, asymmetric and "same" padding and groups (CPU tensors; both orders of the same terms)."""
    import manual.functional as MF

    rng = np.random.default_rng(11)
    x = torch.as_tensor(rng.standard_normal((3, 4, 11, 10)))
    w = torch.as_tensor(rng.standard_normal((6, 4 // kwargs.get("groups", 1), 3, 3)))
    g = torch.as_tensor(rng.standard_normal(tuple(MF.conv2d(x, w, **kwargs).shape)))
    loop = MF.conv2d_backward(g, x, w, **kwargs)
    monkeypatch.setattr(B, "folds", lambda a: isinstance(a, torch.Tensor))
    fold = MF.conv2d_backward(g, x, w, **kwargs)
    assert loop[0] is not None and fold[0] is not None
    for a, b in zip(loop, fold):
        if a is not None:
            torch.testing.assert_close(b, a, rtol=1e-13, atol=1e-13)
    expected = torch.autograd.grad(torch.nn.functional.conv2d(x.requires_grad_(), w, **kwargs), x, g)[0]
    torch.testing.assert_close(fold[0], expected, rtol=1e-12, atol=1e-12)


def test_the_layout_is_image_major_for_wide_maps_on_the_cpu_only():
    """LeNet's first layer (28 wide) runs image-major, its second (10 wide) and the digits CNN's batch-last;
    forward and backward decide alike from the input's type and the geometry (what forward keeps has one
    layout)."""
    from manual.functional import conv as C

    def geo(hw, k, pad):
        x = np.zeros((2, 1, hw, hw))
        return x, C._conv_geometry("t", x, np.zeros((3, 1, k, k)), None, 1, pad, 1, 1, 2)

    assert C._image_major(*geo(28, 5, 2)) and not C._image_major(*geo(14, 5, 0))
    x, g = geo(28, 5, 2)
    assert C._image_major(torch.as_tensor(x), g)
    if torch.cuda.is_available():
        assert not C._image_major(torch.as_tensor(x, device="cuda"), g)
