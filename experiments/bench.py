"""`backprop-lab bench`: one training step (forward, loss, backward, SGD update) of ReLU MLPs, MLPs
with batch or layer norm, CNNs and GPTs, hand-written (`manual` on NumPy, `manual` on torch tensors)
against torch autograd.

Protocol: before any timing, each model checks that all implementations give the same loss
and the same updated weights from the same start. Then paired rounds: in each round every
implementation times a block of steps (the order rotates per round); we report the median
step time per implementation and the median of the per-round ratios to autograd. OpenBLAS's
idle threads keep spinning ~0.1 s after a NumPy matmul and slow a torch step that follows
(~2x seen here), and torch's OpenMP workers spin after their own parallel regions, so the bench
sleeps SETTLE_S before every timed block: no block starts while another library's threads spin.
The manual step skips the first layer's input gradient (`input_grad=False`), as autograd does
for an input that does not require grad.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import re
import statistics
import sys
import time

import numpy as np
import torch

SETTLE_S = 0.15
MODELS = [  # name, layer sizes, batch
    ("2-4-1", (2, 4, 1), 4),
    ("2-16-16-1", (2, 16, 16, 1), 64),
    ("64-256-256-10", (64, 256, 256, 10), 256),
    ("784-1024-1024-10", (784, 1024, 1024, 10), 512),
    # GPTs (manual.gpt vs torch_ref.gpt): a dict of GPTConfig fields instead of layer sizes; batch of sequences
    ("gpt-sort", dict(block_size=12, vocab_size=11, n_layer=2, n_head=4, n_embd=32), 64),  # the `gpt` experiment's
    ("gpt-256x4", dict(block_size=128, vocab_size=65, n_layer=4, n_head=4, n_embd=256), 16),
    # CNNs (manual.nn.Conv2d / MaxPool2d vs torch.nn's): {"cnn": name} instead of layer sizes; batch of images
    ("cnn-digits", {"cnn": "digits"}, 64),  # the `cnn` experiment's network on 8x8 digits
    ("lenet-28x28", {"cnn": "lenet"}, 128),  # LeNet-5's layout (ReLU, max pooling) on 28x28 images
    # normalized MLPs: the medium MLP with a norm after each hidden Linear (Linear, norm, ReLU)
    ("64-256-256-10+bn", {"norm": "batch", "sizes": (64, 256, 256, 10)}, 256),  # BatchNorm1d, training mode
    ("64-256-256-10+ln", {"norm": "layer", "sizes": (64, 256, 256, 10)}, 256),  # LayerNorm
]
QUICK_SKIP = ("gpt-256x4",)  # --quick leaves it out (seconds per step in float64); --models gpt-256x4 runs it
LR = 1e-3
CHECK_TOL = {"float64": dict(rtol=1e-10, atol=1e-12), "float32": dict(rtol=1e-4, atol=1e-5)}


def register(sub):
    p = sub.add_parser("bench", help="time a training step: manual (NumPy, torch tensors) vs torch autograd",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="fewer rounds, sizes and models (on a 2-core machine: 2.3 min; 1.4 min with --no-memory)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="cpu: CPU rows; cuda: CUDA rows only; auto: CPU rows, and CUDA rows "
                        "when a GPU is present (default: auto)")
    p.add_argument("--dtype", choices=("float32", "float64", "all"), default="all", help="(default: all)")
    from .runner import _at_least_one  # 0 was taken as "the default", a negative count was a traceback

    p.add_argument("--rounds", type=_at_least_one, default=None, help="paired rounds per model (default: 7, quick: 3)")
    p.add_argument("--models", nargs="+", choices=[m[0] for m in MODELS], metavar="MODEL",
                   help="subset of " + ", ".join(m[0] for m in MODELS))
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement (child processes)")
    p.add_argument("--malloc", choices=("keep", "default"), default="keep",
                   help="keep: glibc keeps freed memory for reuse (mallopt), for every implementation alike, so "
                        "that a step's fresh arrays do not fault their pages in again each step; default: "
                        "glibc's own settings (default: keep)")
    p.add_argument("--data-parallel", action="store_true",
                   help="also time the 64-256-256-10 step on 1 and 2 processes (gloo), manual DDP against torch's "
                        "(experiments/bench_ddp.py)")
    p.add_argument("--json", metavar="PATH", help="write every figure as JSON")
    p.add_argument("--logdir", default="runs", help="TensorBoard root; figures go to LOGDIR/bench/<timestamp>/<impl>")
    p.set_defaults(func=run)


# -- the models and their steps ------------------------------------------------------------

def spec_kind(sizes):
    """'mlp' (a tuple of layer sizes), 'norm' ({"norm", "sizes"}), 'cnn' ({"cnn"}) or 'gpt' (GPTConfig fields)."""
    if not isinstance(sizes, dict):
        return "mlp"
    return "norm" if "norm" in sizes else "cnn" if "cnn" in sizes else "gpt"


def build(sizes, dtype, device=None, seed=0):
    """A manual ReLU MLP (or a CNN spec's network), its loss and SGD; same weights for the same seed on any backend."""
    import manual

    norm = None
    if spec_kind(sizes) == "norm":
        norm, sizes = sizes["norm"], sizes["sizes"]
    elif spec_kind(sizes) == "cnn":
        return build_cnn(sizes, dtype, device, seed)

    manual.init.manual_seed(seed)
    nn = manual.nn
    model = nn.mlp(sizes, norm={None: None, "batch": nn.BatchNorm1d, "layer": nn.LayerNorm}[norm], device=device,
                   dtype=dtype)
    crit = nn.MSELoss() if sizes[-1] == 1 else nn.CrossEntropyLoss()
    return model, crit, manual.optim.SGD(model.parameters(), lr=LR)


def data(sizes, batch, seed=1):
    rng = np.random.default_rng(seed)
    if spec_kind(sizes) == "norm":
        sizes = sizes["sizes"]
    if spec_kind(sizes) == "cnn":  # images and class indices
        return rng.standard_normal((batch,) + CNN_INPUT[sizes["cnn"]]), rng.integers(0, 10, batch)
    x = rng.standard_normal((batch, sizes[0]))
    y = rng.standard_normal((batch, 1)) if sizes[-1] == 1 else rng.integers(0, sizes[-1], batch)
    return x, y


CNN_INPUT = {"digits": (1, 8, 8), "lenet": (1, 28, 28)}  # (C, H, W) of one image


def build_cnn(spec, dtype, device=None, seed=0):
    """The CNN of a {"cnn": name} spec, its loss and SGD: "digits" is experiments.cnn's network, "lenet"
    LeNet-5's layout with ReLU and max pooling (conv 5x5 6, pool, conv 5x5 16, pool, 120, 84, 10)."""
    import manual

    manual.init.manual_seed(seed)
    nn = manual.nn
    if spec["cnn"] == "digits":
        from .cnn import Config, build_cnn as digits_cnn

        model = digits_cnn(Config())
    else:
        model = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),  # (6, 14, 14)
                              nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),  # (400,)
                              nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))
    model.to(device=device, dtype=dtype)
    return model, nn.CrossEntropyLoss(), manual.optim.SGD(model.parameters(), lr=LR)


def cnn_flops(spec, batch):
    """6 multiply-adds per weight use, as step_flops counts a Linear: a convolution uses each weight
    OH*OW times per image (forward 2, input gradient 2, weight gradient 2)."""
    import manual

    model, _, _ = build_cnn(spec, "float32")
    x = np.zeros((1,) + CNN_INPUT[spec["cnn"]], dtype=np.float32)
    total = 0
    with manual.no_grad():
        for m in model:
            y = m(x)
            if type(m).__name__ in ("Conv2d", "Linear"):
                total += 6 * m.weight.data.size * int(np.prod(y.shape[2:]))  # Linear: y.shape[2:] is ()
            x = y
    return total * batch


def make_steps(sizes, batch, dtype, device, only=None):
    """impl -> (step(), params()) closures, all starting from the same weights and batch."""
    from manual import _backend as B
    from torch_ref import to_torch, twin, twin_loss, twin_optimizer

    if spec_kind(sizes) == "gpt":
        return make_gpt_steps(sizes, batch, dtype, device, only)
    x, y = data(sizes, batch)
    steps = {}

    def manual_step(device_):
        model, crit, opt = build(sizes, dtype, device_)
        xm = B.place(x, device_, dtype)
        ym = B.place(y, device_, dtype) if y.dtype.kind == "f" else (
            y if device_ is None else torch.as_tensor(y, device=device_))

        def step():
            opt.zero_grad()
            loss = crit(model(xm), ym)
            model.backward(crit.backward(), input_grad=False)
            opt.step()
            return loss

        return step, lambda: {n: B.to_numpy(p.data) for n, p in model.named_parameters()}

    def autograd_step(tdev):
        model, crit, opt = build(sizes, dtype)
        tmodel, tcrit = twin(model, device=tdev), twin_loss(crit, device=tdev)
        topt = twin_optimizer(opt, tmodel.parameters())
        xt = to_torch(x, device=tdev, dtype=dtype)
        yt = to_torch(y, device=tdev, dtype=dtype) if y.dtype.kind == "f" else torch.as_tensor(y, device=tdev)

        def step():
            topt.zero_grad()
            loss = tcrit(tmodel(xt), yt)
            loss.backward()
            topt.step()
            return loss.detach()

        return step, lambda: {n: p.detach().cpu().numpy() for n, p in tmodel.named_parameters()}

    makers = {"manual-numpy": lambda: manual_step(None), "manual-torch": lambda: manual_step("cpu"),
              "autograd": lambda: autograd_step("cpu")} if device == "cpu" else {
        "manual-torch-cuda": lambda: manual_step("cuda"), "autograd-cuda": lambda: autograd_step("cuda")}
    for name, make in makers.items():
        if only is None or name == only:
            steps[name] = make()
    return steps


def make_gpt_steps(spec, batch, dtype, device, only=None):
    """make_steps for a GPT: token ids (batch, block_size) in, cross-entropy on every next token, SGD."""
    import manual
    from manual import _backend as B
    from torch_ref import twin

    V, T = spec["vocab_size"], spec["block_size"]
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, V, (batch, T)), rng.integers(0, V, (batch, T))

    def build_gpt(device_):
        manual.init.manual_seed(0)
        model = manual.nn.GPT(manual.nn.GPTConfig(**spec), device=device_, dtype=dtype)
        return model, manual.nn.CrossEntropyLoss(), manual.optim.SGD(model.parameters(), lr=LR)

    def manual_step(device_):
        model, crit, opt = build_gpt(device_)
        xm, ym = B.place_raw(x, device_), B.place_raw(y.reshape(-1), device_)
        xp = B.namespace(xm)

        def step():
            opt.zero_grad()
            logits = model(xm)  # (B, T, V)
            loss = crit(xp.reshape(logits, (-1, V)), ym)
            model.backward(xp.reshape(crit.backward(), logits.shape))
            opt.step()
            return loss

        return step, lambda: {n: B.to_numpy(p.data) for n, p in model.named_parameters()}

    def autograd_step(tdev):
        model, _, _ = build_gpt(None)
        tmodel = twin(model, device=tdev)
        tcrit, topt = torch.nn.CrossEntropyLoss(), torch.optim.SGD(tmodel.parameters(), lr=LR)
        xt, yt = torch.as_tensor(x, device=tdev), torch.as_tensor(y.reshape(-1), device=tdev)

        def step():
            topt.zero_grad()
            loss = tcrit(tmodel(xt).reshape(-1, V), yt)
            loss.backward()
            topt.step()
            return loss.detach()

        return step, lambda: {n: p.detach().cpu().numpy() for n, p in tmodel.named_parameters()}

    makers = {"manual-numpy": lambda: manual_step(None), "manual-torch": lambda: manual_step("cpu"),
              "autograd": lambda: autograd_step("cpu")} if device == "cpu" else {
        "manual-torch-cuda": lambda: manual_step("cuda"), "autograd-cuda": lambda: autograd_step("cuda")}
    return {name: make() for name, make in makers.items() if only is None or name == only}


FLOOR = "numpy-floor"  # timed beside the rows, reported under the table (not a row of its own)


def numpy_floor_step(sizes, batch, dtype):
    """(step(), params()): the same ReLU-MLP step as manual-numpy's (same weights, data, loss and SGD), written
    as straight-line NumPy: no modules, no checks, no saved-tensor bookkeeping. What any hand-written step on
    NumPy costs at least, so a goal below it is out of reach of NumPy itself, not of this code."""
    model, _, _ = build(sizes, dtype)
    Ws = [np.array(p.data) for n, p in model.named_parameters() if n.endswith("weight")]
    bs = [np.array(p.data) for n, p in model.named_parameters() if n.endswith("bias")]
    names = [n for n, _ in model.named_parameters()]
    x, y = data(sizes, batch)
    x = x.astype(dtype)
    mse = sizes[-1] == 1
    y = y.astype(dtype) if mse else y
    rows = np.arange(batch)

    def step():
        a, saved = x, []
        for W, b in zip(Ws[:-1], bs[:-1]):
            z = a @ W.T
            z += b
            saved.append((a, z))
            a = np.maximum(z, 0)
        out = a @ Ws[-1].T
        out += bs[-1]
        if mse:  # mean((out - y)^2), d/dout = 2 (out - y) / n
            g = out - y
            loss = float(np.mean(g * g))
            g *= 2.0 / g.size
        else:  # mean cross-entropy of logits, d/dout = (softmax - onehot) / N
            g = np.exp(out - out.max(1, keepdims=True))
            g /= g.sum(1, keepdims=True)
            loss = float(-np.mean(np.log(g[rows, y])))
            g[rows, y] -= 1.0
            g /= batch
        grads = [(g.T @ a, g.sum(0))]
        for i in range(len(saved) - 1, -1, -1):
            g = g @ Ws[i + 1]
            g *= saved[i][1] > 0
            grads.append((g.T @ saved[i][0], g.sum(0)))
        for (gw, gb), W, b in zip(reversed(grads), Ws, bs):
            W -= LR * gw
            b -= LR * gb
        return loss

    return step, lambda: dict(zip(names, (v for pair in zip(Ws, bs) for v in pair)))


TORCH_FLOOR = "torch-floor"  # timed beside the rows, reported under the table (not a row of its own)


def torch_floor_step(sizes, batch, dtype):
    """(step(), params()): the same ReLU-MLP step as manual-torch's (same weights, data, loss and SGD), written as
    straight-line torch ops on CPU tensors with autograd off: addmm per layer, relu, the loss's gradient by hand,
    the backward's matrix multiplies, threshold_backward, and SGD as torch.optim.SGD's own in-place
    sub_(g, alpha=lr). No modules, no checks, no saved-tensor bookkeeping: what any hand-written step on torch
    tensors costs at least, so a goal below it is out of reach of torch's ops themselves, not of this code."""
    model, _, _ = build(sizes, dtype)
    params = [(n, torch.tensor(np.array(p.data))) for n, p in model.named_parameters()]
    Ws = [t for n, t in params if n.endswith("weight")]
    bs = [t for n, t in params if n.endswith("bias")]
    x, y = data(sizes, batch)
    x = torch.from_numpy(x.astype(dtype))
    mse = sizes[-1] == 1
    y = torch.from_numpy(y.astype(dtype) if mse else y.astype(np.int64))
    rows = torch.arange(batch)

    @torch.no_grad()
    def step():
        a, saved = x, []
        for W, b in zip(Ws[:-1], bs[:-1]):
            z = torch.addmm(b, a, W.T)
            saved.append((a, z))
            a = torch.relu(z)
        out = torch.addmm(bs[-1], a, Ws[-1].T)
        if mse:  # mean((out - y)^2), d/dout = 2 (out - y) / n
            g = out - y
            loss = torch.mean(g * g)
            g.mul_(2.0 / g.numel())
        else:  # mean cross-entropy of logits, d/dout = (softmax - onehot) / N
            g = torch.softmax(out, 1)
            loss = -torch.mean(torch.log(g[rows, y]))
            g[rows, y] -= 1.0
            g.div_(batch)
        grads = [(g.T @ a, g.sum(0))]
        for i in range(len(saved) - 1, -1, -1):
            g = torch.ops.aten.threshold_backward(g @ Ws[i + 1], saved[i][1], 0)
            grads.append((g.T @ saved[i][0], g.sum(0)))
        for (gw, gb), W, b in zip(reversed(grads), Ws, bs):
            W.sub_(gw, alpha=LR)
            b.sub_(gb, alpha=LR)
        return loss

    return step, lambda: {n: t.numpy() for n, t in params}


MATMULS = "torch-matmuls"  # timed beside the rows, reported under the table (not a row of its own)
UNFUSED = "autograd-unfused"  # likewise, for the GPT rows
CONVS = "torch-convs"  # likewise, for the CNN rows
# reference step -> (the row it stands beside, its fields' prefix in that row, its column label, what it is)
FLOORS = {
    FLOOR: ("manual-numpy", "numpy_floor", "floor", "the floor under manual-numpy: the same step as straight-line "
                                                    "NumPy (no modules,\n  no checks; bench.numpy_floor_step)"),
    TORCH_FLOOR: ("manual-torch", "torch_floor", "floor", "the floor under manual-torch: the same step as straight-line "
                                                          "torch ops (no modules,\n  no checks, autograd off; "
                                                          "bench.torch_floor_step)"),
    MATMULS: ("manual-torch", "torch_matmuls", "matmuls", "the floor under the floor: the step's matrix multiplies "
                                                          "alone on torch tensors\n  (no other op; "
                                                          "bench.torch_matmul_step)"),
    UNFUSED: ("manual-torch", "autograd_unfused", "unfused", "beside manual-torch: torch autograd on the same model with "
                                                             "its norms (and the GPT's\n  GELU and attention) written "
                                                             "as the elementary torch ops manual runs, not\n  torch's "
                                                             "fused kernels (bench.unfused_norm_step, unfused_gpt_step)"),
    CONVS: ("manual-torch", "torch_convs", "convs", "inside manual-torch: its convolution layers alone, forward and "
                                                    "backward (im2col,\n  matmuls, col2im; no pooling, activation, "
                                                    "Linear or loss;\n  bench.torch_conv_step)"),
}


def _composed_norm(h, m):
    """torch.nn.LayerNorm / BatchNorm1d (training) as elementary autograd ops, as manual's forward computes
    them: mean, centred values, biased variance, (x - mu) / sqrt(var + eps) * w + b; batch norm also updates
    its running statistics (unbiased variance) in place, as the fused kernel does."""
    dim = -1 if isinstance(m, torch.nn.LayerNorm) else 0
    mu = h.mean(dim, keepdim=True)
    hc = h - mu
    var = (hc * hc).mean(dim, keepdim=True)
    if isinstance(m, torch.nn.BatchNorm1d):
        with torch.no_grad():
            n = h.shape[0]
            m.running_mean.mul_(1 - m.momentum).add_(m.momentum * mu.reshape(-1))
            m.running_var.mul_(1 - m.momentum).add_(m.momentum * var.reshape(-1) * (n / (n - 1)))
            m.num_batches_tracked += 1
    return hc / torch.sqrt(var + m.eps) * m.weight + m.bias


def unfused_norm_step(spec, batch, dtype):
    """(step(), params()): torch autograd training a `+bn` / `+ln` bench model (the twin's weights, data, loss and
    SGD) with each norm composed of the elementary ops manual's forward runs (_composed_norm) instead of
    torch's fused native_batch_norm / native_layer_norm: autograd's bookkeeping on manual's op set."""
    from torch_ref import to_torch, twin, twin_loss, twin_optimizer

    model, crit, opt = build(spec, dtype)
    tm, tcrit = twin(model), twin_loss(crit)
    topt = twin_optimizer(opt, tm.parameters())
    x, y = data(spec, batch)
    xt, yt = to_torch(x, dtype=dtype), torch.as_tensor(y)
    norms = (torch.nn.LayerNorm, torch.nn.BatchNorm1d)

    def step():
        topt.zero_grad()
        h = xt
        for m in tm:
            h = _composed_norm(h, m) if isinstance(m, norms) else m(h)
        loss = tcrit(h, yt)
        loss.backward()
        topt.step()
        return loss.detach()

    return step, lambda: {n: p.detach().numpy() for n, p in tm.named_parameters()}


def unfused_gpt_step(spec, batch, dtype):
    """(step(), params()): torch autograd training the `gpt` bench model (the twin's weights, data, loss and
    SGD), but with GELU, layer norm and causal attention composed of the elementary ops manual's forward runs
    (erf, mean, matmul, max, exp, sum, ...) instead of torch's fused kernels (aten.gelu, native_layer_norm,
    the CPU flash-attention kernel). Autograd's bookkeeping on manual's op set: where manual-torch is below
    this and above autograd, the difference is the fused kernels, not the hand-written backward."""
    import math

    import manual
    from torch_ref import twin

    V, T = spec["vocab_size"], spec["block_size"]
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, V, (batch, T)), rng.integers(0, V, (batch, T))
    manual.init.manual_seed(0)
    tm = twin(manual.nn.GPT(manual.nn.GPTConfig(**spec), dtype=dtype))
    opt = torch.optim.SGD(tm.parameters(), lr=LR)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y.reshape(-1))
    nh, C = spec["n_head"], spec["n_embd"]
    causal = torch.full((T, T), -math.inf, dtype=getattr(torch, dtype)).triu(1)
    floor = manual._backend._EXP_FLOOR[dtype]

    def ln(h, m):
        mu = h.mean(-1, keepdim=True)
        hc = h - mu
        return hc / torch.sqrt((hc * hc).mean(-1, keepdim=True) + m.eps) * m.weight + m.bias

    def linear(h, m):
        return h @ m.weight.T + m.bias

    def heads(t):
        return t.reshape(batch, T, nh, C // nh).permute(0, 2, 1, 3)

    def forward():
        tr = tm.transformer
        h = tr.wte.weight[xt] + tr.wpe.weight[:T]
        for blk in tr.h:
            q, k, v = (heads(t).contiguous() for t in linear(ln(h, blk.ln_1), blk.attn.c_attn).split(C, dim=-1))
            # manual's ops: scale and mask inside one baddbmm, exp of the shifted scores clamped at the floor
            # (no subnormal or -inf into the exp: manual._backend.exp_causal_), then zero above the diagonal
            s = torch.baddbmm(causal, q.reshape(-1, T, C // nh), k.reshape(-1, T, C // nh).transpose(1, 2),
                              alpha=1.0 / math.sqrt(C // nh)).view(batch, nh, T, T)
            e = (s - s.max(-1, keepdim=True).values).clamp(min=floor).exp().tril()
            a = (e / e.sum(-1, keepdim=True)) @ v
            h = h + linear(a.permute(0, 2, 1, 3).reshape(batch, T, C), blk.attn.c_proj)
            u = linear(ln(h, blk.ln_2), blk.mlp.c_fc)
            h = h + linear(0.5 * u * (1.0 + torch.special.erf(u / math.sqrt(2.0))), blk.mlp.c_proj)
        return ln(h, tr.ln_f) @ tr.wte.weight.T

    def step():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(forward().reshape(-1, V), yt)
        loss.backward()
        opt.step()
        return loss.detach()

    return step, lambda: {n: p.detach().numpy() for n, p in tm.named_parameters()}


def torch_matmul_step(sizes, batch, dtype):
    """Only the matrix multiplies of one MLP step, on torch CPU tensors: per layer a W^T forward and
    g^T a for dW, and g W for every layer's input gradient but the first's (what manual-torch and
    autograd both run). No step can do less; against autograd's whole step it shows how far below
    autograd manual-torch could go on this machine. (Nothing to check: it computes no update.)"""
    gen = torch.Generator().manual_seed(0)
    dt = getattr(torch, dtype)
    Ws = [torch.randn(o, i, generator=gen, dtype=dt) for i, o in zip(sizes[:-1], sizes[1:])]
    acts = [torch.randn(batch, i, generator=gen, dtype=dt) for i in sizes[:-1]]
    gouts = [torch.randn(batch, o, generator=gen, dtype=dt) for o in sizes[1:]]

    def step():
        out = [a @ W.T for a, W in zip(acts, Ws)]
        for k, (a, W, go) in enumerate(zip(acts, Ws, gouts)):
            out.append(go.T @ a)
            if k:
                out.append(go @ W)
        return out[0][0, 0]

    return step, None


def torch_conv_step(spec, batch, dtype):
    """Only the convolution layers of a CNN step, by manual's own kernels on torch CPU tensors: each Conv2d's
    forward (_conv2d) and backward (_conv2d_backward; no input gradient for the first, as in training) on an
    input and upstream gradient of its shape in the step. Against autograd's whole step it shows what the
    im2col convolution alone costs here, whatever the rest of the step does. (Nothing to check: no update.)"""
    import manual
    from manual import _backend as B
    from manual.functional import conv as C

    model, _, _ = build_cnn(spec, dtype, "cpu")
    gen = torch.Generator().manual_seed(0)
    dt = getattr(torch, dtype)
    h = torch.randn((batch,) + CNN_INPUT[spec["cnn"]], generator=gen, dtype=dt)
    layers = []
    with manual.no_grad():
        for m in model:
            if type(m).__name__ == "Conv2d":
                geo = C._conv_geometry("bench", h, m.weight.data, m.bias.data, *m._args(), 2)
                y = m(h)
                layers.append((h, m.weight.data, m.bias.data, geo, torch.randn(tuple(y.shape), generator=gen, dtype=dt),
                               not layers))
                h = y
            else:
                h = m(h)
    xp = B.namespace(h)

    def step():
        out = None
        for x, w, b, geo, g, first in layers:
            out, xq = C._conv2d(x, w, b, geo, xp)
            C._conv2d_backward(g, tuple(x.shape), xq, w, True, geo, xp, input_grad=not first)
        return out

    return step, None


def check_agree(steps, dtype):
    """One step on each implementation: same loss and same updated weights (raises if not)."""
    ref_name = next(n for n in steps if n.startswith("autograd") and n not in FLOORS)
    losses, params = {}, {}
    for name, (step, get) in steps.items():
        out = step()
        losses[name] = float(out.cpu()) if isinstance(out, torch.Tensor) else float(out)
        params[name] = get()
    tol = CHECK_TOL[dtype]
    worst = 0.0
    for name in steps:
        np.testing.assert_allclose(losses[name], losses[ref_name], **tol,
                                   err_msg=f"bench check: {name} loss differs from {ref_name} ({dtype})")
        for k, v in params[ref_name].items():
            np.testing.assert_allclose(params[name][k], v, **tol,
                                       err_msg=f"bench check: {name} updated {k} differs from {ref_name} ({dtype})")
            worst = max(worst, float(np.max(np.abs(params[name][k] - v), initial=0.0)))
    return worst


def _sync(name):
    if name.endswith("cuda"):
        torch.cuda.synchronize()


def time_block(name, step, n):
    _sync(name)
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    _sync(name)
    return (time.perf_counter() - t0) / n


def calibrate(name, step, target_s):
    """Steps per timed block, so that a block lasts about target_s: measured as the blocks are, after the
    settle pause, each estimate the faster of two blocks. (Without the pause a step right after another
    library's block ran beside its still-spinning threads: manual-torch's +bn step, 1.4 ms, took over
    50 ms right after NumPy's, so its blocks were one step long and timed cold: 2.0-2.7 ms.)"""
    time.sleep(SETTLE_S)
    n = 1
    while True:
        t = min(time_block(name, step, n), time_block(name, step, n))
        if t * n >= target_s or n >= 1 << 16:
            return n
        n = max(n * 2, int(target_s / max(t, 1e-7)))


def paired_rounds(steps, rounds, target_s, faults=None):
    """impl -> list of per-step seconds, one per round; the order rotates every round. faults, a dict: gets
    impl -> minor page faults per step over the timed blocks (getrusage; pages the C allocator took from the
    OS again, see keep_freed_memory)."""
    import resource

    names = list(steps)
    for n in names:  # warm-up: caches, allocator, OpenBLAS threads
        for _ in range(3):
            steps[n][0]()
    counts = {n: calibrate(n, steps[n][0], target_s) for n in names}
    times = {n: [] for n in names}
    minflt = {n: 0 for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            time.sleep(SETTLE_S)  # let the previous block's BLAS/OpenMP threads go idle
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            times[n].append(time_block(n, steps[n][0], counts[n]))
            minflt[n] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
    if faults is not None:
        faults.update({n: minflt[n] / (counts[n] * rounds) for n in names})
    return times


def step_flops(sizes, batch):
    """Forward 2BKN + backward 4BKN multiply-adds per Linear (grad input + grad weight). A GPT: nanoGPT's
    6 N + 12 L C T per token (N: block and head weights; the attention's q k^T and P v), B T tokens."""
    kind = spec_kind(sizes)
    if kind == "cnn":
        return cnn_flops(sizes, batch)
    if kind == "norm":  # the Linear layers' flops; the norms' are O(B N), not counted
        sizes = sizes["sizes"]
    elif kind == "gpt":
        L, C, T, V = sizes["n_layer"], sizes["n_embd"], sizes["block_size"], sizes["vocab_size"]
        return (6 * (12 * L * C * C + V * C) + 12 * L * C * T) * batch * T
    return 6 * batch * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


def matmul_peak(n, dtype, rounds=5):
    """Best GFLOP/s over `rounds` n x n matmuls (after 3 warm-ups), NumPy and torch CPU (and CUDA).

    A ceiling, so the best round, not the median: on this shared machine the median of a
    single large matmul came out below what a training step's own matmuls reached."""
    a = np.random.default_rng(0).standard_normal((n, n)).astype(dtype)
    ta = torch.from_numpy(a)
    libs = {"numpy": (a, None), "torch": (ta, None)}
    if torch.cuda.is_available():
        libs["cuda"] = (ta.cuda(), torch.cuda.synchronize)
    out = {}
    for name, (m, sync) in libs.items():
        time.sleep(SETTLE_S)
        ts = []
        for i in range(3 + rounds):
            t0 = time.perf_counter()
            m @ m
            if sync:
                sync()
            if i >= 3:
                ts.append(time.perf_counter() - t0)
        out[name] = 2 * n**3 / min(ts) / 1e9
    return out


def _peak_of(impl):
    return "numpy" if impl == "manual-numpy" else ("cuda" if impl.endswith("cuda") else "torch")


# -- peak memory: a fresh child process per (model, impl) -------------------------------------

def _proc_status_kib(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(key + ":"))


def _warm_spec(sizes):
    """A tiny model of the same kind (same layers, loss and ops, a few units wide): its first step loads what
    any first step of that kind loads once (the kernels' code pages, lazy library state), which is not the
    step's memory. Measured: a 2-4-3 cross-entropy MLP's first step, after a 2-4-1 MSE warm-up, grows the RSS
    by 3.7 MiB on manual-torch and 1.5 MiB on autograd, and its second step by 0.0 on both."""
    kind = spec_kind(sizes)
    if kind == "mlp":
        return (2, 4, 4, 1 if sizes[-1] == 1 else 3), 4
    if kind == "norm":
        return {"norm": sizes["norm"], "sizes": (2, 4, 4, 3)}, 4
    if kind == "cnn":
        return sizes, 2  # the same network on 2 images
    return dict(sizes, n_layer=1, n_head=2, n_embd=8, block_size=min(4, sizes["block_size"])), 2


def _live_peak_numpy(step):
    """Peak growth (bytes) of the memory Python's allocators hand out during step(): NumPy reports every
    array buffer to tracemalloc, so this is the arrays the step holds at once (plus a few KiB of Python
    objects), whatever the C allocator keeps cached."""
    import tracemalloc

    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        step()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


@contextlib.contextmanager
def _quiet_stderr():
    """File descriptor 2 to /dev/null: the profiler's C++ side prints two 'USDT: ... profiler_start/stop' lines
    per use, whatever its log level (the same step has already run unprofiled in this child, so nothing of
    the step's own is hidden; an exception still propagates)."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def _live_peak_torch_cpu(step):
    """Peak growth (bytes) of the tensor storage live during step(): the profiler's record of every CPU
    allocation and free by torch's allocator (profile_memory), summed in time order. None where this torch
    does not expose the raw records."""
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    try:
        events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                        if e.name() == "[memory]" and str(e.device_type()).endswith("CPU"))
    except AttributeError:  # pragma: no cover - a torch without the kineto records
        return None
    now = peak = 0
    for _, nbytes in events:
        now += nbytes
        peak = max(peak, now)
    return peak


def _memory_child(args):
    """(live MiB, RSS MiB) of one training step of `impl` at this size, in this fresh process.

    RSS: the growth of the process's peak resident set over its FIRST step, so no allocator cache from an
    earlier step hides it (None on CUDA). live: the peak growth of the bytes held in arrays / tensors during
    the first step of a second, identical model (the allocations themselves, not what the C allocator
    keeps from the OS: tracemalloc for NumPy, torch's profiler on CPU, max_memory_allocated on CUDA).
    A step of a tiny model first warms thread pools and the autograd engine, then one of a tiny model of
    the same kind (_warm_spec) the kernels that kind of step runs."""
    import gc

    sizes, batch, dtype, impl = args
    device = "cuda" if impl.endswith("cuda") else "cpu"
    warm = make_steps((2, 4, 1), 4, dtype, device, only=impl)[impl][0]
    warm(), warm()
    warm = make_steps(*_warm_spec(sizes), dtype, device, only=impl)[impl][0]
    warm(), warm()
    del warm
    step = make_steps(sizes, batch, dtype, device, only=impl)[impl][0]
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20, None
    base = _proc_status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS mark (VmHWM) to the current RSS
    step()
    rss = (_proc_status_kib("VmHWM") - base) / 1024
    del step
    step = make_steps(sizes, batch, dtype, device, only=impl)[impl][0]  # a first step again, measured live
    gc.collect()
    live = (_live_peak_numpy if impl == "manual-numpy" else _live_peak_torch_cpu)(step)
    return (None if live is None else live / 2**20), rss


def peak_memory_mb(cases):
    """[(sizes, batch, dtype, impl)] -> [(live MiB, RSS MiB)] of a first training step (_memory_child), each
    in a fresh process; (None, None) where Linux's /proc is missing."""
    import multiprocessing as mp

    if not os.path.exists("/proc/self/clear_refs"):
        return [(None, None)] * len(cases)
    # maxtasksperchild=1: every case gets a fresh process, so no allocator cache of an earlier case hides memory
    with mp.get_context("spawn").Pool(min(2, os.cpu_count() or 1), maxtasksperchild=1) as pool:
        return [tuple(None if v is None else round(v, 1) for v in mb)
                for mb in pool.map(_memory_child, cases, chunksize=1)]


# -- the C allocator -------------------------------------------------------------------------
# glibc's malloc hands freed memory back to the OS (it trims the heap's top and unmaps large chunks), so a
# step that frees its temporaries and makes them again may fault their pages in again every step. Counted
# in a fresh process running one model's steps alone (getrusage's minor faults, float32, glibc's defaults):
# gpt-256x4 on NumPy 16,320 a step (64 MiB; 382 ms a step against 344 ms without them), LeNet 1,967 on
# NumPy and 1,059 on torch tensors, autograd 2,438 on gpt-256x4 and 731 on the large MLP. Inside bench
# much less (gpt-sort on NumPy: 0.1 a step), because glibc's thresholds grow with the largest block freed
# so far (the matmul ceiling's 16 MiB arrays, freed first): the figures depended on what ran before. A
# caching allocator (jemalloc or tcmalloc, which PyTorch's CPU performance notes suggest) keeps freed
# memory; mallopt makes glibc do the same from the start. Applied to the whole bench process, so every
# implementation gets the same allocator; each row's JSON has its minor_faults_per_step.
MALLOC_KEEP = {"M_TRIM_THRESHOLD": (-1, 2**31 - 1), "M_MMAP_THRESHOLD": (-3, 32 << 20)}  # (param, value)
MALLOC_ENV = {"MALLOC_TRIM_THRESHOLD_": str(2**31 - 1), "MALLOC_MMAP_THRESHOLD_": str(32 << 20)}


def keep_freed_memory():
    """Make this process's glibc malloc keep freed memory for reuse (no trimming of the heap's top; mmap only
    for blocks over 32 MiB), and children started after it through MALLOC_ENV. True when applied; False
    where the C library has no mallopt (not glibc)."""
    import ctypes
    import ctypes.util

    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    if not all(mallopt(param, value) == 1 for param, value in MALLOC_KEEP.values()):
        return False
    os.environ.update(MALLOC_ENV)
    return True


# -- machine facts -------------------------------------------------------------------------

def machine_info():
    import threadpoolctl

    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        cpu = next((l.split(":", 1)[1].strip() for l in text.splitlines() if l.startswith("model name")), cpu)
        flags = next((l for l in text.splitlines() if l.startswith("flags")), "")
        simd = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f" {f}" in flags]
    except OSError:
        simd = []
    blas = [
        {k: d.get(k) for k in ("internal_api", "version", "num_threads", "architecture", "threading_layer")}
        for d in threadpoolctl.threadpool_info()
    ]
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "simd": simd,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numpy_blas": blas,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_blas": "BLAS " + (re.search(r"BLAS_INFO=(\w+)", torch.__config__.show()) or [None, "?"])[1],
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        # thread counts, and glibc malloc's settings (MALLOC_TRIM_THRESHOLD_ etc.: whether freed memory goes
        # back to the OS, so that the next step's fresh arrays fault their pages in again)
        "env": {k: os.environ[k] for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_CORETYPE",
                                         "MKL_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_",
                                         "MALLOC_TOP_PAD_", "MALLOC_ARENA_MAX", "LD_PRELOAD") if k in os.environ},
    }
    return info


# -- the command -----------------------------------------------------------------------------

def run(args):
    from tqdm.auto import tqdm

    quick = args.quick
    rounds = args.rounds or (3 if quick else 7)
    target_s = 0.02 if quick else 0.05
    dtypes = ["float32", "float64"] if args.dtype == "all" else [args.dtype]
    devices = [] if args.device == "cuda" else ["cpu"]
    if args.device in ("auto", "cuda") and torch.cuda.is_available():
        devices.append("cuda")
    elif args.device == "cuda":
        args._parser.error("--device cuda: torch sees no CUDA GPU (torch.cuda.is_available() is False); "
                           "--device cpu or auto gives the CPU rows")
    models = [m for m in MODELS if m[0] in args.models] if args.models else \
        [m for m in MODELS if not (quick and m[0] in QUICK_SKIP)]

    np.ones((2, 2)) @ np.ones((2, 2))  # load BLAS so threadpoolctl can see it
    info = machine_info()
    kept = args.malloc == "keep" and keep_freed_memory()
    info["malloc"] = ("freed memory kept (mallopt: " + ", ".join(f"{k} {v[1]}" for k, v in MALLOC_KEEP.items()) + ")"
                      if kept else "glibc's defaults" if args.malloc == "default" else "keep unavailable: defaults")
    print_machine(info)

    n_peak = 1024 if quick else 2048
    peaks = {dt: matmul_peak(n_peak, dt, rounds=3 if quick else 7) for dt in dtypes}
    print("\n" + ceiling_line(n_peak, 3 if quick else 7, peaks))

    rows, scaling, dp, status, code = [], [], [], "ok", 0
    try:
        work = [(m, dt, dev) for m in models for dt in dtypes for dev in devices]
        for (name, sizes, batch), dtype, device in tqdm(work, desc="bench", leave=False, disable=None):
            rows += bench_model(name, sizes, batch, dtype, device, rounds, target_s, peaks)
        if not args.no_memory:  # every row: one fresh child process per (model, dtype, impl)
            spec = {m[0]: m[1] for m in models}
            cases = [(spec[r["model"]], r["batch"], r["dtype"], r["impl"]) for r in rows]
            for r, (live, rss) in zip(rows, peak_memory_mb(cases)):
                r["peak_live_mb"], r["peak_rss_mb"] = live, rss
        print_table(rows)
        scaling = measure_scaling(devices, quick, target_s)
        print_scaling(scaling)
        if args.data_parallel:
            from . import bench_ddp

            dp = bench_ddp.measure("float64" if args.dtype == "float64" else "float32", rounds=rounds)
            bench_ddp.print_rows(dp, _print_rows)
    except KeyboardInterrupt as e:  # keep what was measured: table, JSON and TensorBoard of the rows so far
        status, code = "interrupted", getattr(e, "exit_code", 130)  # signals.Stop: 130 Ctrl-C, 143 SIGTERM
        print(f"\ninterrupted ({getattr(e, 'name', 'SIGINT')}): {len(rows)} rows measured so far", file=sys.stderr)
        print_table(rows)
    out = {"status": status, "machine": info, "matmul_peak_gflops": peaks, "rows": rows, "scaling": scaling,
           "data_parallel": dp,
           "protocol": {"rounds": rounds, "block_target_s": target_s, "settle_s": SETTLE_S}}
    logdir = log_tensorboard(args.logdir, out)
    print(tensorboard_line(logdir))
    if args.json:  # atomically, inf/nan as strings (runner.write_json); a failed write is exit 74 (a stop's code wins)
        from .runner import EXIT_WRITE_FAILED, write_json

        if not write_json(args.json, out) and code == 0:
            code = EXIT_WRITE_FAILED
    return code


def ceiling_line(n, rounds, peaks):
    """The matmul ceiling, wrapped at 100 columns (with both dtypes it was 111)."""
    import textwrap

    text = f"matmul ceiling (n={n}, best of {rounds} rounds, GFLOP/s): " + "; ".join(
        f"{dt}: " + ", ".join(f"{k} {v:.0f}" for k, v in p.items()) for dt, p in peaks.items())
    return "\n".join(textwrap.wrap(text, 100, subsequent_indent="  ", break_on_hyphens=False))


def tensorboard_line(logdir):
    """How to look at the bench's logs, with the venv's own TensorBoard (a bare `tensorboard` is not on the PATH
    when the venv is not activated, as in README's `.venv/bin/backprop-lab`)."""
    from shlex import quote

    from .runner import venv_command

    return f"\nTensorBoard: {venv_command('tensorboard', 'tensorboard.main')} --logdir {quote(logdir)}"


def bench_model(name, sizes, batch, dtype, device, rounds, target_s, peaks):
    """Check agreement, then time paired rounds: one table row per implementation."""
    steps = make_steps(sizes, batch, dtype, device)
    if device == "cpu" and spec_kind(sizes) == "mlp":
        steps[FLOOR] = numpy_floor_step(sizes, batch, dtype)
        steps[TORCH_FLOOR] = torch_floor_step(sizes, batch, dtype)
    if device == "cpu" and spec_kind(sizes) in ("gpt", "norm"):
        steps[UNFUSED] = (unfused_gpt_step if spec_kind(sizes) == "gpt" else unfused_norm_step)(sizes, batch, dtype)
    err = check_agree(steps, dtype)  # the floors that compute the step are checked with the rows
    if device == "cpu" and spec_kind(sizes) == "mlp":
        steps[MATMULS] = torch_matmul_step(sizes, batch, dtype)
    if device == "cpu" and spec_kind(sizes) == "cnn":
        steps[CONVS] = torch_conv_step(sizes, batch, dtype)
    faults = {}
    times = paired_rounds(steps, rounds, target_s, faults)
    ref = next(n for n in steps if n.startswith("autograd") and n not in FLOORS)
    floors = [(impl, key, times.pop(name)) for name, (impl, key, *_) in FLOORS.items() if name in times]
    flops = step_flops(sizes, batch)
    rows = []
    for impl, ts in times.items():
        med = statistics.median(ts)
        gflops = flops / med / 1e9
        rows.append({
            "model": name, "batch": batch, "dtype": dtype, "device": device, "impl": impl,
            "median_ms": med * 1e3, "ratio_vs_autograd": statistics.median(t / r for t, r in zip(ts, times[ref])),
            "rounds": len(ts), "gflops": gflops, "peak_fraction": gflops / peaks[dtype][_peak_of(impl)],
            "check_max_abs_diff": err, "minor_faults_per_step": round(faults[impl], 1),
        })
        for fimpl, key, fts in floors:  # what the library alone needs for this step, beside the row it bounds
            if fimpl == impl:
                rows[-1].update({f"{key}_ms": statistics.median(fts) * 1e3,
                                 f"{key}_ratio": statistics.median(f / r for f, r in zip(fts, times[ref]))})
    return rows


def measure_scaling(devices, quick, target_s):
    """float32 step time as batch grows (64-256-256-10) and as width grows (64-w-w-10, batch 256)."""
    batches = [16, 256, 2048] if quick else [16, 64, 256, 1024, 4096]
    widths = [64, 512] if quick else [64, 128, 256, 512, 1024]
    cases = [("batch", b, (64, 256, 256, 10), b) for b in batches]
    cases += [("width", w, (64, w, w, 10), 256) for w in widths]
    out = []
    for axis, value, sizes, batch in cases:
        for device in devices:
            steps = make_steps(sizes, batch, "float32", device)
            times = paired_rounds(steps, 3, target_s / 2)
            for impl, ts in times.items():
                out.append({"axis": axis, "value": value, "device": device, "impl": impl,
                            "median_ms": statistics.median(ts) * 1e3,
                            "gflops": step_flops(sizes, batch) / statistics.median(ts) / 1e9})
    return out


def print_machine(info):
    blas = "; ".join(f"{b['internal_api']} {b['version']} {b.get('architecture') or ''} x{b['num_threads']}"
                     for b in info["numpy_blas"]) or "?"
    import textwrap

    lines = [f"machine: {info['cpu']}, {info['cores']} cores, SIMD {'/'.join(info['simd']) or '-'}"
             + (f", GPU {info['cuda']}" if info["cuda"] else ", no GPU"),
             f"numpy {info['numpy']} (BLAS: {blas}); torch {info['torch']} ({info['torch_threads']} threads, "
             f"{info['torch_blas']}); python {info['python']}" + (f"; env {info['env']}" if info["env"] else "")]
    if info.get("malloc"):
        lines.append(f"malloc: {info['malloc']}")
    for line in lines:  # within 100 columns, as every table below
        print("\n".join(textwrap.wrap(line, 100, subsequent_indent="  ", break_on_hyphens=False)))


def print_table(rows):
    # within 100 columns: the device is in the impl's name (manual-torch-cuda, autograd-cuda), not a column
    hdr = ("model", "batch", "dtype", "impl", "ms", "vs autograd", "GFLOP/s", "% peak", "live", "RSS")
    lines = [hdr]
    for r in rows:
        lines.append((r["model"], str(r["batch"]), r["dtype"], r["impl"], f"{r['median_ms']:.4g}",
                      f"{r['ratio_vs_autograd']:.2f}x", f"{r['gflops']:.3g}", f"{100 * r['peak_fraction']:.1f}",
                      *("-" if r.get(k) is None else f"{r[k]:.1f}" for k in ("peak_live_mb", "peak_rss_mb"))))
    _print_rows(lines)
    print("impl: on the CPU, or on the GPU where it ends in -cuda. ms: median time of one step. vs autograd:\n"
          "  this row's step time / torch autograd's on the same model (lower is faster; 1.00x = as fast).\n"
          "  % peak: GFLOP/s over the machine's measured matmul ceiling. live: peak memory in MiB, the most\n"
          "  bytes the first step holds at once in arrays / tensors beyond the model and data (tracemalloc\n"
          "  for NumPy, torch's profiler on CPU, max_memory_allocated on CUDA). RSS: the growth in MiB of a\n"
          "  fresh process's peak resident memory over that step (what the C allocator takes from the OS;\n"
          "  CPU only). Lower is better; '-' with --no-memory.")
    for impl, key, label, title in FLOORS.values():
        below = [r for r in rows if r.get(f"{key}_ms") is not None]
        if below:
            print(f"\n{title}, timed in the same rounds:")
            _print_rows([("model", "dtype", f"{label} ms", f"{label} vs autograd", f"{impl} vs autograd")] + [
                (r["model"], r["dtype"], f"{r[key + '_ms']:.4g}", f"{r[key + '_ratio']:.2f}x",
                 f"{r['ratio_vs_autograd']:.2f}x") for r in below])


def print_scaling(scaling):
    print("\nscaling (float32, median ms per step): batch b is 64-256-256-10 on b examples,\n"
          "  width w is 64-w-w-10 on 256 examples")
    impls = list(dict.fromkeys(s["impl"] for s in scaling))
    lines = [("size", *impls)]  # within 100 columns with the CUDA columns too
    keys = list(dict.fromkeys((s["axis"], s["value"]) for s in scaling))
    for axis, value in keys:
        cells = {s["impl"]: s for s in scaling if s["axis"] == axis and s["value"] == value}
        lines.append((f"{axis} {value}", *[f"{cells[i]['median_ms']:.3g}" if i in cells else "-" for i in impls]))
    _print_rows(lines)


def _print_rows(lines):
    print()
    widths = [max(len(str(l[i])) for l in lines) for i in range(len(lines[0]))]
    for j, l in enumerate(lines):
        print("  ".join(str(c).ljust(w) for c, w in zip(l, widths)).rstrip())
        if j == 0:
            print("  ".join("-" * w for w in widths))


def log_tensorboard(logroot, out):
    from torch.utils.tensorboard import SummaryWriter

    from ._lab import make_run_dir

    # never an earlier run's folder, not even one made in the same second (os.mkdir is atomic)
    root = make_run_dir(os.path.join(logroot, "bench"), _dt.datetime.now().strftime("%Y%m%d-%H%M%S"))
    writers = {}
    for r in out["rows"]:
        w = writers.setdefault(r["impl"], SummaryWriter(os.path.join(root, r["impl"])))
        key = f"{r['model']}/{r['dtype']}/{r['device']}"
        w.add_scalar(f"step_ms/{key}", r["median_ms"], 0)
        w.add_scalar(f"ratio_vs_autograd/{key}", r["ratio_vs_autograd"], 0)
        w.add_scalar(f"peak_fraction/{key}", r["peak_fraction"], 0)
        for k in ("peak_live_mb", "peak_rss_mb"):
            if r.get(k) is not None:
                w.add_scalar(f"{k[:-3]}_mib/{key}", r[k], 0)
    for s in out["scaling"]:
        w = writers.setdefault(s["impl"], SummaryWriter(os.path.join(root, s["impl"])))
        w.add_scalar(f"scaling_{s['axis']}/step_ms_{s['device']}", s["median_ms"], s["value"])
    for d in out.get("data_parallel", []):  # x axis: the number of ranks
        w = writers.setdefault(d["impl"], SummaryWriter(os.path.join(root, d["impl"])))
        w.add_scalar("data_parallel/step_ms", d["median_ms"], d["ranks"])
        w.add_scalar("data_parallel/efficiency", d["efficiency"], d["ranks"])
    if not writers:  # interrupted before the first row: still leave the machine and the status
        writers["machine"] = SummaryWriter(os.path.join(root, "machine"))
    for w in writers.values():
        w.add_text("status", out.get("status", "ok"), 0)
        w.add_text("machine", "```\n" + json.dumps(out["machine"], indent=1) + "\n```", 0)
        w.flush()
        w.close()
    from ._lab import write_outcome  # so that `backprop-lab runs` lists it as ok / interrupted, not as unknown

    write_outcome(root, "bench", {"status": out.get("status", "ok"), "config": out.get("protocol", {}), "claims": []})
    return root
