"""The generic parity test: every registered op x sample x dtype x backend against torch autograd.

Cases come from torch_ref.opinfo (the one registry); the comparison is experiments.parity.check_op
(the same engine `backprop-lab verify` runs), with a random upstream gradient and the registry's
per-op, per-dtype tolerances. A failure names op, sample, backend, dtype and tensor.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import DTYPES

from experiments.parity import check_op
from torch_ref.opinfo import OPS, samples

CASES = [pytest.param(op, s, id=f"{op.name}-{s.id}") for op in OPS for s in samples(op)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op, sample", CASES)
def test_matches_torch(op, sample, dtype, backend):
    r = check_op(op, sample, dtype, backend)
    # r.assert_close checks r.problems first: any warning (overflow, ...) and any result whose
    # dtype or device differs from the input's; then the values of the output and every gradient
    r.assert_close()
    # What was compared (not `r.passed`, which repeated assert_close and could never fail): the
    # output and at least one gradient; a sample whose reference yields no gradient checks nothing
    # this suite is about.
    assert "output" in r.errors and any(k.startswith("grad_") for k in r.errors), f"{r.header}: compared only {sorted(r.errors)}"



@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_softmax_dtype_casts_first_and_returns_the_inputs_gradient_dtype(backend, op):
    """torch's dtype= on softmax / log_softmax: x is cast first (float32 -> float64 here), the output is in
    dtype, and the gradient comes back in x's dtype (the cast's backward). Expected values: torch autograd."""
    import manual.functional as MF
    from manual import _backend as B

    rng = np.random.default_rng(7)
    x32 = (rng.normal(size=(3, 5)) * 4).astype(np.float32)
    g64 = rng.normal(size=(3, 5))
    xt = torch.tensor(x32, requires_grad=True)
    yt = getattr(torch.nn.functional, op)(xt, 1, dtype=torch.float64)
    (gt,) = torch.autograd.grad(yt, xt, torch.tensor(g64))
    x = x32 if backend == "numpy" else torch.tensor(x32)
    g = g64 if backend == "numpy" else torch.tensor(g64)
    y = getattr(MF, op)(x, 1, dtype=torch.float64 if backend == "torch" else "float64")
    assert B.dtype_name(y.dtype) == "float64"
    np.testing.assert_allclose(B.to_numpy(y), yt.detach().numpy(), rtol=1e-14, atol=1e-15)
    dx = getattr(MF, op + "_backward")(g, x, 1, dtype="float64")
    assert B.dtype_name(dx.dtype) == "float32"
    np.testing.assert_allclose(B.to_numpy(dx), gt.numpy(), rtol=1e-6, atol=1e-7)  # float32: one rounding at the end
    bwd = getattr(MF, op + "_backward")  # from the output: the input's dtype must be named
    with pytest.raises(ValueError, match=r"pass input= or input_dtype="):
        bwd(g, output=y, dim=1, dtype="float64")
    dx_out = bwd(g, output=y, dim=1, dtype="float64", input_dtype="float32")
    assert B.dtype_name(dx_out.dtype) == "float32"
    np.testing.assert_allclose(B.to_numpy(dx_out), gt.numpy(), rtol=1e-6, atol=1e-7)
    with pytest.raises(TypeError, match=r"expected dtype None, float32 or float64, got 'int8'"):
        getattr(MF, op)(x, 1, dtype="int8")
