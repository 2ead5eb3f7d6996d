"""Grad mode: no_grad, set_grad_enabled and is_grad_enabled, named as torch names its own.

Under `no_grad()` a module's forward saves nothing for backward (evaluation passes: no memory
kept, and the saved state of an earlier training forward is left as it was). The mode is
per thread, as torch's is. No autograd here: only a thread-local flag (standard library only) that
`Module._save` reads; torch's names so that torch users find it.
"""

from __future__ import annotations

import functools
import threading

__all__ = ["no_grad", "set_grad_enabled", "is_grad_enabled"]


class _Mode(threading.local):
    enabled = True


_mode = _Mode()


def is_grad_enabled() -> bool:
    """True unless inside no_grad() (or set_grad_enabled(False))."""
    return _mode.enabled


class _GradContext:
    """A context manager that is also a decorator, as torch's are."""

    _target = True

    def __enter__(self):
        self._prev = _mode.enabled
        _mode.enabled = self._target

    def __exit__(self, *exc):
        _mode.enabled = self._prev
        return False

    def __call__(self, func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            with type(self)():
                return func(*args, **kwargs)

        return wrapper


class no_grad(_GradContext):
    """`with manual.no_grad(): model(x)`, or `@manual.no_grad()`: forward saves nothing for backward."""

    _target = False


class set_grad_enabled(_GradContext):
    """`set_grad_enabled(False)` sets the mode now (as torch's does); also a context manager."""

    def __init__(self, mode: bool):
        if not isinstance(mode, bool):
            raise TypeError(f"set_grad_enabled: expected a bool, got {type(mode).__name__}")
        self._prev = _mode.enabled
        self._target = mode
        _mode.enabled = mode

    def __enter__(self):
        pass

    def __call__(self, func):
        _mode.enabled = self._prev
        mode = self._target

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            with set_grad_enabled(mode):
                return func(*args, **kwargs)

        return wrapper
