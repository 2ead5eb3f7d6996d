"""manual: forward and backward written by hand, no autograd anywhere.

`manual.functional` (ops and their `_backward`s), `manual.nn` (modules), `manual.optim`
(optimizers), `manual.init` (initialisers): twins of their torch namesakes.
"""

from . import functional, init, nn, optim

__all__ = ["functional", "init", "nn", "optim"]
