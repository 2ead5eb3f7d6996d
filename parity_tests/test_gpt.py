"""The GPT by hand (manual.gpt) against its torch twin (torch_ref.gpt) under autograd.

Per-parameter gradients of the whole model with a random upstream gradient on the logits; the
tied token table's gradient as the sum of its two uses; state_dict names; a 100-step float64
training run (AdamW with parameter groups, warmup then cosine decay, gradient clipping) whose
parameters stay within 1e-9 of autograd's; the attention op's dropout keep-mask path; bad input.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import DEVICE_OF, DTYPES, torch_device

import manual.functional as MF
import torch_ref
from manual import _backend as B
from manual import nn, optim
from torch_ref import gpt as tgpt

# float64: the bound; measured worst 7e-15 (numpy and torch-cpu, 6 seeds, every parameter).
# float32: measured worst 3.7e-6 (relative to the tensor's largest entry; 6 seeds, numpy and torch-cpu),
# in the layer-norm weight and bias gradients, sums of g * xhat over every position where terms cancel;
# softmax, layer norm and GELU each round at eps32 = 1.2e-7 along the 2 x 6 layers of the backward.
# 3e-5 leaves a factor ~8 and still catches a planted 1e-4 error.
GRAD_TOL = {"float64": 1e-10, "float32": 3e-5}

CFG = nn.GPTConfig(block_size=8, vocab_size=11, n_layer=2, n_head=2, n_embd=16)


def _gpt(backend, dtype, cfg=CFG, seed=0):
    """A manual GPT with every parameter random (layer-norm weights 1 + noise, biases nonzero)."""
    rng = np.random.default_rng(seed)
    model = nn.GPT(cfg, device=DEVICE_OF[backend], dtype=dtype, generator=rng)
    for name, p in model.named_parameters():
        base = 1.0 if name.endswith("weight") and ".ln_" in f".{name}" else 0.0
        B.fill_(p.data, base + rng.normal(size=p.shape) * (0.3 if base == 0.0 else 0.1))
    return model, rng


def _ids(rng, backend, shape, vocab):
    return B.place_raw(rng.integers(0, vocab, size=shape), DEVICE_OF[backend])


def _rel(a, e):
    """max |a - e| / max |e|: one number per tensor, relative to its scale."""
    a, e = np.asarray(B.to_numpy(a), dtype=np.float64), np.asarray(B.to_numpy(e), dtype=np.float64)
    return float(np.abs(a - e).max() / max(np.abs(e).max(), 1e-300))


def _compare(model, backend, dtype, idx, g):
    """{name: relative error} for the logits and every parameter's gradient, manual vs the twin."""
    dev = torch_device(backend)
    twin = torch_ref.twin(model, device=dev)
    logits = model(idx)
    model.zero_grad()
    assert model.backward(B.place(g, DEVICE_OF[backend], dtype)) is None  # token ids get no gradient
    tidx = torch.as_tensor(B.to_numpy(idx), device=dev)
    with torch.enable_grad():
        tl = twin(tidx)
        tl.backward(torch.as_tensor(g, dtype=tl.dtype, device=dev))
    errs = {"logits": _rel(logits, tl.detach())}
    tgrads = dict(twin.named_parameters())
    for name, p in model.named_parameters():
        errs[name] = _rel(p.grad, tgrads[name].grad)
    return errs


@pytest.mark.parametrize("dtype", DTYPES)
def test_gpt_gradients_match_autograd(dtype, backend):
    model, rng = _gpt(backend, dtype)
    idx = _ids(rng, backend, (3, 7), CFG.vocab_size)
    g = rng.standard_normal((3, 7, CFG.vocab_size))  # random upstream gradient on the logits
    errs = _compare(model, backend, dtype, idx, g)
    assert len(errs) == 1 + 4 + 12 * CFG.n_layer, sorted(errs)  # logits, wte wpe ln_f.{w,b}, 12 per block
    bad = {k: v for k, v in errs.items() if not v <= GRAD_TOL[dtype]}
    assert not bad, f"GPT on {backend} in {dtype}: relative errors above {GRAD_TOL[dtype]}: {bad}"


def test_gpt_without_bias_and_one_head_matches_autograd():
    cfg = nn.GPTConfig(block_size=5, vocab_size=7, n_layer=1, n_head=1, n_embd=8, bias=False)
    model, rng = _gpt("numpy", "float64", cfg, seed=3)
    assert not [n for n, _ in model.named_parameters() if n.endswith("bias")]
    errs = _compare(model, "numpy", "float64", _ids(rng, "numpy", (2, 5), 7), rng.standard_normal((2, 5, 7)))
    assert max(errs.values()) <= GRAD_TOL["float64"], errs


def test_causal_attention_on_no_queries_or_no_keys_as_torch(backend):
    """L = 0 or S = 0 (a GPT on T = 0 tokens): torch gives empty or zero outputs and gradients; manual's torch
    path crashed in its baddbmm's reshape to (-1, 0, E) (0 elements cannot infer the -1). Expected: torch."""
    rng = np.random.default_rng(5)
    dev = DEVICE_OF[backend]
    for L, S in ((0, 3), (3, 0), (0, 0)):
        q, k, v = rng.standard_normal((2, 2, L, 4)), rng.standard_normal((2, 2, S, 4)), rng.standard_normal((2, 2, S, 3))
        tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
        ty = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=True)
        g = rng.standard_normal(tuple(ty.shape))
        ty.backward(torch.tensor(g))
        mq, mk, mv, mg = (B.place(a, dev, "float64") for a in (q, k, v, g))
        y = MF.scaled_dot_product_attention(mq, mk, mv, is_causal=True)
        grads = MF.scaled_dot_product_attention_backward(mg, mq, mk, mv, is_causal=True)[:3]
        for got, want in zip((y, *grads), (ty, tq.grad, tk.grad, tv.grad)):
            assert tuple(got.shape) == tuple(want.shape)
            np.testing.assert_array_equal(B.to_numpy(got), want.detach().numpy())
    cfg = nn.GPTConfig(block_size=8, vocab_size=11, n_layer=1, n_head=2, n_embd=8)
    model, rng = _gpt(backend, "float64", cfg, seed=5)
    twin = torch_ref.twin(model, device=torch_device(backend))
    idx = _ids(rng, backend, (2, 0), 11)
    logits = model(idx)
    model.zero_grad()
    model.backward(B.place(np.zeros((2, 0, 11)), dev, "float64"))
    with torch.enable_grad():
        tl = twin(torch.as_tensor(B.to_numpy(idx), device=torch_device(backend)))
        tl.backward(torch.zeros_like(tl))
    assert tuple(logits.shape) == tuple(tl.shape) == (2, 0, 11)
    tgrads = dict(twin.named_parameters())
    for name, p in model.named_parameters():  # every gradient 0, as the twin's
        np.testing.assert_array_equal(B.to_numpy(p.grad), tgrads[name].grad.cpu().numpy(), err_msg=name)


def test_tied_weight_gradient_is_the_sum_of_both_uses():
    """lm_head.weight is transformer.wte.weight: its gradient = the head's use + the embedding's use.

    The expectation comes from an untied torch twin (two Parameters with equal values), whose two
    gradients are added here; each part alone must be far from the sum, so using one is caught.
    """
    model, rng = _gpt("numpy", "float64", seed=1)
    assert model.lm_head.weight is model.transformer.wte.weight
    idx = _ids(rng, "numpy", (2, 6), CFG.vocab_size)
    g = rng.standard_normal((2, 6, CFG.vocab_size))
    model.zero_grad()
    model.backward(model(idx) * 0 + g)

    untied = torch_ref.twin(model)
    untied.lm_head.weight = torch.nn.Parameter(untied.transformer.wte.weight.detach().clone())
    assert untied.lm_head.weight is not untied.transformer.wte.weight
    with torch.enable_grad():
        untied(torch.as_tensor(idx)).backward(torch.as_tensor(g))
    head, emb = untied.lm_head.weight.grad.numpy(), untied.transformer.wte.weight.grad.numpy()
    got = model.transformer.wte.weight.grad
    assert _rel(got, head + emb) <= 1e-13
    assert _rel(got, head) > 1e-2 and _rel(got, emb) > 1e-2


def test_state_dict_names_equal_the_twin_and_gpt2():
    model, _ = _gpt("numpy", "float64")
    keys = list(model.state_dict())
    assert keys == list(torch_ref.twin(model).state_dict())
    for k in ("transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.ln_1.weight",
              "transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_proj.bias",
              "transformer.h.1.ln_2.bias", "transformer.h.1.mlp.c_fc.weight", "transformer.h.1.mlp.c_proj.weight",
              "transformer.ln_f.weight", "lm_head.weight"):
        assert k in keys, k
    names = [n for n, _ in model.named_parameters()]
    assert "lm_head.weight" not in names and len(names) == len(set(names)) == len(keys) - 1  # the tie, once


def test_load_state_dict_from_the_twin_keeps_the_tie():
    model, _ = _gpt("numpy", "float64", seed=0)
    other, _ = _gpt("numpy", "float64", seed=5)
    sd = {k: v.detach() for k, v in torch_ref.twin(other).state_dict().items()}  # torch tensors, both tied keys
    model.load_state_dict(sd)
    assert model.lm_head.weight is model.transformer.wte.weight
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, sd[k].numpy(), err_msg=k)
    with pytest.raises(KeyError, match="lm_head.weight"):
        model.load_state_dict({k: v for k, v in sd.items() if k != "lm_head.weight"})


# -- a 100-step training run, both ways --------------------------------------------------------

def _groups(named, weight_decay):
    """nanoGPT's AdamW groups: 2-D weights decay, biases and layer-norm weights do not."""
    decay = [p for n, p in named if len(p.shape) >= 2]
    rest = [p for n, p in named if len(p.shape) < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def test_training_trajectory_matches_autograd_for_100_steps():
    """float64, AdamW + LinearLR warmup -> CosineAnnealingLR + clip_grad_norm_(0.5): every 10 steps, every
    parameter within 1e-9 relative of autograd's.

    Measured worst over the run: 9.3e-11, all in c_attn's key bias. Its true gradient is exactly 0
    (softmax ignores a constant added to a row of scores, and q . b_k is one), so both sides see
    rounding noise ~1e-17 that Adam divides by eps = 1e-8: a drift of ~lr 1e-9 per step, not a wrong
    derivative. Every other parameter agrees to 2.1e-15."""
    from manual.nn.utils import clip_grad_norm_

    cfg = nn.GPTConfig(block_size=6, vocab_size=7, n_layer=1, n_head=2, n_embd=8)  # tiny: ~1.5 s for 100 steps
    model, rng = _gpt("numpy", "float64", cfg, seed=7)
    twin = torch_ref.twin(model)
    steps, warm = 100, 10
    opt = optim.AdamW(_groups(list(model.named_parameters()), 0.1), lr=3e-2, betas=(0.9, 0.95))
    topt = torch.optim.AdamW(_groups(list(twin.named_parameters()), 0.1), lr=3e-2, betas=(0.9, 0.95), foreach=False)
    sl = optim.lr_scheduler
    sched = sl.SequentialLR(opt, [sl.LinearLR(opt, 0.1, 1.0, warm), sl.CosineAnnealingLR(opt, steps - warm)], [warm])
    tl = torch.optim.lr_scheduler
    tsched = tl.SequentialLR(topt, [tl.LinearLR(topt, 0.1, 1.0, warm), tl.CosineAnnealingLR(topt, steps - warm)],
                             [warm])
    crit, tcrit = nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()
    starts = rng.integers(0, cfg.vocab_size, size=(steps, 4, 1))  # counting sequences: s, s+1, ... (mod 7)
    data = (starts + np.arange(cfg.block_size + 1)) % cfg.vocab_size
    worst, clipped = 0.0, 0
    for step in range(steps):
        x, y = data[step, :, :-1], data[step, :, 1:]
        logits = model(x)
        loss = crit(logits.reshape(-1, cfg.vocab_size), y.reshape(-1))
        opt.zero_grad()
        model.backward(crit.backward().reshape(logits.shape))
        norm = clip_grad_norm_(model.parameters(), 0.5)
        opt.step()
        sched.step()
        with torch.enable_grad():
            tlogits = twin(torch.as_tensor(x))
            tloss = tcrit(tlogits.reshape(-1, cfg.vocab_size), torch.as_tensor(y).reshape(-1))
            topt.zero_grad()
            tloss.backward()
        tloss = tloss.detach()
        tnorm = torch.nn.utils.clip_grad_norm_(twin.parameters(), 0.5)
        topt.step()
        tsched.step()
        clipped += float(tnorm) > 0.5
        assert abs(float(loss) - float(tloss)) <= 1e-9 * abs(float(tloss)), step
        assert abs(float(norm) - float(tnorm)) <= 1e-9 * float(tnorm), step
        if step % 10 == 9:
            tp = dict(twin.named_parameters())
            errs = {n: _rel(p.data, tp[n].detach()) for n, p in model.named_parameters()}
            worst = max(worst, max(errs.values()))
            assert worst <= 1e-9, (step, {k: v for k, v in errs.items() if v > 1e-9})
    assert clipped > 10, "clipping must actually act in this run"
    assert float(tloss) < 1.0, "the run must train (ln 7 = 1.95 at the start), or the test proves little"


@pytest.mark.parametrize("dtype", DTYPES)
def test_gpt_attention_rebuilds_the_forward_weights_from_row_statistics(dtype, backend):
    """CausalAttention keeps the softmax's row max and sum, not the (B, nh, T, T) weights: backward's rebuilt P
    (_weights_again) is the forward's P (the same operations; to rounding, should the BLAS round the second
    q k^T differently), and causal (zero above the diagonal)."""
    from manual.functional.attention import _weights, _weights_again

    rng = np.random.default_rng(3)
    dev = DEVICE_OF[backend]
    q, k = (B.place(rng.standard_normal((2, 3, 7, 4)) * 3, dev, dtype) for _ in range(2))
    xp = B.namespace(q)
    stats = []
    p = _weights(xp, q, k, None, True, 0.5, stats)
    again = B.to_numpy(_weights_again(xp, q, k, 0.5, *stats))
    np.testing.assert_allclose(again, B.to_numpy(p), rtol=1e-13 if dtype == "float64" else 1e-6, atol=0)
    assert np.all(np.triu(again, 1) == 0) and np.allclose(again.sum(-1), 1.0)
    assert [tuple(t.shape) for t in stats] == [(2, 3, 7, 1)] * 2


# -- the attention op's dropout keep-mask path -----------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_dropout_mask_matches_autograd_of_the_formula(dtype, backend):
    """torch draws its own dropout mask, so the oracle is autograd through softmax(q k^T s) * D / (1-p) @ v
    with manual's mask D; the causal mask and a scale are on."""
    rng = np.random.default_rng(11)
    p = 0.3
    q, k, v = (rng.standard_normal((2, 3, 5, 4)) for _ in range(3))
    keep = rng.random((2, 3, 5, 5)) >= p
    dev = DEVICE_OF[backend]
    args = [B.place(a, dev, dtype) for a in (q, k, v)]
    mask = B.place_raw(keep, dev)
    out = MF.scaled_dot_product_attention(*args, dropout_p=p, is_causal=True, scale=0.7, dropout_mask=mask)
    g = rng.standard_normal(out.shape)
    grads = MF.scaled_dot_product_attention_backward(B.place(g, dev, dtype), *args, dropout_p=p, is_causal=True,
                                                     scale=0.7, dropout_mask=mask)
    assert grads[3] is None
    tq, tk, tv = (torch.tensor(a, dtype=getattr(torch, dtype), requires_grad=True) for a in (q, k, v))
    with torch.enable_grad():
        s = tq @ tk.transpose(-1, -2) * 0.7
        s = s.masked_fill(~torch.ones(5, 5, dtype=torch.bool).tril(), float("-inf"))
        tout = (torch.softmax(s, -1) * torch.as_tensor(keep) / (1 - p)) @ tv
        tout.backward(torch.as_tensor(g, dtype=tout.dtype))
    tol = 1e-13 if dtype == "float64" else 2e-6  # float32: measured 3e-7 relative to the largest entry
    assert _rel(out, tout.detach()) <= tol
    for name, a, e in zip("qkv", grads, (tq, tk, tv)):
        assert _rel(a, e.grad) <= tol, name
    # the mask matters: without it the result differs
    assert _rel(MF.scaled_dot_product_attention(*args, is_causal=True, scale=0.7), tout.detach()) > 1e-2


def test_attention_dropout_without_mask_draws_from_the_generator():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 4, 3))
    a = MF.scaled_dot_product_attention(q, q, q, dropout_p=0.5, generator=np.random.default_rng(3))
    b = MF.scaled_dot_product_attention(q, q, q, dropout_p=0.5, generator=np.random.default_rng(3))
    c = MF.scaled_dot_product_attention(q, q, q, dropout_p=0.5, generator=np.random.default_rng(4))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    with pytest.raises(ValueError, match="dropout_mask"):
        MF.scaled_dot_product_attention_backward(a, q, q, q, dropout_p=0.5)


def test_gpt_dropout_trains_and_eval_is_deterministic():
    """With dropout, train-mode forwards differ (fresh masks) and the backward runs with the forward's masks;
    eval() turns every dropout off, and then the model equals its twin again."""
    cfg = nn.GPTConfig(block_size=6, vocab_size=7, n_layer=1, n_head=2, n_embd=8, dropout=0.2)
    model, rng = _gpt("numpy", "float64", cfg, seed=2)
    idx = _ids(rng, "numpy", (2, 6), 7)
    a, b = model(idx), model(idx)
    assert not np.array_equal(a, b)
    model.zero_grad()
    model.backward(rng.standard_normal(b.shape))
    assert all(np.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    twin = torch_ref.twin(model).eval()
    np.testing.assert_allclose(model(idx), twin(torch.as_tensor(idx)).detach().numpy(), rtol=1e-12, atol=1e-14)


def test_gpt_attention_module_backward_with_dropout_matches_autograd(backend):
    """The module's attention backward under dropout (its softmax term rowsum(dP * P) taken as rowsum(dO * O),
    the identity that holds with the dropout factor D too) against autograd through
    softmax(q k^T / sqrt(hs) + causal) * D @ v with the forward's own D, from the packed (B, T, 3C) input."""
    from manual.gpt import CausalAttention

    rng = np.random.default_rng(12)
    Bn, T, C, nh = 2, 6, 8, 2
    qkv = rng.standard_normal((Bn, T, 3 * C))
    g = rng.standard_normal((Bn, T, C))
    dev = DEVICE_OF[backend]
    attn = CausalAttention(nh, C, dropout=0.4, generator=np.random.default_rng(5))
    y = attn(B.place(qkv, dev, "float64"))
    d = torch.as_tensor(B.to_numpy(attn.__dict__["_d"][0]))  # the keep-mask / (1 - p) the forward drew (a peek)
    assert 0 < float((d == 0).double().mean()) < 1, "the dropout must drop some weights and keep others"
    grad = B.to_numpy(attn.backward(B.place(g, dev, "float64")))

    t = torch.tensor(qkv, requires_grad=True)
    q, k, v = (u.reshape(Bn, T, nh, C // nh).transpose(1, 2) for u in t.split(C, dim=2))
    s = q @ k.transpose(-1, -2) / np.sqrt(C // nh) + torch.triu(torch.full((T, T), -torch.inf, dtype=t.dtype), 1)
    ref = ((torch.softmax(s, -1) * d) @ v).transpose(1, 2).reshape(Bn, T, C)
    ref.backward(torch.as_tensor(g))
    np.testing.assert_allclose(B.to_numpy(y), ref.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(grad, t.grad.numpy(), rtol=1e-11, atol=1e-13)


# -- bad input -------------------------------------------------------------------------------------

@pytest.mark.parametrize("call, err, match", [
    (lambda q: MF.scaled_dot_product_attention(q, q[..., :3], q), ValueError, "key with query's 4 features"),
    (lambda q: MF.scaled_dot_product_attention(q, q, q[:, :2]), ValueError, "value with key's length 5"),
    (lambda q: MF.scaled_dot_product_attention(q[0, 0], q[0, 0], q[0, 0]), ValueError, "at least 2 dimensions"),
    (lambda q: MF.scaled_dot_product_attention(q, q, q, np.ones((5, 5), bool), is_causal=True), ValueError,
     "attn_mask=None when is_causal=True"),
    # float32 query, float64 mask: torch refuses it too ('bool or float or to match query dtype')
    (lambda q: MF.scaled_dot_product_attention(*(q.astype(np.float32),) * 3, np.ones((5, 5))), TypeError,
     "attn_mask of dtype bool, float32 or the query's dtype float32, got float64"),
    (lambda q: MF.scaled_dot_product_attention(q, q, q, np.ones((5, 5), np.float16)), TypeError,
     "attn_mask of dtype bool, float32 or the query's dtype float64, got float16"),
    (lambda q: MF.scaled_dot_product_attention(q, q, q, np.ones((4, 5), bool)), ValueError,
     r"broadcastable to the attention weights' shape \(2, 5, 5\)"),
    (lambda q: MF.scaled_dot_product_attention(q, q, q, dropout_p=1.5), ValueError, r"dropout_p in \[0, 1\]"),
    (lambda q: MF.scaled_dot_product_attention(q, q, q, scale="big"), TypeError, "scale to be None or a real"),
    (lambda q: MF.scaled_dot_product_attention(q, q, q.astype(np.float32)), TypeError, "mixed dtypes"),
    (lambda q: MF.scaled_dot_product_attention_backward(q[:, :2], q, q, q), ValueError,
     r"grad_output of shape \(2, 5, 4\)"),
])
def test_attention_bad_input(call, err, match):
    q = np.random.default_rng(0).standard_normal((2, 5, 4))
    with pytest.raises(err, match=match):
        call(q)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_attention_float32_mask_on_float64_query_as_torch(backend):
    """A float32 attn_mask on float64 query/key/value: torch takes it (promoted into the float64 scores; its
    gradient comes back float32). It used to be refused. Expected values: torch autograd."""
    rng = np.random.default_rng(3)
    q, k, v = rng.standard_normal((2, 5, 4)), rng.standard_normal((2, 6, 4)), rng.standard_normal((2, 6, 3))
    m32 = rng.standard_normal((5, 6)).astype(np.float32)
    m32[1, :] = -np.inf  # a fully masked row: output 0, no NaN (torch's safe softmax)
    m32[0, 2] = -np.inf
    g = rng.standard_normal((2, 5, 3))
    ts = [torch.tensor(a, requires_grad=True) for a in (q, k, v, m32)]
    out = torch.nn.functional.scaled_dot_product_attention(*ts[:3], attn_mask=ts[3])
    want = (out,) + torch.autograd.grad(out, ts, torch.tensor(g))
    args = (q, k, v, m32) if backend == "numpy" else tuple(torch.tensor(a) for a in (q, k, v, m32))
    gg = g if backend == "numpy" else torch.tensor(g)
    got = (MF.scaled_dot_product_attention(*args[:3], attn_mask=args[3]),) + \
        MF.scaled_dot_product_attention_backward(gg, *args[:3], attn_mask=args[3])
    for name, a, b in zip(("output", "grad_query", "grad_key", "grad_value", "grad_attn_mask"), got, want):
        assert str(a.dtype).replace("torch.", "") == str(b.dtype).replace("torch.", ""), (name, a.dtype, b.dtype)
        np.testing.assert_allclose(B.to_numpy(a), b.detach().numpy(), rtol=1e-6 if name == "grad_attn_mask" else 1e-12,
                                   atol=1e-7 if name == "grad_attn_mask" else 1e-14, err_msg=name)


def test_gpt_bad_input():
    model, _ = _gpt("numpy", "float64")
    with pytest.raises(ValueError, match="at most block_size=8 tokens, got 9"):
        model(np.zeros((1, 9), dtype=np.int64))
    with pytest.raises(ValueError, match=r"integer token ids of shape \(B, T\), got float64"):
        model(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="n_embd divisible by n_head"):
        nn.GPTConfig(n_embd=10, n_head=3)
    with pytest.raises(ValueError, match="dropout in"):
        nn.GPTConfig(dropout=1.0)
    with pytest.raises(TypeError, match="expected a GPTConfig"):
        nn.GPT({"n_layer": 1})


def test_gpt_config_takes_numpy_integers_as_ints():
    """Sizes read from a NumPy array or a JSON loader (np.int64) are taken and stored as Python ints; a float
    size is still refused."""
    cfg = nn.GPTConfig(block_size=np.int64(8), n_layer=np.int32(2))
    assert (cfg.block_size, cfg.n_layer) == (8, 2) and type(cfg.block_size) is int and type(cfg.n_layer) is int
    with pytest.raises(ValueError, match="expected n_layer to be a positive int, got 2.0"):
        nn.GPTConfig(n_layer=2.0)


def test_twin_matches_torch_ref_gpt_class():
    """The builder gives torch_ref.gpt.GPT (nanoGPT's model), on the requested dtype, weights equal."""
    model, _ = _gpt("numpy", "float32")
    twin = torch_ref.twin(model)
    assert isinstance(twin, tgpt.GPT) and twin.lm_head.weight is twin.transformer.wte.weight
    assert twin.lm_head.weight.dtype == torch.float32


# -- the `gpt` experiment ----------------------------------------------------------------------------

def _run_gpt_experiment(tmp_path, **kw):
    from experiments import gpt
    from experiments._threads import one_thread

    with one_thread():
        return gpt.main(gpt.Config(quick=True, progress=False, device="cpu", logdir=str(tmp_path), **kw))


def test_gpt_experiment_quick_sorts_heldout_sequences_and_logs_everything(tmp_path):
    from test_experiments_data import events

    m = _run_gpt_experiment(tmp_path)
    assert m["status"] == "ok", m["notes"]
    assert [c["holds"] for c in m["claims"]] == [True, True], m["claims"]
    for impl in ("manual", "torch"):
        assert m["results"][impl]["exact_match"] >= 0.95, impl
    assert m["max_drift"] <= 1e-8 and m["drift_ok"]
    assert 0 < m["data"]["rounding_baseline"] <= 1e-8  # the yardstick ran: a torch copy one ulp away
    assert m["data"]["drift_over_rounding"] <= 10
    man, tor = events(m, "manual"), events(m, "torch")
    for ev in (man, tor):
        tags = ev.Tags()
        assert {"loss/train", "loss/heldout", "lr", "grad_norm/total", "accuracy/exact_match",
                "parity/max_abs_param_diff", "parity/rounding_baseline"} <= set(tags["scalars"]), tags["scalars"]
        assert "attention" in tags["images"] and len(ev.Images("attention")) == 2  # at init and at the end
        assert "samples/text_summary" in tags["tensors"]
    # the schedule, from torch's own classes on the torch side: warmup from lr/100 to lr, cosine to lr/10
    lr = {impl: [s.value for s in ev.Scalars("lr")] for impl, ev in (("manual", man), ("torch", tor))}
    assert lr["manual"] == lr["torch"]
    np.testing.assert_allclose([lr["torch"][0], max(lr["torch"])], [1e-4, 1e-2], rtol=1e-6)
    assert 1e-3 <= lr["torch"][-1] < 1.1e-3
    gm = np.array([s.value for s in man.Scalars("grad_norm/total")])
    gt = np.array([s.value for s in tor.Scalars("grad_norm/total")])
    np.testing.assert_allclose(gm, gt, rtol=1e-6)  # float32 in the event file
    assert (gt > 1.0).any(), "the clip at 1.0 must act at least once (the norm is logged before clipping)"
    text = tor.Tensors("samples/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert "| prompt | generated | right |" in text and text.count("| yes |") >= 5, text


def test_gpt_experiment_drift_claim_catches_a_1e6_error_in_the_attention_backward(tmp_path, monkeypatch):
    """The drift claim compares manual vs torch with rounding alone step by step, so a derivative wrong by
    1e-6 fails it within 15 steps (while the drift is still far below any fixed tolerance one would set
    for a 600-step chaotic run)."""
    import manual.gpt as mg

    real = mg._attention_backward

    def wrong(*a, **k):
        dq, dk, dv, dm = real(*a, **k)
        return dq * (1 + 1e-6), dk, dv, dm

    monkeypatch.setattr(mg, "_attention_backward", wrong)
    m = _run_gpt_experiment(tmp_path, steps=15)
    drift_claim = m["claims"][1]
    assert "rounding allows" in drift_claim["claim"] and drift_claim["holds"] is False, drift_claim
    assert m["data"]["drift_over_rounding"] > 100 and m["max_drift"] < 1e-6


def test_exact_match_by_one_forward_pass_equals_greedy_generation():
    """The experiment scores exact match with one teacher-forced pass; generating the answer token by
    token with GPT.generate (greedy) must give the same verdict on every sequence."""
    from experiments import gpt

    task = gpt.SortTask(3, 4, 40, np.random.default_rng(0))
    model, rng = _gpt("numpy", "float64", nn.GPTConfig(block_size=6, vocab_size=5, n_layer=1, n_head=2, n_embd=8))
    L = task.length
    gen = model.generate(task.test[:, :L + 1].copy(), L)  # (N, 2L + 1)
    seqs = task.test.copy()
    seqs[::2] = gen[::2]  # half: the model's own answer (right by construction), half: the true sorted one
    twins = type("T", (), {"impls": ("manual",), "logits": lambda self, x: {"manual": model(x)}})()
    task.test = seqs
    _, exact = gpt.heldout_metrics(twins, task, sort=True)
    by_generation = np.mean(np.all(gen[:, L + 1:] == seqs[:, L + 1:], axis=1))
    assert exact["manual"] == by_generation and 0.5 <= by_generation < 1.0


def test_gpt_experiment_text_mode(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("the cat sat on the mat. " * 40 + "äöü\n", encoding="utf-8")
    m = _run_gpt_experiment(tmp_path / "runs", text=str(path), block_size=16, steps=40)
    assert m["status"] == "ok" and all(c["holds"] for c in m["claims"]), m["claims"]
    assert m["data"]["vocab"] == len(set(path.read_text(encoding="utf-8")))
    assert m["results"]["manual"]["heldout_loss"] < 1.0  # a repeated sentence: far below ln(vocab) = 2.8


# -- verify on a whole GPT: the first diverging layer is where the wrong derivative is -------------------

CPU = ["numpy", "torch-cpu"]


@pytest.mark.parametrize("backend", CPU)
@pytest.mark.parametrize("dtype", DTYPES)
def test_check_model_passes_a_gpt_and_compares_every_layer(dtype, backend):
    from experiments.parity import check_model, gpt_case

    r = check_model(*gpt_case(dtype, backend))
    assert r.passed, {k: v for k, v in r.errors.items() if not v[2]}
    for key in ("transformer.h.1.attn.sdpa.grad_input", "transformer.h.0.attn.c_attn.weight", "transformer.wte.weight",
                "transformer.wpe.weight", "lm_head.grad_input", "transformer.ln_f.bias"):
        assert key in r.errors and np.isfinite(r.errors[key][0]), key


def _first(monkeypatch, target, name, wrong, dtype="float64", backend="numpy"):
    from experiments.parity import check_model, gpt_case

    monkeypatch.setattr(target, name, wrong)
    r = check_model(*gpt_case(dtype, backend))
    assert r.passed is False
    return r


@pytest.mark.parametrize("backend", CPU)
@pytest.mark.parametrize("dtype", DTYPES)
def test_check_model_names_the_attention_core_with_a_wrong_backward(dtype, backend, monkeypatch):
    """The attention kernel's dq a little too large (both blocks; 1e-6 in float64, 1e-2 in float32: the
    float32 model tolerance, atol x the largest gradient, hides 1e-3 here): named at the last block's
    attention core, whose upstream (c_proj's input gradient) still agrees, as does everything above it."""
    import manual.gpt as mg

    real = mg._attention_backward

    def wrong(*a, **k):
        dq, dk, dv, dm = real(*a, **k)
        return dq * (1 + (1e-6 if dtype == "float64" else 1e-2)), dk, dv, dm

    r = _first(monkeypatch, mg, "_attention_backward", wrong, dtype, backend)
    assert (r.first_divergent, r.first_divergent_tensor) == ("transformer.h.1.attn.sdpa",
                                                             "transformer.h.1.attn.sdpa.grad_input"), r.errors
    assert r.errors["transformer.h.1.attn.c_proj.weight"][2] and r.errors["transformer.h.1.attn.c_proj.grad_input"][2]


def test_check_model_names_the_layer_below_a_dropped_skip_path(monkeypatch):
    """A block whose backward forgets the residual's skip path around the MLP: the first tensor that differs is
    the gradient entering the attention branch's last layer (resid_dropout) of that block."""
    import manual.gpt as mg

    def wrong(self, g, *, input_grad=True):
        g = self.ln_2.backward(self.mlp.backward(g))  # should be g + ...
        return g + self.ln_1.backward(self.attn.backward(g))

    r = _first(monkeypatch, mg.Block, "backward", wrong)
    assert r.first_divergent == "transformer.h.1.attn.resid_dropout", r.first_divergent_tensor
    assert r.errors["transformer.h.1.ln_2.grad_input"][2]  # the MLP branch itself is right


def test_check_model_names_the_position_table_when_its_gradient_skips_the_batch_sum(monkeypatch):
    import manual.gpt as mg

    def wrong(self, grad_output, *, input_grad=True):  # GPT.backward with wpe given batch item 0 only
        tr = self.transformer
        g = tr.ln_f.backward(self.lm_head.backward(grad_output))
        for block in reversed(list(tr.h)):
            g = block.backward(g)
        g = tr.drop.backward(g)
        tr.wte.backward(g)
        tr.wpe.backward(g[0])
        return None

    r = _first(monkeypatch, mg.GPT, "backward", wrong)
    assert (r.first_divergent, r.first_divergent_tensor) == ("transformer.wpe", "transformer.wpe.weight"), r.errors
    assert r.errors["transformer.wte.weight"][2]


def test_verify_cli_has_gpt_rows():
    from experiments.cli import main as cli_main

    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli_main(["verify", "--only", "gpt", "--device", "cpu"])
    text = out.getvalue()
    assert code == 0, text
    rows = text.split("\ngpt\n", 1)[1].split("\n\n")[0].splitlines()  # the gpt heading, then its rows
    assert len(rows) == 4 and all(r.startswith("  float") for r in rows) and "all passed" in text, text
