"""The generic parity test: every registered op x sample x dtype x backend against torch autograd.

Cases come from torch_ref.opinfo (the one registry); the comparison is experiments.parity.check_op
(the same engine `backprop-lab verify` runs), with a random upstream gradient and the registry's
per-op, per-dtype tolerances. A failure names op, sample, backend, dtype and tensor.
"""

from __future__ import annotations

import pytest
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

