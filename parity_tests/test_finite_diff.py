"""Second oracle: central finite differences of manual's own forward, in float64.

d<g, f(x)>/dx by a 4th-order central difference, g a random upstream gradient, for every
differentiable argument of every sample; compared with `<op>_backward` (and with its
`output=` path, where the op has one).
"""

from __future__ import annotations

import numpy as np
import pytest
from torch.testing import assert_close

import manual.functional as MF
from experiments.parity import FD_TOL, FROM_OUTPUT, finite_diff, run_manual
from torch_ref.opinfo import OPS, samples


def _case(op, s):
    skip = []
    if not s.fd:
        skip = [pytest.mark.skip(reason=f"fd=False: {s.fd_reason}")]
    elif any(np.size(a) == 0 for a in s.args):
        skip = [pytest.mark.skip(reason="empty batch: no element to perturb")]
    return pytest.param(op, s, id=f"{op.name}-{s.id}", marks=skip)


@pytest.mark.parametrize("op, sample", [_case(op, s) for op in OPS for s in samples(op)])
def test_backward_matches_finite_differences(op, sample):
    _, _, g, native, caught = run_manual(op, sample, "float64", "numpy")
    assert not caught, caught
    expected = finite_diff(getattr(MF, op.name), list(sample.args), sample.kwargs, op.arg_names, sample.diff, g)
    if op.from_output:
        expected[FROM_OUTPUT] = expected["grad_input"]
    actual = {k: native.get(k) for k in expected}
    assert_close(actual, expected, rtol=FD_TOL.rtol, atol=FD_TOL.atol,
                 msg=lambda m: f"{op.name}[{sample.id}] on numpy in float64 vs finite differences: {m}")


def test_finite_diff_helper_is_exact_on_a_known_derivative():
    """d<g, x^3>/dx = 3 x^2 g: the helper itself, against calculus."""
    rng = np.random.default_rng(0)
    x, g = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    got = finite_diff(lambda a: a**3, [x], {}, ("input",), ("input",), g)["grad_input"]
    assert_close(got, 3 * x**2 * g, rtol=FD_TOL.rtol, atol=FD_TOL.atol)
    with pytest.raises(AssertionError):
        assert_close(got, 3 * x**2 * g * (1 + 1e-6), rtol=FD_TOL.rtol, atol=FD_TOL.atol)
