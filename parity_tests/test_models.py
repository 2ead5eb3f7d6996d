"""Whole models: random MLPs x every activation x every loss, random residual and normalization
networks, manual vs torch autograd through the one model engine (experiments.parity.check_model,
the checker `backprop-lab verify` runs) under its one tolerance policy (MODEL_TOL, measured, the
reasons written there); central finite differences on small models.

The activations and the modules come from the registry (torch_ref.opinfo.MODULES): an activation
registered there is drawn here with no change to this file.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import BACKENDS, DEVICE_OF, torch_device
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from experiments import parity
from manual import _backend as B
from manual import nn
from manual._backend import to_numpy
from torch_ref import load_weights, twin
from torch_ref.opinfo import MODULES

# every activation of the registry, with drawn constructor arguments where it has a `draw`
ACTIVATIONS = [m.name for m in MODULES if m.kind == "activation"]
_DRAW = {m.name: m.draw for m in MODULES if m.kind == "activation"}

# name -> loss options; hypothesis draws the reduction, sizes, values and the model
LOSSES = {
    "MSE": {"loss": "MSE"},
    "BCE": {"loss": "BCE"},
    "BCE-weight": {"loss": "BCE", "weight": True},
    "BCE-pos_weight": {"loss": "BCE", "pos_weight": True},
    "BCE-weight-pos_weight": {"loss": "BCE", "weight": True, "pos_weight": True},
    "CE": {"loss": "CE"},
    "CE-weight": {"loss": "CE", "weight": True},
    "CE-label_smoothing": {"loss": "CE", "smoothing": True},
    "CE-ignore_index": {"loss": "CE", "ignore": True},
    "CE-weight-smoothing-ignore": {"loss": "CE", "weight": True, "smoothing": True, "ignore": True},
    "CE-probs": {"loss": "CE", "probs": True},
    "CE-probs-weight-smoothing": {"loss": "CE", "probs": True, "weight": True, "smoothing": True},
}


def assert_close(got, want, rtol, what, atol=0.0):
    got, want = to_numpy(got).astype(np.float64), to_numpy(want).astype(np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    scale = np.max(np.abs(want), initial=0.0)
    err = np.abs(got - want)
    bad = err > rtol * (np.abs(want) + scale) + atol
    assert not bad.any(), (
        f"{what}: {bad.sum()} of {bad.size} entries differ; max |err| {err.max():.3g} "
        f"(tensor scale {scale:.3g}, rtol {rtol:g}, atol {atol:g}); first at {np.argwhere(bad)[0].tolist()}"
    )


# -- building a case ---------------------------------------------------------------------------

def make_activation(name, rng):
    """manual.nn.<name>, its constructor arguments drawn by the registry's `draw` (if any)."""
    draw = _DRAW[name]
    return getattr(nn, name)(**(draw(rng) if draw else {}))


def make_mlp(widths, acts, biases, seed, device, dtype):
    gen = np.random.default_rng(seed)
    layers = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1], bias=biases[i], device=device, dtype=dtype, generator=gen))
        if i < len(acts):
            layers.append(make_activation(acts[i], gen))
    return nn.Sequential(*layers)


def make_loss(opts, reduction, batch, C, rng, device, dtype):
    """(criterion, target) on the given backend; weights positive, as torch expects."""
    put = lambda a: B.place(a, device, dtype)  # noqa: E731
    if opts["loss"] == "MSE":
        return nn.MSELoss(reduction=reduction), put(rng.standard_normal((batch, C)))
    if opts["loss"] == "BCE":
        shapes = [(C,), (batch, C), (1, C)]
        weight = put(rng.uniform(0.5, 2.0, shapes[rng.integers(3)])) if opts.get("weight") else None
        pos_weight = put(rng.uniform(0.5, 3.0, (C,))) if opts.get("pos_weight") else None
        crit = nn.BCEWithLogitsLoss(weight=weight, reduction=reduction, pos_weight=pos_weight)
        return crit, put(rng.uniform(0.0, 1.0, (batch, C)))
    weight = put(rng.uniform(0.5, 2.0, (C,))) if opts.get("weight") else None
    smoothing = float(rng.uniform(0.05, 0.9)) if opts.get("smoothing") else 0.0
    if opts.get("probs"):
        target = put(rng.dirichlet(np.ones(C), size=batch))
        return nn.CrossEntropyLoss(weight=weight, reduction=reduction, label_smoothing=smoothing), target
    target = rng.integers(0, C, size=batch)
    ignore_index = -100
    if opts.get("ignore"):  # ignore a real class or an out-of-range value, in ~40% of examples
        ignore_index = int(rng.integers(0, C)) if C > 1 and rng.random() < 0.5 else -1
        if target[0] == ignore_index:  # keep the first example, so that 'mean' has a nonzero denominator
            target[0] = (ignore_index + 1) % C
        drop = rng.random(batch) < 0.4
        drop[0] = False
        target = np.where(drop, ignore_index, target)
    target = target if device == "numpy" else torch.as_tensor(target, device=device)
    crit = nn.CrossEntropyLoss(weight=weight, ignore_index=ignore_index, reduction=reduction,
                               label_smoothing=smoothing)
    return crit, target


def check_model(model, crit, x, target, label, seed=0):
    """Loss, output, every parameter gradient by name and every layer's input gradient: the engine."""
    r = parity.check_model(model, crit, x, target, seed=seed)
    if not r.passed:
        bad = {k: f"max abs {a:.3g}, max rel {rel:.3g}" for k, (a, rel, ok) in r.errors.items() if not ok}
        raise AssertionError(f"{label}: first diverging layer {r.first_divergent!r} ({r.first_divergent_tensor}); "
                             f"failing tensors {bad} (tolerance {r.tol})")
    return r


@st.composite
def mlp_cases(draw, reductions=("mean", "sum", "none")):
    depth = draw(st.integers(1, 6))
    return {
        "widths": draw(st.lists(st.integers(1, 32), min_size=depth + 1, max_size=depth + 1)),
        "acts": draw(st.lists(st.sampled_from(ACTIVATIONS), min_size=depth - 1, max_size=depth - 1)),
        "biases": draw(st.lists(st.booleans(), min_size=depth, max_size=depth)),
        "batch": draw(st.sampled_from([1, 1, 2, 3, 5, 8, 16])),
        "reduction": draw(st.sampled_from(reductions)),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


def run_case(case, loss_name, backend, dtype):
    device = DEVICE_OF[backend]
    rng = np.random.default_rng(case["seed"])
    model = make_mlp(case["widths"], case["acts"], case["biases"], case["seed"], device, dtype)
    crit, target = make_loss(LOSSES[loss_name], case["reduction"], case["batch"], case["widths"][-1], rng, device, dtype)
    x = B.place(rng.standard_normal((case["batch"], case["widths"][0])), device, dtype)
    label = f"{model!r} + {crit!r} ({backend}, {dtype}, batch {case['batch']})".replace("\n", "")
    check_model(model, crit, x, target, label, seed=case["seed"])  # the engine draws a random upstream gradient


FAST = dict(derandomize=True, deadline=None, database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("loss_name", list(LOSSES))
@settings(max_examples=8, **FAST)
@given(data=st.data())
def test_random_mlp_float64_numpy(loss_name, reduction, data):
    run_case(data.draw(mlp_cases(reductions=(reduction,)), label="case"), loss_name, "numpy", "float64")


@pytest.mark.parametrize("loss_name", list(LOSSES))
@settings(max_examples=8, **FAST)
@given(case=mlp_cases())
def test_random_mlp_float32_numpy(loss_name, case):
    run_case(case, loss_name, "numpy", "float32")


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b.values[0] != "numpy"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("loss_name", list(LOSSES))
@settings(max_examples=4, **FAST)
@given(case=mlp_cases())
def test_random_mlp_torch_backend(backend, dtype, loss_name, case):
    run_case(case, loss_name, backend, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_every_activation_in_a_deep_mlp(backend, act):
    """Each activation at every hidden layer of a 4-layer MLP, with CrossEntropy (label smoothing)."""
    case = {"widths": [5, 16, 9, 16, 4], "acts": [act] * 3, "biases": [True, False, True, True],
            "batch": 6, "reduction": "mean", "seed": 7}
    run_case(case, "CE-label_smoothing", backend, "float64")


# -- random residual / normalization networks (and an embedding front end) --------------------------

@st.composite
def norm_net_cases(draw):
    """A random stack of blocks at one width: Linear + activation, a residual block around
    [Linear, norm, activation], LayerNorm, Linear (no bias) + BatchNorm1d + activation, GroupNorm,
    Dropout (eval only); optionally an Embedding + Flatten in front; the model in train or eval mode.

    A batch norm follows a bias-free Linear, as practitioners write it: directly after a per-channel
    scale or shift (a bias, another norm's weight) it removes them, so their gradient is 0 up to
    eps / var, a cancellation that leaves only rounding noise on both sides (measured up to 2e-6 of
    the model's largest gradient in float32, more than MODEL_TOL's atol allows)."""
    mode = draw(st.sampled_from(["train", "eval"]))
    kinds = ["linear", "residual", "layernorm", "batchnorm", "groupnorm"] + (["dropout"] if mode == "eval" else [])
    return {
        # GroupNorm(w // 4, w): 4 values per group; with 2, a group's input gradient is a cancellation
        # (~eps/var of g) below both sides' rounding, checked op by op instead (as batch norm's below)
        "width": draw(st.sampled_from([4, 8, 12])),
        "blocks": draw(st.lists(st.sampled_from(kinds), min_size=1, max_size=5)),
        "acts": draw(st.lists(st.sampled_from(ACTIVATIONS), min_size=5, max_size=5)),
        "embedding": draw(st.booleans()),
        # batch norm in training: 8+ values per channel; with fewer, gradients that a norm's invariance
        # makes ~0 carry more float32 noise than MODEL_TOL (measured 4.6e-5 G at 4), and with 2 the input
        # gradient is itself such a cancellation: small batches are checked op by op instead
        # (batch_norm[batch2-train], [batch1-spatial-train]), each with its own measured tolerance
        "batch": draw(st.sampled_from([8, 16])),
        "loss": draw(st.sampled_from(["MSE", "CE"])),
        "mode": mode,
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


def make_norm_net(case, device, dtype):
    gen = np.random.default_rng(case["seed"])
    w = case["width"]
    lin = lambda i, o: nn.Linear(i, o, generator=gen)  # noqa: E731
    norm = {"layernorm": lambda: nn.LayerNorm(w), "batchnorm": lambda: nn.BatchNorm1d(w),
            "groupnorm": lambda: nn.GroupNorm(w // 4, w)}
    layers = [nn.Embedding(7, 3, padding_idx=0, generator=gen), nn.Flatten(), lin(3 * 4, w)] if case["embedding"] \
        else [lin(5, w)]
    for i, kind in enumerate(case["blocks"]):
        act = make_activation(case["acts"][i], gen)
        if kind == "linear":
            layers += [lin(w, w), act]
        elif kind == "residual":
            inner = norm[["layernorm", "batchnorm", "groupnorm"][int(gen.integers(3))]]()
            layers.append(nn.Residual(nn.Sequential(nn.Linear(w, w, bias=False, generator=gen), inner, act)))
        elif kind == "batchnorm":
            layers += [nn.Linear(w, w, bias=False, generator=gen), nn.BatchNorm1d(w), act]
        elif kind == "dropout":
            layers.append(nn.Dropout(0.5))
        else:
            layers.append(norm[kind]())
    layers.append(lin(w, 3))
    model = nn.Sequential(*layers).to(device=device, dtype=dtype)
    for name, p in model.named_parameters():  # norm weights away from ones, biases from zeros
        if p.shape and ("weight" in name or "bias" in name) and len(p.shape) == 1:
            p.data = B.place(gen.normal(1.0 if name.endswith("weight") else 0.0, 0.5, size=p.shape), device, dtype)
    for m in model.modules() if hasattr(model, "modules") else (m for _, m in model.named_modules()):
        if isinstance(m, nn.BatchNorm1d):  # running statistics that are not the defaults
            m.running_mean[...] = B.place(gen.normal(0, 0.5, size=w), device, dtype)
            m.running_var[...] = B.place(gen.uniform(0.5, 2.0, size=w), device, dtype)
    return getattr(model, case["mode"])()


def run_norm_case(case, backend, dtype):
    device = DEVICE_OF[backend]
    rng = np.random.default_rng(case["seed"] + 1)
    model = make_norm_net(case, device, dtype)
    n = case["batch"]
    if case["embedding"]:
        idx = rng.integers(0, 7, size=(n, 4))
        x = idx if device == "numpy" else torch.as_tensor(idx, device=device)
    else:
        x = B.place(rng.standard_normal((n, 5)), device, dtype)
    if case["loss"] == "MSE":
        crit, y = nn.MSELoss(), B.place(rng.standard_normal((n, 3)), device, dtype)
    else:
        t = rng.integers(0, 3, size=n)
        crit, y = nn.CrossEntropyLoss(), (t if device == "numpy" else torch.as_tensor(t, device=device))
    label = f"{model!r} ({case['mode']}) + {crit!r} ({backend}, {dtype}, batch {n})".replace("\n", "")
    r = check_model(model, crit, x, y, label, seed=case["seed"])
    if case["mode"] == "train" and any(isinstance(m, nn.BatchNorm1d) for _, m in model.named_modules()):
        assert any(k.endswith("running_var(after)") for k in r.errors), f"{label}: running statistics not compared"


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@settings(max_examples=25, **FAST)
@given(case=norm_net_cases())
def test_random_residual_norm_net_numpy(dtype, case):
    run_norm_case(case, "numpy", dtype)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b.values[0] != "numpy"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@settings(max_examples=10, **FAST)
@given(case=norm_net_cases())
def test_random_residual_norm_net_torch_backend(backend, dtype, case):
    run_norm_case(case, backend, dtype)


# -- random CNNs (convolution, pooling, BatchNorm2d / GroupNorm, residual conv blocks) -----------------

@st.composite
def cnn_cases(draw):
    mode = draw(st.sampled_from(["train", "eval"]))
    return {
        "channels": draw(st.sampled_from([2, 4])),
        "size": draw(st.sampled_from([6, 7, 8])),
        "blocks": draw(st.lists(st.sampled_from(["conv", "conv-strided", "depthwise", "residual", "maxpool",
                                                 "avgpool"]), min_size=1, max_size=3)),
        "norm": draw(st.sampled_from(["none", "batchnorm", "groupnorm"])),
        "act": draw(st.sampled_from(ACTIVATIONS)),
        "batch": draw(st.sampled_from([2, 3])),
        "mode": mode,
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


def make_cnn(case, device, dtype):
    gen = np.random.default_rng(case["seed"])
    c = case["channels"]
    conv = lambda **kw: nn.Conv2d(c, c, generator=gen, **kw)  # noqa: E731
    norm = {"none": lambda: None, "batchnorm": lambda: nn.BatchNorm2d(c), "groupnorm": lambda: nn.GroupNorm(2, c)}
    layers, size = [nn.Conv2d(1, c, 3, padding=1, generator=gen)], case["size"]
    for kind in case["blocks"]:
        act, nm = make_activation(case["act"], gen), norm[case["norm"]]()
        if kind == "residual":
            layers.append(nn.Residual(nn.Sequential(*[m for m in (conv(kernel_size=3, padding="same", bias=nm is None),
                                                                  nm, act) if m is not None])))
        elif kind in ("maxpool", "avgpool") and size >= 4:
            layers.append(nn.MaxPool2d(2) if kind == "maxpool" else nn.AvgPool2d(3, stride=2, padding=1))
            size = size // 2 if kind == "maxpool" else (size - 1) // 2 + 1
        elif kind in ("conv", "conv-strided", "depthwise"):
            kw = {"conv": dict(kernel_size=3, padding=1), "conv-strided": dict(kernel_size=2, stride=2, dilation=1),
                  "depthwise": dict(kernel_size=3, padding=1, groups=c)}[kind]
            if kind == "conv-strided" and size < 4:
                continue
            layers += [m for m in (conv(bias=nm is None, **kw), nm, act) if m is not None]
            size = size // 2 if kind == "conv-strided" else size
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 3, generator=gen)]
    model = nn.Sequential(*layers).to(device=device, dtype=dtype)
    return getattr(model, case["mode"])()


def run_cnn_case(case, backend, dtype):
    device = DEVICE_OF[backend]
    rng = np.random.default_rng(case["seed"] + 1)
    model = make_cnn(case, device, dtype)
    n, s = case["batch"], case["size"]
    x = B.place(rng.standard_normal((n, 1, s, s)), device, dtype)
    t = rng.integers(0, 3, size=n)
    y = t if device == "numpy" else torch.as_tensor(t, device=device)
    label = f"{model!r} ({case['mode']}, {backend}, {dtype}, batch {n})".replace("\n", "")
    check_model(model, nn.CrossEntropyLoss(), x, y, label, seed=case["seed"])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@settings(max_examples=15, **FAST)
@given(case=cnn_cases())
def test_random_cnn_numpy(dtype, case):
    run_cnn_case(case, "numpy", dtype)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b.values[0] != "numpy"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@settings(max_examples=6, **FAST)
@given(case=cnn_cases())
def test_random_cnn_torch_backend(backend, dtype, case):
    run_cnn_case(case, backend, dtype)


# -- central finite differences in float64 -------------------------------------------------------

# h = 1e-6: truncation ~h^2 |f'''|/6 ~ 1e-13, rounding ~eps |f| / h ~ 1e-10 (measured worst
# 8e-9 relative to the gradient's scale)
FD_RTOL = 1e-7


def numeric_grad(f, a, h=1e-6):
    """Central differences of the scalar f() w.r.t. every entry of the NumPy array a (perturbed in place)."""
    g = np.zeros_like(a)
    for i in np.ndindex(a.shape):
        old = a[i]
        a[i] = old + h
        fp = f()
        a[i] = old - h
        fm = f()
        a[i] = old
        g[i] = (fp - fm) / (2 * h)
    return g


FD_MODELS = {
    "tanh-gelu-CE": (lambda g: nn.Sequential(nn.Linear(3, 4, generator=g, dtype="float64"), nn.Tanh(),
                                             nn.Linear(4, 4, generator=g, dtype="float64"), nn.GELU(),
                                             nn.Linear(4, 3, generator=g, dtype="float64")),
                     lambda rng: (nn.CrossEntropyLoss(weight=rng.uniform(0.5, 2, 3), label_smoothing=0.2),
                                  rng.integers(0, 3, 5))),
    "elu-sigmoid-BCE-none": (lambda g: nn.Sequential(nn.Linear(3, 5, generator=g, dtype="float64"), nn.ELU(0.7),
                                                     nn.Linear(5, 2, bias=False, generator=g, dtype="float64"),
                                                     nn.Sigmoid(), nn.Linear(2, 2, generator=g, dtype="float64")),
                             lambda rng: (nn.BCEWithLogitsLoss(pos_weight=rng.uniform(0.5, 3, 2), reduction="none"),
                                          rng.uniform(0, 1, (5, 2)))),
    "gelu_tanh-leaky-MSE": (lambda g: nn.Sequential(nn.Linear(3, 4, generator=g, dtype="float64"),
                                                    nn.GELU("tanh"), nn.Linear(4, 4, generator=g, dtype="float64"),
                                                    nn.LeakyReLU(0.1), nn.Linear(4, 1, generator=g, dtype="float64")),
                            lambda rng: (nn.MSELoss(reduction="sum"), rng.standard_normal((5, 1)))),
}


@pytest.mark.parametrize("name", list(FD_MODELS))
def test_finite_differences_whole_model(name):
    build, make_loss_ = FD_MODELS[name]
    rng = np.random.default_rng(11)
    model = build(np.random.default_rng(3))
    crit, target = make_loss_(rng)
    x = rng.standard_normal((5, 3))
    upstream = rng.standard_normal((5, 2)) if crit.reduction == "none" else None
    # where there are kinks (LeakyReLU), the finite-difference step must not cross one
    pre = x
    for m in model:
        if isinstance(m, nn.LeakyReLU):
            assert np.min(np.abs(pre)) > 1e-3, f"{name}: a pre-activation sits on the kink"
        pre = m(pre)

    def objective():  # scalar: the loss, or <upstream, loss> for reduction='none'
        loss = crit(model(x), target)
        return float(loss) if upstream is None else float(np.sum(upstream * loss))

    model.zero_grad()
    crit(model(x), target)
    grad_x = model.backward(crit.backward(upstream))
    for pname, p in model.named_parameters():
        assert_close(p.grad, numeric_grad(objective, p.data), FD_RTOL, f"{name}: finite differences, grad of {pname}")
    assert_close(grad_x, numeric_grad(objective, x), FD_RTOL, f"{name}: finite differences, grad of input")


# -- state_dict layout: names, shapes, no transposes ------------------------------------------------

LAYOUTS = {
    "mlp": lambda: nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2, bias=False), nn.Tanh(), nn.Linear(2, 7)),
    "nested": lambda: nn.Sequential(nn.Sequential(nn.Linear(4, 6), nn.GELU()), nn.Linear(6, 6), nn.Sigmoid(),
                                    nn.Sequential(nn.ELU(), nn.Linear(6, 3))),
    "single": lambda: nn.Linear(5, 3),
}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_state_dict_keys_and_shapes_equal_twins(name):
    model = LAYOUTS[name]()
    tsd = twin(model).state_dict()
    sd = model.state_dict()
    assert list(sd) == list(tsd), f"{name}: keys {list(sd)} != torch's {list(tsd)}"
    for k in sd:
        assert tuple(sd[k].shape) == tuple(tsd[k].shape), f"{name}: {k} shape {sd[k].shape} != torch's {tsd[k].shape}"
        np.testing.assert_array_equal(to_numpy(sd[k]), tsd[k].numpy(), err_msg=f"{name}: {k}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_weights_move_between_twins_without_transposes(backend, name):
    """A torch model's weights loaded by name into manual (and back) give the same function."""
    device = DEVICE_OF[backend]
    model = LAYOUTS[name]().to(device=device, dtype="float64")
    torch.manual_seed(5)
    tmodel = twin(model)
    with torch.no_grad():  # fresh torch-side weights, unrelated to manual's init
        for p in tmodel.parameters():
            p.normal_()
    model.load_state_dict(tmodel.state_dict())
    in_features = next(p for n, p in tmodel.named_parameters() if n.endswith("weight")).shape[1]
    x = torch.randn(4, in_features, dtype=torch.float64, device=torch_device(backend))
    xm = B.place(x, device, "float64")
    assert_close(model(xm), tmodel(x).detach(), 1e-12, f"{name} ({backend}): torch -> manual")
    back = load_weights(twin(LAYOUTS[name]().to(device=device, dtype="float64")), model.state_dict())
    assert_close(back(x).detach(), tmodel(x).detach(), 0, f"{name} ({backend}): manual -> torch")
