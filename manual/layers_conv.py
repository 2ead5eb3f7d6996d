"""Convolution and pooling modules: Conv1d, Conv2d, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d.

Twins of torch.nn's, same constructor arguments and parameter layout (weight (out, in/groups,
*kernel), bias (out,)), re-exported from manual.nn. Forward saves what backward needs with
`self._save`: Conv keeps its padded input (backward rebuilds the im2col matrix from it a few images at
a time, never holding it for the whole batch), MaxPool2d the flat
index of each window's maximum, the average pools their input.
"""

from __future__ import annotations

import math

import numpy as np

from . import _backend as B
from . import init as I
from .functional import conv as _C
from .functional import pooling as _P
from ._grad_mode import is_grad_enabled
from .nn import Module, Parameter, _accumulate, _check_placement, _Name


def _check_grad(module, grad_output, shape, dtype):
    if tuple(grad_output.shape) != tuple(shape) or grad_output.dtype != dtype:
        raise ValueError(f"{module!r}.backward: expected grad_output of shape {tuple(shape)} and dtype {dtype} "
                         f"(like forward's output), got shape {tuple(grad_output.shape)} and dtype {grad_output.dtype}")


def _count(name, cls, n):
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ValueError(f"{cls}: expected {name} to be a positive int, got {n!r}")
    return int(n)


class _ConvNd(Module):
    _nd = 2

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True,
                 padding_mode="zeros", device=None, dtype=None, generator=None):
        super().__init__()
        cls, nd = type(self).__name__, self._nd
        in_channels, out_channels = _count("in_channels", cls, in_channels), _count("out_channels", cls, out_channels)
        groups = _count("groups", cls, groups)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"{cls}: groups={groups} must divide in_channels and out_channels, "
                             f"got in_channels={in_channels}, out_channels={out_channels}")
        if padding_mode != "zeros":
            raise ValueError(f"{cls}: only padding_mode='zeros' is implemented, got {padding_mode!r}")
        self.in_channels, self.out_channels, self.groups, self.padding_mode = in_channels, out_channels, groups, padding_mode
        self.kernel_size = _C._ntuple(cls, "kernel_size", kernel_size, nd, 1)
        self.stride = _C._ntuple(cls, "stride", stride, nd, 1)
        self.dilation = _C._ntuple(cls, "dilation", dilation, nd, 1)
        if isinstance(padding, str):
            if padding not in ("valid", "same"):
                raise ValueError(f"{cls}: expected padding to be an int, a tuple, 'valid' or 'same', got {padding!r}")
            if padding == "same" and any(s != 1 for s in self.stride):
                raise ValueError(f"{cls}: padding='same' is not supported for strided convolutions, got stride={stride!r}")
            self.padding = padding
        else:
            self.padding = _C._ntuple(cls, "padding", padding, nd, 0)
        shape = (out_channels, in_channels // groups) + self.kernel_size
        self.weight = Parameter(B.place(np.zeros(shape), device, dtype))
        self.bias = Parameter(B.place(np.zeros(out_channels), device, dtype)) if bias else None
        I.default_linear_init_(self.weight, self.bias, generator)  # torch's Conv reset_parameters: the same rule

    def _args(self):
        return self.stride, self.padding, self.dilation, self.groups

    def forward(self, input):
        w = self.weight.data
        if type(input) is not type(w) or input.dtype != w.dtype or (type(w) is not np.ndarray and input.device != w.device):
            _check_placement(self, input, w)
        xp = B.namespace(input, w)
        b = None if self.bias is None else self.bias.data
        geo = _C._conv_geometry(_Name(self), input, w, b, *self._args(), self._nd)
        x4, w4 = _C._as4d(input, w, geo, self._nd, xp)
        out, xq = _C._conv2d(x4, w4, b, geo, xp)
        self._save(_xq=xq, _geo=geo, _x_shape=tuple(x4.shape))
        return _C._from4d(out, geo, self._nd, xp)

    def backward(self, grad_output, *, input_grad=True):
        xq, geo, x_shape = self._saved("_xq"), self._saved("_geo"), self._saved("_x_shape")
        w = self.weight.data
        xp = B.namespace(grad_output, w, op=f"{type(self).__name__}.backward")
        out_sp = geo.out_hw[1:] if self._nd == 1 else geo.out_hw
        batch = () if geo.unbatched else x_shape[:1]
        _check_grad(self, grad_output, batch + (self.out_channels,) + tuple(out_sp), w.dtype)
        g4 = xp.expand_dims(grad_output, axis=0) if geo.unbatched else grad_output
        w4 = w
        if self._nd == 1:
            g4, w4 = xp.expand_dims(g4, axis=2), xp.expand_dims(w, axis=2)
        gi, gw, gb = _C._conv2d_backward(g4, x_shape, xq, w4, self.bias is not None, geo, xp, input_grad)
        _accumulate(self.weight, gw[:, :, 0, :] if self._nd == 1 else gw)
        if self.bias is not None:
            _accumulate(self.bias, gb)
        return None if gi is None else _C._from4d(gi, geo, self._nd, xp)

    def extra_repr(self):
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0,) * self._nd:
            s += f", padding={self.padding!r}"
        if self.dilation != (1,) * self._nd:
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s


class Conv2d(_ConvNd):
    """y = conv2d(x, W, b): W of shape (out_channels, in_channels/groups, kH, kW), initialised as torch does."""

    _nd = 2


class Conv1d(_ConvNd):
    """y = conv1d(x, W, b): W of shape (out_channels, in_channels/groups, kL), initialised as torch does."""

    _nd = 1


class MaxPool2d(Module):
    """y = max_pool2d(x, ...); backward routes each gradient to its window's (first) maximum."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = kernel_size if stride is None else stride
        self.padding, self.dilation, self.return_indices, self.ceil_mode = padding, dilation, return_indices, ceil_mode
        _P._ntuple("MaxPool2d", "kernel_size", kernel_size, 2, 1)  # bad arguments fail here, not at the first forward
        _P._ntuple("MaxPool2d", "stride", self.stride, 2, 1)

    def forward(self, input):
        B.backend_name(input)
        xp = B.namespace(input, op="MaxPool2d")
        geo = _P._pool_geometry(_Name(self), input, self.kernel_size, self.stride, self.padding, self.dilation,
                                self.ceil_mode)
        x = _P._4d(input, xp)
        # backward's own index in int32 where the flat size allows (half the traffic); torch's int64 when returned
        idt = None if self.return_indices or math.prod(x.shape) >= 2 ** 31 else xp.int32
        out, index = _P._max_pool2d(x, geo, xp, with_index=self.return_indices or is_grad_enabled(), index_dtype=idt)
        self._save(_index=index, _meta=(tuple(x.shape), geo.unbatched, out.dtype, _P._disjoint(geo)))
        if geo.unbatched:
            out, index = out[0, ...], index[0, ...]
        return (out, index % (x.shape[2] * x.shape[3])) if self.return_indices else out

    def backward(self, grad_output, *, input_grad=True):
        index, (x_shape, unbatched, dtype, disjoint) = self._saved("_index"), self._saved("_meta")
        if not input_grad:
            return None
        xp = B.namespace(grad_output, op="MaxPool2d.backward")
        _check_grad(self, grad_output, tuple(index.shape[1 if unbatched else 0:]), dtype)
        gi = _P._max_pool2d_backward(_P._4d(grad_output, xp) if unbatched else grad_output, x_shape, index, xp,
                                     disjoint)
        return gi[0, ...] if unbatched else gi

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")


class AvgPool2d(Module):
    """y = avg_pool2d(x, ...); backward spreads g / divisor over each window."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                 divisor_override=None):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = kernel_size if stride is None else stride
        self.padding, self.ceil_mode = padding, ceil_mode
        self.count_include_pad, self.divisor_override = count_include_pad, divisor_override
        _P._ntuple("AvgPool2d", "kernel_size", kernel_size, 2, 1)
        _P._ntuple("AvgPool2d", "stride", self.stride, 2, 1)

    def _kwargs(self):
        return {"kernel_size": self.kernel_size, "stride": self.stride, "padding": self.padding,
                "ceil_mode": self.ceil_mode, "count_include_pad": self.count_include_pad,
                "divisor_override": self.divisor_override}

    def forward(self, input):
        B.backend_name(input)
        out = _P.avg_pool2d(input, **self._kwargs())
        self._save(_input=input)
        return out

    def backward(self, grad_output, *, input_grad=True):
        x = self._saved("_input")
        return _P.avg_pool2d_backward(grad_output, x, **self._kwargs()) if input_grad else None

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AdaptiveAvgPool2d(Module):
    """y = adaptive_avg_pool2d(x, output_size): the mean over torch's adaptive windows."""

    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, input):
        B.backend_name(input)
        out = _P.adaptive_avg_pool2d(input, self.output_size)
        self._save(_input=input)
        return out

    def backward(self, grad_output, *, input_grad=True):
        x = self._saved("_input")
        return _P.adaptive_avg_pool2d_backward(grad_output, x, self.output_size) if input_grad else None

    def extra_repr(self):
        return f"output_size={self.output_size}"


__all__ = ["AdaptiveAvgPool2d", "AvgPool2d", "Conv1d", "Conv2d", "MaxPool2d"]
