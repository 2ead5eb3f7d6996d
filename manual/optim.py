"""Optimizers: torch.optim's update rules, written out (guide: "Gradient Descent",
"Non-Convex Optimization").

Updates are in place (`p.data -= ...`), as torch's are, so no parameter array is
reallocated per step. Each rule below is torch's single-tensor implementation, in the same
order of operations, so float64 trajectories agree with torch's to rounding.
"""

from __future__ import annotations

import math

from . import _backend as B
from .nn import Parameter


class Optimizer:
    """Parameter groups and per-parameter state, laid out as torch.optim's are."""

    def __init__(self, params, defaults):
        params = list(params)
        if not params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        self.defaults = defaults
        self.param_groups = []
        for g in groups:
            g = {**defaults, **g, "params": list(g["params"])}
            for p in g["params"]:
                if not isinstance(p, Parameter):
                    raise TypeError(f"{type(self).__name__}: expected manual.nn.Parameter, got {type(p).__name__}")
            self.param_groups.append(g)
        self.state = {}  # id(Parameter) -> dict

    def _params(self):
        for g in self.param_groups:
            for p in g["params"]:
                yield g, p

    def zero_grad(self, set_to_none=True):
        for _, p in self._params():
            p.grad = None if set_to_none or p.grad is None else p.grad * 0

    def state_dict(self):
        """{"state": {index: {...}}, "param_groups": [{..., "params": [indices]}]}, as torch.optim."""
        index = {id(p): i for i, (_, p) in enumerate(self._params())}
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [index[id(p)] for p in g["params"]]} for g in self.param_groups]
        # only parameters with state, as torch (plain SGD keeps none: its "state" is {})
        state = {index[k]: dict(v) for k, v in self.state.items() if k in index and v}
        return {"state": state, "param_groups": groups}

    def step(self):
        state = self.state
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is not None:
                    self._update(p, p.grad, g, state.setdefault(id(p), {}))

    def _update(self, p, grad, group, state):
        raise NotImplementedError


def _check(name, value, ok, expected):
    if not ok:
        raise ValueError(f"{name}: expected {expected}, got {value}")


class SGD(Optimizer):
    """g = grad + wd w;  b = momentum b + (1 - dampening) g (b = g on the first step);
    g = g + momentum b if nesterov else b;  w = w - lr g.  (With momentum 0: w = w - lr grad.)"""

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        _check("SGD lr", lr, lr >= 0, "lr >= 0")
        _check("SGD momentum", momentum, momentum >= 0, "momentum >= 0")
        _check("SGD weight_decay", weight_decay, weight_decay >= 0, "weight_decay >= 0")
        _check("SGD nesterov", nesterov, not nesterov or (momentum > 0 and dampening == 0),
               "momentum > 0 and dampening == 0 with nesterov=True")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))

    def _update(self, p, grad, group, state):
        if group["weight_decay"]:
            grad = grad + group["weight_decay"] * p.data
        mu = group["momentum"]
        if mu:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = grad + 0  # a copy: the buffer is updated in place
            else:
                buf *= mu
                buf += (1.0 - group["dampening"]) * grad
            grad = grad + mu * buf if group["nesterov"] else buf
        p.data -= group["lr"] * grad


class GuideMomentum(Optimizer):
    """The guide's momentum: v = beta v + lr g;  w = w - v.

    At a constant lr this is the same trajectory as SGD(momentum=beta): with v = lr b,
    b = beta b + g and w = w - lr b (see parity_tests/test_optim.py).
    """

    def __init__(self, params, lr=1e-3, beta=0.9):
        _check("GuideMomentum lr", lr, lr >= 0, "lr >= 0")
        _check("GuideMomentum beta", beta, 0 <= beta < 1, "0 <= beta < 1")
        super().__init__(params, dict(lr=lr, beta=beta))

    def _update(self, p, grad, group, state):
        v = state.get("velocity")
        if v is None:
            v = state["velocity"] = group["lr"] * grad
        else:
            v *= group["beta"]
            v += group["lr"] * grad
        p.data -= v


class Adam(Optimizer):
    """m = m + (1 - b1)(g - m);  v = b2 v + (1 - b2) g^2;
    w = w - (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        _check("Adam lr", lr, lr >= 0, "lr >= 0")
        _check("Adam eps", eps, eps >= 0, "eps >= 0")
        _check("Adam betas", betas, all(0 <= b < 1 for b in betas), "each beta in [0, 1)")
        _check("Adam weight_decay", weight_decay, weight_decay >= 0, "weight_decay >= 0")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    def _update(self, p, grad, group, state):
        if not state:
            xp = B.namespace(p.data)
            state["step"] = 0
            state["exp_avg"] = xp.zeros_like(p.data)
            state["exp_avg_sq"] = xp.zeros_like(p.data)
        b1, b2 = group["betas"]
        if group["weight_decay"]:
            grad = grad + group["weight_decay"] * p.data
        state["step"] += 1
        t = state["step"]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m += (1.0 - b1) * (grad - m)  # torch's lerp(m, g, 1 - b1)
        v *= b2
        v += (1.0 - b2) * grad * grad
        step_size = group["lr"] / (1.0 - b1**t)
        denom = B.namespace(v).sqrt(v) / math.sqrt(1.0 - b2**t) + group["eps"]
        p.data -= step_size * (m / denom)
