"""manual.nn.utils: twin of torch.nn.utils (gradient clipping)."""

from __future__ import annotations

import math

import numpy as np

from . import _backend as B

__all__ = ["clip_grad_norm_"]


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False, foreach=None):
    """Scale every .grad in place by min(1, max_norm / (total + 1e-6)); return total, the norm of all
    gradients together: total = || (||g_1||, ..., ||g_k||) ||, each of order norm_type (inf: max |g|).

    As torch: the scale is applied even when it is 1, a parameter without .grad is skipped, and a
    non-finite total raises only with error_if_nonfinite=True. `foreach` is accepted and ignored.
    """
    from .nn import Parameter

    params = [parameters] if isinstance(parameters, Parameter) else list(parameters)
    for i, p in enumerate(params):
        if not isinstance(p, Parameter):
            raise TypeError(f"clip_grad_norm_: expected manual.nn.Parameter, got {type(p).__name__} at position {i}")
    norm_type, max_norm = float(norm_type), float(max_norm)
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return np.zeros((), dtype=np.float32)  # torch: tensor(0.)
    xp = B.namespace(*grads, op="clip_grad_norm_")
    B.check_same_dtype("clip_grad_norm_", **{f"grad{i}": g for i, g in enumerate(grads)})
    norms = [xp.linalg.vector_norm(g, ord=norm_type) for g in grads]
    total = xp.linalg.vector_norm(xp.stack(norms), ord=norm_type)
    if error_if_nonfinite and not math.isfinite(float(total)):
        raise RuntimeError(
            f"clip_grad_norm_: the total norm of order {norm_type} of the gradients is {float(total)}, so it "
            "cannot be clipped; set error_if_nonfinite=False to scale by it anyway (as torch)"
        )
    coef = xp.clip(max_norm / (total + 1e-6), max=1.0)
    with np.errstate(invalid="ignore"):  # inf * 0 -> nan, silently, as torch
        for g in grads:
            g *= coef
    return total
