"""One CPU thread for small work: torch's intra-op pool and NumPy's BLAS pool."""

from __future__ import annotations

import contextlib

import torch
from threadpoolctl import threadpool_limits


@contextlib.contextmanager
def one_thread():
    """Run torch and NumPy's BLAS single-threaded, restoring both afterwards.

    The experiments' and the parity checks' tensors are small: on a 2-core machine their thread
    pools only add synchronisation and contend with each other (5-20x slower measured here
    under load). CUDA work is unaffected.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(before)
