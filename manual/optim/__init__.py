"""Optimizers: torch.optim's update rules, written out (guide: "Gradient Descent",
"Non-Convex Optimization").

Updates are in place (`p.data -= ...`), as torch's are, so no parameter array is
reallocated per step. Each rule below is torch's single-tensor implementation, in the same
order of operations, so float64 trajectories agree with torch's to rounding.

`state_dict()` / `load_state_dict()` use torch.optim's layout, so the state of a torch
optimizer (tensors) loads into the manual twin and the reverse:

    {"state": {0: {"momentum_buffer": arr}, ...}          # SGD with momentum
              {0: {"step": 3, "exp_avg": arr, "exp_avg_sq": arr}, ...}   # Adam, AdamW
     "param_groups": [{"lr": ..., <hyperparameters>, "params": [0, 1, ...]}]}

Refused, as torch refuses: a parameter in two groups, a `.grad` of another shape, dtype or
backend than its parameter. Warned, as torch warns: a parameter listed twice in one group
(and then stepped exactly as torch steps it).
"""

from __future__ import annotations

import functools
import numbers
import math
import warnings

import numpy as np

from .. import _backend as B
from ..nn import Parameter

__all__ = ["Optimizer", "SGD", "GuideMomentum", "Adam", "AdamW", "lr_scheduler"]

# torch.optim group options manual does not implement: accepted from a torch state_dict only
# at these (torch's default) values.
_TORCH_ONLY_DEFAULTS = {"foreach": (None, False), "maximize": (False,), "capturable": (False,),
                        "differentiable": (False,), "fused": (None, False), "amsgrad": (False,)}


def _no_graph(step):
    """torch's step runs under no_grad: a .grad that requires grad must not pull the parameters
    (updated in place) or the optimizer state into an autograd graph. Only torch parameters can be
    pulled in, and entering no_grad costs ~1.5 us, a tenth of a small net's update: NumPy skips it."""
    @functools.wraps(step)
    def wrapped(self):
        self._opt_called = True  # lr_scheduler warns when it steps before the optimizer ever did (as torch)
        if B.torch is None or all(type(p.data) is np.ndarray for g in self.param_groups for p in g["params"]):
            return step(self)
        with B.torch.no_grad():
            return step(self)

    return wrapped


def _refuse_unimplemented(where, key, value):
    if key in _TORCH_ONLY_DEFAULTS and value not in _TORCH_ONLY_DEFAULTS[key]:
        raise ValueError(f"{where}: {key}={value!r} is a torch.optim option manual does not implement "
                         f"(expected {_TORCH_ONLY_DEFAULTS[key][0]!r} or no {key!r} key)")


class Optimizer:
    """Parameter groups and per-parameter state, laid out as torch.optim's are."""

    _state_keys: frozenset = frozenset()  # the per-parameter state a subclass keeps

    def __init__(self, params, defaults):
        name = type(self).__name__
        if isinstance(params, Parameter) or B._is_array(params):
            raise TypeError(
                f"{name}: expected an iterable of manual.nn.Parameter or of dicts (parameter groups), "
                f"got a single {type(params).__name__}: wrap it in a list"
            )
        if isinstance(params, (set, frozenset)):
            raise TypeError(f"{name}: expected an ordered collection of parameters (a list), got a set, whose order changes between runs")
        params = list(params)
        if not params:
            raise ValueError(f"{name}: got an empty parameter list")
        self.defaults = defaults
        self.param_groups = []
        self.state = {}  # id(Parameter) -> dict
        for g in params if isinstance(params[0], dict) else [{"params": params}]:
            self.add_param_group(g)

    def add_param_group(self, param_group):
        """Add a group ({"params": [...], <hyperparameters>}); defaults fill what it leaves out."""
        name = type(self).__name__
        if not isinstance(param_group, dict):
            raise TypeError(f"{name}: expected a parameter group as a dict, got {type(param_group).__name__}")
        ps = param_group.get("params")
        if ps is None:
            raise ValueError(f"{name}: expected a parameter group with a 'params' entry, got keys {sorted(param_group)}")
        if isinstance(ps, (set, frozenset)):
            raise TypeError(f"{name}: expected an ordered collection of parameters (a list), got a set")
        ps = [ps] if isinstance(ps, Parameter) else list(ps)
        for i, p in enumerate(ps):
            if not isinstance(p, Parameter):
                raise TypeError(f"{name}: expected manual.nn.Parameter, got {type(p).__name__} at position {i}")
        for k, v in param_group.items():  # other keys are kept, as torch keeps them
            _refuse_unimplemented(name, k, v)
        if len({id(p) for p in ps}) != len(ps):
            warnings.warn(
                f"{name}: a parameter group lists a parameter more than once; it is stepped once per listing, "
                "as torch does (torch: 'optimizer contains a parameter group with duplicate parameters')",
                UserWarning, stacklevel=3,
            )
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in seen for p in ps):
            raise ValueError(f"{name}: some parameters appear in more than one parameter group (torch refuses this too)")
        group = {**self.defaults, **param_group, "params": ps}
        self._check_types(group)
        self._check_group(group)
        self.param_groups.append(group)

    def _check_types(self, group):
        """Every numeric hyperparameter a real number (betas: a pair of them), before the subclass compares
        it: lr=None or lr="x" is named here, not in a bare "'>=' not supported" from deep inside."""
        name = type(self).__name__
        for k, default in _signature_defaults(type(self)).items():  # the constructor's own defaults say the kind
            if k not in group or isinstance(default, bool) or not isinstance(default, (numbers.Real, tuple)):
                continue
            v = group.get(k)
            pair = isinstance(default, tuple)
            vals = tuple(v) if pair and isinstance(v, (tuple, list)) else (v,)
            if (pair and not isinstance(v, (tuple, list))) or not all(_is_real(x) for x in vals):
                raise TypeError(f"{name}: expected {k} to be {'a pair of real numbers' if pair else 'a real number'}, "
                                f"got {type(v).__name__} {v!r}")

    def _check_group(self, group):
        """Validate a group's hyperparameters (subclasses)."""

    def _params(self):
        for g in self.param_groups:
            for p in g["params"]:
                yield g, p

    def zero_grad(self, set_to_none=True):
        for _, p in self._params():
            p.grad = None if set_to_none or p.grad is None else B.namespace(p.grad).zeros_like(p.grad)  # NaN * 0 is NaN

    # -- state ---------------------------------------------------------------------------
    def state_dict(self):
        """{"state": {index: {...}}, "param_groups": [{..., "params": [indices]}]}, as torch.optim.

        The state's arrays are the optimizer's own (not copies), as torch's are.
        """
        index, groups, start = {}, [], 0
        for g in self.param_groups:
            for i, p in enumerate(g["params"], start):
                index.setdefault(id(p), i)
            groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": [index[id(p)] for p in g["params"]]})
            start += len(g["params"])
        # only parameters with state, as torch (plain SGD keeps none: its "state" is {})
        state = {index[k]: dict(v) for k, v in self.state.items() if k in index and v}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Load a state_dict from this class or from its torch twin (tensors or arrays, any device).

        Arrays are copied into each parameter's own backend, device and dtype. Hyperparameters
        come from the saved groups; torch-only options are accepted only at torch's defaults.
        """
        name = type(self).__name__
        if not isinstance(state_dict, dict) or set(state_dict) != {"state", "param_groups"}:
            got = sorted(state_dict) if isinstance(state_dict, dict) else type(state_dict).__name__
            raise ValueError(f"{name}.load_state_dict: expected a dict with keys 'param_groups' and 'state', got {got}")
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"{name}.load_state_dict: expected {len(self.param_groups)} parameter group(s), got {len(saved_groups)}"
            )
        new_groups, id_map = [], {}
        for gi, (g, sg) in enumerate(zip(self.param_groups, saved_groups)):
            if len(sg["params"]) != len(g["params"]):
                raise ValueError(
                    f"{name}.load_state_dict: parameter group {gi}: expected {len(g['params'])} parameters, "
                    f"got {len(sg['params'])}"
                )
            id_map.update(zip(sg["params"], g["params"]))
            new_groups.append(self._load_group(gi, g, sg))
        state = {}
        for k, v in state_dict["state"].items():
            if isinstance(k, str) and k.isdigit():  # a state_dict that went through JSON
                k = int(k)
            if k not in id_map:
                raise KeyError(f"{name}.load_state_dict: state for parameter index {k!r}, which no group lists")
            p = id_map[k]
            state[id(p)] = self._load_param_state(k, p, v)
        for g, ng in zip(self.param_groups, new_groups):  # only now: a failed load changes nothing
            g.clear()
            g.update(ng)
        self.state = state

    def _load_group(self, gi, group, saved):
        name = type(self).__name__
        missing = [k for k in self.defaults if k not in saved]
        if missing:
            raise ValueError(f"{name}.load_state_dict: parameter group {gi}: missing {missing}")
        new = {"params": group["params"]}
        for k, v in saved.items():
            if k == "params":
                continue
            if k in self.defaults:
                new[k] = tuple(v) if isinstance(self.defaults[k], tuple) else v  # JSON turns tuples into lists
            elif k == "initial_lr":  # written by an lr_scheduler
                new[k] = v
            elif k == "decoupled_weight_decay":
                if bool(v) != isinstance(self, AdamW):
                    raise ValueError(
                        f"{name}.load_state_dict: parameter group {gi}: decoupled_weight_decay={v} is "
                        f"{'AdamW' if v else 'Adam'}'s; load it into manual.optim.{'AdamW' if v else 'Adam'}"
                    )
            elif k in _TORCH_ONLY_DEFAULTS:
                _refuse_unimplemented(f"{name}.load_state_dict: parameter group {gi}", k, v)
            else:
                new[k] = v  # kept, as torch keeps any other key
        self._check_types(new)
        self._check_group(new)
        return new

    def _load_param_state(self, index, p, saved):
        name = type(self).__name__
        if not isinstance(saved, dict) or set(saved) - self._state_keys:
            got = sorted(saved) if isinstance(saved, dict) else type(saved).__name__
            raise ValueError(
                f"{name}.load_state_dict: state of parameter {index}: expected keys among {sorted(self._state_keys)}, got {got}"
            )
        out = {}
        for k, v in saved.items():
            if k == "step":
                out[k] = int(float(v))  # torch keeps a float32 tensor; manual an int
                continue
            if not B._is_array(v):
                raise TypeError(
                    f"{name}.load_state_dict: state of parameter {index}: {k}: expected a NumPy array or a "
                    f"torch tensor, got {type(v).__name__}"
                )
            if tuple(v.shape) != p.shape:
                raise ValueError(
                    f"{name}.load_state_dict: state of parameter {index}: {k}: expected shape {p.shape} "
                    f"(the parameter's), got {tuple(v.shape)}"
                )
            v = B.place(v, B.device_of(p.data), p.data.dtype)
            out[k] = B.namespace(v).asarray(v, copy=True)  # our own: updated in place from now on
        return out

    # -- the step ------------------------------------------------------------------------
    @_no_graph
    def step(self):
        state = self.state
        try:
            for g in self.param_groups:
                for p in g["params"]:
                    grad = p.grad
                    if grad is not None:
                        d = p.data
                        if grad.shape != d.shape or grad.dtype is not d.dtype or type(grad) is not type(d):
                            _bad_grad(self, g, p)
                        self._update(p, grad, g, state.setdefault(id(p), {}))
        except ValueError:
            self._explain_read_only()
            raise

    def _explain_read_only(self):
        for gi, g in enumerate(self.param_groups):
            for i, p in enumerate(g["params"]):
                flags = getattr(p.data, "flags", None)
                if flags is not None and not flags.writeable:
                    raise ValueError(
                        f"{type(self).__name__}.step: param_groups[{gi}]['params'][{i}] {p!r} is read-only: expected a "
                        "writeable array (updates are in place, as torch's): give the Parameter a copy (np.array(a))"
                    )

    def _update(self, p, grad, group, state):
        raise NotImplementedError

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines += [f"    {k}: {v}" for k, v in sorted(g.items()) if k != "params"]
        return "\n".join(lines + [")"])


def _bad_grad(opt, group, p):
    g, d = p.grad, p.data
    if type(g) is type(d) and g.shape == d.shape and g.dtype == d.dtype:
        return  # the fast check compares dtypes by identity; equal but distinct dtype objects are fine
    where = f"param_groups[{opt.param_groups.index(group)}]['params'][{[id(q) for q in group['params']].index(id(p))}]"
    raise ValueError(
        f"{type(opt).__name__}.step: {where}: expected a .grad like its parameter ({B.backend_name(p.data)}, "
        f"shape {p.shape}, dtype {p.data.dtype}), got ({B.backend_name(g) if B._is_array(g) else type(g).__name__}, "
        f"shape {tuple(getattr(g, 'shape', ()))}, dtype {getattr(g, 'dtype', None)})"
    )


def _check_state(opt, group, p, name, a, dtype=False):
    """State kept from an earlier step on another backend or device than the parameter now (the model was moved
    by .to(...) after the optimizer stepped): named, not a NumPy-torch error from inside the update. dtype=True:
    another dtype too (Adam, as torch's, refuses float64 moments for float32 weights after .float())."""
    d = p.data
    if type(a) is type(d) and (type(d) is np.ndarray or a.device == d.device) and (not dtype or a.dtype == d.dtype):
        return
    if dtype and type(a) is type(d) and a.dtype != d.dtype:
        i = [id(q) for q in group["params"]].index(id(p))
        raise ValueError(
            f"{type(opt).__name__}.step: param_groups[{opt.param_groups.index(group)}]['params'][{i}]: expected its "
            f"state {name} of the parameter's dtype ({d.dtype}), got {a.dtype}: the model's dtype changed after the "
            "optimizer stepped; build the optimizer after .to(...), or move its state with load_state_dict(state_dict())")
    where = lambda x: "numpy" if type(x) is np.ndarray else f"torch {x.device}"  # noqa: E731
    i = [id(q) for q in group["params"]].index(id(p))
    raise ValueError(
        f"{type(opt).__name__}.step: param_groups[{opt.param_groups.index(group)}]['params'][{i}]: expected its state "
        f"{name} like the parameter ({where(d)}), got ({where(a)}): the model was moved after the optimizer "
        "stepped; build the optimizer after .to(...), or move its state with load_state_dict(state_dict())"
    )


@functools.lru_cache(maxsize=None)
def _signature_defaults(cls):
    import inspect

    return {n: p.default for n, p in inspect.signature(cls.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _is_real(x):
    """A real number: int or float (NumPy's too), not bool; or a 0-d array or tensor (torch takes a tensor lr)."""
    if isinstance(x, bool):
        return False
    if isinstance(x, numbers.Real):
        return True
    return hasattr(x, "__float__") and getattr(x, "ndim", None) == 0


def _check(name, value, ok, expected):
    if not ok:
        raise ValueError(f"{name}: expected {expected}, got {value}")


class SGD(Optimizer):
    """g = grad + wd w;  b = momentum b + (1 - dampening) g (b = g on the first step);
    g = g + momentum b if nesterov else b;  w = w - lr g.  (With momentum 0: w = w - lr grad.)"""

    _state_keys = frozenset({"momentum_buffer"})

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))

    def _check_group(self, g):
        _check("SGD lr", g["lr"], g["lr"] >= 0, "lr >= 0")
        _check("SGD momentum", g["momentum"], g["momentum"] >= 0, "momentum >= 0")
        _check("SGD weight_decay", g["weight_decay"], g["weight_decay"] >= 0, "weight_decay >= 0")
        _check("SGD nesterov", g["nesterov"], not g["nesterov"] or (g["momentum"] > 0 and g["dampening"] == 0),
               "momentum > 0 and dampening == 0 with nesterov=True")

    @_no_graph
    def step(self):
        # torch's structure: read every listed parameter's buffer first, update, write back;
        # only a parameter listed twice in one group can tell the difference.
        state = self.state
        try:
            for g in self.param_groups:
                # floats: an np.float64 hyperparameter would promote float32 grads and buffers to float64
                mu, lr, wd = float(g["momentum"]), float(g["lr"]), float(g["weight_decay"])
                if not mu:
                    ps = [p for p in g["params"] if p.grad is not None]
                    for p in ps:
                        grad, d = p.grad, p.data
                        if grad.shape != d.shape or grad.dtype is not d.dtype or type(grad) is not type(d):
                            _bad_grad(self, g, p)
                    if len({id(p) for p in ps}) == len(ps):  # d -= lr * grad for each, in place
                        B.sub_scaled_all_([p.data for p in ps], lr,
                                          [p.grad + wd * p.data if wd else p.grad for p in ps])
                    else:  # a parameter listed twice: one after the other, each listing reading the last update
                        for p in ps:
                            B.sub_scaled_(p.data, lr, p.grad + wd * p.data if wd else p.grad)
                    continue
                ps = [p for p in g["params"] if p.grad is not None]
                bufs = [state.get(id(p), {}).get("momentum_buffer") for p in ps]
                for i, p in enumerate(ps):
                    grad, d = p.grad, p.data
                    if grad.shape != d.shape or grad.dtype is not d.dtype or type(grad) is not type(d):
                        _bad_grad(self, g, p)
                    if wd:
                        grad = grad + wd * d
                    buf = bufs[i]
                    if buf is not None:
                        _check_state(self, g, p, "momentum_buffer", buf)
                    if buf is None:
                        buf = bufs[i] = grad + 0  # a copy: the buffer is updated in place
                    else:
                        buf *= mu
                        buf += (1.0 - float(g["dampening"])) * grad
                    B.sub_scaled_(d, lr, grad + mu * buf if g["nesterov"] else buf)  # d -= lr * (...), in place
                for p, buf in zip(ps, bufs):
                    state.setdefault(id(p), {})["momentum_buffer"] = buf
        except ValueError:
            self._explain_read_only()
            raise


class GuideMomentum(Optimizer):
    """The guide's momentum: v = beta v + lr g;  w = w - v.

    At a constant lr this is the same trajectory as SGD(momentum=beta): with v = lr b,
    b = beta b + g and w = w - lr b (see parity_tests/test_optim.py).
    """

    _state_keys = frozenset({"velocity"})

    def __init__(self, params, lr=1e-3, beta=0.9):
        super().__init__(params, dict(lr=lr, beta=beta))

    def _check_group(self, g):
        _check("GuideMomentum lr", g["lr"], g["lr"] >= 0, "lr >= 0")
        _check("GuideMomentum beta", g["beta"], 0 <= g["beta"] < 1, "0 <= beta < 1")

    def _update(self, p, grad, group, state):
        v = state.get("velocity")
        if v is not None:
            _check_state(self, group, p, "velocity", v)
        if v is None:
            v = state["velocity"] = group["lr"] * grad
        else:
            v *= group["beta"]
            v += group["lr"] * grad
        p.data -= v


class Adam(Optimizer):
    """Adam (Kingma & Ba), as torch computes it.

    Textbook form, at step t with gradient g:
        m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2
        m_hat = m / (1 - b1^t);  v_hat = v / (1 - b2^t)
        w = w - lr m_hat / (sqrt(v_hat) + eps)
    The code computes the same thing in torch's order: m + (1 - b1)(g - m) is b1 m + (1 - b1) g
    (torch's lerp), and lr m_hat / (sqrt(v_hat) + eps) = (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps),
    dividing the two scalars instead of the two arrays: no m_hat or v_hat array is formed, and the
    rounding is torch's, so float64 trajectories agree to ~1e-14. weight_decay adds wd w to g (L2).
    """

    _state_keys = frozenset({"step", "exp_avg", "exp_avg_sq"})
    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=tuple(betas) if isinstance(betas, (tuple, list)) else betas, eps=eps,
                                      weight_decay=weight_decay))

    def _check_group(self, g):
        name = type(self).__name__
        _check(f"{name} lr", g["lr"], g["lr"] >= 0, "lr >= 0")
        _check(f"{name} eps", g["eps"], g["eps"] >= 0, "eps >= 0")
        _check(f"{name} betas", g["betas"], len(g["betas"]) == 2 and all(0 <= b < 1 for b in g["betas"]),
               "two betas, each in [0, 1)")
        _check(f"{name} weight_decay", g["weight_decay"], g["weight_decay"] >= 0, "weight_decay >= 0")

    def _update(self, p, grad, group, state):
        if not state:
            xp = B.namespace(p.data)
            state["step"] = 0
            state["exp_avg"] = xp.zeros_like(p.data)
            state["exp_avg_sq"] = xp.zeros_like(p.data)
        else:
            _check_state(self, group, p, "exp_avg", state["exp_avg"], dtype=True)
        b1, b2 = (float(b) for b in group["betas"])  # floats: an np.float64 would promote float32 to float64
        lr, wd = float(group["lr"]), float(group["weight_decay"])
        state["step"] += 1
        t = state["step"]
        if wd:
            if self._decoupled:
                p.data *= 1.0 - lr * wd  # AdamW: shrink w, apart from the gradient
            else:
                grad = grad + wd * p.data
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m += (1.0 - b1) * (grad - m)  # torch's lerp(m, g, 1 - b1)
        v *= b2
        v += (1.0 - b2) * grad * grad
        step_size = lr / (1.0 - b1**t)
        denom = B.namespace(v).sqrt(v) / math.sqrt(1.0 - b2**t) + float(group["eps"])
        p.data -= step_size * (m / denom)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), torch's defaults (weight_decay=1e-2).

        w = w (1 - lr wd);   then Adam's step on the gradient alone (see Adam).

    Parameter groups give biases and norms no decay:
        AdamW([{"params": weights}, {"params": biases, "weight_decay": 0.0}], lr=3e-4)
    """

    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    def state_dict(self):
        sd = super().state_dict()
        for g in sd["param_groups"]:
            g["decoupled_weight_decay"] = True  # torch's AdamW groups carry it
        return sd


from . import lr_scheduler  # noqa: E402  (after Optimizer: it checks isinstance against it)
