"""A GPT by hand: nanoGPT's model with every backward written out (twin: torch_ref.gpt).

Token and position embeddings, pre-norm blocks (x + attn(ln_1(x)), then x + mlp(ln_2(x))),
a final LayerNorm and a language-model head whose weight is the token table's (tied). The
parameter names are GPT-2's, so `state_dict()` keys equal the torch twin's (and nanoGPT's):

    transformer.wte.weight  transformer.wpe.weight  transformer.h.<i>.ln_1.weight ...
    transformer.h.<i>.attn.c_attn.weight  .attn.c_proj  .ln_2  .mlp.c_fc  .mlp.c_proj
    transformer.ln_f.weight  lm_head.weight (the same Parameter as transformer.wte.weight)

The tied weight's gradient is the sum of both uses: lm_head's Linear.backward and wte's
embedding backward accumulate into one Parameter.grad, as autograd does.

    logits = model(idx)                                   # idx (B, T) ints -> (B, T, vocab)
    loss = criterion(logits.reshape(-1, V), targets.reshape(-1))
    model.backward(xp.reshape(criterion.backward(), logits.shape))
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass

import numpy as np

from . import _backend as B
from . import init as I
from .functional.attention import _backward as _attention_backward
from .functional.attention import _weights, _weights_again
from .functional.regularization import _keep_scale, dropout_mask
from .layers import Dropout, Embedding, LayerNorm
from .nn import GELU, Linear, Module


@dataclass
class GPTConfig:
    block_size: int = 16  # longest sequence: rows of the position table wpe
    vocab_size: int = 16  # number of token ids: rows of wte, outputs of lm_head
    n_layer: int = 2  # transformer blocks
    n_head: int = 2  # attention heads per block; n_embd must divide by it
    n_embd: int = 32  # width of the residual stream
    dropout: float = 0.0  # dropout probability on embeddings, attention weights and residual branches
    bias: bool = True  # biases in the Linear layers and LayerNorms (GPT-2: True)

    def __post_init__(self):
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
                raise ValueError(f"GPTConfig: expected {name} to be a positive int, got {v!r}")
            setattr(self, name, int(v))  # a NumPy integer too, kept as a Python int (asdict, JSON)
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig: expected n_embd divisible by n_head, got n_embd={self.n_embd}, "
                             f"n_head={self.n_head}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, numbers.Real):
            raise TypeError(f"GPTConfig: expected dropout to be a real number in [0, 1), got "
                            f"{type(self.dropout).__name__} {self.dropout!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig: expected dropout in [0, 1), got {self.dropout!r}")
        if not isinstance(self.bias, (bool, np.bool_)):  # "no" would be truthy: biases the user did not ask for
            raise TypeError(f"GPTConfig: expected bias to be True or False, got {type(self.bias).__name__} {self.bias!r}")
        self.bias = bool(self.bias)


class ModuleDict(Module):
    """Children by name (torch.nn.ModuleDict): a container, no forward of its own."""

    def __init__(self, modules):
        super().__init__()
        for name, m in modules.items():
            setattr(self, name, m)


class ModuleList(Module):
    """Children named "0", "1", ... (torch.nn.ModuleList)."""

    def __init__(self, modules):
        super().__init__()
        for i, m in enumerate(modules):
            setattr(self, str(i), m)

    def __iter__(self):
        return iter(self._modules.values())

    def __len__(self):
        return len(self._modules)

    def __getitem__(self, i):
        return list(self._modules.values())[i]


# -- the GPT -------------------------------------------------------------------------------------

class CausalAttention(Module):
    """The parameter-free core of the attention block: packed q, k, v (B, T, 3C) -> heads (B, nh, T, hs) ->
    softmax(q k^T / sqrt(hs) + causal mask) v -> (B, T, C). A leaf of its own, so `verify` can name it."""

    def __init__(self, n_head, n_embd, dropout=0.0, generator=None):
        super().__init__()
        self.n_head, self.n_embd, self.dropout, self.generator = n_head, n_embd, dropout, generator
        self.record_attention = False  # True: forward keeps its softmax weights in .attention (for plots)
        self.attention = None

    def _heads(self, xp, t, B_, T):  # (B, T, C) -> (B, nh, T, hs)
        return xp.permute_dims(xp.reshape(t, (B_, T, self.n_head, self.n_embd // self.n_head)), (0, 2, 1, 3))

    def _merge(self, xp, t, B_, T):  # (B, nh, T, hs) -> (B, T, C)
        return xp.reshape(xp.permute_dims(t, (0, 2, 1, 3)), (B_, T, self.n_embd))

    def forward(self, qkv):
        xp = B.namespace(qkv)
        B_, T, C3 = qkv.shape
        C = self.n_embd
        if C3 != 3 * C:
            raise ValueError(f"{self!r}: expected packed q, k, v of shape (B, T, {3 * C}), got {tuple(qkv.shape)}")
        # (B, T, 3C) -> (3, B, nh, T, hs) in one copy: q, k, v each contiguous, so no batched matmul below
        # (forward's and backward's) has to copy a strided operand first, as torch's would
        nh = self.n_head
        heads = B.bmm_operand(xp.permute_dims(xp.reshape(qkv, (B_, T, 3, nh, C // nh)), (2, 0, 3, 1, 4)))
        q, k, v = heads[0], heads[1], heads[2]  # (B, nh, T, hs)
        stats = []
        p = _weights(xp, q, k, None, True, 1.0 / math.sqrt(C // self.n_head), stats)  # (B, nh, T, T), causal
        if self.record_attention:
            self.attention = p
        d = None
        if self.training and self.dropout > 0.0:
            gen = I.default_generator() if self.generator is None else self.generator
            d = _keep_scale(xp, dropout_mask(p, self.dropout, generator=gen), self.dropout, p)
            self._save(_d=d)
        self._dropout_used = d is not None
        # backward rebuilds P from its row max and sum (B, nh, T, 1) instead of keeping the (B, nh, T, T)
        # weights: one q k^T and one exp more, T/2 times less memory (flash attention's trade, torch's too)
        self._save(_q=q, _k=k, _v=v, _m=stats[0], _z=stats[1])
        y = self._merge(xp, xp.matmul(p if d is None else p * d, v), B_, T)  # (B, nh, T, T) @ (B, nh, T, hs)
        self._save(_y=y)  # for backward's rowsum(dO * O); the same array c_proj keeps as its input: no memory
        return y

    def backward(self, grad_output, *, input_grad=True):
        """dq, dk, dv by the attention kernel's backward (manual.functional.attention), packed as (B, T, 3C)."""
        xp = B.namespace(grad_output)
        B_, T, C = grad_output.shape
        q, k, v, m, z, y = (self._saved(n) for n in ("_q", "_k", "_v", "_m", "_z", "_y"))
        d = self._saved("_d") if self._dropout_used else None
        nh, hs = self.n_head, C // self.n_head
        # rowsum(dP * P) = rowsum(dO * O) per head: (B, T, C) -> (B, T, nh) -> (B, nh, T, 1)
        rowsum = xp.permute_dims(xp.sum(xp.reshape(grad_output * y, (B_, T, nh, hs)), axis=-1), (0, 2, 1))[..., None]
        g = B.bmm_operand(self._heads(xp, grad_output, B_, T))  # one copy for its two matmuls
        scale = 1.0 / math.sqrt(hs)
        p = _weights_again(xp, q, k, scale, m, z)  # the forward's P, from its row statistics
        grads = _attention_backward(xp, g, q, k, v, p, d, scale, None, rowsum=rowsum)[:3]
        # packed (B, T, 3C) = concat of the merged dq, dk, dv: each written once into its slot of one array
        out = xp.empty((B_, T, 3 * C), dtype=grad_output.dtype, device=grad_output.device)
        slots = xp.reshape(out, (B_, T, 3, nh, hs))
        for i, t in enumerate(grads):  # (B, nh, T, hs) -> slot i, viewed as (B, T, nh, hs)
            slots[:, :, i] = xp.permute_dims(t, (0, 2, 1, 3))
        return out

    def extra_repr(self):
        return f"n_head={self.n_head}, n_embd={self.n_embd}, dropout={self.dropout}"


class CausalSelfAttention(Module):
    """Multi-head causal self-attention: c_attn (C -> 3C), the attention core (sdpa), c_proj, dropout."""

    def __init__(self, config, device=None, dtype=None, generator=None):
        super().__init__()
        C = config.n_embd
        self.c_attn = Linear(C, 3 * C, bias=config.bias, device=device, dtype=dtype, generator=generator)
        self.sdpa = CausalAttention(config.n_head, C, config.dropout, generator)
        self.c_proj = Linear(C, C, bias=config.bias, device=device, dtype=dtype, generator=generator)
        self.resid_dropout = Dropout(config.dropout, generator=generator)

    def forward(self, x):
        return self.resid_dropout(self.c_proj(self.sdpa(self.c_attn(x))))  # (B, T, C)

    def backward(self, grad_output, *, input_grad=True):
        g = self.sdpa.backward(self.c_proj.backward(self.resid_dropout.backward(grad_output)))  # (B, T, 3C)
        return self.c_attn.backward(g, input_grad=input_grad)


class MLP(Module):
    """c_fc (C -> 4C), GELU, c_proj (4C -> C), dropout."""

    def __init__(self, config, device=None, dtype=None, generator=None):
        super().__init__()
        C = config.n_embd
        self.c_fc = Linear(C, 4 * C, bias=config.bias, device=device, dtype=dtype, generator=generator)
        self.gelu = GELU()
        self.c_proj = Linear(4 * C, C, bias=config.bias, device=device, dtype=dtype, generator=generator)
        self.dropout = Dropout(config.dropout, generator=generator)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))

    def backward(self, g, *, input_grad=True):
        g = self.gelu.backward(self.c_proj.backward(self.dropout.backward(g)))
        return self.c_fc.backward(g, input_grad=input_grad)


class Block(Module):
    """x + attn(ln_1(x)), then x + mlp(ln_2(x)); a residual's gradient is the sum of its two paths."""

    def __init__(self, config, device=None, dtype=None, generator=None):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias, device=device, dtype=dtype)
        self.attn = CausalSelfAttention(config, device, dtype, generator)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias, device=device, dtype=dtype)
        self.mlp = MLP(config, device, dtype, generator)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))

    def backward(self, g, *, input_grad=True):
        g = g + self.ln_2.backward(self.mlp.backward(g))
        return g + self.ln_1.backward(self.attn.backward(g))


class GPT(Module):
    """idx (B, T) integer token ids -> logits (B, T, vocab_size); nanoGPT's initialisation."""

    def __init__(self, config: GPTConfig, device=None, dtype=None, generator=None):
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"GPT: expected a GPTConfig, got {type(config).__name__}")
        self.config = config
        c, kw = config, dict(device=device, dtype=dtype)
        self.transformer = ModuleDict(dict(
            wte=Embedding(c.vocab_size, c.n_embd, generator=generator, **kw),
            wpe=Embedding(c.block_size, c.n_embd, generator=generator, **kw),
            drop=Dropout(c.dropout, generator=generator),
            h=ModuleList([Block(c, device, dtype, generator) for _ in range(c.n_layer)]),
            ln_f=LayerNorm(c.n_embd, bias=c.bias, **kw),
        ))
        self.lm_head = Linear(c.n_embd, c.vocab_size, bias=False, **kw)
        self.lm_head.weight = self.transformer.wte.weight  # tied: one Parameter, two uses
        # nanoGPT: N(0, 0.02) weights, zero biases, residual projections N(0, 0.02 / sqrt(2 n_layer))
        g = I.default_generator() if generator is None else generator
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                I.zeros_(p)
            elif "ln_" not in name:
                std = 0.02 / math.sqrt(2 * c.n_layer) if name.endswith("c_proj.weight") else 0.02
                I.normal_(p, 0.0, std, generator=g)

    def forward(self, idx):
        xp = B.namespace(idx, op="GPT")
        if idx.ndim != 2 or idx.dtype not in (xp.int64, xp.int32):
            raise ValueError(f"GPT: expected integer token ids of shape (B, T), got {idx.dtype} of shape "
                             f"{tuple(idx.shape)}")
        T = idx.shape[1]
        if T > self.config.block_size:
            raise ValueError(f"GPT: expected at most block_size={self.config.block_size} tokens, got {T}")
        tr = self.transformer
        pos = xp.arange(T, device=idx.device)
        x = tr.drop(tr.wte(idx) + tr.wpe(pos))  # (B, T, C) + (T, C)
        for block in tr.h:
            x = block(x)
        return self.lm_head(tr.ln_f(x))  # (B, T, vocab)

    def backward(self, grad_output, *, input_grad=True):
        """Accumulates every parameter's gradient; returns None (token ids have no gradient)."""
        xp = B.namespace(grad_output)
        tr = self.transformer
        g = tr.ln_f.backward(self.lm_head.backward(grad_output))  # (B, T, C)
        for block in reversed(list(tr.h)):
            g = block.backward(g)
        g = tr.drop.backward(g)
        tr.wte.backward(g)
        tr.wpe.backward(xp.sum(g, axis=0))  # the positions broadcast over the batch
        return None

    def generate(self, idx, max_new_tokens, temperature=1.0, greedy=True, generator=None):
        """Append max_new_tokens ids to idx (B, T), one at a time, cropping to block_size (no backward)."""
        from ._grad_mode import no_grad

        xp = B.namespace(idx, op="GPT.generate")
        if idx.ndim != 2 or idx.shape[1] < 1:
            raise ValueError(f"GPT.generate: expected a prompt of token ids of shape (B, T) with T >= 1, got shape {tuple(idx.shape)}")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, numbers.Integral):
            raise TypeError(f"GPT.generate: expected max_new_tokens to be an integer >= 0, got "
                            f"{type(max_new_tokens).__name__} {max_new_tokens!r}")
        if max_new_tokens < 0:
            raise ValueError(f"GPT.generate: expected max_new_tokens to be an integer >= 0, got {max_new_tokens}")
        temperature = B.as_float("GPT.generate", "temperature", temperature)
        if not temperature > 0:  # 0: logits / 0 are inf or NaN (torch.multinomial refuses those)
            raise ValueError(f"GPT.generate: expected temperature > 0, got {temperature!r}")
        if generator is not None and not isinstance(generator, np.random.Generator):
            raise TypeError(f"GPT.generate: expected generator to be a NumPy Generator (np.random.default_rng(seed)) "
                            f"or None, got {type(generator).__name__} {generator!r}")
        was = self.training
        self.eval()
        try:
            with no_grad():
                for _ in range(max_new_tokens):
                    logits = self(idx[:, -self.config.block_size:])[:, -1, :] / temperature  # (B, vocab)
                    if greedy:
                        nxt = xp.argmax(logits, axis=-1)
                    else:
                        lp = B.to_numpy(logits).astype(np.float64)
                        pr = np.exp(lp - lp.max(-1, keepdims=True))
                        pr /= pr.sum(-1, keepdims=True)
                        rng = generator if generator is not None else np.random.default_rng()
                        nxt = B.place_raw(np.array([rng.choice(len(r), p=r) for r in pr]), B.device_of(idx))
                    idx = xp.concat([idx, xp.astype(xp.reshape(nxt, (-1, 1)), idx.dtype)], axis=1)
        finally:
            self.train(was)
        return idx

    def extra_repr(self):
        return ", ".join(f"{k}={v}" for k, v in asdict(self.config).items())
