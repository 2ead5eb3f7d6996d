"""manual: forward and backward written by hand, no autograd anywhere.

`manual.functional` (ops and their `_backward`s), `manual.nn` (modules), `manual.optim`
(optimizers and `manual.optim.lr_scheduler`), `manual.init` (initialisers): twins of their
torch namesakes. `manual.no_grad()` (torch's name) makes forward save nothing for backward.
"""

from . import functional, init, nn, optim
from ._grad_mode import is_grad_enabled, no_grad, set_grad_enabled

__all__ = ["functional", "init", "nn", "optim", "no_grad", "set_grad_enabled", "is_grad_enabled"]
