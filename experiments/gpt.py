"""GPT (beyond the guide: a transformer by hand): a small GPT learns to sort digits, trained by both
implementations from identical weights, and sorts held-out sequences it never saw.

The task is generated in code (no download): a prompt of `length` random digits and a separator,
then the same digits sorted, one character per token ("3 1 4 1 5 9 : 1 1 3 4 5 9"). The loss is
taken on the answer only. Held-out sequences are set aside before training and never drawn.
Exact match counts a sequence right when all of its sorted digits are; with greedy decoding this
is the same as generating the answer token by token (each step sees a correct prefix), so one
teacher-forced forward pass measures it. `--text PATH` trains a character-level model on any
UTF-8 file instead (the last 10% held out).

Drift: float64 rounding differs between the two (other summation orders), and training amplifies
it: this run is chaotic once the loss is small (Adam divides ever smaller gradients by their own
root mean square), so a difference of 1e-16 can grow to 1e-2. The yardstick is measured in the same
run: a copy of the torch model whose every weight starts one ulp away, trained on the same batches
(parity/rounding_baseline). The claim compares step by step: manual vs torch within 10x of it (+1e-14).
Measured over two 600-step runs: the ratio never exceeded 2.4; one seed drifted to 3.9e-7
(yardstick 1.5e-6), another to 3e-2 (yardstick 2.8e-2), both below 2e-12 for the first 100 steps.
The default is 300 steps (keeps `all` under 2 minutes): seeds 0-3 sort 99.4-99.8% of the
held-out prompts, drift ratios 1.4-2.7.

TensorBoard: loss (train, held-out), learning rate (warmup then cosine), the gradient norm
before clipping, drift and its rounding yardstick, exact match, attention maps of every layer and
head as images, and generated samples as text.
"""

from __future__ import annotations

import copy
import functools
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

import manual
from manual import _backend as B
from manual import nn, optim
from manual.nn.utils import clip_grad_norm_
from torch_ref import twin

from . import _dist, _lab
from ._lab import opt

NAME = "gpt"
SUMMARY = ("a GPT written by hand learns to sort digits: held-out exact match >= 0.95 for both "
           "implementations, drift within float64 rounding")
SECTION = "beyond the guide: attention and a GPT"
DATA_PARALLEL = True  # on several ranks (`run NAME --nproc N`, torchrun) each step shards its batch: experiments/_dist.py
METRICS = ("accuracy/exact_match", "loss/heldout")

EXACT_MIN = 0.95
IGNORE = -100  # CrossEntropyLoss's ignore_index: no loss on the prompt
N_SAMPLES = 6  # generated samples shown as text
ROUNDING_FACTOR = 10  # drift claim: within 10x of what rounding alone does, step by step (measured: <= 2.4x)
ULPS = 1e-14  # ~45 ulps of 1: the drift floor below which nothing is claimed


@dataclass
class Config(_lab.RunConfig):
    length: int = opt(6, "digits to sort per sequence (quick: 4)")
    digits: int = opt(10, "distinct digit values 0..digits-1 (quick: 5)")
    text: str = opt("", "train a character-level model on this UTF-8 file instead of sorting")
    block_size: int = opt(64, "context length with --text (sorting uses 2 * length)")
    n_layer: int = opt(2, "transformer blocks (quick: 1)")
    n_head: int = opt(4, "attention heads per block")
    n_embd: int = opt(32, "width of the residual stream")
    dropout: float = opt(0.0, "dropout probability (0 keeps the two implementations comparable)")
    steps: int = opt(300, "training steps (quick: 150)")
    batch_size: int = opt(64, "sequences per step (quick: 32)")
    lr: float = opt(3e-3, "peak learning rate of AdamW (quick: 1e-2)")
    warmup: int = opt(30, "linear warmup steps from lr/100, then cosine decay to lr/10 (quick: 10)")
    weight_decay: float = opt(0.1, "AdamW's decoupled weight decay on 2-D weights (none on biases and norms)")
    grad_clip: float = opt(1.0, "clip the global gradient norm to this")
    heldout: int = opt(1000, "held-out sequences never trained on (quick: 125)")
    eval_every: int = opt(50, "steps between held-out evaluations (quick: 25)")
    rounding_baseline: bool = opt(True, "also train a torch copy whose weights start one ulp away: how far "
                                        "float64 rounding alone moves this run (the drift claim's yardstick)")


def _quick(cfg):
    """The effective settings: the quick profile shrinks the task, the model and the run."""
    if not cfg.quick:
        return dict(length=cfg.length, digits=cfg.digits, n_layer=cfg.n_layer, steps=cfg.steps,
                    batch_size=cfg.batch_size, lr=cfg.lr, warmup=cfg.warmup, heldout=cfg.heldout,
                    eval_every=cfg.eval_every)
    cap = functools.partial(_lab.quick_cap, cfg)  # a given value above the cap is capped and said
    return dict(length=cap("length", 4), digits=cap("digits", 5), n_layer=cap("n_layer", 1),
                steps=cap("steps", 150), batch_size=cap("batch_size", 32), lr=1e-2 if cfg.lr == 3e-3 else cfg.lr,
                warmup=cap("warmup", 10), heldout=cap("heldout", 125), eval_every=cap("eval_every", 25))


def check_config(cfg):
    """A message if these options cannot make a run, else None: runner.cmd_run refuses it before any work
    (exit 2), instead of a traceback or a SystemExit once the run has started."""
    if cfg.n_embd % cfg.n_head:  # GPTConfig's own rule: each head takes n_embd / n_head of the residual stream
        return (f"--n-embd {cfg.n_embd} --n-head {cfg.n_head}: expected --n-embd divisible by --n-head (each head "
                f"takes n_embd / n_head dims), got a remainder of {cfg.n_embd % cfg.n_head}")
    if cfg.text:
        try:
            with open(cfg.text, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError):  # cli.check_paths names these (a resumed run's file: TextTask)
            return None
        n = len(text)
        if n < text_min_chars(cfg.block_size):
            return (f"--text {cfg.text}: expected at least {text_min_chars(cfg.block_size)} characters for "
                    f"--block-size {cfg.block_size} (2 x (block size + 1): training and held-out windows), got {n}")
        if len(set(text)) < 2:  # the claim "held-out loss < ln(vocab)" could never hold
            return (f"--text {cfg.text}: expected at least 2 distinct characters (one has nothing to predict: "
                    f"ln(1) = 0), got 1: {text[0]!r}")
        return None
    eff = _quick(cfg)
    if eff["digits"] ** eff["length"] < 5:  # SortTask holds out a fifth of every prompt: none out of fewer than 5
        quick = " (--quick: at most 5 digits, length 4)" if cfg.quick else ""
        return (f"--digits {eff['digits']} --length {eff['length']}{quick}: {eff['digits']}**{eff['length']} = "
                f"{eff['digits'] ** eff['length']} possible prompts, expected at least 5 (a fifth of them is held out)")
    return None


def text_min_chars(block_size):
    """TextTask's shortest text: two windows of block_size + 1 characters."""
    return 2 * (block_size + 1)


# -- the sorting task ------------------------------------------------------------------------------

class SortTask:
    """Token ids 0..digits-1 are digits, `digits` is the separator ':'. Sequences (2L+1,): prompt,
    separator, answer; a model sees the first 2L tokens and predicts the next at each position."""

    def __init__(self, length, digits, heldout, rng):
        self.length, self.digits = length, digits
        self.vocab = digits + 1
        self.chars = [str(d) if d < 10 else chr(ord("a") + d - 10) for d in range(digits)] + [":"]
        space = digits ** length
        if space <= 200_000:  # enumerate: a held-out share of every possible prompt, the rest trains
            codes = rng.permutation(space)
            n_test = min(heldout, space // 5)
            self.test_codes, self.train_codes = codes[:n_test], codes[n_test:]  # in random order
        else:  # draw: held-out prompts (at most a fifth, as above), and training draws that hit one are redrawn
            self.test_codes = rng.permutation(np.unique(rng.integers(0, space, size=min(heldout, space // 5))))
            self.train_codes = None
        self.space = space
        self.test = self.sequences(self._prompts(self.test_codes))

    def _prompts(self, codes):
        return (codes[:, None] // self.digits ** np.arange(self.length)[::-1]) % self.digits  # (N, L) digits

    def _draw(self, rng, n):
        if self.train_codes is not None:
            return self.train_codes[rng.integers(0, len(self.train_codes), size=n)]
        codes = rng.integers(0, self.space, size=n)
        while True:
            hit = np.isin(codes, self.test_codes)
            if not hit.any():
                return codes
            codes[hit] = rng.integers(0, self.space, size=int(hit.sum()))

    def sequences(self, prompts):
        n = len(prompts)
        return np.concatenate([prompts, np.full((n, 1), self.digits), np.sort(prompts, axis=1)], axis=1)

    def batch(self, rng, n):
        """(x, y): x (n, 2L) input ids, y (n, 2L) next-token targets, IGNORE on the prompt."""
        return self.split(self.sequences(self._prompts(self._draw(rng, n))))

    def split(self, seq):
        x, y = seq[:, :-1], seq[:, 1:].copy()
        y[:, :self.length] = IGNORE  # predicting the prompt's random digits is not the task
        return x, y

    def decode(self, ids):
        return " ".join(self.chars[int(i)] for i in ids)


class TextTask:
    """Characters of a UTF-8 file: random windows of block_size + 1 from the first 90%, the rest held out."""

    def __init__(self, path, block_size, heldout):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if len(text) < text_min_chars(block_size):  # (check_config refuses it before the run)
            raise SystemExit(f"--text {path}: expected at least {text_min_chars(block_size)} characters for "
                             f"--block-size {block_size}, got {len(text)}")
        self.chars = sorted(set(text))
        self.vocab = len(self.chars)
        ids = np.array([self.chars.index(c) for c in text] if self.vocab < 50 else
                       [{c: i for i, c in enumerate(self.chars)}[c] for c in text], dtype=np.int64)
        cut = max(int(len(ids) * 0.9), block_size + 1)
        self.train_ids, self.val_ids = ids[:cut], ids[cut - block_size:]  # the val windows start in the train part
        self.block_size = block_size
        starts = np.linspace(0, len(self.val_ids) - block_size - 1, num=min(heldout, 256)).astype(np.int64)
        self.test = np.stack([self.val_ids[s:s + block_size + 1] for s in starts])

    def batch(self, rng, n):
        starts = rng.integers(0, len(self.train_ids) - self.block_size, size=n)
        return self.split(np.stack([self.train_ids[s:s + self.block_size + 1] for s in starts]))

    def split(self, seq):
        return seq[:, :-1], seq[:, 1:]

    def decode(self, ids):
        return "".join(self.chars[int(i)] for i in ids)


# -- both implementations, one GPT step each ------------------------------------------------------------

def param_groups(params, weight_decay):
    """nanoGPT's AdamW groups: weights (2-D) decay, biases and layer-norm weights (1-D) do not."""
    params = list(params)
    return [{"params": [p for p in params if len(p.shape) >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if len(p.shape) < 2], "weight_decay": 0.0}]


def schedule(optimizer, module, eff):
    """Linear warmup from lr/100, then cosine decay to lr/10 (torch's classes on each side)."""
    warm, steps = eff["warmup"], eff["steps"]
    return module.SequentialLR(optimizer, [module.LinearLR(optimizer, 0.01, 1.0, warm),
                                           module.CosineAnnealingLR(optimizer, max(steps - warm, 1),
                                                                    eta_min=eff["lr"] / 10)], [warm])


class GPTTwins(_lab.Twins):
    """Twins for a sequence model: integer ids in, (B, T, V) logits flattened for the loss, gradient
    clipping and a learning-rate schedule on each side."""

    def __init__(self, model, cfg, eff, log):
        super().__init__(model, nn.CrossEntropyLoss(ignore_index=IGNORE), lambda p: optim.SGD(p, lr=eff["lr"]), cfg)
        # AdamW with the same groups on each side, built here: the groups interleave in parameter order
        self.optimizer = optim.AdamW(param_groups(self.model.parameters(), cfg.weight_decay), lr=eff["lr"],
                                     betas=(0.9, 0.95))
        self.toptimizer = torch.optim.AdamW(param_groups(self.tmodel.parameters(), cfg.weight_decay), lr=eff["lr"],
                                            betas=(0.9, 0.95), foreach=False)
        self.vocab, self.clip, self.log = model.config.vocab_size, cfg.grad_clip, log
        self.schedulers = {"manual": schedule(self.optimizer, optim.lr_scheduler, eff),
                           "torch": schedule(self.toptimizer, torch.optim.lr_scheduler, eff)}
        # the yardstick: the torch model again, every weight one ulp up, trained on the same batches
        self.baseline, self.baseline_drift = None, []
        if cfg.rounding_baseline and len(self.impls) == 2 and not cfg.resume:  # (the copy is not checkpointed)
            # on several ranks the yardstick trains in one process on the whole batch (a twin, not a copy of the
            # DDP-wrapped model): its drift then also holds the data-parallel sums' other rounding
            self.baseline = twin(self.model, device=self.tdev) if self.sharded else copy.deepcopy(self.tmodel)
            with torch.no_grad():
                for p in self.baseline.parameters():
                    p.copy_(torch.nextafter(p, torch.full_like(p, math.inf)))
            self.boptimizer = torch.optim.AdamW(param_groups(self.baseline.parameters(), cfg.weight_decay),
                                                lr=eff["lr"], betas=(0.9, 0.95), foreach=False)
            self.bscheduler = schedule(self.boptimizer, torch.optim.lr_scheduler, eff)

    def place(self, x, y=None):
        xm = B.place_labels(x, self.mdev)
        xt = torch.as_tensor(np.asarray(x, dtype=np.int64), device=self.tdev)
        if y is None:
            return xm, xt
        ym = B.place_labels(np.asarray(y).reshape(-1), self.mdev)
        yt = torch.as_tensor(np.asarray(y, dtype=np.int64).reshape(-1), device=self.tdev)
        return (xm, ym), (xt, yt)

    def step(self, x, y):
        whole = self.place(x, y)[1] if self.baseline is not None else None  # the yardstick's: the whole batch
        scale = share = None
        if self.sharded:  # this rank's sequences; scale and share as in Twins._sharded_step
            x, y, scale, share = _dist.shard(self.criterion, np.asarray(x), np.asarray(y))
        (xm, ym), (xt, yt) = self.place(x, y)
        out = {}
        step = self.schedulers["manual" if "manual" in self.impls else "torch"].last_epoch
        if "manual" in self.impls:
            xp = B.namespace(xm)
            model = self.mddp or self.model
            self.optimizer.zero_grad()
            logits = model(xm)  # (B, T, V)
            loss = self.criterion(xp.reshape(logits, (-1, self.vocab)), ym)
            seed = None if scale is None else B.place(np.asarray(scale), self.mdev, self.dtype)
            model.backward(xp.reshape(self.criterion.backward(seed), logits.shape))
            norm = clip_grad_norm_(self.model.parameters(), self.clip)  # the norm before clipping
            lr = self.optimizer.param_groups[0]["lr"]
            self.optimizer.step()
            self.schedulers["manual"].step()
            out["manual"] = {"loss": float(B.to_numpy(loss)), "grad_norm": {"total": float(B.to_numpy(norm))}, "lr": lr}
        if "torch" in self.impls:
            lr = self.toptimizer.param_groups[0]["lr"]
            tloss, norm = self._torch_step(self.tmodel, self.toptimizer, self.schedulers["torch"], xt, yt,
                                           forward=self.tddp, scale=scale)
            out["torch"] = {"loss": float(tloss.detach()), "grad_norm": {"total": float(norm)}, "lr": lr}
        if self.sharded:  # the whole batch's loss: sum over ranks of share_r loss_r
            self._whole_batch_loss(out, {i: o["loss"] for i, o in out.items()}, share)
        self.log.scalar("lr", {i: o.pop("lr") for i, o in out.items()}, step)
        if self.baseline is not None:
            self._torch_step(self.baseline, self.boptimizer, self.bscheduler, *whole)
            with torch.no_grad():
                d = max(float((a - b).abs().max()) for a, b in zip(self.tmodel.parameters(), self.baseline.parameters()))
            self.baseline_drift.append(d)
            self.log.scalar_all("parity/rounding_baseline", d, step)
        return out

    def _torch_step(self, model, optimizer, scheduler, xt, yt, forward=None, scale=None):
        """forward: the module the batch goes through (torch's DDP around `model` on several ranks);
        scale: the seed of the loss's gradient there."""
        optimizer.zero_grad()
        loss = self.tcriterion((forward or model)(xt).reshape(-1, self.vocab), yt)
        (loss if scale is None else loss * scale).backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), self.clip)
        optimizer.step()
        scheduler.step()
        return loss, norm

    def logits(self, x, impls=None):
        """impl -> NumPy (B, T, V) logits in eval mode, nothing saved for a backward."""
        xm, xt = self.place(x)
        out = {}
        impls = self.impls if impls is None else impls
        if "manual" in impls:
            self.model.eval()
            with manual.no_grad():
                out["manual"] = B.to_numpy(self.model(xm))
            self.model.train()
        if "torch" in impls:
            self.tmodel.eval()
            with torch.no_grad():
                out["torch"] = self.tmodel(xt).cpu().numpy()
            self.tmodel.train()
        return out


def heldout_metrics(twins, task, sort, n=None):
    """impl -> (held-out loss, exact match): one teacher-forced forward pass in batches of 256."""
    seq = task.test if n is None else task.test[:n]
    losses, right = {i: [] for i in twins.impls}, {i: [] for i in twins.impls}
    for s in range(0, len(seq), 256):
        x, y = task.split(seq[s:s + 256])
        for impl, lg in twins.logits(x).items():
            lg = lg.astype(np.float64)
            m = lg.max(-1, keepdims=True)
            logp = lg - m - np.log(np.exp(lg - m).sum(-1, keepdims=True))
            mask = y != IGNORE
            nll = -np.take_along_axis(logp, np.where(mask, y, 0)[..., None], -1)[..., 0]
            losses[impl].append((float(nll[mask].sum()), int(mask.sum())))
            right[impl].append(np.all((lg.argmax(-1) == y) | ~mask, axis=1))
    loss = {i: sum(a for a, _ in v) / sum(b for _, b in v) for i, v in losses.items()}
    exact = {i: float(np.mean(np.concatenate(v))) for i, v in right.items()} if sort else None
    return loss, exact


# -- what TensorBoard shows besides scalars --------------------------------------------------------

def attention_maps(twins, x):
    """impl -> [(nh, T, T) per layer]: the causal softmax weights of one sequence x (1, T).

    manual: the attention cores keep their weights when asked (record_attention). torch: from
    the twin's c_attn output, softmax(q k^T / sqrt(hs)) with the causal mask, computed here."""
    out = {}
    if "manual" in twins.impls:
        blocks = list(twins.model.transformer.h)
        for b in blocks:
            b.attn.sdpa.record_attention = True
        twins.logits(x)
        out["manual"] = [B.to_numpy(b.attn.sdpa.attention)[0] for b in blocks]
        for b in blocks:
            b.attn.sdpa.record_attention = False
            b.attn.sdpa.attention = None
    if "torch" in twins.impls:
        caught, hooks = [], []
        for b in twins.tmodel.transformer.h:
            hooks.append(b.attn.c_attn.register_forward_hook(lambda m, i, o: caught.append(o.detach())))
        twins.logits(x)
        for h in hooks:
            h.remove()
        maps = []
        for qkv, b in zip(caught, twins.tmodel.transformer.h):
            Bn, T, C3 = qkv.shape
            nh = b.attn.sdpa.n_head
            q, k, _ = (t.view(Bn, T, nh, -1).transpose(1, 2) for t in qkv.split(C3 // 3, dim=2))
            s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
            s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool, device=s.device).tril(), float("-inf"))
            maps.append(torch.softmax(s, -1)[0].cpu().numpy())
        out["torch"] = maps
    return out


def attention_figure(maps, labels, title):
    """Layers down, heads across; in each T x T map row i is how much position i attends to position j."""
    nl, nh, T = len(maps), maps[0].shape[0], maps[0].shape[-1]
    tiles = np.concatenate([np.asarray(m) for m in maps])  # (nl * nh, T, T): layer 0's heads first
    fig = _lab.mosaic_figure(_lab.mosaic(tiles, cols=nh, scale=None), f"{title}\ntokens: {' '.join(labels)} "
                             "(row: query, column: key)", cmap="viridis", vmin=0.0,
                             size=(min(1.2 + 1.3 * nh, 9), min(1.2 + 1.3 * nl, 9)))
    ax = fig.axes[0]
    ax.set_axis_on()
    ax.set_xticks([1 + h * (T + 1) + T / 2 - 0.5 for h in range(nh)], [f"head {h}" for h in range(nh)])
    ax.set_yticks([1 + li * (T + 1) + T / 2 - 0.5 for li in range(nl)], [f"layer {li}" for li in range(nl)])
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    return fig


def log_attention(log, twins, task, step, when):
    x = task.split(task.test[:1])[0]
    labels = [task.chars[int(i)] if task.chars[int(i)].strip() else "_" for i in x[0]]
    for impl, maps in attention_maps(twins, x).items():
        log.image(impl, "attention", attention_figure(maps, labels, f"{impl}: attention weights {when}"), step)


def greedy(twins, impl, prompt, n, block_size):
    """Greedy continuation of prompt (1, T0) by n tokens with one implementation."""
    ids = np.array(prompt)
    for _ in range(n):
        lg = twins.logits(ids[:, -block_size:], impls=(impl,))
        ids = np.concatenate([ids, lg[impl][:, -1].argmax(-1)[:, None]], axis=1)
    return ids


def samples_text(twins, task, sort, block_size, n_text=200):
    """impl -> Markdown: generated answers to held-out prompts (sorting), or a continuation (text)."""
    out = {}
    for impl in twins.impls:
        if sort:
            L = task.length
            rows = ["| prompt | generated | right |", "|---|---|---|"]
            seqs = task.test[:N_SAMPLES]
            gens = greedy(twins, impl, seqs[:, :L + 1], L, block_size)  # (N_SAMPLES, 2L + 1), token by token
            for seq, gen in zip(seqs, gens):
                ok = np.array_equal(gen[L + 1:], seq[L + 1:])
                rows.append(f"| {task.decode(seq[:L])} | {task.decode(gen[L + 1:])} | {'yes' if ok else 'NO'} |")
            out[impl] = "\n".join(rows)
        else:
            gen = greedy(twins, impl, task.test[:1, :block_size // 2], n_text, block_size)[0]
            out[impl] = "    " + task.decode(gen).replace("\n", "\n    ")
    return out


# -- main ------------------------------------------------------------------------------------------

def main(cfg: Config):
    t0 = time.perf_counter()
    rng = _lab.seeded(cfg)
    eff = _quick(cfg)
    sort = not cfg.text
    if sort:
        task = SortTask(eff["length"], eff["digits"], eff["heldout"], rng)
        block = 2 * eff["length"]
    else:
        task = TextTask(cfg.text, cfg.block_size, eff["heldout"])
        block = cfg.block_size
    gcfg = nn.GPTConfig(block_size=block, vocab_size=task.vocab, n_layer=eff["n_layer"], n_head=cfg.n_head,
                        n_embd=cfg.n_embd, dropout=cfg.dropout)
    model = nn.GPT(gcfg, generator=rng)
    steps = eff["steps"]
    with _lab.RunLogger(NAME, cfg) as log:
        twins = GPTTwins(model, cfg, eff, log)
        log.text("task", (f"sort {eff['length']} digits of 0..{eff['digits'] - 1}; held-out prompts: "
                          f"{len(task.test)}" if sort else f"characters of {cfg.text} ({task.vocab} distinct)")
                 + f"; GPT {gcfg}")
        log_attention(log, twins, task, 0, "at initialisation")
        batch_rng = np.random.default_rng(cfg.seed + 1)
        batches = [task.batch(batch_rng, eff["batch_size"]) for _ in range(steps)]  # fixed by the seed: resumable

        def evaluate(step):
            loss, exact = heldout_metrics(twins, task, sort, n=512)
            tags = {"loss/heldout": loss}
            if exact is not None:
                tags["accuracy/exact_match"] = exact
            return tags

        hist = _lab.train(twins, log, lambda s: batches[s], steps, evaluate=evaluate, eval_every=eff["eval_every"],
                          log_histograms_every=steps, desc="gpt", progress=cfg.progress)
        loss, exact = heldout_metrics(twins, task, sort)
        log_attention(log, twins, task, hist["steps"], f"after {hist['steps']} steps")
        for impl, text in samples_text(twins, task, sort, block, n_text=60 if cfg.quick else 200).items():
            log.text_to(impl, "samples", text, hist["steps"])
    seconds = time.perf_counter() - t0
    drift = float(np.max(hist["drift"])) if hist["drift"] else None
    tol = _lab.DRIFT_TOL[cfg.dtype]
    claims = []
    if sort:
        claims.append(_lab.Claim.each(f"a GPT by hand sorts held-out sequences: exact match >= {EXACT_MIN}", exact,
                                      lambda e: e >= EXACT_MIN))
    else:
        chance = math.log(task.vocab)
        claims.append(_lab.Claim.each(f"it learns the text: held-out loss < ln(vocab) = {chance:.2f} (uniform guessing)",
                                      loss, lambda v: v < chance))
    base = max(twins.baseline_drift) if twins.baseline_drift else None
    ratio = None
    if drift is not None and base is not None and len(twins.baseline_drift) == len(hist["drift"]):
        # step by step: rounding alone (a torch copy one ulp away) moves the run by b_t; manual may differ from
        # torch by at most ROUNDING_FACTOR b_t (+ a few ulps). A wrong derivative breaks this at the first
        # steps, while b_t ~ 1e-16, even in a run whose late steps are chaotic (both drifts then grow alike)
        bt, dt = np.array(twins.baseline_drift), np.array(hist["drift"])
        ratio = float(np.max(dt / (bt + ULPS)))
        tol = max(tol, float(np.max(ROUNDING_FACTOR * bt + ULPS)))
        claims.append(_lab.Claim.pair(f"both implementations train the same GPT as float64 rounding allows: at every "
                                      f"step, max |manual - torch| <= {ROUNDING_FACTOR} x (drift of torch from itself "
                                      f"started one ulp away) + {ULPS:g}; value: the largest ratio", ratio,
                                      ratio <= ROUNDING_FACTOR))
    elif drift is not None:  # one implementation, a resumed run, or --no-rounding-baseline
        claims.append(_lab.Claim.pair(f"both implementations train the same GPT: max |manual - torch| over every "
                                      f"parameter and step <= {tol:g} ({cfg.dtype})", drift, drift <= tol))
    results = {i: {"heldout_loss": loss[i], "final_loss": hist["loss"][i][-1] if hist["loss"][i] else None,
                   **({"exact_match": exact[i]} if sort else {})} for i in cfg.impls}
    data = {"vocab": task.vocab, "heldout": len(task.test), "steps": steps, "block_size": block,
            "parameters": sum(int(np.prod(p.shape)) for p in model.parameters()), "wall_seconds": round(seconds, 1)}
    data["rounding_baseline"] = base  # max over the run of the yardstick's drift
    data["drift_over_rounding"] = ratio
    return _lab.result(cfg, log, results, claims, drift=drift, drift_tol=tol, data=data,
                       history={"loss/train": hist["loss"]})
