"""Data parallelism by hand, on torch.distributed: the twin of torch.nn.parallel.DistributedDataParallel.

Each of W ranks runs forward and the hand-written backward on its shard of the batch; then
every gradient is averaged across ranks, as DDP does:

    g = sum_r (g_r * (1/W))          one all_reduce(SUM) per flat bucket, not per parameter

With shards of n_r examples each and mean losses, that average is a mean of per-rank means. It
equals the mean over the whole batch of N examples only when every n_r = N / W; in general

    (1/W) sum_r g_r - (1/N) sum_r n_r g_r = sum_r (1/W - n_r/N) g_r        (`mean_of_means_gap`)

and scaling each rank's loss gradient by `global_mean_scale(n_r) = W n_r / N` removes the gap.

Communication is torch.distributed's (gloo on CPU, nccl on CUDA); nothing here talks to a
socket. NumPy gradients are packed into a NumPy bucket that torch sees through
`torch.from_numpy` (shared memory, no copy). Every collective runs under the process group's
timeout and a failure raises an error that names the rank.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import time
import zlib

import numpy as np
import torch
import torch.distributed as dist

from . import _backend as B
from ._grad_mode import is_grad_enabled
from .nn import BatchNorm1d, BatchNorm2d, Module

__all__ = [
    "DistributedDataParallel",
    "init_process_group",
    "backend_for",
    "shard_bounds",
    "global_mean_scale",
    "mean_of_means_gap",
    "SyncBatchNorm",
]

_MB = 1024 * 1024  # torch's bucket_cap_mb unit
DEFAULT_TIMEOUT = datetime.timedelta(seconds=60)  # torch's own default is 10-30 min: a lost rank would hang that long


def backend_for(device=None) -> str:
    """'nccl' for a CUDA device (one GPU per rank), 'gloo' for the CPU and NumPy."""
    kind, dev = B.parse_device(device)
    if kind == "torch" and dev.type == "cuda":
        if not dist.is_nccl_available():
            raise RuntimeError(f"device={device!r}: CUDA needs the nccl backend, which this torch build lacks")
        return "nccl"
    return "gloo"


def init_process_group(backend=None, init_method=None, timeout=DEFAULT_TIMEOUT, world_size=-1, rank=-1,
                       store=None, *, device=None):
    """torch.distributed.init_process_group, with the backend chosen from `device` and a short timeout.

    backend=None picks gloo for the CPU and NumPy, nccl for CUDA (`backend_for`). Without
    init_method or store it reads torchrun's environment (MASTER_ADDR, MASTER_PORT, RANK,
    WORLD_SIZE). `timeout` (a timedelta, or seconds) bounds every collective: a rank that dies
    or stops makes the others fail after at most this long instead of hanging.
    """
    if backend is None:
        backend = backend_for(device)
    if not isinstance(timeout, datetime.timedelta):
        timeout = datetime.timedelta(seconds=float(timeout))
    if timeout.total_seconds() <= 0:
        raise ValueError(f"init_process_group: expected a timeout > 0 s, got {timeout.total_seconds()} s")
    kwargs = {"timeout": timeout, "world_size": world_size, "rank": rank}
    if store is not None:
        kwargs["store"] = store
    elif init_method is not None:
        kwargs["init_method"] = init_method
    dist.init_process_group(backend, **kwargs)
    return backend


def shard_bounds(n, world_size, rank):
    """(start, stop) of rank's shard of n examples: contiguous, the first n % W ranks one larger (np.array_split)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"shard_bounds: expected 0 <= rank < world_size = {world_size}, got rank {rank}")
    q, r = divmod(n, world_size)
    start = rank * q + min(rank, r)
    return start, start + q + (rank < r)


def global_mean_scale(n_local, process_group=None) -> float:
    """W n_r / N: multiply this rank's mean-loss gradient by it, and DDP's average of per-rank
    gradients becomes the mean over all N examples of the global batch (one all_reduce of n_r)."""
    world = dist.get_world_size(process_group)
    count = torch.tensor([float(n_local)], dtype=torch.float64)
    if dist.get_backend(process_group) == "nccl":
        count = count.cuda()
    _collective("all_reduce of the shard sizes", lambda: dist.all_reduce(count, group=process_group), process_group)
    total = float(count.item())
    if total <= 0:
        raise ValueError(f"rank {dist.get_rank(process_group)}: global_mean_scale: the global batch is empty")
    return world * n_local / total


def mean_of_means_gap(local_grads, counts):
    """sum_r (1/W - n_r/N) g_r: DDP's mean of per-rank means minus the mean over the whole batch.

    local_grads: one gradient per rank (each the gradient of that rank's mean loss); counts: n_r.
    """
    if len(local_grads) != len(counts) or not counts:
        raise ValueError(f"mean_of_means_gap: expected one gradient per count, got {len(local_grads)} and {len(counts)}")
    w, n = len(counts), float(sum(counts))
    return sum((1.0 / w - c / n) * g for g, c in zip(local_grads, counts))


def _collective(what, fn, group=None):
    """Run a collective; a failure (peer gone, timeout) raises an error naming this rank."""
    try:
        return fn()
    except RuntimeError as e:  # DistBackendError and gloo's timeouts are RuntimeErrors
        raise _rank_error(what, e, group) from e


def _rank_error(what, err, group=None):
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    return RuntimeError(
        f"rank {rank} of {world}: {what} failed: {err}\n"
        f"(a collective fails when another rank has stopped, crashed or not reached it within the process "
        f"group's timeout: that rank's own message says why)"
    )


class _Bucket:
    """Consecutive parameters' gradients in one flat buffer: one collective for all of them."""

    __slots__ = ("names", "params", "slices", "flat", "tensor")

    def __init__(self, named):
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        sizes = [math.prod(p.shape) for p in self.params]
        offsets = np.cumsum([0] + sizes)
        self.slices = [slice(int(a), int(b)) for a, b in zip(offsets[:-1], offsets[1:])]
        first = self.params[0].data
        if B.backend_name(first) == "numpy":
            self.flat = np.empty(int(offsets[-1]), dtype=first.dtype)
            self.tensor = torch.from_numpy(self.flat)  # the same memory: all_reduce writes into self.flat
        else:
            self.flat = torch.empty(int(offsets[-1]), dtype=first.dtype, device=first.device)
            self.tensor = self.flat

    @property
    def nbytes(self):
        return self.tensor.numel() * self.tensor.element_size()

    def views(self):
        for p, s in zip(self.params, self.slices):
            yield p, self.flat[s].reshape(p.shape)


def _placement(a):
    return (B.backend_name(a), str(a.dtype), str(getattr(a, "device", "numpy")))


def _assign_buckets(named, cap_bytes):
    """DDP's rule: parameters in reverse order (the order backward finishes them), appended to the
    current bucket until it reaches cap_bytes; a new bucket also starts at a dtype or device change."""
    buckets, cur, size, where = [], [], 0, None
    for name, p in reversed(named):
        w = _placement(p.data)
        if cur and w != where:
            buckets.append(cur)
            cur, size = [], 0
        cur.append((name, p))
        where = w
        size += math.prod(p.shape) * p.data.dtype.itemsize
        if size >= cap_bytes:
            buckets.append(cur)
            cur, size = [], 0
    if cur:
        buckets.append(cur)
    return [_Bucket(b) for b in buckets]


class DistributedDataParallel(Module):
    """Wraps a manual module: forward as the module's; backward = the module's hand-written
    backward, then every Parameter.grad averaged across ranks (all_reduce over flat buckets).

    As torch's DDP: construction broadcasts rank 0's parameters and buffers (every rank then
    starts from the same weights); `no_sync()` skips the averaging, so micro-batch gradients
    accumulate locally until the first backward outside it; `state_dict()` keys carry the
    "module." prefix; `bucket_cap_mb` bounds a bucket's size; `broadcast_buffers` sends rank 0's
    buffers (running statistics) before each forward that follows a synced one, so batch norm
    keeps per-rank batch statistics (SyncBatchNorm below: global ones). `gradient_as_bucket_view=True` leaves each averaged
    .grad as a view into its bucket (no copy back; the next sync overwrites it).

    `comm_stats` counts the collectives, bytes and seconds spent in them (communication timed
    apart from compute).
    """

    def __init__(self, module, process_group=None, bucket_cap_mb=25, broadcast_buffers=True,
                 gradient_as_bucket_view=False, init_sync=True):
        super().__init__()
        if not isinstance(module, Module):
            raise TypeError(f"DistributedDataParallel: expected a manual.nn.Module, got {type(module).__name__}")
        if not dist.is_initialized():
            raise RuntimeError("DistributedDataParallel: the default process group is not initialized: call "
                               "manual.parallel.init_process_group() first (under torchrun it reads RANK and WORLD_SIZE)")
        if not bucket_cap_mb > 0:
            raise ValueError(f"DistributedDataParallel: expected bucket_cap_mb > 0, got {bucket_cap_mb}")
        self.module = module
        self.process_group = process_group
        self.rank = dist.get_rank(process_group)
        self.world_size = dist.get_world_size(process_group)
        self.bucket_cap_mb = bucket_cap_mb
        self.broadcast_buffers = broadcast_buffers
        self.gradient_as_bucket_view = gradient_as_bucket_view
        self.require_backward_grad_sync = True
        self.require_forward_param_sync = True
        named = list(module.named_parameters())
        if not named:
            raise ValueError("DistributedDataParallel: the module has no parameters to average")
        self._placements = {n: _placement(p.data) for n, p in named}
        if dist.get_backend(process_group) == "nccl":
            off = [n for n, (kind, _, dev) in self._placements.items() if not dev.startswith("cuda")]
            if off:
                raise TypeError(f"rank {self.rank}: DistributedDataParallel: nccl reduces CUDA tensors only, but "
                                f"{off} are not on CUDA: move the module with .to('cuda') first, or use gloo")
        self._check_same_model(named)
        self._buckets = _assign_buckets(named, bucket_cap_mb * _MB)
        self.comm_stats = {"collectives": 0, "bytes": 0, "seconds": 0.0}
        if init_sync:
            self._broadcast_parameters()
            self._broadcast_buffers()

    @property
    def bucket_sizes(self):
        """Bytes in each bucket, in the order they are reduced."""
        return [b.nbytes for b in self._buckets]

    @property
    def bucket_names(self):
        return [list(b.names) for b in self._buckets]

    # -- the two passes --------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        # torch's rule: rank 0's buffers are broadcast before a forward that follows a synced,
        # grad-enabled forward (and before the first): none inside no_sync() or after a no_grad() one
        if self.broadcast_buffers and self.require_forward_param_sync:
            self._broadcast_buffers()
        out = self.module(*args, **kwargs)
        self.require_forward_param_sync = is_grad_enabled() and self.require_backward_grad_sync
        return out

    def backward(self, grad_output, *, input_grad=True):
        grad_input = self.module.backward(grad_output, input_grad=input_grad)
        if self.require_backward_grad_sync:
            self._sync_gradients()
        return grad_input

    @contextlib.contextmanager
    def no_sync(self):
        """Backward inside accumulates into .grad locally; the first backward after it averages the sum."""
        before = self.require_backward_grad_sync
        self.require_backward_grad_sync = False
        try:
            yield
        finally:
            self.require_backward_grad_sync = before

    # -- communication ---------------------------------------------------------------------
    def _sync_gradients(self):
        """g <- sum_r g_r * (1/W), bucket by bucket: every rank ends with the same averaged .grad."""
        scale = 1.0 / self.world_size  # DDP multiplies by 1/W while copying into the bucket, then sums
        for b in self._buckets:
            for name, (p, view) in zip(b.names, b.views()):
                g = p.grad
                if g is None:
                    raise RuntimeError(
                        f"rank {self.rank}: DistributedDataParallel: parameter {name!r} has no gradient at the "
                        f"gradient sync: every rank must produce a gradient for every parameter (as torch's DDP "
                        f"with find_unused_parameters=False)")
                if _placement(g) != self._placements[name]:
                    raise TypeError(
                        f"rank {self.rank}: DistributedDataParallel: {name!r}.grad is {_placement(g)}, expected "
                        f"{self._placements[name]} (the parameter's when wrapped): move the module before wrapping it")
                if type(view) is np.ndarray:
                    np.multiply(g, scale, out=view)
                else:
                    torch.mul(g, scale, out=view)
        works = [self._all_reduce(b, i) for i, b in enumerate(self._buckets)]
        t0 = time.perf_counter()
        for i, w in enumerate(works):
            _collective(f"all_reduce of gradient bucket {i} ({', '.join(self._buckets[i].names)})", w.wait,
                        self.process_group)
        self.comm_stats["seconds"] += time.perf_counter() - t0
        for b in self._buckets:
            for p, view in b.views():
                if self.gradient_as_bucket_view:
                    p.grad = view
                elif type(view) is np.ndarray:
                    p.grad = view.copy()
                else:
                    p.grad = view.clone()

    def _all_reduce(self, bucket, i):
        t0 = time.perf_counter()
        work = _collective(
            f"all_reduce of gradient bucket {i} ({', '.join(bucket.names)})",
            lambda: dist.all_reduce(bucket.tensor, op=dist.ReduceOp.SUM, group=self.process_group, async_op=True),
            self.process_group)
        self.comm_stats["seconds"] += time.perf_counter() - t0
        self.comm_stats["collectives"] += 1
        self.comm_stats["bytes"] += bucket.nbytes
        return work

    def _broadcast_parameters(self):
        """Every rank takes rank 0's parameters (one broadcast per bucket), as DDP's constructor does."""
        src = dist.get_global_rank(self.process_group, 0) if self.process_group is not None else 0
        for i, b in enumerate(self._buckets):
            for p, view in b.views():
                view[...] = p.data
            _collective(f"broadcast of parameter bucket {i}",
                        lambda: dist.broadcast(b.tensor, src=src, group=self.process_group), self.process_group)
            for p, view in b.views():
                p.data[...] = view  # in place: an optimizer built before wrapping keeps the same arrays

    def _broadcast_buffers(self):
        """Rank 0's buffers (running statistics, ...) into every rank's, in place."""
        src = dist.get_global_rank(self.process_group, 0) if self.process_group is not None else 0
        for name, buf in self.module.named_buffers():
            numpy = B.backend_name(buf) == "numpy"
            arr = buf if not numpy or buf.flags.c_contiguous else np.array(buf, order="C")
            t = torch.from_numpy(arr) if numpy else buf  # shares arr's memory
            _collective(f"broadcast of buffer {name!r}", lambda: dist.broadcast(t, src=src, group=self.process_group),
                        self.process_group)
            if arr is not buf:
                buf[...] = arr

    def _check_same_model(self, named):
        """Refuse to start if the ranks' models differ (names, shapes, dtypes): DDP checks this too."""
        sig = "|".join(f"{n}:{p.shape}:{p.data.dtype}" for n, p in named)
        mine = torch.tensor([len(named), zlib.crc32(sig.encode())], dtype=torch.int64)
        if dist.get_backend(self.process_group) == "nccl":
            mine = mine.cuda()
        every = [torch.zeros_like(mine) for _ in range(self.world_size)]
        _collective("all_gather of the model signature", lambda: dist.all_gather(every, mine, group=self.process_group),
                    self.process_group)
        bad = [r for r, t in enumerate(every) if not torch.equal(t, every[0])]
        if bad:
            raise RuntimeError(
                f"rank {self.rank}: DistributedDataParallel: ranks {bad} hold a different model from rank 0 "
                f"(parameter names, shapes or dtypes differ; this rank's: {sig})")

    def extra_repr(self):
        return f"world_size={self.world_size}, buckets={len(self._buckets)}, bucket_cap_mb={self.bucket_cap_mb}"

    def __repr__(self):
        return f"DistributedDataParallel({self.extra_repr()})(\n  (module): " + repr(self.module).replace("\n", "\n  ") + "\n)"


# -- batch norm with statistics over every rank ----------------------------------------------

def _all_reduce_sum(a, what, group):
    """sum over ranks of array `a` (NumPy: reduced in place through torch.from_numpy; torch: in place)."""
    if B.backend_name(a) == "numpy":
        a = np.ascontiguousarray(a)
        t = torch.from_numpy(a)
    else:
        t = a = a.contiguous()
    _collective(what, lambda: dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group), group)
    return a


class SyncBatchNorm(BatchNorm1d):
    """Batch norm whose training statistics are those of the whole global batch (every rank's shard):

        mu = (sum_r sum_i x) / M,   var = (sum_r sum_i (x - mu)^2) / M,   M = sum_r m_r values per channel

    two all_reduces forward (the sums, then the centred squares). Backward, with gh = g w:

        dx = rstd (gh - (sum_r sum_i gh) / M - xhat (sum_r sum_i gh xhat) / M)

    one all_reduce of the two per-channel sums: each rank's dx also carries the other ranks' losses
    through mu and var (as torch.nn.SyncBatchNorm). dw, db stay local sums; DDP averages them.
    Running statistics use mu and the unbiased var * M / (M - 1). Outside training, or with one
    rank, it is plain batch norm. Inputs (N, C, *) of any rank, as torch's.
    """

    _dims = (2, 3, 4, 5)  # torch's SyncBatchNorm takes any (N, C, *) input

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 process_group=None, device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
        self.process_group = process_group

    def _sync_now(self):
        return self.training and dist.is_initialized() and dist.get_world_size(self.process_group) > 1

    def forward(self, input):
        if not self._sync_now():
            out = super().forward(input)
            self._save(_synced=False)
            return out
        w, b = (None if p is None else p.data for p in (self.weight, self.bias))
        if input.ndim not in self._dims or input.shape[1] != self.num_features:
            raise ValueError(f"{self!r}: expected input of shape (N, {self.num_features}, *), got {tuple(input.shape)}")
        like = w if w is not None else self.running_mean
        if like is not None and (B.device_of(input) != B.device_of(like) or input.dtype != like.dtype):
            raise TypeError(f"{self!r}: expected an input on {B.device_of(like)} of dtype {like.dtype} (the "
                            f"parameters'), got one on {B.device_of(input)} of dtype {input.dtype}")
        xp = B.namespace(input, w, b, op=f"{type(self).__name__}.forward")
        nd, c = input.ndim, self.num_features
        axes = (0,) + tuple(range(2, nd))
        view = (1, c) + (1,) * (nd - 2)
        m_local = math.prod(input.shape) // c
        rank = dist.get_rank(self.process_group)
        count = xp.ones((1,), dtype=input.dtype, device=input.device) * m_local
        s = _all_reduce_sum(xp.concat([xp.sum(input, axis=axes), count]), f"{self!r}: all_reduce of the sums",
                            self.process_group)  # (C + 1,): per-channel sums, then M
        m = float(s[c])
        mu = xp.reshape(s[:c] / m, view)
        xc = input - mu
        q = _all_reduce_sum(xp.sum(xc * xc, axis=axes), f"{self!r}: all_reduce of the squares", self.process_group)
        var = q / m  # (C,), biased: the normalisation's
        rstd = xp.reshape(1.0 / xp.sqrt(var + self.eps), view)
        xhat = xc * rstd
        if self.training and self.running_mean is not None:
            if m < 2:
                raise ValueError(f"rank {rank}: {self!r}: expected more than 1 value per channel over all ranks, got {m:g}")
            self.num_batches_tracked += 1
            mom = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            self.running_mean[...] = (1.0 - mom) * self.running_mean + mom * xp.reshape(mu, (c,))
            self.running_var[...] = (1.0 - mom) * self.running_var + mom * var * (m / (m - 1))
        self._save(_xhat=xhat, _rstd=rstd, _count=m, _synced=True)
        out = xhat if w is None else xhat * xp.reshape(w, view)
        return out if b is None else out + xp.reshape(b, view)

    def backward(self, grad_output, *, input_grad=True):
        if not self._saved("_synced"):
            return super().backward(grad_output, input_grad=input_grad)
        xhat, rstd, m = self._saved("_xhat"), self._saved("_rstd"), self._saved("_count")
        if tuple(grad_output.shape) != tuple(xhat.shape) or grad_output.dtype != xhat.dtype:
            raise ValueError(f"{self!r}.backward: expected grad_output of shape {tuple(xhat.shape)} and dtype "
                             f"{xhat.dtype}, got shape {tuple(grad_output.shape)} and dtype {grad_output.dtype}")
        xp = B.namespace(grad_output, xhat, op=f"{type(self).__name__}.backward")
        nd, c = xhat.ndim, self.num_features
        axes = (0,) + tuple(range(2, nd))
        view = (1, c) + (1,) * (nd - 2)
        for p, g in ((self.weight, lambda: xp.sum(grad_output * xhat, axis=axes)),
                     (self.bias, lambda: xp.sum(grad_output, axis=axes))):
            if p is not None:
                p.grad = g() if p.grad is None else p.grad + g()
        if not input_grad:
            return None
        gh = grad_output if self.weight is None else grad_output * xp.reshape(self.weight.data, view)
        sums = _all_reduce_sum(xp.concat([xp.sum(gh, axis=axes), xp.sum(gh * xhat, axis=axes)]),
                               f"{self!r}.backward: all_reduce of the gradient sums", self.process_group)
        mean_gh, mean_ghx = xp.reshape(sums[:c] / m, view), xp.reshape(sums[c:] / m, view)
        return rstd * (gh - mean_gh - xhat * mean_ghx)

    @classmethod
    def convert_sync_batchnorm(cls, module, process_group=None):
        """Every BatchNorm1d / BatchNorm2d inside `module` replaced by a SyncBatchNorm that shares its
        Parameters and buffers (torch's classmethod of the same name); returns the converted module."""
        if isinstance(module, (BatchNorm1d, BatchNorm2d)) and not isinstance(module, SyncBatchNorm):
            like = module.running_mean if module.running_mean is not None else module.weight.data
            out = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats,
                      process_group, device=B.device_of(like), dtype=like.dtype)
            if module.affine:
                out.weight, out.bias = module.weight, module.bias
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                out.register_buffer(name, getattr(module, name))
            out.train(module.training)
            return out
        for name, child in list(module._modules.items()):
            new = cls.convert_sync_batchnorm(child, process_group)
            if new is not child:
                setattr(module, name, new)
        return module
