"""Learning-rate schedules: twins of torch.optim.lr_scheduler, same recursions, same state.

Each scheduler writes `group["lr"]` of its optimizer's groups on `step()` (call it after
`optimizer.step()`, as in torch), and `get_last_lr()` returns what it wrote. The formulas are
torch's own recursive forms (not the closed forms), so the learning rates agree with torch's
bit for bit, including at a SequentialLR milestone (where torch switches to the closed form). Warmup then cosine decay:

    warmup = LinearLR(opt, start_factor=0.01, total_iters=100)
    decay = CosineAnnealingLR(opt, T_max=900)
    sched = SequentialLR(opt, [warmup, decay], milestones=[100])

`state_dict()` holds plain numbers (no optimizer, no functions), in torch's keys.
"""

from __future__ import annotations

import math
import numbers
import types
import warnings
from bisect import bisect_right

__all__ = ["LRScheduler", "LambdaLR", "LinearLR", "CosineAnnealingLR", "SequentialLR"]


class LRScheduler:
    """Base class: base_lrs from each group's "initial_lr", last_epoch counts the steps."""

    _is_initial = False

    def __init__(self, optimizer, last_epoch=-1):
        _check_optimizer(self, optimizer)
        self.optimizer = optimizer
        if last_epoch == -1:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
        else:
            for i, group in enumerate(optimizer.param_groups):
                if "initial_lr" not in group:
                    raise KeyError(
                        f"{type(self).__name__}: last_epoch={last_epoch} resumes a schedule, so expected "
                        f"'initial_lr' in param_groups[{i}] (load the optimizer's state_dict first), got none"
                    )
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = last_epoch
        self._initial_step()

    def _initial_step(self):
        self._step_count = 0
        self._is_initial = True
        try:
            self.step()
        finally:
            self._is_initial = False

    def get_lr(self):
        raise NotImplementedError

    def get_last_lr(self):
        """The learning rate of each group, as the last step set it."""
        return self._last_lr

    def step(self):
        if self._step_count == 1 and not getattr(self.optimizer, "_opt_called", False):  # torch's warning, its words
            warnings.warn(
                "Detected call of `lr_scheduler.step()` before `optimizer.step()`: expected `optimizer.step()` "
                "first, then `lr_scheduler.step()`; in this order the first value of the learning rate schedule "
                "is skipped (torch warns the same)", UserWarning, stacklevel=2)
        self._step_count += 1
        self._update_lr()

    def _update_lr(self, epoch=None):
        if epoch is None:
            self.last_epoch += 1
            values = self.get_lr()
        else:  # only SequentialLR, at a milestone (torch: _update_lr(0)): the closed form where there is one
            self.last_epoch = epoch
            values = self._get_closed_form_lr() if hasattr(self, "_get_closed_form_lr") else self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, values):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self):
        """Everything but the optimizer, under torch's keys (base_lrs, last_epoch, _step_count, ...)."""
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state_dict):
        self.__dict__.update(state_dict)


def _check_optimizer(sched, optimizer):
    from . import Optimizer

    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"{type(sched).__name__}: expected a manual.optim.Optimizer, got {type(optimizer).__name__}")


def _check_real(sched, **values):
    """A factor or a learning rate a real number (a NumPy one too), named, not a bare comparison error."""
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"{type(sched).__name__}: expected {name} to be a real number, got {type(v).__name__} {v!r}")


class LambdaLR(LRScheduler):
    """lr = base_lr * lr_lambda(last_epoch)."""

    def __init__(self, optimizer, lr_lambda, last_epoch=-1):
        _check_optimizer(self, optimizer)
        self.optimizer = optimizer
        n = len(optimizer.param_groups)
        if isinstance(lr_lambda, (list, tuple)):
            if len(lr_lambda) != n:
                raise ValueError(f"LambdaLR: expected {n} lr_lambdas (one per parameter group), got {len(lr_lambda)}")
            self.lr_lambdas = list(lr_lambda)
        else:
            self.lr_lambdas = [lr_lambda] * n
        for f in self.lr_lambdas:
            if not callable(f):
                raise TypeError(f"LambdaLR: expected lr_lambda to be a function of the step, got {type(f).__name__}")
        super().__init__(optimizer, last_epoch)

    def state_dict(self):
        sd = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "lr_lambdas")}
        # functions are not saved (as torch): only the attributes of callable objects
        sd["lr_lambdas"] = [None if isinstance(f, types.FunctionType) else dict(f.__dict__) for f in self.lr_lambdas]
        return sd

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        lambdas = state_dict.pop("lr_lambdas")
        self.__dict__.update(state_dict)
        for f, saved in zip(self.lr_lambdas, lambdas):
            if saved is not None:
                f.__dict__.update(saved)

    def get_lr(self):
        return [base * f(self.last_epoch) for f, base in zip(self.lr_lambdas, self.base_lrs)]


class LinearLR(LRScheduler):
    """Factor from start_factor to end_factor over total_iters steps: lr_t = base (s + (e - s) min(t, T) / T).

    Computed as torch does, recursively: lr_t = lr_(t-1) (1 + (e - s) / (T s + (t - 1)(e - s))).
    """

    def __init__(self, optimizer, start_factor=1.0 / 3, end_factor=1.0, total_iters=5, last_epoch=-1):
        _check_real(self, start_factor=start_factor, end_factor=end_factor)
        if not 0 < start_factor <= 1:
            raise ValueError(f"LinearLR: expected start_factor in (0, 1], got {start_factor}")
        if not 0 <= end_factor <= 1:
            raise ValueError(f"LinearLR: expected end_factor in [0, 1], got {end_factor}")
        self.start_factor, self.end_factor, self.total_iters = start_factor, end_factor, total_iters
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        groups = self.optimizer.param_groups
        if self.last_epoch == 0:
            return [g["lr"] * self.start_factor for g in groups]
        if self._is_initial or self.last_epoch > self.total_iters:
            return [g["lr"] for g in groups]
        s, e = self.start_factor, self.end_factor
        return [g["lr"] * (1.0 + (e - s) / (self.total_iters * s + (self.last_epoch - 1) * (e - s))) for g in groups]

    def _get_closed_form_lr(self):
        s, e, T = self.start_factor, self.end_factor, self.total_iters
        return [base * (s + (e - s) * min(T, self.last_epoch) / T) for base in self.base_lrs]


class CosineAnnealingLR(LRScheduler):
    """lr_t = eta_min + (base - eta_min)(1 + cos(pi t / T_max)) / 2, by torch's recursion:
    lr_t = eta_min + (lr_(t-1) - eta_min)(1 + cos(pi t / T_max)) / (1 + cos(pi (t - 1) / T_max))."""

    def __init__(self, optimizer, T_max, eta_min=0.0, last_epoch=-1):
        # torch takes any number (a float too: T_max=2.5 is a period of 5 steps); 0 divides by zero at its
        # second step, and a negative or NaN period is no schedule: refused here, by name
        if isinstance(T_max, bool) or not isinstance(T_max, numbers.Real) or not T_max > 0:
            raise ValueError(f"CosineAnnealingLR: expected T_max a positive number of steps (an int, or a float "
                             f"as torch takes), got {T_max!r}")
        _check_real(self, eta_min=eta_min)
        # a NumPy integer kept as an int, a NumPy float as a float: the same arithmetic as torch's on the value
        self.T_max = int(T_max) if isinstance(T_max, numbers.Integral) else float(T_max)
        self.eta_min = eta_min
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        groups, t, T, lo = self.optimizer.param_groups, self.last_epoch, self.T_max, self.eta_min
        if self._is_initial:
            return [g["lr"] for g in groups]
        if self._step_count == 1 and t > 0:
            return [lo + (base - lo) * (1 + math.cos(t * math.pi / T)) / 2 for base in self.base_lrs]
        if (t - 1 - T) % (2 * T) == 0:
            return [g["lr"] + (base - lo) * (1 - math.cos(math.pi / T)) / 2 for base, g in zip(self.base_lrs, groups)]
        return [(1 + math.cos(math.pi * t / T)) / (1 + math.cos(math.pi * (t - 1) / T)) * (g["lr"] - lo) + lo
                for g in groups]

    def _get_closed_form_lr(self):
        return [self.eta_min + (base - self.eta_min) * (1 + math.cos(math.pi * self.last_epoch / self.T_max)) / 2
                for base in self.base_lrs]


class SequentialLR(LRScheduler):
    """schedulers[i] runs from milestones[i-1] (its own step 0) to milestones[i]."""

    def __init__(self, optimizer, schedulers, milestones, last_epoch=-1):
        if len(schedulers) < 1:
            raise ValueError("SequentialLR: expected at least one scheduler, got none")
        for i, s in enumerate(schedulers):
            if not isinstance(s, LRScheduler):
                raise TypeError(f"SequentialLR: expected schedulers, got {type(s).__name__} at index {i}")
            if s.optimizer is not optimizer:
                raise ValueError(f"SequentialLR: expected every scheduler on the same optimizer, scheduler {i} ({type(s).__name__}) is on another")
        if len(milestones) != len(schedulers) - 1:
            raise ValueError(
                f"SequentialLR: expected {len(schedulers) - 1} milestone(s) (one fewer than the schedulers), got {len(milestones)}"
            )
        if any(b < a for a, b in zip(milestones, milestones[1:])):  # torch takes them; bisect then picks nonsense
            raise ValueError(f"SequentialLR: expected milestones in increasing order, got {list(milestones)}")
        self._schedulers = list(schedulers)
        self._milestones = list(milestones)
        self.last_epoch = last_epoch + 1
        self.optimizer = optimizer
        for group in optimizer.param_groups:  # undo what the schedulers' own first steps did
            group["lr"] = group["initial_lr"]
        self._undo(self)
        idx = bisect_right(self._milestones, 0)
        self._schedulers[idx]._initial_step()
        self._last_lr = self._schedulers[idx].get_last_lr()

    def _undo(self, sched):
        if hasattr(sched, "_schedulers"):
            for s in sched._schedulers:
                self._undo(s)
        else:
            sched.last_epoch -= 1

    def step(self):
        self.last_epoch += 1
        idx = bisect_right(self._milestones, self.last_epoch)
        scheduler = self._schedulers[idx]
        if idx > 0 and self._milestones[idx - 1] == self.last_epoch:
            scheduler._update_lr(0)
        else:
            scheduler.step()
        self._last_lr = scheduler.get_last_lr()

    def state_dict(self):
        sd = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "_schedulers")}
        sd["_schedulers"] = [s.state_dict() for s in self._schedulers]
        return sd

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        subs = state_dict.pop("_schedulers")
        if len(subs) != len(self._schedulers):  # zip would drop the rest, and step() fail later on the milestones
            raise ValueError(f"SequentialLR.load_state_dict: expected the state of {len(self._schedulers)} schedulers, "
                             f"got {len(subs)}")
        self.__dict__.update(state_dict)
        for s, sd in zip(self._schedulers, subs):
            s.load_state_dict(sd)
