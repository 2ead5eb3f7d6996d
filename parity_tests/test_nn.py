"""Module contracts (manual.nn) and initialisers (manual.init), against torch's.

Initialiser statistics: for n i.i.d. draws, the sample std has relative standard error
1/sqrt(2(n - 1)) for a normal and 1/sqrt(5n) for a uniform (from Var(s^2) = (mu4 - sigma^4)/n).
Checks allow 5 standard errors (two-sided, about 6e-7 per check under normality): wrong
formulas (a missing factor sqrt(2) or sqrt(3), fan_in vs fan_out on a non-square matrix) are
off by far more. Seeds are fixed, so each check is deterministic.
"""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import torch
from conftest import BACKENDS, DEVICE_OF, torch_device

import manual
from manual import _backend as B
from manual import init, nn, optim
from manual._backend import to_numpy
from torch_ref import load_weights, twin


SE_ALLOWED = 5.0


def mlp(device=None, dtype="float64", seed=0):
    g = np.random.default_rng(seed)
    return nn.Sequential(nn.Linear(3, 5, device=device, dtype=dtype, generator=g), nn.ReLU(),
                         nn.Linear(5, 4, bias=False, device=device, dtype=dtype, generator=g), nn.Tanh(),
                         nn.Linear(4, 2, device=device, dtype=dtype, generator=g))


def arrays_equal(a, b, what):
    np.testing.assert_array_equal(to_numpy(a), to_numpy(b), err_msg=what)


# -- names -----------------------------------------------------------------------------------

def test_parameter_names_are_torchs():
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert list(model.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_nested_names_and_shapes_equal_torchs():
    model = nn.Sequential(nn.Sequential(nn.Linear(4, 6), nn.GELU()), mlp(dtype="float32"), nn.Linear(2, 2, bias=False))
    tmodel = twin(model)
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in tmodel.named_parameters()]
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in tmodel.state_dict().items()}
    assert model.state_dict()["0.0.weight"].shape == (6, 4)  # (out, in), as torch


# -- nn.mlp: the one MLP builder ----------------------------------------------------------------

def _torch_mlp(sizes, act, norm=None):
    """The same network written out in torch.nn, the way its documentation writes an MLP."""
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(a, b, dtype=torch.float64))
        if i < len(sizes) - 2:
            layers += ([norm(b, dtype=torch.float64)] if norm else []) + ([act()] if act else [])
    return torch.nn.Sequential(*layers)


@pytest.mark.parametrize("act, tact, norm, tnorm", [
    (nn.ReLU, torch.nn.ReLU, None, None), (nn.Tanh, torch.nn.Tanh, None, None), (None, None, None, None),
    (nn.ReLU, torch.nn.ReLU, nn.BatchNorm1d, torch.nn.BatchNorm1d), (nn.GELU, torch.nn.GELU, nn.LayerNorm, torch.nn.LayerNorm)])
def test_mlp_is_torchs_sequential_mlp(act, tact, norm, tnorm):
    sizes = (3, 5, 4, 2)
    model = nn.mlp(sizes, activation=act, norm=norm, dtype="float64", generator=np.random.default_rng(0))
    tmodel = _torch_mlp(sizes, tact, tnorm)
    assert [type(m).__name__ for m in model] == [type(m).__name__ for m in tmodel]
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in tmodel.state_dict().items()}
    load_weights(tmodel, model.state_dict())
    x = np.random.default_rng(1).normal(size=(6, 3))
    out = model(x)
    tx = torch.tensor(x, requires_grad=True)
    tout = tmodel(tx)
    g = np.random.default_rng(2).normal(size=out.shape)
    gx = model.backward(g)
    tout.backward(torch.tensor(g))
    torch.testing.assert_close(torch.tensor(out), tout.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.tensor(gx), tx.grad, rtol=1e-12, atol=1e-12)
    for (n, p), (_, tp) in zip(model.named_parameters(), tmodel.named_parameters()):
        torch.testing.assert_close(torch.tensor(p.grad), tp.grad, rtol=1e-12, atol=1e-12, msg=n)


def test_mlp_draws_the_weights_of_the_sequential_written_out():
    """Swapping a hand-written Sequential for nn.mlp changes no experiment's numbers: same layers, same order."""
    manual.init.manual_seed(3)
    by_hand = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))
    manual.init.manual_seed(3)
    built = nn.mlp((2, 4, 4, 1), activation=nn.Tanh)
    for k, v in by_hand.state_dict().items():
        arrays_equal(built.state_dict()[k], v, k)


@pytest.mark.parametrize("sizes", [(3,), (), (3, 0, 1), (3, -2, 1), (3, 2.5, 1), (3, True, 1), "32"])
def test_mlp_rejects_bad_sizes(sizes):
    with pytest.raises(ValueError, match=r"mlp: sizes must be two or more positive integers .* got"):
        nn.mlp(sizes)


# -- load_state_dict ----------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_load_state_dict_from_torch_and_back(backend):
    device = DEVICE_OF[backend]
    model = mlp(device=device)
    torch.manual_seed(0)
    tmodel = twin(mlp(seed=1))  # other weights than `model`
    model.load_state_dict(tmodel.state_dict())
    for k, v in tmodel.state_dict().items():
        got = model.state_dict()[k]
        assert B.backend_name(got) == ("numpy" if device == "numpy" else "torch"), f"{k} ({backend})"
        arrays_equal(got, v, f"torch -> manual: {k} ({backend})")
    with torch.no_grad():  # a copy, as torch: changing the source does not reach the model
        next(tmodel.parameters()).add_(1.0)
    assert not np.array_equal(to_numpy(model.state_dict()["0.weight"]), tmodel.state_dict()["0.weight"].numpy())

    back = load_weights(twin(mlp(seed=2)), model.state_dict())
    for k, v in model.state_dict().items():
        arrays_equal(back.state_dict()[k], v, f"manual -> torch: {k} ({backend})")


def test_load_state_dict_keeps_the_models_dtype_and_copies():
    model = mlp(dtype="float32")
    w = np.full((5, 3), 0.1)
    model.load_state_dict({**{k: to_numpy(v) for k, v in model.state_dict().items()}, "0.weight": w})
    assert model.state_dict()["0.weight"].dtype == np.float32
    model.load_state_dict({**{k: to_numpy(v) for k, v in model.state_dict().items()}, "2.weight": np.ones((4, 5))})
    shared = np.ones((4, 4))
    sq = nn.Sequential(nn.Linear(4, 4, bias=False, dtype="float64"), nn.Linear(4, 4, bias=False, dtype="float64"))
    sq.load_state_dict({"0.weight": shared, "1.weight": shared})
    sq[0].weight.data -= 1.0  # an in-place update of one parameter reaches neither the other nor the source
    assert sq[1].weight.data[0, 0] == 1.0 and shared[0, 0] == 1.0


def test_load_state_dict_missing_key_names_it():
    model = mlp()
    sd = dict(model.state_dict())
    del sd["2.weight"]
    with pytest.raises(KeyError, match=r"2\.weight"):
        model.load_state_dict(sd)
    model.load_state_dict(sd, strict=False)  # allowed, as torch


def test_load_state_dict_unexpected_key_names_it():
    sd = {**mlp().state_dict(), "9.weight": np.zeros((1, 1))}
    with pytest.raises(KeyError, match=r"9\.weight"):
        mlp().load_state_dict(sd)


def test_load_state_dict_wrong_shape_names_key_and_shapes():
    sd = dict(mlp().state_dict())
    sd["4.bias"] = np.zeros(3)
    with pytest.raises(ValueError, match=r"4\.bias.*\(2,\).*\(3,\)"):
        mlp().load_state_dict(sd)
    sd = dict(mlp().state_dict())
    sd["0.weight"] = sd["0.weight"].T  # a transposed weight is refused, not silently used
    with pytest.raises(ValueError, match=r"0\.weight"):
        mlp().load_state_dict(sd)


# -- placement ------------------------------------------------------------------------------

def test_to_cpu_numpy_double_float_keep_values_and_grads():
    model = mlp(dtype="float64")
    ref = {k: to_numpy(v).copy() for k, v in model.state_dict().items()}
    model(np.ones((2, 3)))
    model.backward(np.random.default_rng(0).standard_normal((2, 2)))
    grads = {n: to_numpy(p.grad).copy() for n, p in model.named_parameters()}

    model.to("cpu")
    for n, p in model.named_parameters():
        assert isinstance(p.data, torch.Tensor) and p.data.device.type == "cpu" and p.data.dtype == torch.float64, n
        assert isinstance(p.grad, torch.Tensor), f"{n}: grad not moved"
        arrays_equal(p.data, ref[n], f"to('cpu'): {n}")
        arrays_equal(p.grad, grads[n], f"to('cpu'): grad of {n}")
    model.float()
    for n, p in model.named_parameters():
        assert p.data.dtype == torch.float32, n
        arrays_equal(p.data, ref[n].astype(np.float32), f"float(): {n}")
    model.to("numpy").double()
    for n, p in model.named_parameters():
        assert isinstance(p.data, np.ndarray) and p.data.dtype == np.float64, n
        arrays_equal(p.data, ref[n].astype(np.float32).astype(np.float64), f"to('numpy').double(): {n}")
    model.to(torch.float32)  # a torch dtype is a dtype, not a device
    assert all(isinstance(p.data, np.ndarray) and p.data.dtype == np.float32 for p in model.parameters())


def test_to_moves_loss_buffers():
    crit = nn.CrossEntropyLoss(weight=np.array([1.0, 2.0, 0.5]))
    crit.to("cpu", "float32")
    assert isinstance(crit.weight, torch.Tensor) and crit.weight.dtype == torch.float32
    assert list(crit.state_dict()) == ["weight"]


@pytest.mark.parametrize("device, dtype, kind, expected_dtype", [
    (None, None, np.ndarray, np.float32),  # torch's default dtype, NumPy's backend
    ("numpy", "float64", np.ndarray, np.float64),
    (None, np.float64, np.ndarray, np.float64),
    ("cpu", None, torch.Tensor, torch.float32),
    ("cpu", torch.float64, torch.Tensor, torch.float64),
    ("cpu", "double", torch.Tensor, torch.float64),
])
def test_linear_device_and_dtype_arguments(device, dtype, kind, expected_dtype):
    lin = nn.Linear(3, 2, device=device, dtype=dtype)
    for n, p in lin.named_parameters():
        assert isinstance(p.data, kind) and p.data.dtype == expected_dtype, f"Linear(device={device}, dtype={dtype}): {n}"


def test_linear_rejects_bad_device_and_dtype():
    with pytest.raises(TypeError, match="float32 or float64"):
        nn.Linear(3, 2, dtype="int32")
    with pytest.raises(ValueError, match="device"):
        nn.Linear(3, 2, device="tpu-ish")


# -- gradients -----------------------------------------------------------------------------------

def test_zero_grad():
    model = mlp()
    model(np.ones((2, 3)))
    model.backward(np.random.default_rng(0).standard_normal((2, 2)))
    model.zero_grad(set_to_none=False)
    for n, p in model.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape and not p.grad.any(), n
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    opt = optim.SGD(model.parameters(), lr=0.1)
    model(np.ones((2, 3)))
    model.backward(np.ones((2, 2)))
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_accumulate_across_two_backwards_like_torch(backend):
    device = DEVICE_OF[backend]
    model = mlp(device=device)
    tmodel = twin(model)
    rng = np.random.default_rng(3)
    for batch in (4, 7):  # two different batches, random upstream gradients, no zero_grad between
        x, g = rng.standard_normal((batch, 3)), rng.standard_normal((batch, 2))
        model(B.place(x, device, "float64"))
        model.backward(B.place(g, device, "float64"))
        tdev = torch_device(backend)
        tmodel(torch.tensor(x, device=tdev)).backward(torch.tensor(g, device=tdev))
    for n, p in tmodel.named_parameters():
        got, want = to_numpy(dict(model.named_parameters())[n].grad), p.grad.cpu().numpy()
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15, err_msg=f"accumulated grad of {n} ({backend})")


@pytest.mark.parametrize("module", [nn.Linear(2, 2), nn.ReLU(), nn.Sigmoid(), nn.GELU(), mlp()],
                         ids=lambda m: type(m).__name__)
def test_backward_before_forward_raises(module):
    with pytest.raises(RuntimeError, match="before forward"):
        module.backward(np.ones((1, 2)))


def test_loss_backward_before_forward_raises():
    with pytest.raises(RuntimeError, match="before forward"):
        nn.MSELoss().backward()


# -- what forward saves, and when backward may run (DESIGN, issue 8) ----------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_evaluation_under_no_grad_between_forward_and_backward_keeps_the_training_gradient(backend):
    """The issue's silent wrong answer: a validation forward between the training forward and backward
    gave the validation batch's gradient. Under manual.no_grad() it saves nothing, so backward
    differentiates the training forward, as torch's loss.backward() does."""
    device, tdev = DEVICE_OF[backend], torch_device(backend)
    model, crit = mlp(device=device), nn.CrossEntropyLoss()
    tmodel = twin(model)
    rng = np.random.default_rng(5)
    x, xv = rng.standard_normal((6, 3)), rng.standard_normal((9, 3))
    y, yv = rng.integers(0, 2, 6), rng.integers(0, 2, 9)
    place_y = (lambda t: t) if device == "numpy" else (lambda t: torch.as_tensor(t, device=device))
    loss = crit(model(B.place(x, device, "float64")), place_y(y))
    with manual.no_grad():
        assert not manual.is_grad_enabled()
        vloss = crit(model(B.place(xv, device, "float64")), place_y(yv))
    assert manual.is_grad_enabled()
    model.backward(crit.backward())
    tloss = torch.nn.functional.cross_entropy(tmodel(torch.tensor(x, device=tdev)), torch.tensor(y, device=tdev))
    with torch.no_grad():
        tv = torch.nn.functional.cross_entropy(tmodel(torch.tensor(xv, device=tdev)), torch.tensor(yv, device=tdev))
    tloss.backward()
    np.testing.assert_allclose(float(loss), float(tloss.detach()), rtol=1e-13)
    np.testing.assert_allclose(float(vloss), float(tv), rtol=1e-13)
    for n, p in tmodel.named_parameters():
        got, want = to_numpy(dict(model.named_parameters())[n].grad), p.grad.cpu().numpy()
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15, err_msg=f"grad of {n} ({backend})")


def test_no_grad_saves_nothing_and_is_torchs_api():
    model = mlp()
    with manual.no_grad():
        model(np.ones((2, 3)))
    for name, m in model.named_modules():
        arrays = [k for k, v in m.__dict__.items() if k.startswith("_") and isinstance(v, tuple)]
        assert not arrays, f"module {name!r} saved {arrays} under no_grad"

    @manual.no_grad()
    def evaluate():
        return manual.is_grad_enabled()

    assert evaluate() is False and manual.is_grad_enabled()
    with manual.no_grad():
        with manual.set_grad_enabled(True):  # saving back on inside a no_grad block
            assert manual.is_grad_enabled()
        assert not manual.is_grad_enabled()
    manual.set_grad_enabled(False)
    assert not manual.is_grad_enabled()
    manual.set_grad_enabled(True)
    with manual.set_grad_enabled(False):
        assert not manual.is_grad_enabled()
    assert manual.is_grad_enabled()
    seen = []
    with manual.no_grad():  # per thread, as torch's: another thread still saves
        t = threading.Thread(target=lambda: seen.append(manual.is_grad_enabled()))
        t.start()
        t.join()
    assert seen == [True]


@pytest.mark.parametrize("backend", ["numpy", "torch-cpu"])
def test_second_backward_raises_and_grads_are_not_doubled(backend):
    """Before the fix a second backward silently doubled every .grad."""
    device = DEVICE_OF[backend]
    model = mlp(device=device)
    g = B.place(np.ones((2, 2)), device, "float64")
    model(B.place(np.ones((2, 3)), device, "float64"))
    model.backward(g)
    once = {n: to_numpy(p.grad).copy() for n, p in model.named_parameters()}
    with pytest.raises(RuntimeError, match=r"Linear\(in_features=4, out_features=2, bias=True\).backward: called twice"):
        model.backward(g)
    for n, p in model.named_parameters():
        np.testing.assert_array_equal(to_numpy(p.grad), once[n], err_msg=f"{n} changed by the refused backward")
    model(B.place(np.ones((2, 3)), device, "float64"))  # a new forward: backward may run again
    model.backward(g)


@pytest.mark.parametrize("backend", ["numpy", "torch-cpu"])
def test_in_place_change_of_a_saved_array_is_detected(backend):
    device = DEVICE_OF[backend]
    x = B.place(np.linspace(-1, 1, 6).reshape(2, 3), device, "float64")
    lin = nn.Linear(3, 2, device=device, dtype="float64")
    lin(x)
    x *= 3.0  # the saved input, changed: dL/dW would use the new values
    with pytest.raises(RuntimeError, match=r"_input was modified in place after forward"):
        lin.backward(B.place(np.ones((2, 2)), device, "float64"))
    tanh = nn.Tanh()
    y = tanh(x)
    y += 1.0  # the saved output
    with pytest.raises(RuntimeError, match=r"Tanh\(\).backward: .*_saved_input was modified in place"):
        tanh.backward(B.place(np.ones((2, 3)), device, "float64"))


def test_numpy_fingerprint_sees_first_and_last_elements_only():
    """The documented limit: NumPy has no version counter; a change that leaves the first and last
    elements alone is not seen (torch tensors: every in-place change is, through t._version)."""
    x = np.linspace(-1, 1, 6).reshape(2, 3)
    lin = nn.Linear(3, 2).double()
    lin(x)
    x[0, 1] = 5.0
    lin.backward(np.ones((2, 2)))  # not detected, by design (see manual/nn.py)
    nan = np.array([[np.nan, 1.0, np.nan]])
    lin(nan)
    lin.backward(np.ones((1, 2)))  # a NaN left alone is not a change


def test_save_keeps_any_value_and_saved_consumes_it():
    """The protocol other modules build on: _save(name=value) of arrays, tuples, None; _saved reads once."""

    class Probe(nn.Module):
        def forward(self, x):
            self._save(_x=x, _shape=tuple(x.shape), _none=None)
            return x

        def backward(self, g):
            assert self._saved("_shape") == (2,) and self._saved("_none") is None
            return g * self._saved("_x")

    m = Probe()
    m(np.array([1.0, 2.0]))
    np.testing.assert_array_equal(m.backward(np.array([3.0, 4.0])), [3.0, 8.0])
    with pytest.raises(RuntimeError, match=r"Probe\(\).backward: called twice"):
        m.backward(np.array([3.0, 4.0]))


# -- init: reproducibility ---------------------------------------------------------------------------

def test_manual_seed_gives_the_same_weights_on_numpy_and_torch_cpu():
    init.manual_seed(123)
    on_numpy = nn.Linear(6, 4)
    init.manual_seed(123)
    on_torch = nn.Linear(6, 4, device="cpu")
    init.manual_seed(124)
    other = nn.Linear(6, 4)
    for n in ("weight", "bias"):
        arrays_equal(on_numpy.state_dict()[n], on_torch.state_dict()[n], f"seed 123: {n}, NumPy vs torch-cpu")
        assert not np.array_equal(on_numpy.state_dict()[n], other.state_dict()[n]), f"seeds 123 and 124 agree on {n}"


def test_generator_argument_is_reproducible():
    a = nn.Linear(5, 3, dtype="float64", generator=np.random.default_rng(9))
    b = nn.Linear(5, 3, device="cpu", dtype="float64", generator=np.random.default_rng(9))
    arrays_equal(a.weight.data, b.weight.data, "same generator seed: weight")
    arrays_equal(a.bias.data, b.bias.data, "same generator seed: bias")


# -- init: distributions ---------------------------------------------------------------------------

def check_std(sample, std, uniform, what):
    n = sample.size
    rel_se = math.sqrt(1 / (5 * n)) if uniform else math.sqrt(1 / (2 * (n - 1)))
    s = float(np.std(sample))
    assert abs(s / std - 1) <= SE_ALLOWED * rel_se, f"{what}: sample std {s:.5g}, expected {std:.5g} +- {SE_ALLOWED} SE"
    assert abs(float(np.mean(sample))) <= SE_ALLOWED * std / math.sqrt(n), f"{what}: sample mean {np.mean(sample):.3g}"


def check_uniform_bound(sample, bound, what):
    m = float(np.max(np.abs(sample)))
    # P(max|w| < bound (1 - t)) = (1 - t)^n ~ e^(-tn): t = 20/n makes a miss a 2e-9 event
    assert bound * (1 - 20 / sample.size) <= m <= bound, f"{what}: max |w| {m:.6g}, bound {bound:.6g}"


def test_default_linear_init_bounds_are_1_over_sqrt_in():
    lin = nn.Linear(50, 400, dtype="float64", generator=np.random.default_rng(0))
    bound = 1 / math.sqrt(50)
    check_uniform_bound(lin.weight.data, bound, "Linear(50, 400).weight")
    check_std(lin.weight.data, bound / math.sqrt(3), True, "Linear(50, 400).weight")
    assert np.max(np.abs(lin.bias.data)) <= bound
    torch.manual_seed(0)
    tlin = torch.nn.Linear(50, 400)  # torch's documented U(-1/sqrt(in), 1/sqrt(in)), for the same layer
    check_uniform_bound(tlin.weight.detach().numpy(), bound, "torch.nn.Linear(50, 400).weight")
    check_std(tlin.weight.detach().numpy().astype(np.float64), bound / math.sqrt(3), True, "torch.nn.Linear weight")


def test_he_normal_std_is_sqrt_2_over_n_in():
    """The guide's w = randn(size) * sqrt(2 / n_inputs); n = 131072 draws, so 5 SE is 1% of the std."""
    w = init.he_normal_(np.zeros((512, 256)), generator=np.random.default_rng(1))
    check_std(w, math.sqrt(2 / 256), False, "he_normal_((512, 256))")


FAN_OUT, FAN_IN = 300, 200
INITS = [  # name, kwargs, documented std or bound (typed from torch.nn.init's docs), uniform?
    ("kaiming_uniform_", dict(a=0.0), math.sqrt(2) * math.sqrt(3 / FAN_IN), True),
    ("kaiming_uniform_", dict(a=math.sqrt(5)), 1 / math.sqrt(FAN_IN), True),
    ("kaiming_uniform_", dict(mode="fan_out", nonlinearity="relu"), math.sqrt(2) * math.sqrt(3 / FAN_OUT), True),
    ("kaiming_normal_", dict(nonlinearity="relu"), math.sqrt(2) / math.sqrt(FAN_IN), False),
    ("kaiming_normal_", dict(a=0.2, mode="fan_out"), math.sqrt(2 / 1.04) / math.sqrt(FAN_OUT), False),
    ("xavier_uniform_", dict(gain=5 / 3), 5 / 3 * math.sqrt(6 / (FAN_IN + FAN_OUT)), True),
    ("xavier_normal_", dict(), math.sqrt(2 / (FAN_IN + FAN_OUT)), False),
    ("xavier_normal_", dict(gain=math.sqrt(2)), math.sqrt(2) * math.sqrt(2 / (FAN_IN + FAN_OUT)), False),
]


@pytest.mark.parametrize("name, kwargs, value, uniform", INITS, ids=[f"{n}-{k}" for n, k, _, _ in INITS])
def test_init_matches_torch_documented_formula(name, kwargs, value, uniform):
    """Manual's and torch's samples both fit torch's documented formula (generators differ, so statistics)."""
    ours = getattr(init, name)(np.zeros((FAN_OUT, FAN_IN)), generator=np.random.default_rng(2), **kwargs)
    torch.manual_seed(2)
    theirs = getattr(torch.nn.init, name)(torch.zeros(FAN_OUT, FAN_IN, dtype=torch.float64), **kwargs).numpy()
    for who, w in (("manual", ours), ("torch", theirs)):
        what = f"{who} {name}({kwargs})"
        if uniform:
            check_uniform_bound(w, value, what)
            check_std(w, value / math.sqrt(3), True, what)
        else:
            check_std(w, value, False, what)


@pytest.mark.parametrize("backend", BACKENDS)
def test_init_fills_parameters_in_place_on_every_backend(backend):
    p = nn.Parameter(B.place(np.zeros((4, 3)), DEVICE_OF[backend], "float64"))
    before = p.data
    init.xavier_uniform_(p, generator=np.random.default_rng(4))
    assert p.data is before, "init must write into the existing array"
    ref = init.xavier_uniform_(np.zeros((4, 3)), generator=np.random.default_rng(4))
    arrays_equal(p.data, ref, f"xavier_uniform_ ({backend})")


@pytest.mark.parametrize("nonlinearity, param, value", [
    ("linear", None, 1.0), ("sigmoid", None, 1.0), ("tanh", None, 5 / 3), ("relu", None, math.sqrt(2)),
    ("leaky_relu", None, math.sqrt(2 / (1 + 0.01**2))), ("leaky_relu", 0.2, math.sqrt(2 / 1.04)), ("selu", None, 0.75),
])
def test_calculate_gain_matches_torch(nonlinearity, param, value):
    got = init.calculate_gain(nonlinearity, param)
    assert got == pytest.approx(value, rel=1e-15)
    assert got == pytest.approx(torch.nn.init.calculate_gain(nonlinearity, param), rel=1e-15)


@pytest.mark.parametrize("backend", ["numpy", "torch-cpu"])
def test_input_grad_false_skips_only_the_input_gradient(backend):
    """model.backward(g, input_grad=False) returns None and leaves every parameter gradient as with True."""
    dev = DEVICE_OF[backend]
    rng = np.random.default_rng(7)
    x = B.place(rng.standard_normal((5, 3)), dev, "float64")
    g = B.place(rng.standard_normal((5, 2)), dev, "float64")
    grads = []
    for flag in (True, False):
        init.manual_seed(3)
        model = nn.Sequential(nn.Linear(3, 4, dtype="float64", device=dev), nn.Tanh(), nn.Linear(4, 2, dtype="float64", device=dev))
        model(x)
        gi = model.backward(g, input_grad=flag)
        assert (gi is None) == (not flag)
        grads.append({n: B.to_numpy(p.grad) for n, p in model.named_parameters()})
    for name in grads[0]:
        np.testing.assert_array_equal(grads[1][name], grads[0][name], err_msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gelu_module_keeps_its_erf_and_equals_the_op_bit_for_bit(backend):
    """GELU's module saves erf(x / sqrt 2) from forward; its output and input gradient are F.gelu's and
    F.gelu_backward's exactly, and it keeps the saved-tensor contract (one backward per forward)."""
    import manual.functional as F

    dev = DEVICE_OF[backend]
    x = B.place(np.random.default_rng(0).normal(size=(5, 7)) * 3, dev, "float64")
    g = B.place(np.random.default_rng(1).normal(size=(5, 7)), dev, "float64")
    m = nn.GELU()
    arrays_equal(m(x), F.gelu(x), "forward")
    arrays_equal(m.backward(g), F.gelu_backward(g, x), "backward")
    with pytest.raises(RuntimeError):
        m.backward(g)  # what forward saved is consumed
    with manual.no_grad():
        m(x)
    with pytest.raises(RuntimeError):
        m.backward(g)  # nothing saved under no_grad
