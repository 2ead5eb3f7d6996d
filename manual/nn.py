"""Modules: twins of torch.nn, with a hand-written `backward` on every one.

The training step differs from torch's in one line:

    loss = criterion(model(x), y)
    model.backward(criterion.backward())   # torch: loss.backward()
    optimizer.step()

`forward` saves what `backward` needs (the input, or the output where the derivative is
cheaper from it) with `self._save(...)`; `backward(grad_output)` reads it with `self._saved(...)`,
which frees it, returns the gradient of the input and accumulates into each `Parameter.grad`,
as torch does. The contract, checked:
- a second `backward` after one `forward` raises (torch without retain_graph);
- under `manual.no_grad()` forward saves nothing, and a backward after it raises saying so;
- an array saved by forward and modified in place before backward raises: torch tensors
  exactly (their version counter, `t._version`); NumPy arrays only when the first or last
  element changed (a two-element fingerprint: NumPy has no version counter, and a full
  checksum would cost a pass over the data per call);
- backward checks grad_output's backend, dtype and shape against what forward produced.
"""

from __future__ import annotations

import operator
import sys
from collections import OrderedDict, namedtuple

import numpy as np

from . import _backend as B
from . import _nn_utils as utils  # manual.nn.utils.clip_grad_norm_, as torch.nn.utils
from . import functional as F
from . import init as I
from ._grad_mode import _mode as _grad_mode

sys.modules.setdefault(__name__ + ".utils", utils)  # `import manual.nn.utils` works too (nn.py is a module)
from .functional import losses as _losses
from .functional._util import check_grad_output, check_reduction
from .functional.linear import _linear, _linear_backward
from .functional.losses import _mse_loss_backward


class _Name:
    """A module's repr for the op name in error messages, built only when a message is (f"{module!r}" at
    every forward cost LayerNorm ~3 us of its ~60, repr going through extra_repr)."""

    __slots__ = ("module",)

    def __init__(self, module):
        self.module = module

    def __format__(self, spec):
        return format(repr(self.module), spec)

    def __str__(self):
        return repr(self.module)


class Parameter:
    """A learnable array: `.data` (NumPy array or torch tensor) and its `.grad` (None until backward)."""

    __slots__ = ("data", "grad")

    def __init__(self, data):
        if not B._is_array(data):
            raise TypeError(f"Parameter: expected a NumPy array or a torch tensor, got {type(data).__name__}")
        if getattr(data, "requires_grad", False):
            raise ValueError(
                "Parameter: expected a tensor with requires_grad=False (manual computes every gradient by hand), "
                "got one that requires grad: pass t.detach()"
            )
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

    def _save(self, **values):
        """Keep what backward needs: `self._save(_input=x)`; backward reads each once with `_saved`.

        Under manual.no_grad() nothing is kept (and what an earlier forward saved stays).
        Each array is stamped (torch: its version counter; NumPy: its first and last element) so
        that `_saved` can tell it was modified in place in between.
        """
        d = self.__dict__
        if _grad_mode.enabled:
            for k, v in values.items():
                t = type(v)
                if t is np.ndarray:
                    d[k] = (v, v.item(0), v.item(-1)) if v.size else (v, None, None)
                elif t is _Tensor:
                    try:
                        d[k] = (v, v._version, None)
                    except RuntimeError:  # an inference-mode tensor has no version counter
                        d[k] = (v, None, None)
                else:
                    d[k] = (v, None, None)
        else:
            for k in values:
                if type(d.get(k)) is not tuple:  # keep what a grad-enabled forward saved
                    d[k] = _NO_GRAD

    def _saved(self, name):
        """What forward saved under `name`, freed as it is read (a second backward raises)."""
        d = self.__dict__
        entry = d.get(name, _NEVER)
        if type(entry) is not tuple:
            raise RuntimeError(_unsaved_message(self, entry))
        d[name] = _FREED
        v, s0, s1 = entry
        if s0 is not None:
            if type(v) is np.ndarray:
                if (v.item(0) != s0 or v.item(-1) != s1) and _changed(v.item(0), s0, v.item(-1), s1):
                    raise RuntimeError(_modified_message(self, name, "its values changed"))
            elif v._version != s0:
                raise RuntimeError(_modified_message(self, name, f"its version is {v._version}, forward saved version {s0}"))
        return v

    # -- traversal -----------------------------------------------------------------------
    def named_modules(self, prefix="", remove_duplicate=True):
        """Every module under its name; one used twice (a shared layer) only under its first name, as
        torch's (remove_duplicate=False: under every name, as state_dict lists it)."""
        seen = set()

        def walk(mod, pre):
            if remove_duplicate:
                if id(mod) in seen:
                    return
                seen.add(id(mod))
            yield pre, mod
            for name, child in mod._modules.items():
                yield from walk(child, f"{pre}.{name}" if pre else name)

        return walk(self, prefix)

    def children(self):
        return iter(self._modules.values())

    def named_parameters(self, prefix="", remove_duplicate=True):
        """Each Parameter once, as torch's: a shared layer's or a tied weight's is not stepped twice by an
        optimizer built on parameters()."""
        seen = set()
        for mod_name, mod in self.named_modules(prefix, remove_duplicate):
            for name, p in mod._parameters.items():
                if remove_duplicate:
                    if id(p) in seen:
                        continue
                    seen.add(id(p))
                yield (f"{mod_name}.{name}" if mod_name else name), p

    def parameters(self):
        for _, p in self.named_parameters():
            yield p

    def named_buffers(self, remove_duplicate=True):
        seen = set()
        for mod_name, mod in self.named_modules(remove_duplicate=remove_duplicate):
            for name, b in mod._buffers.items():
                if b is not None and not (remove_duplicate and id(b) in seen):
                    seen.add(id(b))
                    yield (f"{mod_name}.{name}" if mod_name else name), b

    # -- state -----------------------------------------------------------------------------
    def state_dict(self):
        """Parameter and buffer arrays by torch's names ("0.weight", ...); the arrays themselves, not copies.
        In torch's order: module by module, each module's parameters, then its buffers."""
        out = OrderedDict()
        for mod_name, mod in self.named_modules(remove_duplicate=False):  # a shared layer under each of its names
            pre = f"{mod_name}." if mod_name else ""
            out.update((pre + n, p.data) for n, p in mod._parameters.items())
            out.update((pre + n, b) for n, b in mod._buffers.items() if b is not None)
        return out

    def load_state_dict(self, state_dict, strict=True):
        """Copy parameters and buffers (NumPy or torch, any device) into this module's own backend,
        device and dtype. strict: the keys must be exactly state_dict()'s (KeyError naming the
        missing and unexpected ones). Every value is checked before anything is written.
        Returns (missing_keys, unexpected_keys), as torch's."""
        name = type(self).__name__
        if not hasattr(state_dict, "keys"):
            raise TypeError(f"{name}.load_state_dict: expected a mapping of names to arrays, got {type(state_dict).__name__}")
        own = dict(self.named_parameters(remove_duplicate=False))  # every name state_dict() gives
        buffers = {}  # name -> (owning module, attribute)
        for mod_name, mod in self.named_modules(remove_duplicate=False):
            for b, v in mod._buffers.items():
                if v is not None:
                    buffers[f"{mod_name}.{b}" if mod_name else b] = (mod, b)
        expected = list(own) + list(buffers)
        # a batch norm's num_batches_tracked may be absent (state saved before torch had it): the module keeps
        # its own, as torch's _NormBase does for a state_dict without version metadata
        missing = [k for k in expected if k not in state_dict and not (k in buffers and buffers[k][1] == "num_batches_tracked")]
        unexpected = [k for k in state_dict if k not in own and k not in buffers]
        if strict and (missing or unexpected):
            raise KeyError(
                f"{name}.load_state_dict: expected keys {expected}, missing {missing}, unexpected {unexpected}"
            )
        new = {}
        for k in expected:
            if k not in state_dict:
                continue
            value, target = state_dict[k], own[k].data if k in own else getattr(*buffers[k])
            if not B._is_array(value):
                raise TypeError(
                    f"{name}.load_state_dict: {k}: expected a NumPy array or a torch tensor, got {type(value).__name__}"
                )
            if tuple(value.shape) != tuple(target.shape):
                raise ValueError(
                    f"{name}.load_state_dict: {k}: expected shape {tuple(target.shape)}, got {tuple(value.shape)}"
                )
            value = B.place(value, B.device_of(target), target.dtype) if B._is_floating(target) else (
                B.place_like(value, target))
            # always a copy, as torch's: in-place optimizer updates must not reach the source
            # (nor a second parameter loaded from the same array)
            new[k] = B.namespace(value).asarray(value, copy=True)
        for k, v in new.items():
            if k in own:
                own[k].data = v
            else:
                mod, b = buffers[k]
                mod.register_buffer(b, v)
        return _IncompatibleKeys(missing, unexpected)

    def zero_grad(self, set_to_none=True):
        for p in self.parameters():
            p.grad = None if set_to_none or p.grad is None else B.namespace(p.grad).zeros_like(p.grad)  # NaN * 0 is NaN

    def train(self, mode=True):
        if not isinstance(mode, bool):  # "no" would be truthy: training mode, silently
            raise ValueError(f"{type(self).__name__}.train: expected mode to be a bool, got {type(mode).__name__} {mode!r}")
        for _, m in self.named_modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self):
        return self.train(False)

    # -- placement -------------------------------------------------------------------------
    def to(self, *args, device=None, dtype=None):
        """Move to a backend/device and/or dtype: .to("cuda"), .to("float64"), .to(device="numpy", dtype=...);
        .to(array): that array's backend, device and dtype (torch's .to(tensor))."""
        for a in args:
            if B._is_array(a):
                device, dtype = B.device_of(a), a.dtype
            elif _is_dtype(a) or _looks_like_dtype(a):
                dtype = a
            else:
                device = a
        if dtype is not None:
            B.dtype_name(dtype)  # "float16" and friends: a dtype error naming what is supported
        if device is not None:
            B.parse_device(device)
        moved = False
        for _, m in self.named_modules():
            for p in m._parameters.values():
                dev = B.device_of(p.data) if device is None else device
                dt = p.data.dtype if dtype is None else dtype
                old, p.data = p.data, B.place(p.data, dev, dt)
                moved = moved or _placement(old) != _placement(p.data)
                if p.grad is not None:
                    p.grad = B.place(p.grad, dev, dt)
            for name, b in list(m._buffers.items()):
                if b is not None:
                    dev = B.device_of(b) if device is None else device
                    if not B._is_floating(b):  # an integer buffer (num_batches_tracked) keeps its dtype, as torch's
                        kind, tdev = B.parse_device(dev)
                        m.register_buffer(name, np.array(B.to_numpy(b)) if kind == "numpy"
                                          else B.torch.as_tensor(B.to_numpy(b), device=tdev))
                        continue
                    m.register_buffer(name, B.place(b, dev, b.dtype if dtype is None else dtype))
                    moved = moved or _placement(b) != _placement(m._buffers[name])
        if moved:  # what forward saved is on the old backend, device or dtype: backward would mix the two
            for _, m in self.named_modules():
                d = m.__dict__
                for k, v in list(d.items()):
                    if k.startswith("_") and type(v) is tuple and len(v) == 3 and B._is_array(v[0]):
                        d[k] = _MOVED
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


_NEVER, _NO_GRAD, _FREED, _MOVED = "never", "no_grad", "freed", "moved"  # why _saved found no entry
_IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])  # load_state_dict's result

try:
    import torch as _torch

    _Tensor = _torch.Tensor
except ImportError:  # pragma: no cover
    _Tensor = None


def _changed(a0, s0, a1, s1):
    """The fingerprint differs, counting NaN as equal to NaN."""
    return not ((a0 == s0 or (a0 != a0 and s0 != s0)) and (a1 == s1 or (a1 != a1 and s1 != s1)))


def _placement(a):
    return type(a), getattr(a, "device", None), a.dtype


def _unsaved_message(module, why):
    if why == _MOVED:
        return (f"{module!r}.backward: the module was moved by .to(...) after forward (another backend, device or "
                "dtype), so what forward saved is still on the old placement: run forward again after moving it")
    if why == _NO_GRAD:
        return (f"{module!r}.backward: the last forward ran under manual.no_grad(), which saves nothing for "
                "backward: run forward again outside no_grad() before backward")
    if why == _FREED:
        return (f"{module!r}.backward: called twice after one forward: backward frees what forward saved (as "
                "torch does without retain_graph): run forward again before each backward (or, if this module "
                "is used twice in one forward, use a second module sharing its Parameters)")
    return f"{module!r}.backward: called before forward: nothing was saved for it"


def _modified_message(module, name, detail):
    return (f"{module!r}.backward: the array forward saved as {name} was modified in place after forward "
            f"({detail}), so its gradient would be wrong (torch: 'one of the variables needed for gradient "
            "computation has been modified by an inplace operation'): do not write into inputs or outputs "
            "between forward and backward, or copy them")


def _looks_like_dtype(a):
    """A dtype that manual does not support ("float16", np.int64, torch.bfloat16): reported as a dtype."""
    if isinstance(a, str):
        try:
            return np.dtype(a).kind in "biufcV" or a in ("half", "bfloat16")
        except TypeError:
            return a in ("half", "bfloat16")
    return isinstance(a, (type, np.dtype)) or (_Tensor is not None and isinstance(a, _torch.dtype))


def _is_dtype(a):
    try:
        B.dtype_name(a)
        return True
    except TypeError:
        return False


def _accumulate(p, g):
    if getattr(g, "requires_grad", False):  # from an input that requires grad: .grad carries no graph, as torch's
        g = g.detach()
    p.grad = g if p.grad is None else p.grad + g


def _bad_grad_output(module, grad_output, shape, dtype):
    if tuple(grad_output.shape) == tuple(shape) and grad_output.dtype == dtype:
        return  # the fast check compares dtypes by identity; equal but distinct dtype objects are fine
    raise ValueError(
        f"{module!r}.backward: expected grad_output of shape {shape} and dtype {dtype} (like forward's output), "
        f"got shape {tuple(grad_output.shape)} and dtype {grad_output.dtype}"
    )


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
        for what, n in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(n, (int, np.integer)) or isinstance(n, bool):
                raise TypeError(f"Linear: expected {what} to be an int, got {type(n).__name__} {n!r}")
        in_features, out_features = int(in_features), int(out_features)
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
        self._save(_input=input)  # (..., in), for dL/dW
        return _linear(input, w, None if self.bias is None else self.bias.data)

    def backward(self, grad_output, *, input_grad=True):
        x = self._saved("_input")
        xp = B.namespace(grad_output, x, op="Linear.backward")
        gs, xs = grad_output.shape, x.shape
        if (grad_output.dtype is not x.dtype or len(gs) != len(xs) or gs[-1] != self.out_features
                or (len(xs) > 1 and (gs[0] != xs[0] or (len(xs) > 2 and gs[1:-1] != xs[1:-1])))):
            _bad_grad_output(self, grad_output, tuple(xs[:-1]) + (self.out_features,), x.dtype)
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
        self._save(_saved_input=out if self._from_output else input)
        return out

    def backward(self, grad_output, *, input_grad=True):
        saved = self._saved("_saved_input")  # consumed even when no input gradient is asked for
        if not input_grad:
            return None
        if self._from_output:
            return type(self)._bwd(grad_output, output=saved)
        return type(self)._bwd(grad_output, saved, **self._kwargs())


class ReLU(_Activation):
    _fn, _bwd, _from_output = F.relu, F.relu_backward, True  # the output, which the next layer keeps anyway

    def backward(self, grad_output, *, input_grad=True):
        """F.relu_backward(g, output=y) on the output forward saved. Its checks of y (a float array of a
        supported dtype) were made when forward made it; when g is of y's kind, shape and dtype (and
        device), the fused select runs directly (about 1.5 us less a step on the 2-4-1 net); anything
        else goes through F.relu_backward's checks and their messages."""
        out = self._saved("_saved_input")  # consumed even when no input gradient is asked for
        if not input_grad:
            return None
        if (type(grad_output) is not type(out) or grad_output.dtype is not out.dtype or grad_output.shape != out.shape
                or (type(out) is not np.ndarray and grad_output.device != out.device)):
            return F.relu_backward(grad_output, output=out)
        return B.threshold_backward(grad_output, out, 0)


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

    # The exact form on NumPy keeps erf(x / sqrt 2) from forward for backward: NumPy's erf is the costly
    # part (a polynomial in Python-level array ops), so one erf per step instead of two, for one more
    # saved array of the input's size. On torch erf is one fast kernel: backward recomputes it from the
    # input, as torch's own GELU does, a piece at a time (B.PIECE), and the step holds one array
    # less (32 MiB in gpt-256x4's step). The same expressions as F.gelu / F.gelu_backward either way,
    # so the same numbers bit for bit.
    def forward(self, input):
        if self.approximate != "none":
            return super().forward(input)
        B.namespace(input, op="gelu")  # F.gelu's own input checks
        B.check_float("gelu", input)
        out, e = B.gelu_erf(input, keep_erf=type(input) is np.ndarray)  # F.gelu's expression, fewer temporaries
        self._save(_saved_input=input, _erf=e)  # e: None on torch (test_fused: the same bits either way)
        return out

    def backward(self, grad_output, *, input_grad=True):
        if self.approximate != "none":
            return super().backward(grad_output, input_grad=input_grad)
        x, e = self._saved("_saved_input"), self._saved("_erf")
        if not input_grad:
            return None
        B.namespace(grad_output, x, op="GELU.backward")
        _bad_grad_output(self, grad_output, x.shape, x.dtype)
        return B.gelu_backward_erf(grad_output, x, e, reuse_e=True)  # e None (torch): erf again, piece by piece


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
        """seq[i]: a child; seq[a:b]: a Sequential of those children, under their names, as torch's."""
        items = list(self._modules.items())
        if isinstance(i, slice):
            out = Sequential()
            for name, m in items[i]:
                setattr(out, name, m)
            return out
        n = len(items)
        if not -n <= operator.index(i) < n:
            raise IndexError(f"Sequential: index {i} is out of range (expected -{n} <= index < {n})")
        return items[i][1]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def forward(self, input):
        if not self._modules:  # the identity (torch's empty Sequential): backward checks grad_output, as Flatten's
            self._save(_out=(tuple(input.shape), input.dtype))
            return input
        for m in self._modules.values():
            input = m(input)
        return input

    def backward(self, grad_output, *, input_grad=True):
        children = list(self._modules.values())
        if not children:
            from .layers import _check_grad

            _check_grad(self, grad_output, *self._saved("_out"))  # torch: 'Mismatch in shape'
            return grad_output if input_grad else None
        if len({id(m) for m in children}) < len(children):
            dup = next(m for i, m in enumerate(children) if any(m is c for c in children[:i]))
            raise ValueError(
                f"{self!r}.backward: {dup!r} appears more than once in this Sequential. A manual module keeps "
                "what its last forward saved, so a module used twice in one forward cannot be differentiated "
                "(torch's autograd can): expected distinct modules; use a second module that shares the "
                "first one's Parameters (b.weight = a.weight), whose gradients add into the one .grad")
        for i in range(len(children) - 1, -1, -1):
            grad_output = children[i].backward(grad_output, input_grad=input_grad or i > 0)
        return grad_output


def mlp(sizes, activation=ReLU, norm=None, *, bias=True, device=None, dtype=None, generator=None) -> Sequential:
    """The multi-layer perceptron as one Sequential: Linear(sizes[0], sizes[1]), [norm], activation,
    ..., Linear(sizes[-2], sizes[-1]), with no activation after the last layer (the loss takes logits).

    activation: a module class or a zero-argument factory (`lambda: LeakyReLU(0.1)`); None stacks
    Linear layers with nothing between them. norm: None, or a class called as norm(width,
    device=, dtype=) after each hidden Linear (BatchNorm1d, LayerNorm). Layers are built in order,
    so the weights are those of the same Sequential written out by hand, and the state_dict names
    ("0.weight", ...) are those of the same torch.nn.Sequential.
    """
    sizes = tuple(sizes)
    if len(sizes) < 2 or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in sizes):
        raise ValueError(f"mlp: sizes must be two or more positive integers (input, hidden..., output), got {sizes!r}")
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(Linear(a, b, bias=bias, device=device, dtype=dtype, generator=generator))
        if i < len(sizes) - 2:
            if norm is not None:
                layers.append(norm(b, device=device, dtype=dtype))
            if activation is not None:
                layers.append(activation())
    return Sequential(*layers)


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
        loss = type(self)._fn(input, target, **self._kwargs())  # validates first: nothing saved for bad input
        self._save(_input=input, _target=target)
        return loss

    def backward(self, grad_output=None):
        if grad_output is None and self.reduction == "none":
            raise ValueError(f"{type(self).__name__}(reduction='none').backward: expected a grad_output of the loss's shape, got none")
        input, target = self._saved("_input"), self._saved("_target")
        if grad_output is None:
            if type(self)._kernel is not None:  # forward validated the arguments: skip re-checking
                return type(self)._kernel(1.0, input, target, self.reduction)
            xp = B.namespace(input)
            grad_output = xp.ones((), dtype=self._loss_dtype(xp, input, target), device=input.device)  # d loss / d loss
        return type(self)._bwd(grad_output, input, target, **self._kwargs())

    def _loss_dtype(self, xp, input, target):
        return input.dtype

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
    _fast = False  # the last grad-enabled forward took the common-case path (below)

    def __init__(self, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
        super().__init__(reduction)
        self.register_buffer("weight", weight)
        self.ignore_index = B.as_int("CrossEntropyLoss", "ignore_index", ignore_index)  # torch: TypeError at call
        self.label_smoothing = label_smoothing

    def _loss_dtype(self, xp, input, target):  # class probabilities of another float dtype: promoted, as torch
        return _losses._ce_loss_dtype(xp, input, target, self.weight)

    def _kwargs(self):
        return {
            "weight": self.weight,
            "ignore_index": self.ignore_index,
            "reduction": self.reduction,
            "label_smoothing": self.label_smoothing,
        }

    # The common case (class indices for (N, C) logits, no weight, no smoothing, mean) takes a short path:
    # forward keeps logp = log_softmax(x) and backward is (exp(logp) - onehot) / n (losses._ce_mean_forward,
    # _ce_mean_backward_logp; equal to F.cross_entropy / cross_entropy_backward to rounding, test_fused).
    def forward(self, input, target):
        fast = None
        if self.weight is None and not self.label_smoothing and self.reduction == "mean" and B._is_array(input) \
                and B._is_array(target) and type(self.ignore_index) is int:  # else the checked path (a TypeError)
            fast = _losses._ce_mean_forward(input, target, self.ignore_index)
        if _grad_mode.enabled:  # which path backward takes: that of the last forward that saved anything
            self._fast = fast is not None
        if fast is None:
            return super().forward(input, target)
        loss, logp, kept = fast
        self._save(_logp=logp, _target=target, _kept=kept)
        return loss

    def backward(self, grad_output=None):
        if self._fast:
            logp, target, kept = self._saved("_logp"), self._saved("_target"), self._saved("_kept")
            g = _losses._ce_mean_backward_logp(logp, target, kept)
            if grad_output is None:
                return g
            check_grad_output("CrossEntropyLoss.backward", grad_output, (), "mean")
            B.check_same_dtype("CrossEntropyLoss.backward", grad_output=grad_output, input=logp)
            return g * grad_output
        return super().backward(grad_output)

from .layers_conv import AdaptiveAvgPool2d, AvgPool2d, Conv1d, Conv2d, MaxPool2d  # noqa: E402,F401 (manual/layers_conv.py)
from .layers import BatchNorm1d, BatchNorm2d, Dropout, Embedding, Flatten, GroupNorm, LayerNorm, Residual  # noqa: E402,F401 (manual/layers.py)

from .gpt import GPT, GPTConfig  # noqa: E402  (the GPT builds on the modules above)
