"""Convolution and pooling: what the generic registry tests cannot say.

- the fast conv2d (im2col + one matmul, flipped-kernel input gradient) equals the definition
  written as loops (`conv2d_naive`, `conv2d_backward_naive`), forward and backward;
- max pooling sends each gradient where torch sends it when a window holds ties or NaNs
  (compared as indices and as gradients, exactly);
- the modules: torch's parameter names, shapes and init bounds, unbatched inputs, a second
  backward refused;
- bad input (wrong channel counts, kernel larger than the padded input, stride 0, groups that
  do not divide the channels): a clear error naming what was expected and what came.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from conftest import DEVICE_OF


import manual.functional as F
from experiments._threads import one_thread
from manual import _backend as B
from manual import nn
from manual.functional.conv import conv2d_backward_naive, conv2d_naive
from torch_ref import opinfo
from torch_ref.opinfo import OPS_BY_NAME

GEOMETRIES = [  # (input shape, weight shape, kwargs)
    ((2, 3, 6, 5), (4, 3, 3, 3), {}),
    ((2, 3, 7, 6), (4, 3, 3, 2), {"stride": 2, "padding": 1}),
    ((1, 4, 9, 8), (6, 2, 3, 3), {"stride": (2, 1), "padding": (2, 1), "dilation": (2, 1), "groups": 2}),
    ((2, 4, 6, 6), (4, 1, 3, 3), {"groups": 4, "padding": "same"}),  # depthwise
    ((2, 3, 7, 7), (2, 3, 4, 2), {"padding": "same", "dilation": 2}),  # even kernel: asymmetric 'same' padding
    ((1, 3, 5, 5), (2, 3, 5, 5), {}),  # kernel as large as the input
    ((2, 3, 5, 5), (2, 3, 1, 1), {"stride": 3}),  # 1x1 kernel, stride larger than the kernel
    ((2, 2, 4, 4), (3, 2, 2, 2), {"stride": 3, "padding": 2}),  # padding larger than half the kernel
]


@pytest.fixture(params=["batch-last", "image-major"])
def layout(request, monkeypatch):
    """Both layouts of the im2col kernels (manual.functional.conv: chosen by the output's width), each forced."""
    from manual.functional import conv as C

    monkeypatch.setattr(C, "IMAGE_MAJOR_OW", 0 if request.param == "image-major" else 10 ** 9)
    return request.param


@pytest.mark.parametrize("xs, ws, kw", GEOMETRIES, ids=[str(i) for i in range(len(GEOMETRIES))])
def test_im2col_conv_equals_the_loop_definition(xs, ws, kw, layout):
    rng = np.random.default_rng(sum(xs) + sum(ws))
    x, w, b = rng.normal(size=xs), rng.normal(size=ws), rng.normal(size=ws[0])
    y = F.conv2d(x, w, b, **kw)
    np.testing.assert_allclose(y, conv2d_naive(x, w, b, **kw), rtol=1e-12, atol=1e-13)  # sums of <= 75 terms
    g = rng.normal(size=y.shape)
    fast, slow = F.conv2d_backward(g, x, w, b, **kw), conv2d_backward_naive(g, x, w, b, **kw)
    for name, a, e in zip(("grad_input", "grad_weight", "grad_bias"), fast, slow):
        np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-13, err_msg=name)


def test_the_loop_definition_agrees_with_torch():
    """The reference itself checked once against torch, so that it cannot be wrong in the same way."""
    rng = np.random.default_rng(7)
    x, w, b = rng.normal(size=(2, 4, 7, 6)), rng.normal(size=(6, 2, 3, 2)), rng.normal(size=6)
    kw = {"stride": (2, 1), "padding": (1, 2), "dilation": (1, 2), "groups": 2}
    y = TF.conv2d(torch.tensor(x), torch.tensor(w), torch.tensor(b), **kw).numpy()
    np.testing.assert_allclose(conv2d_naive(x, w, b, **kw), y, rtol=1e-12, atol=1e-13)


def test_conv_input_gradient_is_a_convolution_with_the_flipped_kernel():
    """The docstring's claim, by torch: dL/dx = conv2d(g padded by k - 1, rot180(W) with in/out swapped)."""
    rng = np.random.default_rng(3)
    x, w = rng.normal(size=(2, 3, 6, 7)), rng.normal(size=(4, 3, 3, 2))
    g = rng.normal(size=(2, 4, 4, 6))
    expected = TF.conv2d(TF.pad(torch.tensor(g), (1, 1, 2, 2)), torch.tensor(w).flip(2, 3).transpose(0, 1)).numpy()
    np.testing.assert_allclose(F.conv2d_backward(g, x, w)[0], expected, rtol=1e-12, atol=1e-13)


# -- max pooling: ties and NaNs go where torch sends them -------------------------------------

def _ties(rng):
    return {
        "plateau": np.ones((1, 2, 4, 4)),
        "integers": np.round(rng.normal(size=(2, 3, 6, 6))),  # many equal values per window
        "two-values": rng.integers(0, 2, size=(2, 2, 5, 7)).astype(float),
        "nan": np.where(rng.uniform(size=(1, 2, 6, 6)) < 0.2, np.nan, np.round(rng.normal(size=(1, 2, 6, 6)))),
    }


POOLS = [
    {"kernel_size": 2},
    {"kernel_size": 3, "stride": 1, "padding": 1},  # overlapping windows: gradients add up
    {"kernel_size": 3, "stride": 2, "ceil_mode": True},
    {"kernel_size": (2, 3), "stride": 1, "dilation": (2, 1), "padding": (1, 1)},
]


@pytest.mark.parametrize("backend", ["numpy", "torch-cpu"])
@pytest.mark.parametrize("kw", POOLS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
@pytest.mark.parametrize("case", ["plateau", "integers", "two-values", "nan"])
def test_max_pool_routes_ties_as_torch(case, kw, backend):
    rng = np.random.default_rng(11)
    x = _ties(rng)[case]
    tx = torch.tensor(x, requires_grad=True)
    ty, tidx = TF.max_pool2d(tx, return_indices=True, **kw)
    g = rng.normal(size=tuple(ty.shape))
    ty.backward(torch.tensor(g))
    mx, mg = B.place(x, DEVICE_OF[backend], "float64"), B.place(g, DEVICE_OF[backend], "float64")
    y, idx = F.max_pool2d(mx, return_indices=True, **kw)
    np.testing.assert_array_equal(B.to_numpy(idx), tidx.numpy())
    np.testing.assert_array_equal(B.to_numpy(y), ty.detach().numpy())  # NaN == NaN here
    gi = B.to_numpy(F.max_pool2d_backward(mg, mx, **kw))
    # the same additions in the same order for each input: exact but for float64 rounding of overlaps
    np.testing.assert_allclose(gi, tx.grad.numpy(), rtol=1e-15, atol=0)
    m = nn.MaxPool2d(**kw)
    m(mx)
    np.testing.assert_allclose(B.to_numpy(m.backward(mg)), tx.grad.numpy(), rtol=1e-15, atol=0)


def test_a_wrong_tie_rule_would_be_caught():
    """The last maximum instead of the first: on a plateau the gradient lands elsewhere."""
    x, g = np.ones((1, 1, 2, 2)), np.array([[[[3.0]]]])
    gi = F.max_pool2d_backward(g, x, 2)
    assert gi[0, 0, 0, 0] == 3.0 and gi.sum() == 3.0  # torch: the first maximum in row-major order
    last = np.zeros_like(x)
    last[0, 0, 1, 1] = 3.0
    assert not np.array_equal(gi, last)


# -- modules ----------------------------------------------------------------------------------

MODULES = [
    ("Conv2d", (3, 8, 3), {}),
    ("Conv2d", (4, 6, (3, 2)), {"stride": 2, "padding": 1, "dilation": (1, 2), "groups": 2, "bias": False}),
    ("Conv2d", (4, 4, 3), {"groups": 4, "padding": "same"}),
    ("Conv1d", (3, 5, 4), {"stride": 2, "padding": "valid"}),
    ("MaxPool2d", (3,), {"stride": 2, "padding": 1, "ceil_mode": True}),
    ("AvgPool2d", (2,), {"ceil_mode": True, "count_include_pad": False}),
    ("AdaptiveAvgPool2d", ((3, None),), {}),
]


@pytest.mark.parametrize("name, args, kw", MODULES, ids=[f"{m[0]}-{i}" for i, m in enumerate(MODULES)])
def test_state_dict_and_output_match_the_torch_module(name, args, kw):
    m = getattr(nn, name)(*args, **kw, **({"generator": np.random.default_rng(0), "dtype": "float64"}
                                            if name.startswith("Conv") else {}))
    t = getattr(torch.nn, name)(*args, **kw).double()
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == {k: tuple(v.shape) for k, v in t.state_dict().items()}
    t.load_state_dict({k: torch.tensor(v) for k, v in m.state_dict().items()})
    shape = (2, args[0], 11) if name == "Conv1d" else (2, args[0] if name.startswith("Conv") else 3, 9, 8)
    x = np.random.default_rng(1).normal(size=shape)
    for batch in (x, x[0]):  # batched and unbatched input, as torch accepts both
        y = m(batch)
        ty = t(torch.tensor(batch, requires_grad=True))
        np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12, atol=1e-13)
        g = np.random.default_rng(2).normal(size=y.shape)
        tx = torch.tensor(batch, requires_grad=True)
        ty = t(tx)
        ty.backward(torch.tensor(g))
        m.zero_grad()
        np.testing.assert_allclose(m.backward(g), tx.grad.numpy(), rtol=1e-12, atol=1e-13)
        for k, p in m.named_parameters():
            np.testing.assert_allclose(p.grad, dict(t.named_parameters())[k].grad.numpy(), rtol=1e-12, atol=1e-13, err_msg=k)
        t.zero_grad()


def test_conv_init_has_torchs_bounds():
    """W, b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = in_channels/groups * kH * kW (torch's reset_parameters)."""
    m = nn.Conv2d(8, 256, 3, groups=2, generator=np.random.default_rng(0), dtype="float64")
    bound = 1 / math.sqrt(4 * 3 * 3)  # not 1/sqrt(8 * 3 * 3): groups=2 halves the fan-in
    for p in (m.weight.data, m.bias.data):  # 9216 and 256 draws: the largest is within 2% of the bound
        assert np.abs(p).max() <= bound and np.abs(p).max() > 0.98 * bound


def test_a_second_backward_is_refused():
    m = nn.Conv2d(2, 3, 2, dtype="float64")
    y = m(np.zeros((1, 2, 4, 4)))
    m.backward(np.ones_like(y))
    with pytest.raises(RuntimeError, match="backward"):
        m.backward(np.ones_like(y))


# -- bad input: what was expected and what came ----------------------------------------------

def z(*shape):
    return np.zeros(shape)


# The functional ops' bad inputs (wrong channel counts, groups that do not divide, kernels larger than
# the padded input, stride 0, negative padding, ...) are ErrorInputs in torch_ref/opinfo.py, checked
# by test_registry.py on NumPy and torch-cpu; here: that they are there, and the modules' own.

def test_the_issues_bad_inputs_are_registered():
    for name in ("conv1d", "conv2d"):
        ids = {e.id for e in opinfo.error_inputs(OPS_BY_NAME[name])}
        assert {"channels", "groups-channels", "groups-divide-out", "kernel-too-large", "stride-0"} <= ids, ids
    for name in ("max_pool2d", "avg_pool2d"):
        ids = {e.id for e in opinfo.error_inputs(OPS_BY_NAME[name])}
        assert {"stride-0", "kernel-too-large"} <= ids, ids


@pytest.mark.parametrize("call, error, pattern", [
    (lambda: F.conv1d(z(2, 3, 9), z(4, 3, 3), stride=(1, 2)), TypeError,
     r"conv1d: expected stride to be an int or a tuple of 1 ints, got \(1, 2\)"),
    (lambda: F.conv2d(z(2, 3, 4, 4), z(4, 3, 3, 3), padding="full"), ValueError,
     r"conv2d: expected padding to be an int, a tuple of 2 ints, 'valid' or 'same', got 'full'"),
    (lambda: F.conv2d(z(3, 4, 4), z(4, 3, 3)), ValueError,
     r"conv2d: expected weight of shape \(out_channels, in_channels/groups, kH, kW\), got \(4, 3, 3\)"),
    (lambda: F.conv2d(z(3, 4), z(4, 3, 3, 3)), ValueError, r"conv2d: expected a 4-D input .*got shape \(3, 4\)"),
    (lambda: F.conv2d(z(1, 3, 5, 5), z(0, 3, 3, 3)), ValueError,
     r"conv2d: expected weight with at least one output channel .*got weight of shape \(0, 3, 3, 3\)"),
    (lambda: F.conv1d_backward(z(1, 0, 3), z(1, 3, 5), z(0, 3, 3)), ValueError,
     r"conv1d_backward: expected weight with at least one output channel"),
    (lambda: F.conv2d(z(1, 3, 4, 4), z(4, 3, 3, 3).astype(np.float32)), TypeError,
     r"conv2d: mixed dtypes: .*got input=float64, weight=float32"),
    (lambda: nn.Conv2d(6, 4, 3, groups=4), ValueError,
     r"Conv2d: groups=4 must divide in_channels and out_channels, got in_channels=6, out_channels=4"),
    (lambda: nn.Conv2d(3, 4, 3, stride=0), ValueError, r"Conv2d: expected stride to be positive \(>= 1\), got 0"),
    (lambda: nn.Conv2d(3, 4, 3, padding="same", stride=2), ValueError,
     r"Conv2d: padding='same' is not supported for strided convolutions, got stride=2"),
    (lambda: nn.Conv2d(3, 4, 3, padding_mode="reflect"), ValueError, r"Conv2d: only padding_mode='zeros' .*got 'reflect'"),
    (lambda: nn.Conv2d(3, 4, 3, dtype="float64")(z(2, 5, 8, 8)), ValueError,
     r"Conv2d\(3, 4, kernel_size=\(3, 3\), stride=\(1, 1\)\): groups=1, weight of shape \(4, 3, 3, 3\): "
     r"expected input with 3 channels .*got 5 channels"),
    (lambda: nn.Conv2d(3, 4, 5, dtype="float64")(z(2, 3, 4, 4)), ValueError,
     r"Conv2d\(3, 4, .*\): kernel larger than the padded input: .*at most \(4, 4\).*got kernel \(5, 5\)"),
    (lambda: nn.Conv2d(3, 4, 3)(z(2, 3, 8, 8)), TypeError,
     r"Conv2d\(3, 4, .*\): mixed dtypes: expected input of dtype float32 \(the parameters'\), got float64"),
    (lambda: nn.Conv1d(3, 4, 3, dtype="float64")(z(2, 3, 8, 8)), ValueError,
     r"Conv1d\(3, 4, .*\): expected a 3-D input \(N, C, L\) or \(C, L\), got shape \(2, 3, 8, 8\)"),
    (lambda: nn.MaxPool2d(2, stride=0), ValueError, r"MaxPool2d: expected stride to be positive \(>= 1\), got 0"),
    (lambda: nn.MaxPool2d(3)(z(1, 1, 2, 2)), ValueError,
     r"MaxPool2d\(kernel_size=3, .*\): output size too small: input \(2, 2\) with kernel_size=\(3, 3\)"),
    (lambda: nn.AvgPool2d(0), ValueError, r"AvgPool2d: expected kernel_size to be positive \(>= 1\), got 0"),
    (lambda: nn.AdaptiveAvgPool2d(2)(z(2, 3, 0, 4)), ValueError,
     r"adaptive_avg_pool2d: expected non-zero channel, height and width"),
])
def test_bad_input_is_named(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


def test_channel_mismatch_matches_torchs_refusal():
    """Every conv case refused above is refused by torch too (no stricter rules than torch's)."""
    for xs, ws, kw in [((2, 5, 8, 8), (4, 3, 3, 3), {}), ((2, 6, 8, 8), (5, 3, 3, 3), {"groups": 2}),
                       ((2, 3, 2, 2), (4, 3, 3, 3), {}), ((2, 3, 4, 4), (4, 3, 3, 3), {"stride": 0})]:
        with pytest.raises(RuntimeError):
            TF.conv2d(torch.zeros(xs), torch.zeros(ws), **kw)


# -- bench rows and the cnn experiment --------------------------------------------------------

@pytest.mark.parametrize("spec", [{"cnn": "digits"}, {"cnn": "lenet"}], ids=["cnn-digits", "lenet-28x28"])
def test_bench_cnn_rows_agree_before_timing(spec):
    """The bench's CNN steps (manual on NumPy, manual on torch, autograd) give one loss and one update."""
    from experiments import bench

    with one_thread():
        assert bench.check_agree(bench.make_steps(spec, 3, "float64", "cpu"), "float64") < 1e-12
    conv1 = 6 * (1 * 5 * 5 * 6) * 28 * 28  # LeNet's first convolution: 150 weights, each used 28*28 times
    if spec["cnn"] == "lenet":
        assert bench.step_flops(spec, 1) == conv1 + 6 * (6 * 25 * 16 * 100 + 400 * 120 + 120 * 84 + 84 * 10)


@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_bench_norm_rows_agree_before_timing(norm):
    """The bench's normalized-MLP rows really hold their norm layers (BatchNorm1d in training mode, or
    LayerNorm), and manual on NumPy, manual on torch and autograd give one loss and one update."""
    from experiments import bench

    spec = {"norm": norm, "sizes": (6, 8, 8, 3)}
    model, _, _ = bench.build(spec, "float64")
    kinds = [type(m).__name__ for m in model]
    want = "BatchNorm1d" if norm == "batch" else "LayerNorm"
    assert kinds == ["Linear", want, "ReLU", "Linear", want, "ReLU", "Linear"], kinds
    with one_thread():
        assert bench.check_agree(bench.make_steps(spec, 5, "float64", "cpu"), "float64") < 1e-12
    assert bench.step_flops(spec, 2) == 6 * 2 * (6 * 8 + 8 * 8 + 8 * 3)


@pytest.mark.slow  # two fresh child processes, each importing torch
def test_bench_peak_memory_is_measured_for_any_row():
    """Peak memory comes from a fresh process per case, for MLP, normalized, CNN rows alike: a live and an RSS
    figure for each, and a step that allocates (a 256 x 256 float64 batch through 256-wide layers) shows growth
    in both."""
    from experiments import bench

    mbs = bench.peak_memory_mb([({"norm": "batch", "sizes": (64, 256, 256, 10)}, 256, "float64", "manual-numpy"),
                                ({"norm": "batch", "sizes": (64, 256, 256, 10)}, 256, "float64", "manual-torch"),
                                ({"cnn": "digits"}, 8, "float32", "autograd")])
    assert all(isinstance(mb, float) and mb >= 0 for live_rss in mbs for mb in live_rss), mbs
    # 4 activations of 256 x 256 float64 alone are 2 MiB, and backward holds at least one 256 x 256 gradient
    # beside them: live counts what the step's own arrays hold at once, on either backend
    assert all(live > 2.0 and rss > 0.5 for live, rss in mbs[:2]), mbs


@pytest.mark.slow  # figures and TensorBoard files (seconds with the first imports of sklearn and TensorBoard)
def test_cnn_experiment_logs_filters_feature_maps_and_parameter_counts(tmp_path):
    """One epoch of a small `cnn` experiment (its claim needs 6; `all --quick` checks it): both
    implementations agree step for step, and the images and parameter counts are logged."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from experiments import cnn

    with one_thread():  # as `backprop-lab run` does: small arrays, BLAS threads only contend
        m = cnn.main(cnn.Config(epochs=1, batch_size=256, channels1=4, channels2=6, hidden=8, progress=False,
                                logdir=str(tmp_path)))
    assert m["status"] == "ok" and m["max_drift"] < 1e-12, m["notes"]
    assert m["data"]["parameters"] == {"cnn": 4 * 9 + 4 + 6 * 4 * 9 + 6 + 24 * 10 + 10, "mlp": 64 * 8 + 8 + 8 * 10 + 10}
    ea = EventAccumulator(os.path.join(m["logdir"], "manual"), size_guidance={"images": 0, "tensors": 0})
    ea.Reload()
    assert {"cnn/filters/conv1", "cnn/feature_maps/conv1"} <= set(ea.Tags()["images"])
    assert len(ea.Images("cnn/filters/conv1")) == 2  # at initialisation and after training
    assert "cnn/cnn/accuracy/test" in ea.Tags()["scalars"] and "cnn/mlp/accuracy/test" in ea.Tags()["scalars"]


# -- whole CNNs: the engine names the layer whose backward is wrong ------------------------------

def _lenet_like(backend, dtype):
    gen = np.random.default_rng(5)
    dev = DEVICE_OF[backend]
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1, generator=gen), nn.ReLU(), nn.MaxPool2d(2),  # "0" "1" "2"
                          nn.Conv2d(3, 4, 3, generator=gen), nn.Tanh(), nn.AvgPool2d(2, ceil_mode=True),  # "3" "4" "5"
                          nn.Flatten(), nn.Linear(4 * 2 * 2, 3, generator=gen)).to(device=dev, dtype=dtype)
    rng = np.random.default_rng(6)
    x = B.place(rng.standard_normal((3, 1, 10, 10)), dev, dtype)  # -> (3, 5, 5) -> (4, 3, 3) -> (4, 2, 2)
    t = rng.integers(0, 3, size=3)
    return model, nn.CrossEntropyLoss(), x, (t if backend == "numpy" else torch.as_tensor(t))


@pytest.mark.parametrize("backend", ["numpy", "torch-cpu"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_model_names_the_conv_with_a_wrong_weight_gradient(dtype, backend, monkeypatch):
    from experiments.parity import check_model

    model, crit, x, y = _lenet_like(backend, dtype)
    assert check_model(model, crit, x, y).passed
    conv, real = model[3], model[3].backward

    def wrong(g, **kw):  # layer "3" accumulates a weight gradient 1e-3 too large
        gi = real(g, **kw)
        conv.weight.grad = conv.weight.grad * (1 + 1e-3)
        return gi

    monkeypatch.setattr(conv, "backward", wrong)
    r = check_model(model, crit, x, y)
    assert r.passed is False
    assert (r.first_divergent, r.first_divergent_tensor) == ("3", "3.weight"), r.errors


@pytest.mark.parametrize("backend", ["numpy", "torch-cpu"])
def test_model_names_a_max_pool_with_the_wrong_tie_rule(backend, monkeypatch):
    """A plateau input: every window ties; routing to the last maximum is caught at the pool, layer "2"."""
    from experiments.parity import check_model
    from manual.functional import pooling as P

    model, crit, x, y = _lenet_like(backend, "float64")
    model[0].weight.data = model[0].weight.data * 0.0  # conv "0" outputs its bias only: constant maps, all ties
    assert check_model(model, crit, x, y).passed
    real = P._max_pool2d_backward

    def last_max(g, x_shape, index, xp, disjoint=False):  # the tap offsets of the last maximum on a plateau: + (1, 1)
        return real(g, x_shape, index + (x_shape[3] + 1), xp, disjoint)

    monkeypatch.setattr(P, "_max_pool2d_backward", last_max)
    r = check_model(model, crit, x, y)
    assert r.passed is False and r.first_divergent == "2", r.errors
