"""Optimizers: manual.optim vs torch.optim over 100-step training trajectories.

A small MLP with a cross-entropy loss is trained by both twins from the same weights; the loss
must agree at every step, and the parameters and the optimizer state (momentum_buffer,
exp_avg, exp_avg_sq, step) at the end.

Tolerances (element-wise |got - want| <= rtol (|want| + max|want|)):
  float64: rtol 1e-12 (measured worst ~1e-14 after 100 steps);
  float32: rtol 1e-4  (per-step rounding differences of ~1e-7 compound over 100 steps;
           measured worst ~1e-5, in Adam's exp_avg).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import BACKENDS, DEVICE_OF

from manual import _backend as B
from manual import nn, optim
from manual._backend import to_numpy
from torch_ref import twin, twin_loss, twin_optimizer


RTOL = {"float64": 1e-12, "float32": 1e-4}
STEPS = 100

OPTIMIZERS = {
    "SGD": lambda ps: optim.SGD(ps, lr=0.2),
    "SGD-momentum": lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9),
    "GuideMomentum": lambda ps: optim.GuideMomentum(ps, lr=0.05, beta=0.9),
    "SGD-nesterov": lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True),
    "SGD-weight_decay": lambda ps: optim.SGD(ps, lr=0.2, weight_decay=0.01),
    "SGD-momentum-weight_decay": lambda ps: optim.SGD(ps, lr=0.05, momentum=0.8, weight_decay=0.02),
    "SGD-dampening": lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, dampening=0.3),
    "Adam": lambda ps: optim.Adam(ps, lr=1e-2),
    "Adam-weight_decay": lambda ps: optim.Adam(ps, lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05),
}


def assert_close(got, want, rtol, what):
    got, want = to_numpy(got).astype(np.float64), to_numpy(want).astype(np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    scale = np.max(np.abs(want), initial=0.0)
    err = np.abs(got - want)
    bad = err > rtol * (np.abs(want) + scale)
    assert not bad.any(), f"{what}: max |err| {err.max():.3g} (scale {scale:.3g}, rtol {rtol:g})"


def make_problem(device, dtype, seed=0):
    """A 3-layer MLP on a 3-class problem (class = sign pattern of two features), 32 examples."""
    gen = np.random.default_rng(seed)
    model = nn.Sequential(nn.Linear(4, 12, device=device, dtype=dtype, generator=gen), nn.Tanh(),
                          nn.Linear(12, 8, device=device, dtype=dtype, generator=gen), nn.GELU(),
                          nn.Linear(8, 3, device=device, dtype=dtype, generator=gen))
    x = gen.standard_normal((32, 4))
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5)
    return model, B.place(x, device, dtype), y


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_trajectory_matches_torch(name, backend, dtype):
    device, rtol = DEVICE_OF[backend], RTOL[dtype]
    model, x, y = make_problem(device, dtype)
    crit = nn.CrossEntropyLoss()
    opt = OPTIMIZERS[name](model.parameters())
    tmodel = twin(model)
    tdev = next(tmodel.parameters()).device
    tcrit = twin_loss(crit, device=tdev)
    topt = twin_optimizer(opt, tmodel.parameters())
    tx, ty = torch.tensor(to_numpy(x), device=tdev), torch.tensor(y, device=tdev)
    ym = y if device == "numpy" else torch.as_tensor(y, device=device)
    label = f"{name} ({backend}, {dtype})"

    losses = []
    for step in range(STEPS):
        opt.zero_grad()
        loss = crit(model(x), ym)
        model.backward(crit.backward())
        opt.step()
        topt.zero_grad()
        tloss = tcrit(tmodel(tx), ty)
        tloss.backward()
        topt.step()
        assert_close(loss, tloss.detach(), rtol, f"{label}: loss at step {step}")
        losses.append(float(loss))
    assert losses[-1] < 0.7 * losses[0], f"{label}: did not train ({losses[0]:.3f} -> {losses[-1]:.3f})"

    tparams = dict(tmodel.named_parameters())
    for pname, p in model.named_parameters():
        assert_close(p.data, tparams[pname].detach(), rtol, f"{label}: {pname} after {STEPS} steps")

    state, tstate = opt.state_dict()["state"], topt.state_dict()["state"]
    names = [n for n, _ in model.named_parameters()]
    assert sorted(state) == sorted(tstate), f"{label}: state indices {sorted(state)} != torch's {sorted(tstate)}"
    assert len(tstate) == (0 if name in ("SGD", "SGD-weight_decay") else len(names)), f"{label}: torch's state"
    for i in sorted(tstate):
        pname = names[i]
        if name == "GuideMomentum":  # the guide's v = beta v + lr g is torch's lr * b
            assert set(state[i]) == {"velocity"}
            assert_close(state[i]["velocity"], opt.defaults["lr"] * tstate[i]["momentum_buffer"], rtol,
                         f"{label}: velocity of {pname} vs lr * torch momentum_buffer")
            continue
        assert set(state[i]) == set(tstate[i]), f"{label}: state keys of {pname}: {set(state[i])} != {set(tstate[i])}"
        for key, value in tstate[i].items():
            if key == "step":
                assert state[i][key] == int(value) == STEPS, f"{label}: step of {pname}"
            else:
                assert_close(state[i][key], value, rtol, f"{label}: {key} of {pname}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_guide_momentum_is_sgd_momentum_with_v_equal_lr_b(backend):
    """The DESIGN's claim, by hand on f(w) = w^2 / 2 + 3 w (grad = w + 3): same iterates, v = lr b, every step."""
    device, lr, beta = DEVICE_OF[backend], 0.1, 0.9
    a = nn.Parameter(B.place([5.0, -2.0], device, "float64"))
    b = nn.Parameter(B.place([5.0, -2.0], device, "float64"))
    guide, sgd = optim.GuideMomentum([a], lr=lr, beta=beta), optim.SGD([b], lr=lr, momentum=beta)
    for step in range(STEPS):
        a.grad, b.grad = a.data + 3.0, b.data + 3.0
        guide.step()
        sgd.step()
        assert_close(a.data, b.data, 1e-13, f"GuideMomentum vs SGD(momentum) ({backend}): w at step {step}")
        v, buf = guide.state_dict()["state"][0]["velocity"], sgd.state_dict()["state"][0]["momentum_buffer"]
        assert_close(v, lr * buf, 1e-13, f"GuideMomentum vs SGD(momentum) ({backend}): v = lr b at step {step}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_plain_gradient_descent_reproduces_guide_x2_trajectory(backend):
    """Guide, Gradient Descent: f(x) = x^2 from 10 at lr 0.1: 10 -> 8 -> 6.4 -> 5.12."""
    x = nn.Parameter(B.place([10.0], DEVICE_OF[backend], "float64"))
    opt = optim.SGD([x], lr=0.1)
    got = []
    for _ in range(3):
        x.grad = 2.0 * x.data  # f'(x) = 2x, by hand
        opt.step()
        got.append(float(to_numpy(x.data)[0]))
    assert got == pytest.approx([8.0, 6.4, 5.12], rel=1e-15), f"SGD ({backend}): {got}"


INVALID = [  # manual constructor, kwargs, text the error must contain, torch twin (None: no twin)
    (optim.SGD, dict(lr=-0.1), ["SGD", "lr >= 0"], torch.optim.SGD),
    (optim.SGD, dict(lr=0.1, momentum=-0.5), ["SGD", "momentum >= 0"], torch.optim.SGD),
    (optim.SGD, dict(lr=0.1, weight_decay=-1e-3), ["SGD", "weight_decay >= 0"], torch.optim.SGD),
    (optim.SGD, dict(lr=0.1, nesterov=True), ["SGD", "momentum > 0 and dampening == 0"], torch.optim.SGD),
    (optim.SGD, dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), ["SGD", "dampening == 0"], torch.optim.SGD),
    (optim.Adam, dict(lr=-1e-3), ["Adam", "lr >= 0"], torch.optim.Adam),
    (optim.Adam, dict(eps=-1e-8), ["Adam", "eps >= 0"], torch.optim.Adam),
    (optim.Adam, dict(betas=(1.0, 0.999)), ["Adam", "[0, 1)"], torch.optim.Adam),
    (optim.Adam, dict(betas=(0.9, -0.1)), ["Adam", "[0, 1)"], torch.optim.Adam),
    (optim.Adam, dict(weight_decay=-0.01), ["Adam", "weight_decay >= 0"], torch.optim.Adam),
    (optim.GuideMomentum, dict(lr=-0.1), ["GuideMomentum", "lr >= 0"], None),
    (optim.GuideMomentum, dict(lr=0.1, beta=1.0), ["GuideMomentum", "0 <= beta < 1"], None),
]


@pytest.mark.parametrize("ctor, kwargs, texts, tctor", INVALID,
                         ids=[f"{c.__name__}-{k}" for c, k, _, _ in INVALID])
def test_invalid_hyperparameters_raise_value_error(ctor, kwargs, texts, tctor):
    with pytest.raises(ValueError) as info:
        ctor([nn.Parameter(np.zeros(2))], **kwargs)
    for text in texts:
        assert text in str(info.value), f"{ctor.__name__}({kwargs}): {text!r} not in {str(info.value)!r}"
    if tctor is not None:  # torch rejects the same values (an independent check that they are invalid)
        with pytest.raises(ValueError):
            tctor([torch.nn.Parameter(torch.zeros(2))], **kwargs)


@pytest.mark.parametrize("name", [n for n in OPTIMIZERS if n != "GuideMomentum"])
def test_state_dict_layout_like_torch(name):
    model, x, y = make_problem("numpy", "float64")
    crit = nn.CrossEntropyLoss()
    opt = OPTIMIZERS[name](model.parameters())
    tmodel = twin(model)
    topt = twin_optimizer(opt, tmodel.parameters())
    for _ in range(2):
        opt.zero_grad()
        crit(model(x), y)
        model.backward(crit.backward())
        opt.step()
        topt.zero_grad()
        torch.nn.functional.cross_entropy(tmodel(torch.tensor(x)), torch.tensor(y)).backward()
        topt.step()
    sd, tsd = opt.state_dict(), topt.state_dict()
    assert set(sd) == {"state", "param_groups"}
    assert list(sd["state"]) == list(tsd["state"]), f"{name}: state keys {list(sd['state'])} != {list(tsd['state'])}"
    for i in tsd["state"]:
        assert set(sd["state"][i]) == set(tsd["state"][i]), f"{name}: state[{i}] keys"
    assert len(sd["param_groups"]) == len(tsd["param_groups"]) == 1
    group, tgroup = sd["param_groups"][0], tsd["param_groups"][0]
    assert group["params"] == tgroup["params"] == list(range(6))
    assert set(group) <= set(tgroup), f"{name}: group keys not in torch's: {set(group) - set(tgroup)}"
    for key in group:
        if key != "params":
            assert group[key] == tgroup[key], f"{name}: param_groups[0][{key!r}] {group[key]} != torch's {tgroup[key]}"
