"""Initialisers: twins of torch.nn.init, drawing from an explicit, seeded NumPy generator.

Values are drawn in float64 NumPy and then written into the target's own backend, device and
dtype, so a model initialised with a given seed is identical on NumPy, torch CPU and CUDA.
Each function takes a `Parameter` or an array and fills it in place, as torch's `*_` do.
"""

from __future__ import annotations

import math

import numpy as np

from . import _backend as B

_default_generator = np.random.default_rng(0)


def manual_seed(seed: int) -> np.random.Generator:
    """Reseed the default generator used when no `generator=` is passed (like torch.manual_seed)."""
    global _default_generator
    _default_generator = np.random.default_rng(seed)
    return _default_generator


def default_generator() -> np.random.Generator:
    return _default_generator


def calculate_gain(nonlinearity: str, param=None) -> float:
    """torch.nn.init.calculate_gain: the std scale that keeps activations' variance stable."""
    if nonlinearity in ("linear", "conv1d", "conv2d", "conv3d", "sigmoid"):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else float(param)
        return math.sqrt(2.0 / (1 + slope**2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(
        f"calculate_gain: expected one of linear, sigmoid, tanh, relu, leaky_relu, selu, got {nonlinearity!r}"
    )


def _fans(shape):
    if len(shape) < 2:
        raise ValueError(f"fan in and fan out need an array of at least 2 dimensions, got shape {tuple(shape)}")
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def _write(target, values):
    """Fill an array, or a Parameter's .data (duck-typed: init does not import nn)."""
    B.fill_(target if B._is_array(target) else target.data, values)
    return target


def _shape(target):
    return tuple(getattr(target, "data", target).shape)


def _gen(generator):
    return _default_generator if generator is None else generator


def uniform_(tensor, a=0.0, b=1.0, generator=None):
    """Fill with U(a, b)."""
    return _write(tensor, _gen(generator).uniform(a, b, size=_shape(tensor)))


def normal_(tensor, mean=0.0, std=1.0, generator=None):
    """Fill with N(mean, std^2)."""
    return _write(tensor, _gen(generator).normal(mean, std, size=_shape(tensor)))


def zeros_(tensor):
    return _write(tensor, np.zeros(_shape(tensor)))


def kaiming_uniform_(tensor, a=0.0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    """U(-bound, bound), bound = gain * sqrt(3 / fan_mode)."""
    std = calculate_gain(nonlinearity, a) / math.sqrt(_fan(tensor, mode))
    bound = math.sqrt(3.0) * std
    return uniform_(tensor, -bound, bound, generator)


def kaiming_normal_(tensor, a=0.0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    """N(0, std^2), std = gain / sqrt(fan_mode)."""
    std = calculate_gain(nonlinearity, a) / math.sqrt(_fan(tensor, mode))
    return normal_(tensor, 0.0, std, generator)


def xavier_uniform_(tensor, gain=1.0, generator=None):
    """U(-a, a), a = gain * sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = _fans(_shape(tensor))
    a = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(tensor, -a, a, generator)


def xavier_normal_(tensor, gain=1.0, generator=None):
    """N(0, std^2), std = gain * sqrt(2 / (fan_in + fan_out))."""
    fan_in, fan_out = _fans(_shape(tensor))
    return normal_(tensor, 0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)), generator)


def he_normal_(tensor, generator=None):
    """The guide's "smart initialization": w = randn(size) * sqrt(2 / n_inputs).

    The same distribution as kaiming_normal_(tensor, nonlinearity="relu").
    """
    fan_in, _ = _fans(_shape(tensor))
    return normal_(tensor, 0.0, math.sqrt(2.0 / fan_in), generator)


def default_linear_init_(weight, bias=None, generator=None):
    """torch.nn.Linear.reset_parameters: W ~ U(+-1/sqrt(in)), b ~ U(+-1/sqrt(in))."""
    if 0 in _shape(weight):
        return weight  # nothing to draw (torch only warns here)
    kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
    if bias is not None:
        fan_in, _ = _fans(_shape(weight))
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        uniform_(bias, -bound, bound, generator)
    return weight


def _fan(tensor, mode):
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"init: expected mode 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = _fans(_shape(tensor))
    fan = fan_in if mode == "fan_in" else fan_out
    if fan == 0:
        raise ValueError(f"init: cannot initialise an array with zero {mode} (shape {_shape(tensor)})")
    return fan
