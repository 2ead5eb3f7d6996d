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
from torch_ref import to_torch_state, twin, twin_loss, twin_optimizer


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
    "AdamW": lambda ps: optim.AdamW(ps, lr=1e-2),
    "AdamW-strong-decay": lambda ps: optim.AdamW(ps, lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.5),
}


def assert_close(got, want, rtol, what):
    got, want = to_numpy(got).astype(np.float64), to_numpy(want).astype(np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    fin = np.isfinite(want)
    assert (np.isfinite(got) == fin).all(), f"{what}: non-finite values differ: {got} vs {want}"
    got, want = np.where(fin, got, 0.0), np.where(fin, want, 0.0)  # equal where non-finite (checked above)
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


# -- AdamW, parameter groups, clipping and schedules (issue 10 item 3) ------------------------

def _groups(model, wd=0.1):
    """Weights decay, biases do not: the usual AdamW grouping."""
    named = list(model.named_parameters())
    return [{"params": [p for n, p in named if n.endswith("weight")]},
            {"params": [p for n, p in named if n.endswith("bias")], "weight_decay": 0.0}]


def _warmup_cosine(lib, opt, warmup=20, total=120):
    s = lib.lr_scheduler
    return s.SequentialLR(opt, [s.LinearLR(opt, start_factor=0.05, total_iters=warmup),
                                s.CosineAnnealingLR(opt, T_max=total - warmup, eta_min=1e-4)], milestones=[warmup])


def _torch_order(model, tmodel):
    """The torch twin's parameters in the order of the manual model's named_parameters grouped like _groups."""
    tp = dict(tmodel.named_parameters())
    names = [n for n, _ in model.named_parameters()]
    return [tp[n] for n in names if n.endswith("weight")] + [tp[n] for n in names if n.endswith("bias")]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_adamw_groups_warmup_cosine_clipping_match_torch(backend, dtype):
    """120 steps: AdamW (decay on weights only), warmup then cosine, gradient clipping at 0.2 (it clips
    early on: the first total norms are ~0.3): loss, learning rate, total norm every step; weights at the end."""
    device, rtol = DEVICE_OF[backend], RTOL[dtype]
    model, x, y = make_problem(device, dtype)
    crit = nn.CrossEntropyLoss()
    opt = optim.AdamW(_groups(model), lr=3e-2, weight_decay=0.1)
    tmodel = twin(model)
    tdev = next(tmodel.parameters()).device
    topt = twin_optimizer(opt, _torch_order(model, tmodel))  # before the schedule changes opt's lr
    sched = _warmup_cosine(optim, opt)
    assert [g["weight_decay"] for g in topt.param_groups] == [0.1, 0.0]
    tsched = _warmup_cosine(torch.optim, topt)
    tx, ty = torch.tensor(to_numpy(x), device=tdev), torch.tensor(y, device=tdev)
    ym = y if device == "numpy" else torch.as_tensor(y, device=device)
    label, clipped = f"AdamW+schedule+clip ({backend}, {dtype})", 0
    for step in range(120):
        assert sched.get_last_lr() == tsched.get_last_lr(), f"{label}: lr at step {step}"  # same floats, exactly
        opt.zero_grad()
        loss = crit(model(x), ym)
        model.backward(crit.backward())
        norm = nn.utils.clip_grad_norm_(model.parameters(), 0.2)
        opt.step()
        sched.step()
        topt.zero_grad()
        tcrit = torch.nn.functional.cross_entropy(tmodel(tx), ty)
        tcrit.backward()
        tnorm = torch.nn.utils.clip_grad_norm_(tmodel.parameters(), 0.2, foreach=False)
        topt.step()
        tsched.step()
        assert_close(loss, tcrit.detach(), rtol, f"{label}: loss at step {step}")
        assert_close(norm, tnorm, rtol, f"{label}: total grad norm at step {step}")
        clipped += float(tnorm) > 0.2
    assert clipped >= 5, f"{label}: clipping never happened ({clipped} steps): the test would not see it"
    tparams = dict(tmodel.named_parameters())
    for pname, p in model.named_parameters():
        assert_close(p.data, tparams[pname].detach(), rtol, f"{label}: {pname} after 120 steps")


def _schedulers(lib, opt):
    s = lib.lr_scheduler
    return {
        "LambdaLR": lambda: s.LambdaLR(opt, lambda t: 0.97 ** t + 0.01 * (t % 7)),
        "LinearLR": lambda: s.LinearLR(opt, start_factor=0.1, end_factor=0.7, total_iters=40),
        "CosineAnnealingLR": lambda: s.CosineAnnealingLR(opt, T_max=30, eta_min=0.001),  # past T_max: it rises again
        "SequentialLR": lambda: _warmup_cosine(lib, opt, warmup=15, total=100),
        "SequentialLR-3": lambda: s.SequentialLR(opt, [s.LinearLR(opt, 0.2, total_iters=10),
                                                       s.LambdaLR(opt, lambda t: 0.9 ** t),
                                                       s.CosineAnnealingLR(opt, T_max=50)], milestones=[10, 40]),
    }


@pytest.mark.parametrize("kind", list(_schedulers(torch.optim, None)))
def test_scheduler_learning_rates_equal_torch_and_state_dict_resumes(kind):
    """150 steps, two groups with different lrs: every lr equal to torch's bit for bit (same recursion).
    At step 60 each scheduler's state_dict goes into a fresh twin of the other library; both continue."""
    w, b = nn.Parameter(np.zeros(3)), nn.Parameter(np.zeros(1))
    tw, tb = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(1))
    opt = optim.SGD([{"params": [w]}, {"params": [b], "lr": 0.05}], lr=0.1)
    topt = torch.optim.SGD([{"params": [tw]}, {"params": [tb], "lr": 0.05}], lr=0.1)
    sched, tsched = _schedulers(optim, opt)[kind](), _schedulers(torch.optim, topt)[kind]()
    seen = set()
    for step in range(150):
        got, want = sched.get_last_lr(), tsched.get_last_lr()
        assert got == want, f"{kind}: lr at step {step}: {got} != torch's {want}"
        # (after a resume both libraries leave the fresh scheduler's lr in the groups until the next step)
        assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in topt.param_groups], f"{kind}: group lrs at step {step}"
        seen.add(round(got[0], 12))
        opt.step()
        topt.step()
        sched.step()
        tsched.step()
        if step == 60:  # cross-load: torch's state into a new manual scheduler, and the reverse
            sd, tsd = sched.state_dict(), tsched.state_dict()
            assert set(sd) <= set(tsd) | {"_is_initial"}, f"{kind}: state_dict keys {set(sd) - set(tsd)} not torch's"
            opt2 = optim.SGD([{"params": [w]}, {"params": [b], "lr": 0.05}], lr=0.1)
            opt2.load_state_dict(topt.state_dict())
            sched2 = _schedulers(optim, opt2)[kind]()
            sched2.load_state_dict(tsd)
            topt2 = torch.optim.SGD([{"params": [tw]}, {"params": [tb], "lr": 0.05}], lr=0.1)
            topt2.load_state_dict(opt.state_dict())
            tsched2 = _schedulers(torch.optim, topt2)[kind]()
            tsched2.load_state_dict(sd)
            opt, topt, sched, tsched = opt2, topt2, sched2, tsched2
    assert len(seen) > 20, f"{kind}: the schedule barely moved ({len(seen)} distinct lrs)"


def test_scheduler_errors_like_torch():
    opt = optim.SGD([nn.Parameter(np.zeros(2))], lr=0.1)
    with pytest.raises(KeyError, match=r"initial_lr.*param_groups\[0\]"):
        optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10, last_epoch=5)
    with pytest.raises(ValueError, match=r"start_factor in \(0, 1\], got 0"):
        optim.lr_scheduler.LinearLR(opt, start_factor=0)
    with pytest.raises(ValueError, match=r"expected 1 milestone\(s\).*got 2"):
        s = optim.lr_scheduler
        s.SequentialLR(opt, [s.LinearLR(opt), s.LinearLR(opt)], milestones=[3, 5])
    with pytest.raises(ValueError, match=r"expected 1 lr_lambdas .*got 2"):
        optim.lr_scheduler.LambdaLR(opt, [lambda t: 1.0, lambda t: 1.0])
    with pytest.raises(TypeError, match=r"expected a manual.optim.Optimizer, got SGD"):
        optim.lr_scheduler.LambdaLR(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1), lambda t: 1.0)


@pytest.mark.parametrize("norm_type", [2.0, 1.0, float("inf"), 3.0])
@pytest.mark.parametrize("backend", BACKENDS)
def test_clip_grad_norm_matches_torch(backend, norm_type):
    """Total norm and clipped gradients equal torch's; a parameter without .grad is skipped."""
    rng = np.random.default_rng(3)
    device = DEVICE_OF[backend]
    arrays = [rng.standard_normal(s) * 3 for s in [(4, 3), (4,), (2, 2, 2)]]
    ps = [nn.Parameter(B.place(np.zeros(a.shape), device, "float64")) for a in arrays] + [nn.Parameter(np.zeros(1))]
    tps = [torch.nn.Parameter(torch.zeros(a.shape, dtype=torch.float64)) for a in arrays]
    for p, tp, a in zip(ps, tps, arrays):
        p.grad, tp.grad = B.place(a, device, "float64"), torch.tensor(a)
    ps[-1].data = B.place(np.zeros(1), device, "float64")  # no .grad: skipped
    for max_norm in (0.5, 1e6):  # clips, then does not (the factor min(1, ...) is still applied)
        total = nn.utils.clip_grad_norm_(ps, max_norm, norm_type=norm_type)
        ttotal = torch.nn.utils.clip_grad_norm_(tps, max_norm, norm_type=norm_type, foreach=False)
        assert_close(total, ttotal, 1e-14, f"clip_grad_norm_ total, norm_type {norm_type}, max_norm {max_norm}")
        for i, (p, tp) in enumerate(zip(ps, tps)):
            assert_close(p.grad, tp.grad, 1e-14, f"clip_grad_norm_ grad {i}, norm_type {norm_type}")
    total = float(nn.utils.clip_grad_norm_(ps, 0.5, norm_type=norm_type))
    assert total == pytest.approx(0.5, rel=1e-5), "after clipping to 0.5 the norm is 0.5 (minus torch's 1e-6 guard)"


def test_clip_grad_norm_nonfinite_and_empty_like_torch():
    p, tp = nn.Parameter(np.zeros(2)), torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    p.grad, tp.grad = np.array([np.inf, 1.0]), torch.tensor([np.inf, 1.0], dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"total norm of order 2.0 .* is inf.*error_if_nonfinite=False"):
        nn.utils.clip_grad_norm_([p], 1.0, error_if_nonfinite=True)
    with pytest.raises(RuntimeError):
        torch.nn.utils.clip_grad_norm_([tp], 1.0, error_if_nonfinite=True)
    total, ttotal = nn.utils.clip_grad_norm_([p], 1.0), torch.nn.utils.clip_grad_norm_([tp], 1.0, foreach=False)
    assert float(total) == float(ttotal) == np.inf
    np.testing.assert_array_equal(p.grad, tp.grad.numpy())  # [nan, 0]: inf * 0, 1 * 0, as torch
    assert float(nn.utils.clip_grad_norm_([nn.Parameter(np.zeros(2))], 1.0)) == 0.0 == float(
        torch.nn.utils.clip_grad_norm_([torch.nn.Parameter(torch.zeros(2))], 1.0))
    import manual.nn.utils as U  # torch's spelling imports too
    assert U.clip_grad_norm_ is nn.utils.clip_grad_norm_


# -- state_dict: torch's layout, both directions, then the trajectories continue ----------------

CROSS = {
    "SGD-momentum": lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=0.01),
    "Adam": lambda ps: optim.Adam(ps, lr=1e-2, weight_decay=0.01),
    "AdamW": lambda ps: optim.AdamW(ps, lr=1e-2),
}


@pytest.mark.parametrize("name", list(CROSS))
def test_optimizer_state_dict_crosses_to_torch_and_back(name):
    """10 steps on each side; torch's state_dict loads into a fresh manual optimizer and manual's into a fresh
    torch one; 30 more steps of each loaded optimizer equal the uninterrupted runs to rounding."""
    model, x, y = make_problem("numpy", "float64")
    crit = nn.CrossEntropyLoss()
    opt = CROSS[name](model.parameters())
    tmodel = twin(model)
    topt = twin_optimizer(opt, tmodel.parameters())
    tx, ty = torch.tensor(x), torch.tensor(y)

    def manual_step(o):
        o.zero_grad()
        crit(model(x), y)
        model.backward(crit.backward())
        o.step()

    def torch_step(o):
        o.zero_grad()
        torch.nn.functional.cross_entropy(tmodel(tx), ty).backward()
        o.step()

    for _ in range(10):
        manual_step(opt)
        torch_step(topt)
    # torch -> manual: a fresh manual optimizer on a copy of the manual model
    model2 = nn.Sequential(*[type(m)(m.in_features, m.out_features) if isinstance(m, nn.Linear) else type(m)()
                             for m in model]).double()
    model2.load_state_dict({k: v.detach() for k, v in tmodel.state_dict().items()})
    opt2 = CROSS[name](model2.parameters())
    opt2.load_state_dict(topt.state_dict())
    assert opt2.state_dict()["param_groups"][0]["lr"] == topt.param_groups[0]["lr"]
    # manual -> torch: a fresh torch optimizer on a twin of the manual model
    tmodel2 = twin(model)
    topt2 = twin_optimizer(CROSS[name](nn.Linear(1, 1).parameters()) if False else opt, tmodel2.parameters())
    topt2.load_state_dict(to_torch_state(opt.state_dict()))
    tx2 = tx

    for step in range(30):
        manual_step(opt)  # original manual
        torch_step(topt)  # original torch
        opt2.zero_grad()
        crit(model2(x), y)
        model2.backward(crit.backward())
        opt2.step()
        topt2.zero_grad()
        torch.nn.functional.cross_entropy(tmodel2(tx2), ty).backward()
        topt2.step()
    t1, t2 = dict(tmodel.named_parameters()), dict(tmodel2.named_parameters())
    for pname, p in model.named_parameters():
        want = t1[pname].detach()
        assert_close(dict(model2.named_parameters())[pname].data, want, 1e-12, f"{name}: torch->manual resumed, {pname}")
        assert_close(t2[pname].detach(), want, 1e-12, f"{name}: manual->torch resumed, {pname}")
        assert_close(p.data, want, 1e-12, f"{name}: uninterrupted manual vs torch, {pname}")


def test_optimizer_state_dict_torch_only_options_refused():
    p = nn.Parameter(np.zeros(2))
    tsd = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], amsgrad=True).state_dict()
    with pytest.raises(ValueError, match=r"amsgrad=True is a torch.optim option manual does not implement"):
        optim.Adam([p]).load_state_dict(tsd)
    tsd = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))]).state_dict()
    with pytest.raises(ValueError, match=r"decoupled_weight_decay=True is AdamW's; load it into manual.optim.AdamW"):
        optim.Adam([p]).load_state_dict(tsd)
    with pytest.raises(ValueError, match=r"expected 1 parameter group\(s\), got 2"):
        optim.SGD([p], lr=0.1).load_state_dict({"state": {}, "param_groups": [{"params": [0]}, {"params": [1]}]})
    sgd = optim.SGD([p], lr=0.1, momentum=0.9)
    bad = {"state": {0: {"momentum_buffer": np.zeros(3)}}, "param_groups": sgd.state_dict()["param_groups"]}
    with pytest.raises(ValueError, match=r"momentum_buffer: expected shape \(2,\) \(the parameter's\), got \(3,\)"):
        sgd.load_state_dict(bad)
    assert sgd.state == {}, "a refused load changes nothing"


# -- misuse that torch refuses or warns about (issue 8) -------------------------------------------

def test_parameter_in_two_groups_is_refused_like_torch():
    p, tp = nn.Parameter(np.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="more than one parameter group"):
        torch.optim.SGD([{"params": [tp]}, {"params": [tp]}], lr=0.1)
    with pytest.raises(ValueError, match="more than one parameter group"):
        optim.SGD([{"params": [p]}, {"params": [p], "lr": 0.01}], lr=0.1)


@pytest.mark.parametrize("name", ["SGD-momentum", "SGD-nesterov", "Adam"])
def test_parameter_listed_twice_warns_and_steps_like_torch(name):
    """Torch steps a twice-listed parameter twice per step (SGD: two buffers on the first step, one shared
    after); before the fix manual shared one buffer from the start and the trajectory differed."""
    make = {"SGD-momentum": lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9),
            "SGD-nesterov": lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True),
            "Adam": lambda ps: optim.Adam(ps, lr=0.05)}[name]
    w = nn.Parameter(np.array([3.0, -2.0]))
    with pytest.warns(UserWarning, match="more than once"):
        opt = make([w, w])
    tw = torch.nn.Parameter(torch.tensor([3.0, -2.0], dtype=torch.float64))
    with pytest.warns(UserWarning, match="duplicate parameters"):
        topt = twin_optimizer(opt, [tw, tw])
    for step in range(20):
        w.grad = np.tanh(w.data) + 0.5 * w.data  # f' of f = log cosh w + w^2 / 4, by hand
        tw.grad = torch.tanh(tw.data) + 0.5 * tw.data
        opt.step()
        topt.step()
        assert_close(w.data, tw.detach(), 1e-13, f"{name}, parameter listed twice: w at step {step}")


def test_grad_of_wrong_shape_dtype_or_backend_is_refused():
    w = nn.Parameter(np.zeros((2, 3)))
    opt = optim.SGD([w], lr=0.1)
    w.grad = np.ones(3)  # broadcast silently before the fix
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]\[0\]: expected a .grad like its parameter "
                                         r"\(numpy, shape \(2, 3\), dtype float64\), got \(numpy, shape \(3,\)"):
        opt.step()
    np.testing.assert_array_equal(w.data, 0.0)
    w.grad = np.ones((2, 3), dtype=np.float32)
    with pytest.raises(ValueError, match=r"dtype float64\), got \(numpy, shape \(2, 3\), dtype float32\)"):
        optim.Adam([w]).step()
    w.grad = torch.ones((2, 3), dtype=torch.float64)
    with pytest.raises(ValueError, match=r"got \(torch, shape \(2, 3\)"):
        optim.SGD([w], lr=0.1, momentum=0.9).step()
    tw = torch.nn.Parameter(torch.zeros(2, 3))
    with pytest.raises(RuntimeError):  # torch refuses at assignment
        tw.grad = torch.ones(3)


def test_read_only_parameter_at_step_is_a_clear_error():
    data = np.zeros(3)
    data.flags.writeable = False
    w = nn.Parameter(data)
    for opt in (optim.SGD([w], lr=0.1), optim.SGD([w], lr=0.1, momentum=0.5), optim.Adam([w])):
        w.grad = np.ones(3)
        with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]\[0\] Parameter\(shape=\(3,\).* is read-only: "
                                             r"expected a writeable array"):
            opt.step()


def test_optimizer_state_dict_survives_json_for_checkpoints():
    """Checkpoints keep the arrays apart and the rest as JSON: integer keys come back as strings and
    tuples as lists; loading that gives the same next steps."""
    import json

    w = nn.Parameter(np.array([1.0, -2.0, 0.5]))
    opt = optim.AdamW([w], lr=0.1, betas=(0.8, 0.9))
    sched = optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    for _ in range(3):
        w.grad = np.tanh(w.data)
        opt.step()
        sched.step()
    sd, ssd = opt.state_dict(), sched.state_dict()
    arrays = {f"{i}.{k}": v for i, st in sd["state"].items() for k, v in st.items() if isinstance(v, np.ndarray)}
    rest = json.loads(json.dumps({"state": {i: {k: v for k, v in st.items() if not isinstance(v, np.ndarray)}
                                            for i, st in sd["state"].items()}, "param_groups": sd["param_groups"]}))
    for name, v in arrays.items():
        i, k = name.split(".")
        rest["state"][i][k] = v.copy()
    w2 = nn.Parameter(w.data.copy())
    opt2 = optim.AdamW([w2], lr=0.1, betas=(0.8, 0.9))
    opt2.load_state_dict(rest)
    sched2 = optim.lr_scheduler.CosineAnnealingLR(opt2, T_max=10)
    sched2.load_state_dict(json.loads(json.dumps(ssd)))
    assert opt2.param_groups[0]["betas"] == (0.8, 0.9) and opt2.state_dict()["state"][0]["step"] == 3
    for _ in range(4):
        w.grad, w2.grad = np.tanh(w.data), np.tanh(w2.data)
        opt.step()
        sched.step()
        opt2.step()
        sched2.step()
        np.testing.assert_array_equal(w2.data, w.data)
        assert sched2.get_last_lr() == sched.get_last_lr()
