"""Hand-written forward and backward ops: the twin of torch.nn.functional.

Each op `f` has `f_backward(grad_output, <f's args>)`, named as in PyTorch's derivative
table, returning the gradient of the input; an op with several array arguments returns one
gradient per positional array argument, in order, None where nothing is differentiable
(`batch_norm_backward` -> (grad_input, None, None, grad_weight, grad_bias): the running
statistics; `embedding_backward` -> (None, grad_weight): the indices).
"""

from .activations import (
    elu,
    elu_backward,
    gelu,
    gelu_backward,
    leaky_relu,
    leaky_relu_backward,
    log_softmax,
    log_softmax_backward,
    relu,
    relu_backward,
    sigmoid,
    sigmoid_backward,
    softmax,
    softmax_backward,
    tanh,
    tanh_backward,
)
from .linear import linear, linear_backward
from .conv import conv1d, conv1d_backward, conv2d, conv2d_backward
from .pooling import (
    adaptive_avg_pool2d,
    adaptive_avg_pool2d_backward,
    avg_pool2d,
    avg_pool2d_backward,
    max_pool2d,
    max_pool2d_backward,
)
from .attention import scaled_dot_product_attention, scaled_dot_product_attention_backward
from .normalization import (
    batch_norm,
    batch_norm_backward,
    group_norm,
    group_norm_backward,
    layer_norm,
    layer_norm_backward,
)
from .regularization import (
    dropout,
    dropout_backward,
    dropout_mask,
    embedding,
    embedding_backward,
    flatten,
    flatten_backward,
)
from .losses import (
    binary_cross_entropy_with_logits,
    binary_cross_entropy_with_logits_backward,
    cross_entropy,
    cross_entropy_backward,
    mse_loss,
    mse_loss_backward,
)


def _export_ops():
    """Every op of the submodules above (a public function `f` with `f_backward` beside it) is exported,
    so a new op written next to its backward in one of them needs no line here."""
    import sys

    for mod_name, mod in list(sys.modules.items()):
        if mod is None or not mod_name.startswith(__name__ + ".") or mod_name.rsplit(".", 1)[1].startswith("_"):
            continue
        for n in dir(mod):
            f, fb = getattr(mod, n), getattr(mod, n + "_backward", None)
            if not n.startswith("_") and getattr(f, "__module__", None) == mod_name and callable(fb):
                globals().setdefault(n, f)
                globals().setdefault(n + "_backward", fb)


_export_ops()

__all__ = [n for n in dir() if not n.startswith("_") and n not in ("activations", "losses", "attention", "conv", "pooling",
                                                                  "normalization", "regularization")]
