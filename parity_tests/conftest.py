"""Shared fixtures: the backends every parity test runs on.

BACKENDS: "numpy" (NumPy arrays), "torch-cpu" and "torch-cuda" (torch tensors, autograd off).
The CUDA backend carries the `cuda` marker and skips, with its reason, when torch sees no GPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import torch_ref

# The suite's tensors are tiny: torch's intra-op threads only contend (2-10x slower measured on
# a loaded 2-core machine). One thread for the whole test session.
torch.set_num_threads(1)
torch_ref.ieee_float32()  # CUDA: autograd's float32 convolutions in IEEE float32, not TF32 (as manual's)

CUDA = torch.cuda.is_available()
NO_CUDA = "no CUDA GPU visible to torch (torch.cuda.is_available() is False)"

# backend id -> the `device=` that manual and manual._backend.place understand
DEVICE_OF = {"numpy": "numpy", "torch-cpu": "cpu", "torch-cuda": "cuda"}

BACKENDS = [
    pytest.param("numpy", id="numpy"),
    pytest.param("torch-cpu", id="torch-cpu"),
    pytest.param("torch-cuda", id="torch-cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not CUDA, reason=NO_CUDA)]),
]
DTYPES = ["float64", "float32"]


def torch_device(backend: str) -> str:
    """The torch device the autograd reference runs on for a backend ('cpu' for NumPy)."""
    return "cuda" if backend == "torch-cuda" else "cpu"


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
