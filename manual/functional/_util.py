"""Shared plumbing for manual.functional: reductions and argument checks."""

from __future__ import annotations

import math

REDUCTIONS = ("mean", "sum", "none")


def check_reduction(op: str, reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"{op}: expected reduction to be one of {REDUCTIONS}, got {reduction!r}")


def reduce(loss, reduction: str, xp):
    """Apply a loss reduction: 'none' keeps the per-element losses."""
    if reduction == "none":
        return loss
    total = xp.sum(loss)
    return total if reduction == "sum" else total / math.prod(loss.shape)


def reduce_backward(grad_output, reduction: str, numel: int):
    """d reduce(loss)/d loss, times grad_output: 1/numel for 'mean', 1 for 'sum', identity for 'none'."""
    return grad_output / numel if reduction == "mean" else grad_output


def check_same_shape(op: str, input, target, what: str = "target") -> None:
    if input.shape != target.shape:  # tuple and torch.Size compare equal
        raise ValueError(
            f"{op}: expected {what} of shape {tuple(input.shape)} (the input's), got {tuple(target.shape)}"
        )


def check_floating(op: str, **arrays) -> None:
    from .._backend import check_same_dtype

    check_same_dtype(op, **arrays)


def check_grad_output(op: str, grad_output, loss_shape, reduction: str) -> None:
    """A loss's grad_output: the per-element loss's shape for 'none', a 0-d array otherwise."""
    expected = tuple(loss_shape) if reduction == "none" else ()
    if tuple(grad_output.shape) != expected:
        raise ValueError(
            f"{op}: expected grad_output of shape {expected} (the loss's, reduction={reduction!r}), "
            f"got {tuple(grad_output.shape)}"
        )
