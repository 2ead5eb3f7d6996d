"""Checkpoints without pickle, exact resume, and signals that stop a run cleanly.

Format (one file, `<run>/checkpoints/seg<i>-step<k>.safetensors`):
    a safetensors file whose arrays are every array of the run's state (model weights and
    buffers, optimizer state, torch's RNG state), and whose header metadata holds
        "format": FORMAT,
        "state":  JSON of everything else, with each array replaced by {"__bl_array__": name},
        "sha256": a digest of FORMAT, the JSON and every array (name, dtype, shape, bytes).
    One file, so one rename makes it appear whole; the digest refuses a truncated or edited
    file with a clear error. Nothing is ever unpickled: arrays come back through safetensors,
    the rest through json.

What a checkpoint holds (the "state" tree):
    experiment, config, step and segment (which `_lab.train` call of the run, and its step),
    each implementation's model state_dict and optimizer state_dict (torch's layout, so a
    manual checkpoint loads into the torch twin and the reverse), schedulers when a Twins has
    them, every random generator (NumPy generators from `_lab.seeded`, manual.init's, torch's
    CPU/CUDA, Python's `random`), the training history so far, the logger's status and notes,
    and for each finished segment of the run its final state and history. The data-order
    position is the step: the experiments' batch orders are rebuilt from the seed and indexed by
    step, and any generator a batch function draws from is captured with the others.

Resume: the experiment's main() runs again from the start with the checkpoint's config;
`_lab.train` restores a finished segment's end state instead of training it, and restores the
checkpointed segment at its step, then trains on. On CPU the result is bit-identical.

Signals (experiments/signals.py, re-exported here): inside a training loop the first SIGINT or
SIGTERM stops the loop at the next step boundary, which writes a checkpoint and raises `Stop`.
"""

from __future__ import annotations

import dataclasses
import errno
import glob
import hashlib
import json
import os
import random
import tempfile
import threading
from contextlib import contextmanager

import numpy as np

FORMAT = "backprop-lab/checkpoint/1"
SUFFIX = ".safetensors"
# RunConfig fields a resumed run may set differently from the checkpoint (they change no number
# the run computes): the first three always come from the command line, the others from the
# checkpoint unless given. Every other option is the checkpoint's; given, it must agree.
FROM_COMMAND_LINE = ("resume", "logdir", "progress")
RESUME_FREE = FROM_COMMAND_LINE + ("save_every", "impl")
_MARK = "__bl_"
KEEP = 2  # mid-segment checkpoints kept per run (the newest); each segment's end checkpoint is kept


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: truncated, edited, not a checkpoint, or not this run's."""


# -- the file ------------------------------------------------------------------------------

def _encode(obj, path, arrays):
    """obj -> JSON-able tree; arrays (NumPy or torch) move to `arrays` under their path."""
    if isinstance(obj, np.ndarray) or _is_tensor(obj):
        lib = "numpy" if isinstance(obj, np.ndarray) else "torch"
        arr = obj if lib == "numpy" else obj.detach().cpu().numpy()
        arrays[path] = arr if arr.flags.c_contiguous else arr.copy(order="C")  # (ascontiguousarray makes 0-d 1-d)
        node = {_MARK + "array__": path, "lib": lib}
        if lib == "torch":
            node["device"] = str(obj.device)
        return node
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, tuple):
        return {_MARK + "tuple__": [_encode(v, f"{path}/{i}", arrays) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{path}/{i}", arrays) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith(_MARK) for k in obj):
            return {k: _encode(v, f"{path}/{k}", arrays) for k, v in obj.items()}
        return {_MARK + "items__": [[_encode(k, f"{path}/key", {}), _encode(v, f"{path}/{k}", arrays)]
                                    for k, v in obj.items()]}
    raise TypeError(f"checkpoint: cannot store {type(obj).__name__} at {path or '/'} "
                    "(expected arrays, numbers, strings, None, lists, tuples or dicts)")


def _decode(node, arrays):
    if isinstance(node, list):
        return [_decode(v, arrays) for v in node]
    if not isinstance(node, dict):
        return node
    if _MARK + "array__" in node:
        arr = arrays[node[_MARK + "array__"]]
        if node.get("lib") == "torch":
            import torch

            return torch.from_numpy(arr.copy())  # CPU; load_state_dict moves it where it belongs
        return arr
    if _MARK + "tuple__" in node:
        return tuple(_decode(v, arrays) for v in node[_MARK + "tuple__"])
    if _MARK + "items__" in node:
        return {_decode(k, arrays): _decode(v, arrays) for k, v in node[_MARK + "items__"]}
    return {k: _decode(v, arrays) for k, v in node.items()}


def _is_tensor(obj):
    t = type(obj)
    return t.__module__.startswith("torch") and t.__name__ in ("Tensor", "Parameter")


def _digest(state_json: str, arrays: dict) -> str:
    h = hashlib.sha256(FORMAT.encode())
    h.update(state_json.encode())
    for name in sorted(arrays):
        a = arrays[name]
        h.update(f"\0{name}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def replaceable(path: str) -> bool:
    """Whether atomic_write may rename a new file over `path`: it is absent or a regular file. A link
    (/dev/stdout, a results.json linked elsewhere), a device (/dev/null) or a FIFO is written into instead:
    a rename would put a regular file in its place."""
    return not os.path.islink(path) and (not os.path.exists(path) or os.path.isfile(path))


def atomic_write(path: str, data: bytes):
    """Write `data` to `path` so that `path` is either the old file or all of the new one:
    a temporary file in the same folder, flushed and fsynced, then renamed over `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    # the name's first 100 characters: a name near the folder's limit (255 bytes) must leave room for the rest
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path)[:100] + ".", suffix=".tmp", dir=folder)
    try:
        if hasattr(os, "fchmod"):  # POSIX: the mode open() would give, not mkstemp's 0600
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # the rename itself survives a power cut once the folder is synced
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def save(path: str, state: dict) -> str:
    """Write `state` (nested dicts/lists/tuples of JSON values and NumPy/torch arrays) atomically."""
    from safetensors.numpy import save as st_save

    arrays: dict = {}
    tree = _encode(state, "", arrays)
    state_json = json.dumps(tree, separators=(",", ":"))
    meta = {"format": FORMAT, "state": state_json, "sha256": _digest(state_json, arrays)}
    atomic_write(path, st_save(arrays, metadata=meta))
    return path


def load(path: str) -> dict:
    """Read and verify a checkpoint; a truncated, edited or foreign file raises CheckpointError."""
    from safetensors.numpy import load as st_load

    try:
        with open(path, "rb") as f:
            blob = f.read()
    except IsADirectoryError:
        raise CheckpointError(f"checkpoint {path}: is a folder, expected a {SUFFIX} file") from None
    except OSError as e:
        raise CheckpointError(f"checkpoint {path}: cannot read it ({e.strerror})") from None
    what = f"checkpoint {path}"
    if len(blob) < 8:
        raise CheckpointError(f"{what}: {len(blob)} bytes, not a checkpoint (expected a safetensors header)")
    n = int.from_bytes(blob[:8], "little")
    if 8 + n > len(blob):
        raise CheckpointError(f"{what}: truncated (its header alone needs {8 + n} bytes, the file has {len(blob)})"
                              if n < 1 << 24 else f"{what}: not a checkpoint (no safetensors header)")
    try:
        header = json.loads(blob[8:8 + n])
        meta = header.pop("__metadata__", None) or {}
    except (ValueError, AttributeError):
        raise CheckpointError(f"{what}: not a checkpoint (its safetensors header is not JSON)") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{what}: expected format {FORMAT!r}, got {meta.get('format')!r}")
    if not isinstance(meta.get("state"), str):
        raise CheckpointError(f"{what}: damaged (expected a 'state' entry in its metadata, got keys {sorted(meta)})")
    try:
        end = max((v["data_offsets"][1] for v in header.values()), default=0)
    except (KeyError, TypeError, IndexError):
        raise CheckpointError(f"{what}: damaged (an array in its header has no valid 'data_offsets')") from None
    if 8 + n + end != len(blob):
        raise CheckpointError(f"{what}: truncated or padded (expected {8 + n + end} bytes, the file has {len(blob)})")
    try:
        arrays = st_load(blob)
    except Exception as e:  # safetensors' own error for a malformed header
        raise CheckpointError(f"{what}: damaged ({e})") from None
    if _digest(meta["state"], arrays) != meta.get("sha256"):
        raise CheckpointError(f"{what}: fails its SHA-256 check (the file was changed after it was written)")
    return _decode(json.loads(meta["state"]), arrays)


# -- random generators -----------------------------------------------------------------------

_GENERATORS: list = []  # NumPy generators handed out by _lab.seeded (data and batch order)


def track(rng: np.random.Generator) -> np.random.Generator:
    """Register a NumPy generator whose state checkpoints capture (in creation order)."""
    _GENERATORS.append(rng)
    return rng


def reset_tracking():
    _GENERATORS.clear()


def rng_state() -> dict:
    import torch

    from manual import init

    out = {
        "numpy": [g.bit_generator.state for g in _GENERATORS],
        "manual_init": init.default_generator().bit_generator.state,
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["torch_cuda"] = list(torch.cuda.get_rng_state_all())
    return out


def set_rng_state(state: dict):
    import torch

    from manual import init

    if len(state["numpy"]) != len(_GENERATORS):
        raise CheckpointError(f"checkpoint holds {len(state['numpy'])} NumPy generator(s), this run made "
                              f"{len(_GENERATORS)}: it was written by different code")
    for g, s in zip(_GENERATORS, state["numpy"]):
        g.bit_generator.state = s
    init.default_generator().bit_generator.state = state["manual_init"]
    torch.set_rng_state(state["torch"])
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["torch_cuda"])


# -- one run's checkpoints -----------------------------------------------------------------

def _copy(tree):
    """A deep copy of a state tree (arrays copied: optimizers update theirs in place)."""
    if isinstance(tree, dict):
        return {k: _copy(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_copy(v) for v in tree)
    if isinstance(tree, np.ndarray):
        return tree.copy()
    if _is_tensor(tree):
        return tree.detach().clone()
    return tree


class Session:
    """Where a run's checkpoints go, when they are written, and what a resume restores.

    A run is a sequence of segments, one per `_lab.train` call. `begin` tells train() whether to
    run a segment from step 0, skip it (finished before the checkpoint: its end state is
    restored), or resume it at the checkpoint's step.
    """

    def __init__(self, log, cfg, experiment: str, resume: dict | None = None):
        from . import _dist

        self.log = log
        self.dir = log.root and os.path.join(log.root, "checkpoints")  # None on ranks other than 0: they write none
        self.world = _dist.world_size()
        self.per_rank_stats = False  # batch norm on sharded batches: its statistics depend on the rank count
        self.world_note = None
        self.every = int(getattr(cfg, "save_every", 0) or 0)
        self.config = dataclasses.asdict(cfg)
        self.experiment = experiment
        self.resume = resume
        self.done: list = []  # finished segments: {"key", "hist", "twins", "rng", "log"}
        self.latest = None  # the newest checkpoint this run wrote
        self.written: list = []  # its mid-segment checkpoints, oldest first (pruned to KEEP)
        self.saved_done = 0  # finished segments held by the newest checkpoint
        _SESSION[0] = self

    def _log_state(self):
        return {"status": self.log.status, "notes": list(self.log.notes)}

    def _set_log_state(self, s):
        self.log.status = s["status"]
        self.log.notes[:] = s["notes"]

    def begin(self, twins, key: str):
        """("fresh", None, 0) | ("done", hist, steps) | ("resume", hist, step) for the next segment."""
        _STATS["segments"] += 1
        _STATS["root"] = self.log.root
        r, i = self.resume, len(self.done)
        self.per_rank_stats = self.per_rank_stats or per_rank_statistics(twins)
        if r is None:
            return "fresh", None, 0
        if i == 0:
            self.world_note = self._check_world(r)  # noted once the run goes live (restoring resets the notes)
        if i < len(r["done"]):
            seg = r["done"][i]
        elif r["current"] is not None:
            seg = r["current"]
        else:  # checkpointed at the end of the previous segment: this one starts afresh
            self.resume = None
            self.log.note(f"resumed from {r['path']} after segment {i - 1}; {key} starts at step 0")
            self._note_world()
            return "fresh", None, 0
        if seg["key"] != key:
            raise CheckpointError(f"checkpoint {r['path']}: segment {i} is {seg['key']!r}, this run's is {key!r}: "
                                  "it was written by different code or options")
        hist = seg["hist"]
        missing = [impl for impl in twins.impls if impl not in hist["loss"]]
        if missing and i < len(r["done"]):
            raise CheckpointError(
                f"checkpoint {r['path']}: its finished training loop {key!r} was run by {', '.join(hist['loss'])} "
                f"only, so it has no {', '.join(missing)} results; resume with --impl {next(iter(hist['loss']))}, or "
                "switch implementation from a checkpoint inside the first loop")
        twins.load_state_dict(seg["twins"])
        set_rng_state(seg["rng"])
        self._set_log_state(seg["log"])
        for impl in missing:  # one implementation's checkpoint continued by the other
            hist["loss"][impl] = []
        if i < len(r["done"]):
            self.done.append(seg)
            return "done", hist, hist["steps"]
        self.resume = None  # from here on, the run is live
        self.log.note(f"resumed from {r['path']} at step {hist['steps']} of {key}", hist["steps"])
        self._note_world(hist["steps"])
        return "resume", hist, hist["steps"]

    def _check_world(self, r):
        """A checkpoint written on W ranks resumes on W' ranks where the math allows: every step is the whole
        batch's step, so W only changes the order of the sums (rounding), except for batch norm, whose batch
        statistics are each rank's own: with another W they are other numbers, and the run another run."""
        saved = int(r.get("world_size", 1))
        if saved == self.world:
            return None
        check_world(r, self.world, self.per_rank_stats)
        return (f"resumed on {self.world} rank(s) from a checkpoint written on {saved}: each step is still the "
                "whole batch's, so the run continues; the gradient sums are reduced in another order, so it "
                "equals the uninterrupted run to rounding, not bit for bit")

    def _note_world(self, step=0):
        if self.world_note:
            self.log.note(self.world_note, step)
            self.world_note = None

    def unused(self):
        """A message if the run ended before reaching the checkpoint's segment, else None."""
        r = self.resume
        if r is None or (len(self.done) == len(r["done"]) and r["current"] is None):
            return None
        return (f"checkpoint {r['path']}: this run has {len(self.done)} training segment(s) before its end, the "
                f"checkpoint {len(r['done']) + (r['current'] is not None)}: it was written by different code or options")

    def state(self, twins, key, hist):
        return {"key": key, "hist": _copy(hist), "twins": _copy(twins.state_dict()), "rng": rng_state(),
                "log": self._log_state()}

    def after_step(self, twins, key, hist, steps):
        k = hist["steps"]
        _STATS["at"] = [key, k]
        if self.every and k % self.every == 0 and k < steps:
            self.save(twins, key, hist)

    def end(self, twins, key, hist):
        self.done.append(self.state(twins, key, hist))
        if self.every:
            self.save(None, key, hist, finished=True)

    def save_finished(self, reason):
        """A stop outside a training loop (after one finished: evaluation, plots, the next loop's set-up): the
        finished loops in a checkpoint, unless the newest one already holds them all (--save-every N writes
        one at each loop's end; a stop inside a loop writes its own). A resume then skips the training done
        and runs the rest. The path, or None."""
        if self.dir is None or not self.done or self.saved_done >= len(self.done):
            return None
        last = self.done[-1]
        return self.save(None, last["key"], last["hist"], finished=True, reason=reason)

    def save(self, twins, key, hist, finished=False, reason="every"):
        if self.dir is None:  # a rank other than 0: rank 0 writes the job's checkpoints
            return None
        current = None if finished else self.state(twins, key, hist)
        state = {"experiment": self.experiment, "config": self.config, "reason": reason,
                 "segment": len(self.done) - (1 if finished else 0), "key": key, "step": hist["steps"],
                 "current": current, "done": self.done, "world_size": self.world,
                 "per_rank_statistics": self.per_rank_stats}
        os.makedirs(self.dir, exist_ok=True)
        seg = state["segment"]
        path = os.path.join(self.dir, f"seg{seg}-step{hist['steps']:07d}{'-end' if finished else ''}{SUFFIX}")
        save(path, state)
        self.latest = path
        self.saved_done = len(self.done)
        _LAST_WRITTEN[0] = path
        if not finished:  # keep the newest KEEP mid-segment checkpoints; every segment's end stays
            self.written = [p for p in self.written if p != path] + [path]
            for old in self.written[:-KEEP]:
                try:
                    os.unlink(old)
                except OSError:
                    pass
            self.written = self.written[-KEEP:]
        return path


def check_world(state, world, per_rank_stats=False):
    """CheckpointError if a checkpoint written on state["world_size"] ranks cannot resume on `world`: only
    batch norm on sharded batches ties a run to its rank count (see Session._check_world)."""
    saved = int(state.get("world_size", 1))
    if saved != world and (state.get("per_rank_statistics") or per_rank_stats):
        raise CheckpointError(
            f"checkpoint {state.get('path')}: written on {saved} process(es), resumed on {world}: this model has "
            f"batch norm, whose statistics are each process's own shard's, so with another process count the "
            f"resumed steps are not the checkpointed run's: resume it on {saved} (--nproc {saved})")


def per_rank_statistics(twins) -> bool:
    """True when twins trains sharded batches through batch norm (per-rank batch statistics)."""
    if not getattr(twins, "sharded", False):
        return False
    from manual import nn

    return any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for _, m in twins.model.named_modules())


_LAST_WRITTEN = [None]
_STATS = {"segments": 0, "at": None, "root": None}
_SESSION = [None]  # the running experiment's Session


def save_on_stop(reason):
    """Called when a Ctrl-C/SIGTERM ended an experiment: the training loops it finished are saved if no
    checkpoint holds them yet (Session.save_finished); the newest checkpoint's path, or None. A write that
    fails leaves the run as it was (its logs are kept)."""
    s = _SESSION[0]
    if s is not None:
        try:
            s.save_finished(reason)
        except OSError:
            pass
    return _LAST_WRITTEN[0]


def last_written():
    """The newest checkpoint this process wrote since `reset_stats` (None if none)."""
    return _LAST_WRITTEN[0]


def stats():
    """Since `reset_stats`: {"segments": train() calls begun, "at": [segment, steps done] of the
    latest step, "root": the latest run folder}."""
    return dict(_STATS)


def reset_stats():
    _LAST_WRITTEN[0] = None
    _SESSION[0] = None
    _STATS.update(segments=0, at=None, root=None)


def read_for_resume(path: str, experiment: str) -> dict:
    """Load a checkpoint for `experiment`; a finished-segment checkpoint resumes at the next one."""
    state = load(path)
    if state.get("experiment") != experiment:
        raise CheckpointError(f"checkpoint {path}: written by experiment {state.get('experiment')!r}, "
                              f"expected {experiment!r}")
    state["path"] = path
    return state


def open_for_run(cfg, experiment: str):
    """The checkpoint state a run with this config resumes from (cfg.resume: a path or 'latest'), or None."""
    r = getattr(cfg, "resume", "") or ""
    if not r:
        return None
    return read_for_resume(find_latest(cfg.logdir, experiment) if r == "latest" else r, experiment)


def run_root(path: str):
    """The run folder a checkpoint belongs to (<run>/checkpoints/<file>), or None if it sits elsewhere."""
    folder = os.path.dirname(os.path.abspath(path))
    return os.path.dirname(folder) if os.path.basename(folder) == "checkpoints" else None


def find_latest(logdir: str, experiment: str) -> str:
    """The most recently written checkpoint of `experiment` under `logdir`."""
    pattern = os.path.join(logdir, experiment, "**", "checkpoints", "*" + SUFFIX)
    files = [f for f in glob.glob(pattern, recursive=True) if os.path.isfile(f)]
    if not files:
        raise CheckpointError(f"--resume latest: no checkpoint of {experiment} under {logdir} "
                              f"(looked for {pattern}; write some with --save-every N)")
    return max(files, key=lambda f: (os.path.getmtime(f), f))


def resume_config(experiment: str, cfg, given: set):
    """The config a resumed run uses: the checkpoint's, with only RESUME_FREE options taken from
    the command line; any other option given there must equal the checkpoint's."""
    path = find_latest(cfg.logdir, experiment) if cfg.resume == "latest" else cfg.resume
    state = read_for_resume(path, experiment)
    saved = state["config"]
    names = {f.name for f in dataclasses.fields(cfg)}
    unknown = sorted(set(saved) - names)
    if unknown:
        raise CheckpointError(f"checkpoint {path}: options {unknown} unknown to {experiment} here")
    clash = [f"--{k.replace('_', '-')} {getattr(cfg, k)} (the checkpoint has {saved[k]})"
             for k in sorted(given & names) if k not in RESUME_FREE and k in saved and getattr(cfg, k) != saved[k]]
    if clash:
        raise CheckpointError(f"--resume {cfg.resume}: the run would not be the one checkpointed: "
                              + "; ".join(clash) + ". Leave those options out to take the checkpoint's")
    mine = set(FROM_COMMAND_LINE) | (given & set(RESUME_FREE))
    values = {k: (getattr(cfg, k) if k in mine else saved.get(k, getattr(cfg, k))) for k in names}
    values["resume"] = path
    return type(cfg)(**values), state


# -- failed writes ---------------------------------------------------------------------------

# errno values meaning "this run cannot write its logs, checkpoints or results"
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO, errno.EACCES, errno.EPERM})


def is_write_failure(e: BaseException) -> bool:
    """A write this run could not do: the errnos above, or a file of the run's own folder gone (the folder
    removed under the running run: ENOENT)."""
    if not isinstance(e, OSError):
        return False
    if e.errno in WRITE_ERRNOS:
        return True
    from . import _lab

    root = _STATS["root"] or _lab.CURRENT_ROOT
    name = os.fsdecode(e.filename) if e.filename is not None else ""
    return e.errno == errno.ENOENT and root is not None and os.path.abspath(name).startswith(os.path.abspath(root) + os.sep)


@contextmanager
def quiet_writer_threads():
    """TensorBoard writes from a background thread; a failed write there (disk full) comes back
    in the main thread at the next log call and is reported once, so the thread's own
    traceback is not printed."""
    old = threading.excepthook

    def hook(args):
        if not is_write_failure(args.exc_value):
            old(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = old


# signals live in a stdlib-only module so the CLI can install them before any heavy import
from .signals import Stop, handle_signals, pending_stop, step_boundaries  # noqa: E402,F401
