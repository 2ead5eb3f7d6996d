"""Modules: twins of torch.nn, with a hand-written `backward` on every one.

The training step differs from torch's in one line:

    loss = criterion(model(x), y)
    model.backward(criterion.backward())   # torch: loss.backward()
    optimizer.step()

`forward` caches what `backward` needs (the input, or the output where the derivative is
cheaper from it); `backward(grad_output)` returns the gradient of the input and accumulates
into each `Parameter.grad`, as torch does.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from . import _backend as B
from . import functional as F
from . import init as I
from .functional._util import check_reduction
from .functional.linear import _linear, _linear_backward
from .functional.losses import _mse_loss_backward


class Parameter:
    """A learnable array: `.data` (NumPy array or torch tensor) and its `.grad` (None until backward)."""

    __slots__ = ("data", "grad")

    def __init__(self, data):
        B.backend_name(data)
        self.data = data
        self.grad = None

    @property
    def shape(self):
        return tuple(self.data.shape)

    @property
    def dtype(self):
        return self.data.dtype

    def __repr__(self):
        return f"Parameter(shape={self.shape}, dtype={self.dtype}, device={B.device_of(self.data)})"


class Module:
    """Base class: parameters, buffers and children registered by attribute assignment."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}: call Module.__init__() before assigning attributes")
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def register_buffer(self, name, value):
        """A non-learnable array that belongs in state_dict (a loss's class weights, ...)."""
        self._buffers[name] = value
        object.__setattr__(self, name, value)

    # -- the two passes ------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, grad_output, *, input_grad=True):
        """d loss/d input from d loss/d output; accumulates into each Parameter.grad.

        input_grad=False skips the gradient of the input (returns None), as autograd does for
        an input that does not require grad: the first layer's g W is never needed in training.
        """
        raise NotImplementedError(f"{type(self).__name__}.backward")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def _save(self, **arrays):
        """Keep what backward needs (`self._save(_input=x)`); backward reads each with `_saved`."""
        self.__dict__.update(arrays)

    def _saved(self, name):
        value = self.__dict__.get(name)
        if value is None:
            raise RuntimeError(f"{self!r}: backward() called before forward(); nothing was saved for it")
        return value

    # -- traversal -----------------------------------------------------------------------
    def named_modules(self, prefix=""):
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def children(self):
        return iter(self._modules.values())

    def named_parameters(self, prefix=""):
        for mod_name, mod in self.named_modules(prefix):
            for name, p in mod._parameters.items():
                yield (f"{mod_name}.{name}" if mod_name else name), p

    def parameters(self):
        for _, p in self.named_parameters():
            yield p

    def named_buffers(self):
        for mod_name, mod in self.named_modules():
            for name, b in mod._buffers.items():
                if b is not None:
                    yield (f"{mod_name}.{name}" if mod_name else name), b

    # -- state -----------------------------------------------------------------------------
    def state_dict(self):
        """Parameter and buffer arrays by torch's names ("0.weight", ...); the arrays themselves, not copies."""
        out = OrderedDict((n, p.data) for n, p in self.named_parameters())
        out.update(self.named_buffers())
        return out

    def load_state_dict(self, state_dict, strict=True):
        """Copy arrays (NumPy or torch, any device) into this module's own backend, device and dtype."""
        own = dict(self.named_parameters())
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own and k not in dict(self.named_buffers())]
        if strict and (missing or unexpected):
            raise KeyError(
                f"{type(self).__name__}.load_state_dict: expected keys {list(own)}, "
                f"missing {missing}, unexpected {unexpected}"
            )
        for name, p in own.items():
            if name not in state_dict:
                continue
            value = state_dict[name]
            if tuple(value.shape) != p.shape:
                raise ValueError(
                    f"{type(self).__name__}.load_state_dict: {name}: expected shape {p.shape}, got {tuple(value.shape)}"
                )
            value = B.place(value, B.device_of(p.data), p.data.dtype)
            # always a copy, as torch's: in-place optimizer updates must not reach the source
            # (nor a second parameter loaded from the same array)
            p.data = B.namespace(value).asarray(value, copy=True)
        return self

    def zero_grad(self, set_to_none=True):
        for p in self.parameters():
            p.grad = None if set_to_none or p.grad is None else p.grad * 0

    def train(self, mode=True):
        for _, m in self.named_modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self):
        return self.train(False)

    # -- placement -------------------------------------------------------------------------
    def to(self, *args, device=None, dtype=None):
        """Move to a backend/device and/or dtype: .to("cuda"), .to("float64"), .to(device="numpy", dtype=...)."""
        for a in args:
            if _is_dtype(a):
                dtype = a
            else:
                device = a
        for _, m in self.named_modules():
            for p in m._parameters.values():
                dev = B.device_of(p.data) if device is None else device
                dt = p.data.dtype if dtype is None else dtype
                p.data = B.place(p.data, dev, dt)
                if p.grad is not None:
                    p.grad = B.place(p.grad, dev, dt)
            for name, b in list(m._buffers.items()):
                if b is not None:
                    dev = B.device_of(b) if device is None else device
                    m.register_buffer(name, B.place(b, dev, b.dtype if dtype is None else dtype))
        return self

    def double(self):
        return self.to(dtype="float64")

    def float(self):
        return self.to(dtype="float32")

    def extra_repr(self):
        return ""

    def __repr__(self):
        if not self._modules:
            return f"{type(self).__name__}({self.extra_repr()})"
        lines = [f"  ({n}): " + repr(m).replace("\n", "\n  ") for n, m in self._modules.items()]
        return f"{type(self).__name__}(\n" + "\n".join(lines) + "\n)"


def _is_dtype(a):
    try:
        B.dtype_name(a)
        return True
    except TypeError:
        return False


def _accumulate(p, g):
    p.grad = g if p.grad is None else p.grad + g


def _check_placement(module, input, weight):
    """Explain a backend, device or dtype mismatch between a module's parameters and its input."""
    B.backend_name(input)  # a list or scalar: TypeError naming what came
    where = lambda a: "NumPy" if B.backend_name(a) == "numpy" else f"torch {a.device}"  # noqa: E731
    if where(input) != where(weight):
        raise TypeError(
            f"{module!r}: expected an input on {where(weight)} (where the parameters are), got one on "
            f"{where(input)}: move the model with .to(...) or the input with manual._backend.place"
        )
    if input.dtype != weight.dtype:
        raise TypeError(f"{module!r}: mixed dtypes: expected input of dtype {weight.dtype} (the parameters'), got {input.dtype}")


class Linear(Module):
    """y = x W^T + b, W of shape (out_features, in_features), initialised as torch does."""

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None, generator=None):
        super().__init__()
        if in_features < 0 or out_features < 0:
            raise ValueError(f"Linear: expected non-negative feature counts, got ({in_features}, {out_features})")
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(B.place(np.zeros((out_features, in_features)), device, dtype))
        self.bias = Parameter(B.place(np.zeros(out_features), device, dtype)) if bias else None
        I.default_linear_init_(self.weight, self.bias, generator)

    def forward(self, input):
        w = self.weight.data
        if type(input) is not type(w) or input.dtype != w.dtype or (type(w) is not np.ndarray and input.device != w.device):
            _check_placement(self, input, w)
        if input.ndim < 1 or input.shape[-1] != self.in_features:
            raise ValueError(
                f"{self!r}: expected input with {self.in_features} features in its last dimension, "
                f"got input of shape {tuple(input.shape)}"
            )
        self.__dict__["_input"] = input  # (..., in), kept for dL/dW (plain dict write: hot path)
        return _linear(input, w, None if self.bias is None else self.bias.data)

    def backward(self, grad_output, *, input_grad=True):
        x = self._saved("_input")
        xp = B.namespace(grad_output, x, op="Linear.backward")
        gi, gw, gb = _linear_backward(xp, grad_output, x, self.weight.data, self.bias is not None, input_grad)
        _accumulate(self.weight, gw)
        if self.bias is not None:
            _accumulate(self.bias, gb)
        return gi

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class _Activation(Module):
    """An elementwise activation: caches its input (or output) for backward."""

    _fn = _bwd = None
    _from_output = False
    _args = ()  # names of the constructor arguments the op takes as keywords

    def _kwargs(self):
        return {a: getattr(self, a) for a in self._args}

    def extra_repr(self):
        return ", ".join(f"{a}={getattr(self, a)!r}" for a in self._args)

    def forward(self, input):
        out = type(self)._fn(input, **self._kwargs())
        self.__dict__["_saved_input"] = out if self._from_output else input  # plain dict write: hot path
        return out

    def backward(self, grad_output, *, input_grad=True):
        if not input_grad:
            return None
        saved = self._saved("_saved_input")
        if self._from_output:
            return type(self)._bwd(grad_output, output=saved)
        return type(self)._bwd(grad_output, saved, **self._kwargs())


class ReLU(_Activation):
    _fn, _bwd = F.relu, F.relu_backward


class LeakyReLU(_Activation):
    _fn, _bwd, _args = F.leaky_relu, F.leaky_relu_backward, ("negative_slope",)

    def __init__(self, negative_slope=0.01):
        super().__init__()
        self.negative_slope = negative_slope


class ELU(_Activation):
    _fn, _bwd, _args = F.elu, F.elu_backward, ("alpha",)

    def __init__(self, alpha=1.0):
        super().__init__()
        self.alpha = alpha


class GELU(_Activation):
    _fn, _bwd, _args = F.gelu, F.gelu_backward, ("approximate",)

    def __init__(self, approximate="none"):
        super().__init__()
        F.gelu(B.place([0.0]), approximate)  # validates `approximate` now, not at the first forward
        self.approximate = approximate


class Sigmoid(_Activation):
    _fn, _bwd, _from_output = F.sigmoid, F.sigmoid_backward, True


class Tanh(_Activation):
    _fn, _bwd, _from_output = F.tanh, F.tanh_backward, True


class Sequential(Module):
    """Children named "0", "1", ...; forward in order, backward in reverse."""

    def __init__(self, *modules):
        super().__init__()
        for i, m in enumerate(modules):
            if not isinstance(m, Module):
                raise TypeError(f"Sequential: expected manual.nn.Module children, got {type(m).__name__} at {i}")
            setattr(self, str(i), m)

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def forward(self, input):
        for m in self._modules.values():
            input = m(input)
        return input

    def backward(self, grad_output, *, input_grad=True):
        children = list(self._modules.values())
        for i in range(len(children) - 1, -1, -1):
            grad_output = children[i].backward(grad_output, input_grad=input_grad or i > 0)
        return grad_output


class _Loss(Module):
    """criterion(input, target) -> loss; criterion.backward(grad_output=1) -> d loss / d input."""

    _fn = _bwd = None
    _kernel = None  # unchecked backward(grad_output: float, input, target, reduction), where one exists

    def __init__(self, reduction="mean"):
        super().__init__()
        check_reduction(type(self).__name__, reduction)
        self.reduction = reduction

    def _kwargs(self):
        return {"reduction": self.reduction}

    def forward(self, input, target):
        self.__dict__["_input"], self.__dict__["_target"] = input, target
        return type(self)._fn(input, target, **self._kwargs())

    def backward(self, grad_output=None):
        input = self._saved("_input")
        if grad_output is None:
            if self.reduction == "none":
                raise ValueError(f"{type(self).__name__}(reduction='none').backward: expected a grad_output of the loss's shape")
            if type(self)._kernel is not None:  # forward validated the arguments: skip re-checking
                return type(self)._kernel(1.0, input, self._target, self.reduction)
            xp = B.namespace(input)
            grad_output = xp.ones((), dtype=input.dtype, device=input.device)  # d loss / d loss
        return type(self)._bwd(grad_output, input, self._target, **self._kwargs())

    def extra_repr(self):
        return f"reduction={self.reduction!r}"


class MSELoss(_Loss):
    _fn, _bwd, _kernel = F.mse_loss, F.mse_loss_backward, _mse_loss_backward


class BCEWithLogitsLoss(_Loss):
    _fn, _bwd = F.binary_cross_entropy_with_logits, F.binary_cross_entropy_with_logits_backward

    def __init__(self, weight=None, reduction="mean", pos_weight=None):
        super().__init__(reduction)
        self.register_buffer("weight", weight)
        self.register_buffer("pos_weight", pos_weight)

    def _kwargs(self):
        return {"weight": self.weight, "reduction": self.reduction, "pos_weight": self.pos_weight}


class CrossEntropyLoss(_Loss):
    _fn, _bwd = F.cross_entropy, F.cross_entropy_backward

    def __init__(self, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
        super().__init__(reduction)
        self.register_buffer("weight", weight)
        self.ignore_index, self.label_smoothing = ignore_index, label_smoothing

    def _kwargs(self):
        return {
            "weight": self.weight,
            "ignore_index": self.ignore_index,
            "reduction": self.reduction,
            "label_smoothing": self.label_smoothing,
        }


from .gpt import GPT, GPTConfig  # noqa: E402  (the GPT builds on the modules above)

from .layers_conv import AdaptiveAvgPool2d, AvgPool2d, Conv1d, Conv2d, MaxPool2d  # noqa: E402,F401 (manual/layers_conv.py)
