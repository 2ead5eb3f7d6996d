"""Modules beyond the MLP: normalization, dropout, embedding, flatten and a residual block.

Twins of torch.nn's classes of the same names (constructor arguments, parameter and buffer
names), each with a hand-written `backward`. Re-exported from `manual.nn`. Forward keeps what
backward needs through `Module._save` (normalization keeps xhat and rstd, so backward does not
recompute the statistics); the math is in `manual.functional.normalization` / `regularization`.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from . import _backend as B
from . import init as I
from .functional import normalization as N
from .functional import regularization as R
from .nn import Module, Parameter, _Name, _accumulate


def _int(cls, what, n, low=1):
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < low:
        raise ValueError(f"{cls}: expected {what} to be an integer >= {low}, got {n!r}")
    return int(n)


def _check_input(module, input, like):
    """The input is an array on the parameters' backend, device and dtype."""
    B.backend_name(input)
    if like is None:
        return
    if B.device_of(input) != B.device_of(like) or B.backend_name(input) != B.backend_name(like):
        raise TypeError(f"{module!r}: expected an input on {B.device_of(like)} (where the parameters are), "
                        f"got one on {B.device_of(input)}: move the model with .to(...)")
    if input.dtype != like.dtype:
        raise TypeError(f"{module!r}: mixed dtypes: expected input of dtype {like.dtype} (the parameters'), got {input.dtype}")


def _check_grad(module, grad_output, shape, dtype):
    if tuple(grad_output.shape) != tuple(shape) or grad_output.dtype != dtype:
        raise ValueError(f"{module!r}.backward: expected grad_output of shape {tuple(shape)} and dtype {dtype} "
                         f"(like forward's output), got shape {tuple(grad_output.shape)} and dtype {grad_output.dtype}")


def _ones(n, device, dtype):
    return B.place(np.ones(n), device, dtype)


def _zeros(n, device, dtype):
    return B.place(np.zeros(n), device, dtype)


# -- normalization ---------------------------------------------------------------------------

class _Norm(Module):
    """Shared backward: dx = rstd (gh - mean(gh) - xhat mean(gh xhat)) over the normalised set, gh = g w
    (LayerNorm: N._norm_backward_rows, BatchNorm: N._norm_backward_channel, GroupNorm: N._norm_backward)."""

    def _affine_grads(self, xp, grad_output, xhat, axes, shape):
        if self.weight is not None:
            _accumulate(self.weight, xp.reshape(xp.sum(grad_output * xhat, axis=axes), shape))
        if self.bias is not None:
            _accumulate(self.bias, xp.reshape(xp.sum(grad_output, axis=axes), shape))


class LayerNorm(_Norm):
    """y = w * (x - mean) / sqrt(var + eps) + b over the last len(normalized_shape) dimensions."""

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True, device=None, dtype=None):
        super().__init__()
        if isinstance(normalized_shape, numbers.Integral):
            normalized_shape = (normalized_shape,)
        self.normalized_shape = tuple(_int("LayerNorm", "each of normalized_shape", n) for n in normalized_shape)
        N._check_eps("LayerNorm", eps)
        self.eps, self.elementwise_affine = eps, elementwise_affine
        self.weight = Parameter(_ones(self.normalized_shape, device, dtype)) if elementwise_affine else None
        self.bias = Parameter(_zeros(self.normalized_shape, device, dtype)) if elementwise_affine and bias else None

    def forward(self, input):
        w, b = (None if p is None else p.data for p in (self.weight, self.bias))
        _check_input(self, input, w)
        xp, axes = N._ln_check(_Name(self), input, self.normalized_shape, w, b, self.eps)
        xhat, rstd = N._stats(xp, input, axes, self.eps)
        self._save(_xhat=xhat, _rstd=rstd)
        return N._affine(xhat, w, b)

    def backward(self, grad_output, *, input_grad=True):
        xhat, rstd = self._saved("_xhat"), self._saved("_rstd")
        _check_grad(self, grad_output, xhat.shape, xhat.dtype)
        xp = B.namespace(grad_output, xhat, op="LayerNorm.backward")
        k = len(self.normalized_shape)
        gxhat = grad_output * xhat  # dw's product, and mean(gh xhat) = (g xhat) @ (w / D) in dx
        batch = tuple(range(xhat.ndim - k))
        if self.weight is not None:
            _accumulate(self.weight, xp.sum(gxhat, axis=batch))
        if self.bias is not None:
            _accumulate(self.bias, xp.sum(grad_output, axis=batch))
        if not input_grad:
            return None
        return N._norm_backward_rows(xp, grad_output, None if self.weight is None else self.weight.data, xhat, rstd,
                                     gxhat, k)

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"


class _BatchNorm(_Norm):
    _dims = ()  # the input ranks this class accepts

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 device=None, dtype=None, *, bias=True):
        super().__init__()
        cls = type(self).__name__
        self.num_features = _int(cls, "num_features", num_features)
        N._check_eps(cls, eps)
        if momentum is not None and (isinstance(momentum, bool) or not isinstance(momentum, numbers.Real)
                                     or not 0 <= momentum <= 1):
            raise ValueError(f"{cls}: expected momentum None (a cumulative average) or a number in [0, 1], got {momentum!r}")
        self.eps, self.momentum, self.affine, self.track_running_stats = eps, momentum, affine, track_running_stats
        c = self.num_features
        self.weight = Parameter(_ones(c, device, dtype)) if affine else None
        self.bias = Parameter(_zeros(c, device, dtype)) if affine and bias else None  # bias=False: w only, as torch
        if track_running_stats:
            self.register_buffer("running_mean", _zeros(c, device, dtype))
            self.register_buffer("running_var", _ones(c, device, dtype))
            kind, dev = B.parse_device(device)
            count = np.array(0, dtype=np.int64)
            self.register_buffer("num_batches_tracked", count if kind == "numpy" else B.torch.as_tensor(count, device=dev))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def _check_dims(self, input):
        if input.ndim not in self._dims:
            want = " or ".join(f"{d}D" for d in self._dims)
            raise ValueError(f"{self!r}: expected {want} input, got {input.ndim}D input of shape {tuple(input.shape)}")
        if input.shape[1] != self.num_features:
            raise ValueError(f"{self!r}: expected input with {self.num_features} channels in dimension 1, "
                             f"got input of shape {tuple(input.shape)}")

    def forward(self, input):
        w, b = (None if p is None else p.data for p in (self.weight, self.bias))
        rm, rv = self.running_mean, self.running_var
        _check_input(self, input, w if w is not None else rm)
        self._check_dims(input)
        use_batch = self.training or rm is None
        update = self.training and rm is not None
        xp, axes, m = N._bn_check(_Name(self), input, rm if update or not use_batch else None,
                                  rv if update or not use_batch else None, w, b, use_batch, 0.0, self.eps)
        if update:
            self.num_batches_tracked += 1  # in place, as torch
            momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        nd = input.ndim
        if use_batch and m == 0:  # an empty batch: an empty output, the running statistics kept (torch counts the batch)
            xhat = rstd = input + 0.0
        elif use_batch:
            xhat, rstd, mu, var = N._moments(xp, input, axes, self.eps)
            if update:
                N._update_running(rm, xp.reshape(mu, (-1,)), momentum)
                N._update_running(rv, xp.reshape(var, (-1,)) * (m / (m - 1)), momentum)
        else:
            rstd = 1.0 / N._channel_view(xp, xp.sqrt(rv + self.eps), nd)
            xhat = (input - N._channel_view(xp, rm, nd)) * rstd
        self._save(_xhat=xhat, _rstd=rstd, _batch_stats=use_batch)
        return N._affine(xhat, None if w is None else N._channel_view(xp, w, nd),
                         None if b is None else N._channel_view(xp, b, nd))

    def backward(self, grad_output, *, input_grad=True):
        xhat, rstd = self._saved("_xhat"), self._saved("_rstd")
        batch_stats = self._saved("_batch_stats")
        _check_grad(self, grad_output, xhat.shape, xhat.dtype)
        xp = B.namespace(grad_output, xhat, op=f"{type(self).__name__}.backward")
        nd = xhat.ndim
        axes = (0,) + tuple(range(2, nd))
        sum_g = xp.sum(grad_output, axis=axes, keepdims=True)  # db, and mean(gh) = w sum(g) / M in dx
        sum_gxhat = xp.sum(grad_output * xhat, axis=axes, keepdims=True)  # dw, and mean(gh xhat) = w dw / M
        if self.weight is not None:
            _accumulate(self.weight, xp.reshape(sum_gxhat, (-1,)))
        if self.bias is not None:
            _accumulate(self.bias, xp.reshape(sum_g, (-1,)))
        if not input_grad:
            return None
        wc = None if self.weight is None else N._channel_view(xp, self.weight.data, nd)
        if not batch_stats:  # eval: the running statistics are constants, dx = g w rstd
            return grad_output * rstd if wc is None else grad_output * (wc * rstd)
        m = math.prod(tuple(xhat.shape)) // xhat.shape[1]  # values per channel
        if m == 0:  # an empty batch: an empty gradient (dw and db above are sums over nothing: 0)
            return grad_output + 0.0
        return N._norm_backward_channel(grad_output, wc, xhat, rstd, sum_g, sum_gxhat, m)

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Batch norm over (N, C) or (N, C, L): statistics per channel over the batch (and length)."""

    _dims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch norm over (N, C, H, W): statistics per channel over the batch and both spatial dimensions."""

    _dims = (4,)


class GroupNorm(_Norm):
    """Normalise each sample's groups of num_channels / num_groups channels, then w, b per channel."""

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, device=None, dtype=None, *, bias=True):
        super().__init__()
        self.num_groups = _int("GroupNorm", "num_groups", num_groups)
        self.num_channels = _int("GroupNorm", "num_channels", num_channels)
        if self.num_channels % self.num_groups:
            raise ValueError(f"GroupNorm: expected num_channels divisible by num_groups, got num_channels="
                             f"{num_channels} and num_groups={num_groups}")
        N._check_eps("GroupNorm", eps)
        self.eps, self.affine = eps, affine
        self.weight = Parameter(_ones(self.num_channels, device, dtype)) if affine else None
        self.bias = Parameter(_zeros(self.num_channels, device, dtype)) if affine and bias else None

    def forward(self, input):
        w, b = (None if p is None else p.data for p in (self.weight, self.bias))
        _check_input(self, input, w)
        if input.ndim < 2 or input.shape[1] != self.num_channels:
            raise ValueError(f"{self!r}: expected input of shape (N, {self.num_channels}, *), got {tuple(input.shape)}")
        xp = N._gn_check(_Name(self), input, self.num_groups, w, b, self.eps)
        xhat, rstd = N._stats(xp, N._grouped(xp, input, self.num_groups), (2,), self.eps)  # (N, G, M)
        nd = input.ndim
        out = N._affine(xp.reshape(xhat, tuple(input.shape)), None if w is None else N._channel_view(xp, w, nd),
                        None if b is None else N._channel_view(xp, b, nd))
        self._save(_xhat=xhat, _rstd=rstd, _shape=tuple(input.shape))
        return out

    def backward(self, grad_output, *, input_grad=True):
        xhat, rstd, shape = self._saved("_xhat"), self._saved("_rstd"), self._saved("_shape")
        _check_grad(self, grad_output, shape, xhat.dtype)
        xp = B.namespace(grad_output, xhat, op="GroupNorm.backward")
        nd = len(shape)
        self._affine_grads(xp, grad_output, xp.reshape(xhat, shape), (0,) + tuple(range(2, nd)), (self.num_channels,))
        if not input_grad:
            return None
        gh = grad_output if self.weight is None else grad_output * N._channel_view(xp, self.weight.data, nd)
        dx = N._norm_backward(xp, N._grouped(xp, gh, self.num_groups), xhat, rstd, (2,))
        return xp.reshape(dx, shape)

    def extra_repr(self):
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"


# -- dropout, embedding, flatten -------------------------------------------------------------

class Dropout(Module):
    """Training: y = x * D / (1 - p), D a keep-mask drawn from `generator` (manual.init's default if None);
    eval: the identity. The mask is kept for backward."""

    def __init__(self, p=0.5, inplace=False, generator=None):
        super().__init__()
        R._dropout_check("Dropout", B.place([0.0]), p, True, None)
        if inplace:
            raise ValueError("Dropout: inplace=True is not supported (the input is kept intact), got inplace=True")
        self.p, self.inplace, self.generator = p, inplace, generator

    def forward(self, input):
        xp = B.namespace(input, op="Dropout")
        if not R._active(self.p, self.training):
            self._save(_scale=(tuple(input.shape), input.dtype))  # the identity: backward checks grad_output against these
            return input  # the identity, as torch's (no copy)
        gen = self.generator if self.generator is not None else I.default_generator()
        keep = R._keep_scale(xp, R.dropout_mask(input, self.p, generator=gen), self.p, input)
        self._save(_scale=keep)
        return input * keep

    def backward(self, grad_output, *, input_grad=True):
        keep = self._saved("_scale")
        if not input_grad:
            return None
        if isinstance(keep, tuple):
            _check_grad(self, grad_output, *keep)
            return grad_output
        _check_grad(self, grad_output, keep.shape, keep.dtype)
        return grad_output * keep

    def extra_repr(self):
        return f"p={self.p}, inplace={self.inplace}"


class Embedding(Module):
    """y = W[idx]: a table of num_embeddings rows of embedding_dim, W ~ N(0, 1) (padding row zeroed), as torch."""

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, device=None, dtype=None, generator=None,
                 _weight=None):
        super().__init__()
        self.num_embeddings = _int("Embedding", "num_embeddings", num_embeddings)
        self.embedding_dim = _int("Embedding", "embedding_dim", embedding_dim)
        n = self.num_embeddings
        if padding_idx is not None:
            if isinstance(padding_idx, bool) or not isinstance(padding_idx, numbers.Integral) or not -n <= padding_idx < n:
                raise ValueError(f"Embedding: expected padding_idx None or an integer in [{-n}, {n}), got {padding_idx!r}")
            padding_idx = int(padding_idx) % n
        self.padding_idx = padding_idx
        self.weight = Parameter(B.place(np.zeros((n, self.embedding_dim)), device, dtype))
        values = (I.default_generator() if generator is None else generator).standard_normal((n, self.embedding_dim))
        if padding_idx is not None:
            values[padding_idx] = 0.0
        B.fill_(self.weight.data, values)

    def forward(self, input):
        w = self.weight.data
        xp, _ = R._emb_check(_Name(self), input, w, self.padding_idx)
        self._save(_idx=input)
        out = xp.take(w, xp.reshape(input, (-1,)), axis=0)
        return xp.reshape(out, tuple(input.shape) + (self.embedding_dim,))

    def backward(self, grad_output, *, input_grad=True):
        idx = self._saved("_idx")
        _check_grad(self, grad_output, tuple(idx.shape) + (self.embedding_dim,), self.weight.data.dtype)
        _, gw = R.embedding_backward(grad_output, idx, self.weight.data, self.padding_idx)
        _accumulate(self.weight, gw)
        return None  # indices have no gradient

    def extra_repr(self):
        pad = "" if self.padding_idx is None else f", padding_idx={self.padding_idx}"
        return f"{self.num_embeddings}, {self.embedding_dim}{pad}"


class Flatten(Module):
    """Merge dims start_dim..end_dim (default: everything but the batch dimension)."""

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, input):
        out = R.flatten(input, self.start_dim, self.end_dim)
        self._save(_shapes=(tuple(input.shape), tuple(out.shape), input.dtype))
        return out

    def backward(self, grad_output, *, input_grad=True):
        shape, out_shape, dtype = self._saved("_shapes")
        if not input_grad:
            return None
        xp = B.namespace(grad_output, op="Flatten.backward")
        _check_grad(self, grad_output, out_shape, dtype)  # a reshape would take any grad_output of the same size
        return xp.reshape(grad_output, shape)

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Residual(Module):
    """A skip connection around `block`: y = x + block(x);  dx = g + block.backward(g) (the two paths add).

    Not a torch class: its twin is torch_ref.Residual, child named "block" as here.
    """

    def __init__(self, block):
        super().__init__()
        if not isinstance(block, Module):
            raise TypeError(f"Residual: expected a manual.nn.Module to wrap, got {type(block).__name__}")
        self.block = block

    def forward(self, input):
        out = self.block(input)
        if tuple(out.shape) != tuple(input.shape):
            raise ValueError(f"{self!r}: expected block to keep the input's shape {tuple(input.shape)} (so the "
                             f"two paths can add), got {tuple(out.shape)}")
        return input + out

    def backward(self, grad_output, *, input_grad=True):
        through = self.block.backward(grad_output, input_grad=input_grad)
        return grad_output + through if input_grad else None


__all__ = ["BatchNorm1d", "BatchNorm2d", "Dropout", "Embedding", "Flatten", "GroupNorm", "LayerNorm", "Residual"]
