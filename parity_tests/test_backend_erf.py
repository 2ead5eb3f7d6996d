"""manual._backend.erf on float32 NumPy input (the vectorised rational of `_erf_float32`).

The expected values come from an independent source: `scipy.special.erf` evaluated in float64
(accurate to float64 rounding), and the error is counted in ulps of the float32 result. The bound
(1 ulp; measured 0.847 on every float32 in [0, 4]) fails for a wrong coefficient: any one of the 11
continued-fraction constants off by 1 part in 10^7 (either sign) breaks it, most already at 10^-8.

`python parity_tests/test_backend_erf.py` prints a micro-benchmark (old SciPy path against the new one).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy.special import erf as scipy_erf

from manual import _backend as B

MAX_ULP = 1.0  # measured 0.847 (R's relative error 2.07e-8 plus the final rounding)


def _ulps(x32: np.ndarray, y32: np.ndarray) -> np.ndarray:
    """|y - erf(x)| in units of the last place of a float32 next to the true value erf(x)."""
    ref = scipy_erf(x32.astype(np.float64))
    _, e = np.frexp(ref)  # ref = m 2^e, 0.5 <= |m| < 1: float32 ulp 2^(e - 24), 2^-149 for subnormals
    return np.abs(y32.astype(np.float64) - ref) / np.ldexp(1.0, np.maximum(e - 24, -149))


def _floats(lo: float, hi: float, step: int) -> np.ndarray:
    """Every `step`-th float32 in [lo, hi] (0 <= lo <= hi), by bit pattern."""
    a, b = (int(np.float32(v).view(np.int32)) for v in (lo, hi))
    return np.arange(a, b + 1, step, dtype=np.int32).view(np.float32)


def _quiet(f, *args):
    """f(*args) with every NumPy floating-point flag raising and every warning an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(all="raise"):
            return f(*args)


GRID = np.concatenate([
    _floats(0.0, 5.0, 401),  # 2.7M values spread over every binade, subnormals included
    _floats(0.0, 2.0**-140, 1),  # the smallest 512 Ki subnormals, every one
    _floats(0.47, 0.48, 1),  # erf(x) crosses 0.5 (a binade edge of the result) at x = 0.4769
    _floats(3.80, 3.96, 1),  # erf(x) crosses 1 - 2^-25 (rounds to 1 above) at 3.9192; the clamp at 3.95
])


def test_accuracy_against_scipy_float64():
    y = _quiet(B.erf, GRID)
    assert y.dtype == np.float32 and y.shape == GRID.shape
    u = _ulps(GRID, y)
    worst = int(np.argmax(u))
    assert u[worst] <= MAX_ULP, f"erf({GRID[worst]!r}) = {y[worst]!r}: {u[worst]:.3f} ulp from scipy's float64 erf"
    abs_err = np.abs(y.astype(np.float64) - scipy_erf(GRID.astype(np.float64))).max()
    assert abs_err <= 6e-8, abs_err  # measured 5.1e-8; one ulp below 1 is 6.0e-8
    # exactly odd: the negative half is the positive one, sign flipped, bit for bit
    np.testing.assert_array_equal(_quiet(B.erf, -GRID).view(np.int32), (-y).view(np.int32))


def test_special_values():
    x = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 3.4e38, -3.4e38, 1e30, -1e10,
                  3.95, np.nextafter(np.float32(3.95), np.float32(4)), 3.93, 4.0, -4.0], np.float32)
    y = _quiet(B.erf, x)
    assert y.dtype == np.float32
    assert y[0] == 0 and not np.signbit(y[0]) and y[1] == 0 and np.signbit(y[1])  # erf(+-0) = +-0
    assert y[2] == 1.0 and y[3] == -1.0  # exactly
    assert np.isnan(y[4]) and np.isnan(y[5])
    np.testing.assert_array_equal(y[6:], np.sign(x[6:]))  # far out, across the clamp: +-1 exactly, as scipy
    np.testing.assert_array_equal(y[6:], scipy_erf(x[6:].astype(np.float64)).astype(np.float32))
    # the smallest subnormals: erf(x) = 2 x / sqrt(pi) rounded (an exact ulp count: 1 -> 1, 2 -> 2, 7 -> 8)
    tiny = np.array([1, 2, 3, 7, 100, 2**23 - 1], np.int32).view(np.float32)
    np.testing.assert_array_equal(_quiet(B.erf, tiny), scipy_erf(tiny.astype(np.float64)).astype(np.float32))


@pytest.mark.parametrize("shape", [(), (1,), (0,), (2, 0, 3), (3, 4, 5),
                                   (B._ERF32_CHUNK + 7,), (2, B._ERF32_CHUNK - 1)])  # across chunk ends
def test_dtype_and_shape(shape, rng):
    x = (rng.standard_normal(shape) * 2).astype(np.float32)
    before = x.copy()
    y = _quiet(B.erf, x)
    assert y.dtype == np.float32 and np.shape(y) == shape
    if shape == ():
        assert isinstance(y, np.float32)  # as the ufunc it replaces: a 0-d array gives a NumPy scalar
    np.testing.assert_array_equal(x, before)  # input untouched
    # elementwise: a chunk boundary or the array's length never changes a value
    flat = x.reshape(-1)
    one_by_one = np.array([B.erf(flat[i : i + 1])[0] for i in range(0, flat.size, max(1, flat.size // 50))], np.float32)
    np.testing.assert_array_equal(np.reshape(y, -1)[:: max(1, flat.size // 50)], one_by_one)
    assert (_ulps(flat, np.reshape(y, -1)) <= MAX_ULP).all()


def test_layouts_and_scalars(rng):
    x = (rng.standard_normal((6, 8)) * 2).astype(np.float32)
    y = B.erf(x)
    np.testing.assert_array_equal(B.erf(x.T), y.T)  # non-contiguous input
    np.testing.assert_array_equal(B.erf(x[::2, 1::3]), y[::2, 1::3])
    np.testing.assert_array_equal(B.erf(np.asfortranarray(x)), y)
    big_endian = x.astype(">f4")
    yb = B.erf(big_endian)
    assert yb.dtype == np.dtype(">f4")  # as scipy_erf(x).astype(x.dtype) kept it
    np.testing.assert_array_equal(yb, y)
    s = B.erf(np.float32(0.5))
    assert isinstance(s, np.float32) and s == B.erf(np.array([0.5], np.float32))[0]
    assert B.erf(np.array(0.5, np.float32)) == s


def test_float64_and_torch_unchanged(rng):
    x = rng.standard_normal(1000) * 3
    np.testing.assert_array_equal(B.erf(x), scipy_erf(x))  # float64: still scipy, bit for bit
    t = torch.from_numpy(x.astype(np.float32))
    assert torch.equal(B.erf(t), torch.special.erf(t))


if __name__ == "__main__":  # micro-benchmark, printed, not asserted
    import os
    import timeit

    print(f"load average (1, 5, 15 min): {os.getloadavg()}, {os.cpu_count()} CPUs")
    shapes = {"1M elements": (1 << 20,), "gpt-sort GELU (64, 12, 128)": (64, 12, 128),
              "gpt-256x4 GELU (16, 128, 1024)": (16, 128, 1024)}
    for name, shape in shapes.items():
        x = (np.random.default_rng(0).standard_normal(shape) / np.sqrt(2)).astype(np.float32)
        runs = {"scipy (old)": lambda: scipy_erf(x).astype(x.dtype, copy=False), "_erf_float32": lambda: B.erf(x),
                "one np.multiply": lambda: np.multiply(x, x)}
        times: dict = {k: [] for k in runs}
        for _ in range(15):  # interleaved, so that a load change hits every variant alike
            for k, f in runs.items():
                times[k].extend(timeit.repeat(f, number=1, repeat=3))
        med = {k: 1e3 * float(np.median(v)) for k, v in times.items()}
        print(f"{name:32s}" + "  ".join(f"{k} {v:7.3f} ms" for k, v in med.items())
              + f"  speed-up {med['scipy (old)'] / med['_erf_float32']:.1f}x")
