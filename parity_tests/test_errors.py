"""Bad input gets a clear exception: it names the module or op, what was expected, and what came."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import manual.functional as F
from manual import nn

F64, F32, I64 = np.float64, np.float32, np.int64


def zeros(*shape, dtype=F64):
    return np.zeros(shape, dtype=dtype)


def test_linear_module_wrong_feature_count():
    with pytest.raises(ValueError, match=r"Linear\(in_features=3, .*expected input with 3 features .*got input of shape \(2, 4\)"):
        nn.Linear(3, 2)(zeros(2, 4, dtype=F32))


def test_linear_op_wrong_shapes():
    with pytest.raises(ValueError, match=r"linear: expected input with 3 features .*weight is \(2, 3\).*got input of shape \(2, 4\)"):
        F.linear(zeros(2, 4), zeros(2, 3))
    with pytest.raises(ValueError, match=r"linear_backward: expected bias of shape \(2,\), got \(3,\)"):
        F.linear_backward(zeros(2, 2), zeros(2, 3), zeros(2, 3), zeros(3))


@pytest.mark.parametrize("op, input, target, pattern", [
    ("mse_loss", zeros(2, 3), zeros(3, 2), r"mse_loss: expected target of shape \(2, 3\) \(the input's\), got \(3, 2\)"),
    ("binary_cross_entropy_with_logits", zeros(2, 3), zeros(2),
     r"binary_cross_entropy_with_logits: expected target of shape \(2, 3\) \(the input's\), got \(2,\)"),
    ("cross_entropy", zeros(2, 3), zeros(3, dtype=I64),
     r"cross_entropy: expected class-index target of shape \(2,\) .*class dim of size 3\), got \(3,\)"),
    ("cross_entropy", zeros(2, 3), zeros(2),  # floats: read as class probabilities
     r"cross_entropy: expected class-probability target of shape \(2, 3\) \(the input's\), got \(2,\)"),
    ("cross_entropy", zeros(2, 4, 5), zeros(2, 4, dtype=I64),
     r"cross_entropy: expected class-index target of shape \(2, 5\) .*got \(2, 4\)"),
])
def test_target_of_the_wrong_shape(op, input, target, pattern):
    with pytest.raises(ValueError, match=pattern):
        getattr(F, op)(input, target)
    with pytest.raises(ValueError, match=pattern.replace(op, op + "_backward", 1)):
        getattr(F, op + "_backward")(np.float64(1.0), input, target)


def test_loss_modules_name_the_op_on_a_wrong_target():
    with pytest.raises(ValueError, match=r"binary_cross_entropy_with_logits: expected target of shape \(2, 3\).*got \(3, 2\)"):
        nn.BCEWithLogitsLoss()(zeros(2, 3), zeros(3, 2))
    with pytest.raises(ValueError, match=r"binary_cross_entropy_with_logits: expected weight broadcastable .*\(2, 3\), got \(2,\)"):
        F.binary_cross_entropy_with_logits(zeros(2, 3), zeros(2, 3), weight=np.ones(2))


@pytest.mark.parametrize("device", ["numpy", "cpu"])
@pytest.mark.parametrize("bad", [3, -1, 7])
def test_class_index_out_of_range(device, bad):
    x, t = zeros(2, 3), np.array([0, bad])
    if device == "cpu":
        x, t = torch.as_tensor(x), torch.as_tensor(t)
    with pytest.raises(IndexError, match=rf"cross_entropy: expected class indices in \[0, 3\) or ignore_index=-100, got {bad}"):
        F.cross_entropy(x, t)
    with pytest.raises(IndexError, match=rf"cross_entropy: expected class indices .*got {bad}"):
        nn.CrossEntropyLoss()(x, t)


def test_mixed_dtypes():
    loss = F.mse_loss(zeros(2, 3), zeros(2, 3, dtype=F32))  # float64 with float32: promoted, as torch
    assert "torch." + str(loss.dtype) == str(torch.nn.functional.mse_loss(torch.zeros(2, 3, dtype=torch.float64), torch.zeros(2, 3)).dtype)
    with pytest.raises(TypeError, match=r"Linear\(in_features=3, out_features=2, bias=True\): mixed dtypes: expected input of dtype float32 \(the parameters'\), got float64"):
        nn.Linear(3, 2)(zeros(2, 3))  # a float32 model (torch's default) given float64
    with pytest.raises(TypeError, match=r"linear: mixed dtypes: .*got input=float64, weight=float32, bias=float32"):
        F.linear(zeros(2, 3), zeros(2, 3, dtype=F32), zeros(2, dtype=F32))
    with pytest.raises(TypeError, match=r"cross_entropy: mixed dtypes: .*got input=float32, weight=float64"):
        F.cross_entropy(zeros(2, 3, dtype=F32), np.array([0, 1]), weight=np.ones(3))
    with pytest.raises(TypeError, match=r"binary_cross_entropy_with_logits: mixed dtypes: .*pos_weight=float64"):
        F.binary_cross_entropy_with_logits(zeros(2, 3, dtype=F32), zeros(2, 3, dtype=F32), pos_weight=np.ones(3))


def test_numpy_input_into_a_torch_backed_module():
    with pytest.raises(TypeError, match=r"Linear\(in_features=3.*\): expected an input on torch cpu \(where the parameters are\), got one on NumPy: move"):
        nn.Linear(3, 2, device="cpu")(zeros(2, 3, dtype=F32))
    with pytest.raises(TypeError, match=r"linear: mixed backends: expected every array on numpy .*got a torch array as argument 2"):
        F.linear(zeros(2, 3, dtype=F32), torch.zeros(2, 3))


def test_torch_input_into_a_numpy_backed_module():
    with pytest.raises(TypeError, match=r"Linear\(in_features=3.*\): expected an input on NumPy \(where the parameters are\), got one on torch cpu"):
        nn.Linear(3, 2)(torch.zeros(2, 3))
    with pytest.raises(TypeError, match=r"linear: mixed backends: expected every array on torch .*got a numpy array as argument 2"):
        F.linear(torch.zeros(2, 3), zeros(2, 3, dtype=F32))


def test_mixed_backends_in_an_op_and_a_non_array():
    with pytest.raises(TypeError, match=r"relu_backward: mixed backends: expected every array on numpy .*got a torch array"):
        F.relu_backward(zeros(3), torch.zeros(3))
    with pytest.raises(TypeError, match=r"relu: expected a NumPy array or a torch tensor as argument 1, got list"):
        F.relu([1.0, -1.0])


@pytest.mark.parametrize("call, name", [
    (lambda: F.mse_loss(zeros(3), zeros(3), reduction="avg"), "mse_loss"),
    (lambda: F.binary_cross_entropy_with_logits_backward(np.float64(1.0), zeros(3), zeros(3), reduction="avg"),
     "binary_cross_entropy_with_logits_backward"),
    (lambda: F.cross_entropy(zeros(2, 3), np.array([0, 1]), reduction="avg"), "cross_entropy"),
    (lambda: nn.MSELoss(reduction="avg"), "MSELoss"),
    (lambda: nn.CrossEntropyLoss(reduction="avg"), "CrossEntropyLoss"),
])
def test_unknown_reduction(call, name):
    with pytest.raises(ValueError, match=rf"^{name}: expected reduction to be one of \('mean', 'sum', 'none'\), got 'avg'"):
        call()


@pytest.mark.parametrize("call, name", [
    (lambda: F.gelu(zeros(3), approximate="erf"), "gelu"),
    (lambda: F.gelu_backward(zeros(3), zeros(3), approximate="Tanh"), "gelu_backward"),
    (lambda: nn.GELU(approximate="erf"), "gelu"),  # checked at construction, not at the first forward
])
def test_bad_gelu_approximate(call, name):
    with pytest.raises(ValueError, match=rf"^{name}: expected approximate to be one of \('none', 'tanh'\), got '(erf|Tanh)'"):
        call()


def test_softmax_dim_out_of_range():
    with pytest.raises(IndexError, match=r"softmax: expected dim in \[-2, 2\) for input of shape \(2, 3\), got 2"):
        F.softmax(zeros(2, 3), 2)
    with pytest.raises(IndexError, match=r"log_softmax_backward: expected dim in \[-2, 2\) .*got -3"):
        F.log_softmax_backward(zeros(2, 3), zeros(2, 3), -3)


@pytest.mark.parametrize("op", ["relu", "leaky_relu", "elu", "gelu", "sigmoid", "tanh"])
def test_activation_backward_rejects_a_mismatched_grad_output(op):
    """No silent promotion or broadcasting: grad_output must match the input in dtype and shape."""
    backward = getattr(F, f"{op}_backward")
    x = zeros(2, 3)  # float64
    with pytest.raises(TypeError, match=rf"{op}_backward: mixed dtypes: .*grad_output=float32, input=float64"):
        backward(zeros(2, 3, dtype=F32), x)
    with pytest.raises(ValueError, match=rf"{op}_backward: expected grad_output of shape \(2, 3\) \(the input's\), got \(3,\)"):
        backward(zeros(3), x)


def test_softmax_backward_rejects_a_mismatched_grad_output():
    with pytest.raises(ValueError, match=r"softmax_backward: expected grad_output of shape \(2, 3\)"):
        F.softmax_backward(zeros(2, 1), zeros(2, 3), 1)
    with pytest.raises(TypeError, match=r"log_softmax_backward: mixed dtypes"):
        F.log_softmax_backward(zeros(2, 3), None, 1, output=zeros(2, 3, dtype=F32))


@pytest.mark.parametrize("reduction, shape, bad", [("mean", (4, 1), (4, 1)), ("none", (4, 1), ())])
def test_loss_backward_rejects_a_grad_output_of_the_wrong_shape(reduction, shape, bad):
    x, t = zeros(*shape), zeros(*shape)
    want = "\\(\\)" if reduction == "mean" else "\\(4, 1\\)"
    with pytest.raises(ValueError, match=rf"mse_loss_backward: expected grad_output of shape {want} \(the loss's, reduction='{reduction}'\)"):
        F.mse_loss_backward(zeros(*bad), x, t, reduction=reduction)
    with pytest.raises(ValueError, match=rf"binary_cross_entropy_with_logits_backward: expected grad_output of shape {want}"):
        F.binary_cross_entropy_with_logits_backward(zeros(*bad), x, t, reduction=reduction)
    want_ce = "\\(\\)" if reduction == "mean" else "\\(4,\\)"
    with pytest.raises(ValueError, match=rf"cross_entropy_backward: expected grad_output of shape {want_ce}"):
        F.cross_entropy_backward(zeros(*bad), zeros(4, 3), np.zeros(4, dtype=np.int64), reduction=reduction)
