"""torch_ref: the torch.nn + autograd twin of any manual model: the independent oracle.

It reads a manual model's structure (class names and constructor arguments) and weights
(`state_dict()`), and never imports manual's math.

    tmodel = twin(model)                  # same architecture, same weights, same dtype
    tloss = twin_loss(criterion)          # torch.nn loss with the same arguments
    topt = twin_optimizer(optimizer, tmodel.parameters())
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["to_torch", "to_torch_state", "twin", "twin_loss", "twin_optimizer", "load_weights", "DTYPES",
           "ieee_float32"]

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def ieee_float32():
    """float32 on CUDA as IEEE float32, not TensorFloat-32, for the reference's matrix multiplies and cuDNN
    convolutions. torch's default lets cuDNN convolutions round their inputs to TF32 (10 mantissa bits,
    errors near 1e-3 relative) on Ampere and later GPUs, while manual's convolution is a float32 matrix
    multiply: the reference would be the less exact side. Global (torch's flags are); the parity tests and
    the command line call it. No effect on the CPU."""
    if hasattr(torch.backends.cudnn, "conv") and hasattr(torch.backends.cudnn.conv, "fp32_precision"):
        torch.backends.cudnn.conv.fp32_precision = "ieee"  # torch >= 2.9: the per-operator API
        torch.backends.cuda.matmul.fp32_precision = "ieee"
    else:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


def to_torch(array, device=None, dtype=None):
    """A new torch tensor (always a copy) from a NumPy array or a torch tensor."""
    if isinstance(array, torch.Tensor):
        t = array.detach().clone()
    else:
        t = torch.tensor(np.asarray(array))
    if dtype is not None and isinstance(dtype, str):
        dtype = DTYPES[dtype]
    return t.to(device=device if device is not None else t.device, dtype=dtype if dtype is not None else t.dtype)


def to_torch_state(state_dict):
    """A manual optimizer's state_dict as torch.optim's load_state_dict takes it: every NumPy array in it (the
    per-parameter buffers, Adam's step count) a new torch tensor, everything else as it is (torch moves each
    buffer to its parameter's device and dtype). torch refuses NumPy arrays there; manual.optim takes
    torch's state_dict as it is."""
    if isinstance(state_dict, dict):
        return {k: to_torch_state(v) for k, v in state_dict.items()}
    if isinstance(state_dict, list):
        return [to_torch_state(v) for v in state_dict]
    if isinstance(state_dict, (np.ndarray, np.generic)):
        return torch.tensor(np.asarray(state_dict))  # a copy: torch keeps the tensor it is given as its buffer
    return state_dict


def _device_dtype(model, device):
    for _, v in model.state_dict().items():
        if str(v.dtype).replace("torch.", "") not in DTYPES:
            continue  # an integer buffer (num_batches_tracked)
        dtype = DTYPES[str(v.dtype).replace("torch.", "")]
        if device is None and isinstance(v, torch.Tensor):
            device = v.device
        return (device if device is not None else "cpu"), dtype
    return (device if device is not None else "cpu"), torch.float32


def _build(module, tensor=None):
    """The torch twin of one manual module (children included), from the module registry."""
    from .opinfo import MODULES_BY_NAME

    name = type(module).__name__
    info = MODULES_BY_NAME.get(name)
    if info is None:
        raise TypeError(f"torch_ref.twin: no torch twin for module type {name}: register a ModuleInfo for it in "
                        f"torch_ref/opinfo.py (known: {sorted(MODULES_BY_NAME)})")
    tensor = tensor or (lambda a: None if a is None else to_torch(a))
    tm = info.twin(module, lambda child: _build(child, tensor), tensor)
    tm.training = bool(getattr(module, "training", True))  # this module's own train()/eval() (dropout, batch norm)
    return tm


def twin(model, device=None):
    """torch.nn twin of a manual model: same layout, state_dict names, weights, dtype and device."""
    if not callable(getattr(model, "state_dict", None)):
        raise TypeError(f"torch_ref.twin: expected a manual model (a manual.nn.Module), got {type(model).__name__}")
    device, dtype = _device_dtype(model, device)
    tmodel = _build(model).to(device=device, dtype=dtype)
    load_weights(tmodel, model.state_dict())
    return tmodel


def load_weights(tmodel, state_dict):
    """Copy a manual state_dict (NumPy or torch arrays) into a torch model, by name."""
    own = tmodel.state_dict()
    if set(own) != set(state_dict):
        raise KeyError(f"torch_ref.load_weights: expected keys {sorted(own)}, got {sorted(state_dict)}")
    with torch.no_grad():
        for k, t in own.items():
            t.copy_(to_torch(state_dict[k], device=t.device, dtype=t.dtype))
    return tmodel


def twin_loss(criterion, device=None):
    """torch.nn loss with the same arguments as a manual loss module (from the module registry)."""
    from .opinfo import MODULES_BY_NAME

    name = type(criterion).__name__
    info = MODULES_BY_NAME.get(name)
    if info is None or info.kind != "loss":
        raise TypeError(f"torch_ref.twin_loss: no torch twin for loss type {name}")
    return info.twin(criterion, None, lambda a: None if a is None else to_torch(a, device=device))


def twin_optimizer(optimizer, params):
    """torch.optim optimizer with a manual optimizer's hyperparameters, over `params` (in the same order).

    Parameter groups carry over: `params` is split in the manual optimizer's group sizes, each
    group with its own hyperparameters (AdamW with weight_decay=0 for biases, ...).
    The guide's velocity-form momentum (GuideMomentum) maps to SGD(momentum=beta): the same
    trajectory at a constant learning rate.
    """
    name = type(optimizer).__name__
    params = list(params)
    sizes = [len(g["params"]) for g in optimizer.param_groups]
    if sum(sizes) != len(params):
        raise ValueError(f"torch_ref.twin_optimizer: expected {sum(sizes)} parameters (the manual optimizer's), got {len(params)}")

    def kwargs(g):
        if name == "SGD":
            return dict(lr=g["lr"], momentum=g["momentum"], dampening=g["dampening"],
                        weight_decay=g["weight_decay"], nesterov=g["nesterov"])
        if name == "GuideMomentum":
            return dict(lr=g["lr"], momentum=g["beta"])
        if name in ("Adam", "AdamW"):
            return dict(lr=g["lr"], betas=tuple(g["betas"]), eps=g["eps"], weight_decay=g["weight_decay"])
        raise TypeError(f"torch_ref.twin_optimizer: no torch twin for optimizer type {name}")

    groups, start = [], 0
    for g, n in zip(optimizer.param_groups, sizes):
        groups.append({"params": params[start:start + n], **kwargs(g)})
        start += n
    cls = {"SGD": torch.optim.SGD, "GuideMomentum": torch.optim.SGD, "Adam": torch.optim.Adam,
           "AdamW": torch.optim.AdamW}[name]
    return cls(groups, foreach=False, **kwargs(optimizer.defaults))
