"""The contracts every manual op keeps (DESIGN.md, manual.functional), on every sample and backend.

Backward is pure: inputs are unchanged, results are new arrays (never views of an input) with
the input's dtype and device; on torch tensors no autograd graph is built.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import BACKENDS, DTYPES

import manual.functional as MF
from experiments.parity import FROM_OUTPUT, TORCH_DEVICE, mlp_case, place, upstream
from manual._backend import to_numpy
from torch_ref.opinfo import OPS, samples

TORCH_BACKENDS = [b for b in BACKENDS if b.values[0] != "numpy"]
by_name = pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)


def _is_array(v):
    return isinstance(v, (np.ndarray, torch.Tensor))


def _run(op, s, dtype, backend):
    """Forward and backward (and backward from output=), with snapshots taken before each call."""
    args = [place(a, backend, dtype) for a in s.args]
    kwargs = {k: place(v, backend, dtype) for k, v in s.kwargs.items()}
    inputs = {**{n: a for n, a in zip(op.arg_names, args) if _is_array(a) and n not in op.mutates},
              **{k: v for k, v in kwargs.items() if _is_array(v)}}  # op.mutates: updated in place by design
    before = {n: np.array(to_numpy(a)) for n, a in inputs.items()}
    out = getattr(MF, op.name)(*args, **kwargs)
    g = place(upstream(out.shape, 0), backend, dtype)
    inputs.update(grad_output=g, output=out)
    before.update(grad_output=np.array(to_numpy(g)), output=np.array(to_numpy(out)))
    bwd = getattr(MF, op.name + "_backward")
    grads = bwd(g, *args, **kwargs)
    grads = dict(zip((f"grad_{n}" for n in op.grads), grads if isinstance(grads, tuple) else (grads,)))
    if op.from_output:
        grads[FROM_OUTPUT] = bwd(g, output=out, **kwargs)
    return inputs, before, out, {k: v for k, v in grads.items() if v is not None}


def _shares(a, b):
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.numel() == 0 or b.numel() == 0:
            return False
        return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return False
    return bool(np.shares_memory(a, b))


@by_name
def test_inputs_unchanged(op, backend):
    for s in samples(op):
        inputs, before, _, _ = _run(op, s, "float64", backend)
        for name, a in inputs.items():
            assert np.array_equal(to_numpy(a), before[name], equal_nan=True), (
                f"{op.name}[{s.id}] on {backend}: {name} was modified by forward or backward")


@by_name
def test_backward_returns_new_arrays(op, backend):
    for s in samples(op):
        inputs, _, out, grads = _run(op, s, "float32", backend)
        for k, gr in grads.items():
            for name, a in inputs.items():
                assert not _shares(gr, a), f"{op.name}[{s.id}] on {backend}: {k} shares memory with {name}"


@pytest.mark.parametrize("dtype", DTYPES)
@by_name
def test_results_keep_input_dtype_and_device(op, dtype, backend):
    for s in samples(op):
        _, _, out, grads = _run(op, s, dtype, backend)
        for k, v in {"output": out, **grads}.items():
            where = f"{op.name}[{s.id}] on {backend} in {dtype}: {k}"
            assert str(v.dtype).replace("torch.", "") == dtype, f"{where}: expected dtype {dtype}, got {v.dtype}"
            if backend == "numpy":
                assert isinstance(v, (np.ndarray, np.generic)), f"{where}: expected NumPy, got {type(v).__name__}"
            else:
                assert isinstance(v, torch.Tensor) and v.device.type == TORCH_DEVICE[backend], (
                    f"{where}: expected a tensor on {TORCH_DEVICE[backend]}, got {type(v).__name__} "
                    f"on {getattr(v, 'device', None)}")


@pytest.mark.parametrize("backend", TORCH_BACKENDS)
@by_name
def test_no_autograd_graph(op, backend):
    with torch.enable_grad():  # even where autograd is on, manual must not use it
        for s in samples(op):
            inputs, _, out, grads = _run(op, s, "float32", backend)
            for k, v in {"output": out, **grads}.items():
                assert not v.requires_grad and v.grad_fn is None, f"{op.name}[{s.id}]: {k} carries an autograd graph"
            for name, a in inputs.items():
                assert a.grad is None, f"{op.name}[{s.id}]: {name}.grad was set"


@pytest.mark.parametrize("backend", TORCH_BACKENDS)
def test_model_on_torch_builds_no_graph(backend):
    model, crit, x, y = mlp_case("gelu", "cross_entropy", "float32", backend)
    with torch.enable_grad():
        loss = crit(model(x), y)
        grad_x = model.backward(crit.backward())
    assert loss.grad_fn is None and grad_x.grad_fn is None and not grad_x.requires_grad
    for name, p in model.named_parameters():
        assert p.data.grad is None and not p.data.requires_grad, f"{name}: torch autograd was used"
        assert p.grad.grad_fn is None, f"{name}.grad carries an autograd graph"


@pytest.mark.parametrize("device", [None, "cpu"], ids=["numpy", "torch-cpu"])
def test_place_labels_gives_int64_indices_on_the_backend(device):
    """Integer targets from any NumPy integer dtype land as int64 on the asked backend (what
    cross_entropy and embedding take); floats are refused rather than truncated."""
    from manual import _backend as B

    y = B.place_labels(np.array([3, 0, 2], dtype=np.int32), device)
    assert (type(y) is np.ndarray) == (device is None)
    assert str(y.dtype).endswith("int64") and to_numpy(y).tolist() == [3, 0, 2]
    with pytest.raises(TypeError, match="expected integer class indices, got dtype float64"):
        B.place_labels(np.array([1.0, 2.0]), device)


def test_the_reference_is_ieee_float32_on_cuda():
    """torch's default lets cuDNN convolutions compute float32 in TF32 (about 1e-3 relative): the suite and the
    command line turn that off (torch_ref.ieee_float32), so that autograd is the exact side of a float32
    comparison on the GPU. The flags exist and are readable without a GPU."""
    import torch_ref

    from experiments import cli

    if hasattr(torch.backends.cudnn, "conv") and hasattr(torch.backends.cudnn.conv, "fp32_precision"):
        read = lambda: (torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision)  # noqa: E731
    else:
        read = lambda: (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)  # noqa: E731
    ieee = read()
    assert ieee in (("ieee", "ieee"), (False, False)), ieee
    try:  # the command line sets it too, before any command runs
        if hasattr(torch.backends.cudnn, "conv"):
            torch.backends.cudnn.conv.fp32_precision = "tf32"
        else:
            torch.backends.cudnn.allow_tf32 = True
        assert read() != ieee
        assert cli.main(["runs", "--logdir", "/nonexistent-backprop-lab-dir"]) in (0, 2)
        assert read() == ieee
    finally:
        torch_ref.ieee_float32()
