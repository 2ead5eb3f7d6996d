"""The registry (torch_ref.opinfo) is the only list, and it is complete.

- every op of manual.functional (a function `f` with `f_backward`) has an OpInfo, every public
  module class of manual.nn a ModuleInfo (its torch twin), and every entry names something real;
- every registered error input raises the exception it names, with the message it names;
- every module example matches its twin (output, parameter and input gradients, buffers), in
  training and in eval mode, through the one model engine;
- "Add your own op": an op, its backward and its module added through exactly the documented path
  (a function pair, an OpInfo, a ModuleInfo) are picked up by the generic tests, finite
  differences and `verify` with no other change, and a wrong backward for it is caught.
"""

from __future__ import annotations

import inspect
import math
import re
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from conftest import DEVICE_OF

import manual.functional as MF
from experiments import activations as _activations  # noqa: F401  (its lists are built at import: before any patch)
from experiments import parity
from manual import _backend as B
from manual import nn
from torch_ref import opinfo, twin
from torch_ref.opinfo import MODULES, MODULES_BY_NAME, OPS, OPS_BY_NAME, ErrorInput, ModuleInfo, OpInfo, Sample, Tol

CPU = ["numpy", "torch-cpu"]


def _ops_in_manual():
    return sorted(n for n in MF.__all__ if callable(getattr(MF, n + "_backward", None)))


def _modules_in_manual():
    """Public concrete Module subclasses exported by manual.nn (the base classes start with "_")."""
    return sorted(n for n, c in vars(nn).items()
                  if inspect.isclass(c) and issubclass(c, nn.Module) and c is not nn.Module and not n.startswith("_"))


# -- completeness --------------------------------------------------------------------------------

def test_every_manual_op_is_registered():
    missing = [n for n in _ops_in_manual() if n not in OPS_BY_NAME]
    assert not missing, (f"ops in manual.functional with no OpInfo in torch_ref/opinfo.py (no parity, finite "
                         f"differences or verify row checks them): {missing}")


def test_every_registered_op_exists_in_manual():
    absent = [op.name for op in OPS if not (callable(getattr(MF, op.name, None))
                                            and callable(getattr(MF, op.name + "_backward", None)))]
    assert not absent, f"OpInfo entries naming no manual.functional op and backward: {absent}"
    assert len(OPS_BY_NAME) == len(OPS), "two OpInfo entries share a name"


def test_every_manual_module_has_a_twin():
    missing = [n for n in _modules_in_manual() if n not in MODULES_BY_NAME]
    assert not missing, f"manual.nn modules with no ModuleInfo (no torch twin) in torch_ref/opinfo.py: {missing}"


def test_every_activation_names_its_registered_op():
    """The experiments plot an activation's derivative from its op: the op must be registered (and checked)."""
    bad = [m.name for m in MODULES if m.kind == "activation" and m.op not in OPS_BY_NAME]
    assert not bad, f"activation ModuleInfo entries whose op= is not an OpInfo: {bad}"


def test_every_registered_module_exists_in_manual():
    absent = [m.name for m in MODULES if not inspect.isclass(getattr(nn, m.name, None))]
    assert not absent, f"ModuleInfo entries naming no manual.nn class: {absent}"


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
def test_every_op_has_a_reasoned_tolerance_and_samples(op):
    for dt in opinfo.DTYPES:
        t = op.tol(dt)
        assert isinstance(t, Tol) and t.reason.strip(), f"{op.name}: {dt} tolerance without a reason"
        assert 0 <= t.rtol < 1e-4 and 0 <= t.atol < 1e-4, f"{op.name}: {dt} tolerance {t} too loose to catch a 1e-4 bug"
    ids = [s.id for s in opinfo.samples(op)]
    assert ids and len(ids) == len(set(ids)), f"{op.name}: sample ids must be unique and non-empty: {ids}"
    for s in opinfo.samples(op):
        assert set(s.diff) <= set(op.arg_names), f"{op.name}[{s.id}]: diff {s.diff} not among {op.arg_names}"
        assert s.fd or s.fd_reason, f"{op.name}[{s.id}]: fd=False needs its fd_reason"


def test_an_opinfo_without_both_tolerances_is_refused():
    with pytest.raises(ValueError, match=r"OpInfo\('x'\): expected a Tol for each of .*missing \['float32'\]"):
        OpInfo("x", TF.relu, lambda rng: [], tols={"float64": Tol(0, 0)})


# -- error inputs --------------------------------------------------------------------------------

ERROR_CASES = [pytest.param(op, e, id=f"{op.name}-{e.id}") for op in OPS for e in opinfo.error_inputs(op)]


@pytest.mark.parametrize("backend", CPU)
@pytest.mark.parametrize("op, err", ERROR_CASES)
def test_error_inputs_raise_a_clear_error(op, err, backend):
    fn = getattr(MF, op.name + ("_backward" if err.backward else ""))
    args = [parity.place(a, backend, "float64") for a in err.args]
    kwargs = {k: parity.place(v, backend, "float64") for k, v in err.kwargs.items()}
    with pytest.raises(err.exc, match=err.match):
        fn(*args, **kwargs)


def test_ops_with_bad_inputs_to_refuse_have_error_inputs():
    """Issue 9's bad inputs for these ops live in the registry, not in scattered tests."""
    for name in ("batch_norm", "layer_norm", "group_norm", "dropout", "embedding", "flatten", "linear"):
        assert opinfo.error_inputs(OPS_BY_NAME[name]), f"{name}: no ErrorInput registered"


# -- every module example against its twin ----------------------------------------------------------

def _module_cases():
    for m in MODULES:
        if m.kind in ("container", "loss"):
            continue
        for eid, kw in m.examples.items():
            yield pytest.param(m, eid, kw, id=f"{m.name}-{eid}")


def _example_input(info: ModuleInfo, backend, dtype, rng):
    if info.index_high is not None:
        idx = rng.integers(0, info.index_high, size=info.input)
        return idx if backend == "numpy" else torch.as_tensor(idx, device=DEVICE_OF[backend])
    return B.place(rng.standard_normal(info.input) * 1.5, DEVICE_OF[backend], dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("backend", CPU)
@pytest.mark.parametrize("info, eid, kwargs", list(_module_cases()))
def test_module_example_matches_its_twin(info, eid, kwargs, backend, dtype):
    """Output, every parameter gradient, the input gradient and the buffers after forward (running
    statistics), with a random upstream gradient (MSE against a random target, summed), in training
    mode and then in eval mode."""
    rng = np.random.default_rng(parity.seed_of(info.name, eid))
    module = getattr(nn, info.name)(**kwargs).to(device=DEVICE_OF[backend], dtype=dtype)
    for p in module.parameters():  # away from the constructor's ones/zeros, so every term counts
        p.data = B.place(rng.normal(1.0, 0.5, size=p.shape), DEVICE_OF[backend], dtype)
    for mode in ("train", "eval"):
        getattr(module, mode)()
        x = _example_input(info, backend, dtype, rng)
        out = module(x)
        y = B.place(rng.standard_normal(tuple(out.shape)), DEVICE_OF[backend], dtype)
        r = parity.check_model(module, nn.MSELoss(reduction="sum"), x, y, seed=parity.seed_of(eid, mode))
        bad = {k: v for k, v in r.errors.items() if not v[2]}
        assert r.passed, f"{module!r} ({mode}, {backend}, {dtype}): {bad} (tolerance {r.tol})"
        if info.name.startswith("BatchNorm") and module.track_running_stats:
            assert any(k.endswith("running_var(after)") for k in r.errors), "running statistics not compared"


def test_a_bias_less_norm_twin_on_a_torch_without_bias_kwarg():
    """torch 2.11's BatchNorm and GroupNorm take no bias= (2.13's do): the twin is then built affine and its
    bias removed, and computes what F.batch_norm / F.group_norm give with bias None (found on the GPU machine)."""
    from torch_ref.opinfo import _norm

    class OldBatchNorm1d(torch.nn.BatchNorm1d):  # 2.11's signature
        def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True):
            super().__init__(num_features, eps, momentum, affine, track_running_stats)

    class OldGroupNorm(torch.nn.GroupNorm):
        def __init__(self, num_groups, num_channels, eps=1e-5, affine=True):
            super().__init__(num_groups, num_channels, eps, affine)

    x = torch.randn(5, 6, 4, dtype=torch.float64)
    for old, m, call in ((OldBatchNorm1d, nn.BatchNorm1d(6, bias=False), lambda t: (6,)),
                         (OldGroupNorm, nn.GroupNorm(3, 6, bias=False), lambda t: (3, 6))):
        tm = _norm(old, m, *call(m)).double()
        assert tm.bias is None and "bias" not in tm.state_dict() and tm.weight is not None, old.__name__
        with torch.no_grad():
            tm.weight.copy_(torch.linspace(0.5, 2.0, 6, dtype=torch.float64))
        expected = (TF.batch_norm(x, None, None, tm.weight, None, training=True) if old is OldBatchNorm1d
                    else TF.group_norm(x, 3, tm.weight, None))
        torch.testing.assert_close(tm(x), expected, rtol=0, atol=0)
        assert _norm(torch.nn.BatchNorm1d, nn.BatchNorm1d(6), 6).bias is not None  # a bias where manual has one


# -- "Add your own op": the documented path, end to end ----------------------------------------------

def softplus(input, beta=1.0):
    """softplus(x) = log(1 + e^(beta x)) / beta, computed as max(x, 0) + log1p(e^(-beta |x|)) / beta."""
    xp = B.namespace(input, op="softplus")
    if not beta > 0:
        raise ValueError(f"softplus: expected beta > 0, got {beta!r}")
    return xp.maximum(input, B.zero_like(input)) + xp.log1p(xp.exp(-beta * xp.abs(input))) / beta


def softplus_backward(grad_output, input, beta=1.0):
    """d softplus/dx = sigmoid(beta x)."""
    return grad_output * MF.sigmoid(beta * input)


class Softplus(nn.Module):
    """The module: forward saves its input, backward reads it (the Module protocol)."""

    def __init__(self, beta=1.0):
        super().__init__()
        self.beta = beta

    def forward(self, input):
        self._save(_input=input)
        return softplus(input, self.beta)

    def backward(self, grad_output, *, input_grad=True):
        x = self._saved("_input")
        return softplus_backward(grad_output, x, self.beta) if input_grad else None


def _softplus_samples(rng):
    return [Sample("2d", (rng.normal(size=(4, 5)) * 3,)), Sample("beta2", (rng.normal(size=(3, 4)),), {"beta": 2.0}),
            Sample("saturated", (np.array([-40.0, -5.0, 0.5, 5.0, 40.0]),))]


SOFTPLUS = OpInfo("softplus", TF.softplus, _softplus_samples,
                  tols={"float64": Tol(1e-14, 1e-16, "log1p/exp of NumPy vs torch within an ulp"),
                        "float32": Tol(2e-6, 1e-7, "float32 log1p/exp within an ulp or two")},
                  errors=lambda rng: [ErrorInput("beta=0", (rng.normal(size=3),), {"beta": 0.0}, ValueError,
                                                 r"softplus: expected beta > 0, got 0.0")])
SOFTPLUS_MODULE = ModuleInfo("Softplus", lambda m, build, tensor: torch.nn.Softplus(beta=m.beta), kind="activation", op="softplus",
                             examples={"softplus": {}}, draw=lambda rng: {"beta": float(rng.uniform(0.5, 2.0))})


@pytest.fixture
def with_softplus(monkeypatch):
    """Exactly the three documented edits, made at run time: the op pair in manual.functional (one of
    its files), the module in manual.nn, and one OpInfo plus one ModuleInfo in torch_ref/opinfo.py."""
    monkeypatch.setattr(MF, "softplus", softplus, raising=False)
    monkeypatch.setattr(MF, "softplus_backward", softplus_backward, raising=False)
    monkeypatch.setattr(MF, "__all__", [*MF.__all__, "softplus", "softplus_backward"])
    monkeypatch.setattr(nn, "Softplus", Softplus, raising=False)
    monkeypatch.setattr(opinfo, "OPS", [*OPS, SOFTPLUS])
    monkeypatch.setattr(opinfo, "OPS_BY_NAME", {**OPS_BY_NAME, "softplus": SOFTPLUS})
    monkeypatch.setattr(opinfo, "MODULES", [*MODULES, SOFTPLUS_MODULE])
    monkeypatch.setattr(opinfo, "MODULES_BY_NAME", {**MODULES_BY_NAME, "Softplus": SOFTPLUS_MODULE})
    import experiments.verify as verify

    monkeypatch.setattr(verify, "OPS", opinfo.OPS)
    monkeypatch.setattr(verify, "ACTIVATIONS", opinfo.activations())
    monkeypatch.setattr(parity, "ACTIVATIONS", opinfo.activations())
    return verify


def test_add_your_own_op_is_picked_up_everywhere(with_softplus, backend):
    verify = with_softplus
    if backend == "torch-cuda":
        pytest.skip("covered by the CPU backends here; the CUDA rows run in verify --device cuda")
    # the generic parity test and finite differences, on every sample
    for s in opinfo.samples(SOFTPLUS):
        for dt in ("float64", "float32"):
            parity.check_op(SOFTPLUS, s, dt, backend).assert_close()
        _, _, g, native, _ = parity.run_manual(SOFTPLUS, s, "float64", "numpy")
        fd = parity.finite_diff(MF.softplus, list(s.args), s.kwargs, SOFTPLUS.arg_names, s.diff, g)
        torch.testing.assert_close(native["grad_input"], fd["grad_input"], rtol=parity.FD_TOL.rtol, atol=parity.FD_TOL.atol)
    # its error input
    for e in opinfo.error_inputs(SOFTPLUS):
        with pytest.raises(e.exc, match=e.match):
            MF.softplus(*e.args, **e.kwargs)
    # the twin builder knows the module, inside any model
    model = nn.Sequential(nn.Linear(3, 4, dtype="float64"), Softplus(beta=1.5), nn.Linear(4, 2, dtype="float64"))
    assert isinstance(twin(model)[1], torch.nn.Softplus) and twin(model)[1].beta == 1.5
    rng = np.random.default_rng(0)
    r = parity.check_model(model, nn.MSELoss(), rng.normal(size=(5, 3)), rng.normal(size=(5, 2)))
    assert r.passed, r.errors
    # verify: an op row per dtype and backend, and an MLP row for the activation
    rows, _ = verify._op_rows(["float64"], [backend], {"softplus"})
    assert [(r["name"], r["passed"]) for r in rows] == [("softplus", True)]
    mrows, _ = verify._model_rows(["float64"], [backend], {"mlp[softplus]"})
    assert [(r["name"], r["passed"]) for r in mrows] == [("mlp[softplus]", True)]


def test_add_your_own_op_completeness_fails_until_registered(monkeypatch):
    """The op pair alone (no OpInfo) makes the completeness test fail, naming it."""
    monkeypatch.setattr(MF, "softplus", softplus, raising=False)
    monkeypatch.setattr(MF, "softplus_backward", softplus_backward, raising=False)
    monkeypatch.setattr(MF, "__all__", [*MF.__all__, "softplus", "softplus_backward"])
    monkeypatch.setattr(nn, "Softplus", Softplus, raising=False)
    with pytest.raises(AssertionError, match=r"no OpInfo.*'softplus'\]"):
        test_every_manual_op_is_registered()
    with pytest.raises(AssertionError, match=r"no ModuleInfo.*'Softplus'\]"):
        test_every_manual_module_has_a_twin()
    with pytest.raises(TypeError, match=r"no torch twin for module type Softplus: register a ModuleInfo"):
        twin(nn.Sequential(nn.Linear(2, 2), Softplus()))


def test_your_own_wrong_backward_is_caught(with_softplus):
    """A derivative off by the factor beta (a common slip: d/dx log1p(e^(bx))/b) fails parity."""
    wrong = lambda g, x, beta=1.0: softplus_backward(g, x, beta) * beta  # noqa: E731
    s = next(s for s in opinfo.samples(SOFTPLUS) if s.id == "beta2")
    r = parity.check_op(SOFTPLUS, s, "float64", "numpy", backward=wrong)
    assert r.passed is False
    with pytest.raises(AssertionError, match=r"(?s)softplus\[beta2\] on numpy in float64.*item \['grad_input'\]"):
        r.assert_close()


def test_your_own_op_checked_before_it_is_in_manual():
    """check_op with forward=/backward=: a derivation checked against torch with no edit to manual at all."""
    info = OpInfo("my_softplus", TF.softplus, _softplus_samples, tols=SOFTPLUS.tols)
    for s in opinfo.samples(info):
        r = parity.check_op(info, s, "float64", "numpy", forward=softplus, backward=softplus_backward)
        assert r.passed, r.errors


def test_verify_has_network_rows_for_the_new_layers():
    """`backprop-lab verify` checks residual nets around each normalization, an embedding front end and a
    CNN, each in train and eval mode, through the same engine and tolerance as the tests."""
    import experiments.verify as verify

    rows, details = verify._net_rows(["float64"], ["numpy"], set())
    assert [r["name"] for r in rows] == list(parity.NETS)
    assert all(r["passed"] and r["cases"] == 2 for r in rows), rows
    assert {d["loss"] for d in details} == {"train", "eval"}
