"""The experiment bench: config, devices, TensorBoard logging, and side-by-side training.

Every experiment trains the hand-written model (`manual`) and its autograd twin
(`torch_ref.twin`) from identical weights on identical batches, logs both under
`runs/<experiment>/<timestamp>/{manual,torch}` with the same tags, and records the drift
between them. A NaN/inf loss or Ctrl-C ends the run cleanly: event files are flushed and
closed, and the run is reported as diverged or interrupted.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import io
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

import manual
from manual import _backend as B
from torch_ref import to_torch, twin, twin_loss, twin_optimizer

from . import _dist, checkpoint

IMPLS = ("manual", "torch")
# Max |manual param - torch param| tolerated over a whole training run, by dtype: the
# per-op parity tolerance accumulated over many steps (float64 stays near 1e-12).
DRIFT_TOL = {"float64": 1e-8, "float32": 1e-3}


def opt(default, help, **kw):
    """A dataclass field with a one-line description (shown by `backprop-lab run NAME --help`)."""
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class RunConfig:
    """Options every experiment shares."""

    impl: str = opt("both", "which implementation(s) to train", choices=("manual", "torch", "both"))
    device: str = opt("auto", "auto takes CUDA when present; manual then runs on CUDA tensors", choices=("auto", "cpu", "cuda"))
    backend: str = opt("auto", "arrays of the manual side: numpy, or torch tensors (autograd off) on --device; "
                               "auto: NumPy on CPU, torch on CUDA", choices=("auto", "numpy", "torch"))
    dtype: str = opt("float64", "floating dtype of both implementations", choices=("float32", "float64"))
    seed: int = opt(0, "seed for weights, data and batch order")
    logdir: str = opt("runs", "TensorBoard log root: runs go to LOGDIR/<experiment>/<timestamp>/<impl>")
    quick: bool = opt(False, "a smaller, faster profile (used by `all --quick` and the tests)")
    progress: bool = opt(True, "show progress bars")
    save_every: int = opt(0, "write a checkpoint every N training steps and at each training loop's end "
                             "(0: only when stopped by Ctrl-C or SIGTERM)")
    resume: str = opt("", "continue a run from a checkpoint file, or 'latest' (this experiment's newest "
                          "under --logdir); other options default to the checkpoint's")

    @property
    def impls(self):
        return IMPLS if self.impl == "both" else (self.impl,)


GIVEN: set = set()  # the options given on this run's command line (runner sets it; `all`: none)
CAPPED: list = []  # notes of given values that --quick capped, for the run's output and JSON (runner.run_one)


def quick_cap(cfg, name, cap, value=None):
    """cfg.<name> (or `value`) under --quick: at most `cap`, the quick profile's size. A value given on the
    command line above the cap is capped too (--quick promises a quick run), and the run says so in a note:
    `run xor --quick --steps 5000` runs 300 steps and tells you, where it used to do so silently."""
    v = getattr(cfg, name) if value is None else value
    if not cfg.quick or v <= cap:
        return v
    if name in GIVEN:
        flag = "--" + name.replace("_", "-")
        CAPPED.append(f"--quick caps {flag} at {cap}: this run used {cap}, not the {v} given (without --quick it uses {v})")
    return cap


def config_table(cfg) -> str:
    """The config as a Markdown table (TensorBoard's text plugin renders it)."""
    rows = ["| option | value |", "|---|---|"]
    rows += [f"| {k} | {v} |" for k, v in dataclasses.asdict(cfg).items()]
    return "\n".join(rows)


def resolve_device(device: str, backend: str = "auto"):
    """(torch device, manual device) from --device and --backend:
    CPU -> ('cpu', 'numpy'), or ('cpu', 'cpu') with backend torch (torch CPU tensors); CUDA -> ('cuda', 'cuda').
    auto: CUDA when torch sees a GPU for each process on this machine (torchrun's LOCAL_WORLD_SIZE; nccl takes
    one GPU per process), else the CPU (gloo for several processes)."""
    if device == "auto":
        procs = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        device = "cuda" if torch.cuda.is_available() and torch.cuda.device_count() >= procs else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA GPU here (torch.cuda.is_available() is False); "
                         "use --device auto or cpu")
    if device not in ("cpu", "cuda"):
        raise SystemExit(f"--device: expected auto, cpu or cuda, got {device!r}")
    if backend not in ("auto", "numpy", "torch"):
        raise SystemExit(f"--backend: expected auto, numpy or torch, got {backend!r}")
    if device == "cuda" and backend == "numpy":
        raise SystemExit("--backend numpy runs on the CPU only: use --device cpu, or --backend torch/auto with --device cuda")
    if device == "cuda":
        return device, "cuda"
    return device, ("cpu" if backend == "torch" else "numpy")


# -- TensorBoard -------------------------------------------------------------------------

EVENT_QUEUE = 4096  # events a SummaryWriter holds before add_* waits for its writer thread
GRAD_NORM_POINTS = 50  # points per per-parameter gradient-norm curve (train() logs every ceil(steps/50)th step)


class RunLogger:
    """One SummaryWriter per implementation under LOGDIR/<experiment>/<timestamp>/<impl>."""

    def __init__(self, experiment: str, cfg: RunConfig):
        from torch.utils.tensorboard import SummaryWriter

        resume = checkpoint.open_for_run(cfg, experiment)  # None unless cfg.resume
        # on several ranks (experiments/_dist.py) rank 0 alone writes: the others' logger has no writers
        self.root = root = None
        self.writers = {}
        world = _dist.world_size() if _dist.sharded() else 1  # a data-parallel run says so in its name and config
        if _dist.is_main():
            stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S") + run_label(cfg) + (f"_nproc={world}" if world > 1 else "")
            self.root = root = ((resume and checkpoint.run_root(resume["path"]))
                                or make_run_dir(os.path.join(cfg.logdir, experiment), stamp))
            global CURRENT_ROOT
            CURRENT_ROOT = root  # runner.run_one records a stop's outcome here (no checkpoint may know the folder)
            # max_queue: torch's default of 10 events makes every add_scalar past the tenth wait for the writer
            # thread (a GIL hand-over each: 8.6 of activations' 49 s profiled); flush_secs bounds what a kill -9
            # could lose, and close() (also on Ctrl-C, SIGTERM, divergence) writes everything
            self.writers = {impl: SummaryWriter(os.path.join(root, impl), max_queue=EVENT_QUEUE, flush_secs=10)
                            for impl in cfg.impls}
        self.status = "ok"
        self.notes: list[str] = []
        self.experiment, self.cfg = experiment, cfg
        self.tags: list[str] = []  # scalar tags logged, in first-use order, without the experiment prefix
        self._tagset: set[str] = set()
        self._closed = False
        self.checkpoints = checkpoint.Session(self, cfg, experiment, resume)  # used by train()
        table = config_table(cfg) + (f"\n| processes | {world} (each step's batch split over them) |" if world > 1 else "")
        for w in self.writers.values():
            w.add_text(f"{experiment}/config", table, 0)

    # Every tag starts with the experiment's name, so TensorBoard groups charts by experiment
    # when several runs are open at once; experiments pass tags as "[model/]quantity".
    def _tag(self, tag):
        return f"{self.experiment}/{tag}"

    def _seen(self, tag):
        if tag not in self._tagset:
            self._tagset.add(tag)
            self.tags.append(tag)

    def scalar(self, tag, values: dict, step):
        """values: impl -> number (impls not running are skipped)."""
        for impl, v in values.items():
            if impl in self.writers and v is not None:
                self._seen(tag)
                self.writers[impl].add_scalar(self._tag(tag), float(v), step)

    def scalar_all(self, tag, value, step):
        self._seen(tag)
        for w in self.writers.values():
            w.add_scalar(self._tag(tag), float(value), step)

    def histogram(self, impl, tag, array, step):
        if impl in self.writers:
            a = B.to_numpy(array).astype(np.float64, copy=False)
            # TensorBoard's buckets end at 1e20: a diverging run's weights would make an empty histogram
            if a.size and np.all(np.isfinite(a)) and np.max(np.abs(a)) < 1e20:
                self.writers[impl].add_histogram(self._tag(tag), a, step)

    def image(self, impl, tag, img, step=0):
        """img: HxWx3 uint8/float array, or a matplotlib Figure."""
        targets = list(self.writers.values()) if impl is None else [self.writers.get(impl)]
        arr = figure_to_array(img) if hasattr(img, "savefig") else np.asarray(img)  # render once
        for w in targets:
            if w is not None:
                w.add_image(self._tag(tag), arr, step, dataformats="HWC")

    def panels(self, impl, tag, fig, names, step=0):
        """A figure of several axes as one image per axes, `tag/<name>`: one idea per image, each
        legible at TensorBoard's card size (a three-panel figure shrinks to a third)."""
        if not self.writers:  # a rank other than 0: nothing to render for
            pyplot().close(fig)
            return
        arrays = figure_panels(fig, f" ({impl})" if impl else "")
        for name, arr in zip(names, arrays, strict=True):
            self.image(impl, f"{tag}/{name}", arr, step)

    def text(self, tag, text, step=0):
        for w in self.writers.values():
            w.add_text(self._tag(tag), text, step)

    def text_to(self, impl, tag, text, step=0):
        """Text in one implementation's run only (skipped where it is not written: --impl, ranks other than 0)."""
        if impl in self.writers:
            self.writers[impl].add_text(self._tag(tag), text, step)

    def note(self, message, step=0):
        """A line that ends up in the run's text log and in the returned metrics."""
        self.notes.append(message)
        self.text("events", message, step)

    def close(self):
        """Write the custom-scalars layout and each run's HParams session, then flush and close."""
        if self._closed:
            return
        self._closed = True
        if self.tags and self.writers:
            next(iter(self.writers.values())).add_custom_scalars(layout(self.experiment, self.tags))
        for impl, w in self.writers.items():
            write_hparams(w, self.experiment, impl, self.cfg, self.status)
            w.flush()
            w.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            self.status = "interrupted"
            how = "by SIGTERM" if getattr(exc, "signum", None) == 15 else "by the user (Ctrl-C)"
            saved = self.checkpoints.latest
            self.text("events", f"interrupted {how}; logs up to here are complete"
                      + (f"; checkpoint {saved}" if saved else ""))
        self.close()
        unused = None if exc_type is not None else self.checkpoints.unused()
        if unused:
            raise checkpoint.CheckpointError(unused)
        return False


def make_run_dir(parent, stamp):
    """Create and return parent/stamp, or parent/stamp-2, -3, ...: os.mkdir is atomic, so two runs
    started in the same second never share a folder (an exists-then-create check could)."""
    os.makedirs(parent, exist_ok=True)
    n = 1
    while True:
        root = os.path.join(parent, stamp if n == 1 else f"{stamp}-{n}")
        try:
            os.mkdir(root)
            return root
        except FileExistsError:
            n += 1


# -- the run layout TensorBoard shows -----------------------------------------------------------
# One `all` writes two runs per experiment, LOGDIR/<experiment>/<stamp>[_settings]/{manual,torch}:
# TensorBoard enables runs by default only when there are at most 40, so sweeps live inside a
# run as tag namespaces ("sweep/lr_0.1/..."), never as runs of their own. Each run is also an
# HParams session (experiment, impl and every config field as columns; the final values of
# the experiment's METRICS as metrics).

LABEL_SKIP = ("logdir", "progress", "resume", "save_every")  # settings that do not change what a run computes


def run_label(cfg) -> str:
    """'' for default settings, else '_quick', '_dtype=float32_impl=manual', ...: the run folder says what ran."""
    parts = []
    for f in dataclasses.fields(cfg):
        if f.name in LABEL_SKIP:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        value = getattr(cfg, f.name)
        if value == default:
            continue
        if isinstance(value, bool):
            parts.append(f.name if value else f"no_{f.name}")
        else:
            text = "+".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) \
                if isinstance(value, (list, tuple)) else (f"{value:g}" if isinstance(value, float) else str(value))
            parts.append(f"{f.name}={text}")
    label = "".join(c if c.isalnum() or c in "=+._-" else "-" for c in "_".join(parts))  # no , or : (logdir_spec)
    return "_" + label[:80] if label else ""


def _chart_key(tag):
    """Per-parameter series share one chart: 'mlp/grad_norm/0.weight' -> 'mlp/grad_norm/.*'."""
    head, _, last = tag.rpartition("/")
    return (head + "/.*") if head.rsplit("/", 1)[-1] == "grad_norm" else tag


def _model_of(tag):
    """The model a tag belongs to: everything before its quantity ('sweep/lr_0.1/loss/train' -> 'sweep/lr_0.1')."""
    parts = tag.split("/")
    for i, p in enumerate(parts):
        if p in QUANTITIES:
            return "/".join(parts[:i])
    return "/".join(parts[:-1])


QUANTITIES = ("loss", "accuracy", "parity", "grad_norm", "lr", "stop", "dead_fraction", "w", "x", "y")


def layout(experiment, tags):
    """Custom-scalars layout: one category per experiment, one chart per model and quantity.

    manual and torch write the same tag in two runs, so each chart holds both, named in its
    legend; where they coincide the model's drift chart (max |manual - torch| over its
    parameters) sits right after its loss to show both are there.
    """
    order = {"loss/train": 0, "parity": 1, "loss": 2, "accuracy": 3}  # the drift right after the training loss
    charts, seen = [], set()
    for tag in tags:
        key = _chart_key(tag)
        if key not in seen:
            seen.add(key)
            charts.append(key)
    models = list(dict.fromkeys(_model_of(k) for k in charts))

    def rank(key):
        rest = key[len(_model_of(key)):].lstrip("/")
        return (models.index(_model_of(key)), order.get(rest, order.get(rest.split("/")[0], 4)), charts.index(key))

    import re

    out = {}
    for key in sorted(charts, key=rank):
        title = key.replace("/.*", "/* (one line per parameter)")
        if "parity/" in key:
            title += " = max |manual - torch| (drift)"
        out[title] = ["Multiline", ["^" + re.escape(f"{experiment}/") + (re.escape(key[:-2]) + ".*" if key.endswith("/.*")
                                                                            else re.escape(key) + "$")]]
    return {experiment: out}


def _flat(value):
    if isinstance(value, (list, tuple)):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return value


def hparam_space():
    """(name -> kind, metric tags) over every registered experiment: the one HParams experiment
    every run writes, so whichever run TensorBoard reads it from, every sweep has its columns."""
    from . import runner

    kinds, metrics = {"experiment": str, "impl": str}, []
    for name, mod in runner.runnable().items():  # run-only ones (ddp) too: their runs are sessions as well
        cfg = mod.Config()
        for f in dataclasses.fields(cfg):
            if f.name in LABEL_SKIP:
                continue
            v = _flat(getattr(cfg, f.name))
            kind = bool if isinstance(v, bool) else float if isinstance(v, (int, float)) else str
            kinds[f.name] = kind if kinds.get(f.name, kind) is kind else str  # mixed kinds: text
        metrics += [f"{name}/{t}" for t in getattr(mod, "METRICS", ())]
    return kinds, metrics


def _hparams_summary(tag, **plugin_data):
    """A Summary holding one hparams-plugin record (what tensorboard's hparams/summary.py builds,
    without its TensorFlow import)."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    content = plugin_data_pb2.HParamsPluginData(version=metadata.PLUGIN_DATA_VERSION, **plugin_data)
    meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name=metadata.PLUGIN_NAME,
                                                                 content=content.SerializeToString()))
    return Summary(value=[Summary.Value(tag=tag, metadata=meta)])


def write_hparams(writer, experiment, impl, cfg, status):
    """This run as an HParams session: its settings, and the last value of each METRICS tag."""
    import time

    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    from . import runner

    kinds, metrics = hparam_space()
    types = {bool: api_pb2.DATA_TYPE_BOOL, float: api_pb2.DATA_TYPE_FLOAT64, str: api_pb2.DATA_TYPE_STRING}
    infos = []
    for name, kind in kinds.items():
        # differs=True: TensorBoard lists these columns first (and shows the first few by default)
        info = api_pb2.HParamInfo(name=name, type=types[kind], differs=name in ("experiment", "impl"))
        if name in ("experiment", "impl"):
            info.domain_discrete.extend(list(runner.runnable()) if name == "experiment" else list(IMPLS))
        infos.append(info)
    experiment_pb = api_pb2.Experiment(hparam_infos=infos, metric_infos=[
        api_pb2.MetricInfo(name=api_pb2.MetricName(tag=t), display_name=t) for t in metrics])
    start = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
    values = {"experiment": experiment, "impl": impl}
    for f in dataclasses.fields(cfg):
        if f.name in kinds and f.name not in values:
            values[f.name] = _flat(getattr(cfg, f.name))
    for name, v in values.items():
        if kinds[name] is str:
            start.hparams[name].string_value = str(v)
        elif kinds[name] is bool:
            start.hparams[name].bool_value = bool(v)
        else:
            start.hparams[name].number_value = float(v)
    code = {"ok": api_pb2.STATUS_SUCCESS, "diverged": api_pb2.STATUS_FAILURE}.get(status, api_pb2.STATUS_UNKNOWN)
    fw = writer._get_file_writer()
    fw.add_summary(_hparams_summary(metadata.EXPERIMENT_TAG, experiment=experiment_pb))
    fw.add_summary(_hparams_summary(metadata.SESSION_START_INFO_TAG, session_start_info=start))
    fw.add_summary(_hparams_summary(metadata.SESSION_END_INFO_TAG,
                                    session_end_info=plugin_data_pb2.SessionEndInfo(status=code)))


def figure_to_array(fig) -> np.ndarray:
    """Render a matplotlib figure to an HxWx3 uint8 array (Agg, no display needed)."""
    import matplotlib.pyplot as plt
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


DPI = 120  # with figures ~4-5 in wide: ~500-600 px, TensorBoard's card width, so text is not shrunk
STYLE = {"font.size": 11, "axes.titlesize": 11, "axes.labelsize": 11, "legend.fontsize": 9,
         "xtick.labelsize": 9, "ytick.labelsize": 9, "figure.dpi": DPI}


def figure_panels(fig, title_suffix="") -> list:
    """Each axes of a figure rendered on its own (its title, labels, legend and colorbar included)."""
    import matplotlib.pyplot as plt
    from matplotlib.transforms import Bbox
    from PIL import Image

    out = []
    # a colorbar is drawn with the axes of the picture it explains, not as a panel of its own
    bars = {a: a._colorbar.mappable.axes for a in fig.axes if getattr(a, "_colorbar", None) is not None}
    main = [a for a in fig.axes if a not in bars]
    for ax in main:
        if title_suffix and title_suffix.strip(" ()") not in ax.get_title():
            ax.set_title(ax.get_title() + title_suffix)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in main:
        shown = [ax] + [b for b, owner in bars.items() if owner is ax]
        for other in fig.axes:  # only this one drawn: no neighbour's title or labels in the crop
            other.set_visible(other in shown)
        box = Bbox.union([a.get_tightbbox(renderer) for a in shown]).transformed(
            fig.dpi_scale_trans.inverted()).padded(0.08)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=DPI, bbox_inches=box)
        buf.seek(0)
        out.append(np.asarray(Image.open(buf).convert("RGB")))
    plt.close(fig)
    return out


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(STYLE)
    return plt


# -- the figures several experiments draw ----------------------------------------------------------

def mosaic(tiles, cols, scale="each") -> np.ndarray:
    """(n, h, w) tiles in a grid `cols` wide, NaN borders around and between them (drawn grey).
    scale: "each" divides every tile by its own max |value| (every filter's pattern shows), "all"
    by the largest over all tiles (magnitudes compare), None leaves values as they are."""
    tiles = np.asarray(tiles, dtype=np.float64)
    n, h, w = tiles.shape
    rows = -(-n // cols)
    out = np.full((rows * (h + 1) + 1, cols * (w + 1) + 1), np.nan)
    top = np.max(np.abs(tiles), initial=0.0)
    for k in range(n):
        m = {"each": np.max(np.abs(tiles[k]), initial=0.0), "all": top, None: 1.0}[scale]
        r, c = divmod(k, cols)
        out[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + c * (w + 1):1 + c * (w + 1) + w] = \
            tiles[k] / (m if np.isfinite(m) and m > 0 else 1.0)
    return out


def mosaic_figure(image, title, cmap="RdBu_r", vmin=-1.0, vmax=1.0, size=(4.2, 4.2)):
    """A mosaic as one picture with its title; no axes (the tiles are the content). Returns the figure;
    its one axes is fig.axes[0] for a caller that labels tiles."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=size)
    ax.imshow(image, cmap=plt.get_cmap(cmap).with_extremes(bad="0.85"), vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title, fontsize=10)
    return fig


def boundary_figure(forward, lim, x, y, title, n=121, point_size=40,
                    flat_note="p ~ 0.5 everywhere: the model\nseparates nothing (see the title)"):
    """A binary logit model's P(class 1) over the square [lim[0], lim[1]]^2, its 0.5 contour and the
    points x (N, 2) coloured by y. A model that predicts ~0.5 everywhere gets flat_note written on
    it: one colour with no line reads as a broken image otherwise."""
    plt = pyplot()
    g = np.linspace(lim[0], lim[1], n)
    gx, gy = np.meshgrid(g, g)
    logit = forward(np.stack([gx.ravel(), gy.ravel()], 1)).reshape(n, n)
    prob = np.nan_to_num(1 / (1 + np.exp(-np.clip(logit, -50, 50))), nan=0.5)
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.contourf(gx, gy, prob, levels=np.linspace(0, 1, 11), cmap="RdBu_r", alpha=0.75)
    if prob.min() < 0.5 < prob.max():
        ax.contour(gx, gy, prob, levels=[0.5], colors="k")
    ax.scatter(x[:, 0], x[:, 1], c=np.asarray(y).reshape(-1), cmap="RdBu_r", edgecolors="k", linewidths=0.5,
               s=point_size)
    if np.max(np.abs(prob - 0.5)) < 0.05:
        ax.text(0.5, 0.03, flat_note, ha="center", va="bottom", fontsize=10, transform=ax.transAxes,
                bbox={"fc": "white", "alpha": 0.9})  # at the bottom: the points and any line stay visible
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=10)
    return fig


# -- side-by-side training ------------------------------------------------------------------

class Twins:
    """A manual model and its torch twin, stepped in lockstep from the same weights.

    The two training steps differ in one line (DESIGN.md):
        loss = criterion(model(x), y); model.backward(criterion.backward()); opt.step()
        loss = criterion(model(x), y); loss.backward();                     opt.step()
    """

    def __init__(self, model, criterion, optimizer, cfg: RunConfig):
        self.impls = cfg.impls
        self.tdev, self.mdev = resolve_device(cfg.device, cfg.backend)
        self.dtype = cfg.dtype
        self.model = model.to(self.mdev, cfg.dtype)
        if getattr(criterion, "weight", None) is not None:
            criterion.to(self.mdev, cfg.dtype)
        self.criterion = criterion
        self.optimizer = optimizer(self.model.parameters())
        self.tmodel = twin(self.model, device=self.tdev)
        self.tcriterion = twin_loss(criterion, device=self.tdev)
        self.toptimizer = twin_optimizer(self.optimizer, self.tmodel.parameters())
        tparams = dict(self.tmodel.named_parameters())  # drift's pairs: the Parameters stay, their values change
        self._pairs = [(p, tparams[n]) for n, p in self.model.named_parameters()]
        # on several ranks (experiments/_dist.py): a step runs through the two DDPs on this rank's shard;
        # everything else (evaluation, gradients, drift, checkpoints) uses the unwrapped models
        self.sharded = _dist.sharded()
        self.mddp = self.tddp = None
        if self.sharded:
            from manual import parallel as P

            if "manual" in self.impls:
                self.mddp = P.DistributedDataParallel(self.model)
            if "torch" in self.impls:
                self.tddp = torch.nn.parallel.DistributedDataParallel(
                    self.tmodel, device_ids=[torch.cuda.current_device()] if self.tdev == "cuda" else None)

    # data placement: NumPy in, each side's arrays out
    def place(self, x, y=None):
        xm = B.place(x, self.mdev, self.dtype)
        xt = to_torch(np.asarray(x), device=self.tdev, dtype=self.dtype)
        if y is None:
            return xm, xt
        if np.issubdtype(np.asarray(y).dtype, np.integer):
            ym, yt = B.place_labels(y, self.mdev), B.place_labels(y, self.tdev)
        else:
            ym = B.place(y, self.mdev, self.dtype)
            yt = to_torch(np.asarray(y), device=self.tdev, dtype=self.dtype)
        return (xm, ym), (xt, yt)

    def step(self, x, y):
        """One training step on each implementation; returns impl -> {loss, grad_norm/<name>...}."""
        if self.sharded:
            return self._sharded_step(x, y)
        (xm, ym), (xt, yt) = self.place(x, y)
        out = {}
        if "manual" in self.impls:
            self.optimizer.zero_grad()
            loss = self.criterion(self.model(xm), ym)
            self.model.backward(self.criterion.backward())
            grads = {n: float(np.linalg.norm(B.to_numpy(p.grad))) for n, p in self.model.named_parameters()}
            self.optimizer.step()
            out["manual"] = {"loss": float(B.to_numpy(loss)), "grad_norm": grads}
        if "torch" in self.impls:
            self.toptimizer.zero_grad()
            tloss = self.tcriterion(self.tmodel(xt), yt)
            tloss.backward()
            grads = {n: float(p.grad.norm()) for n, p in self.tmodel.named_parameters()}
            self.toptimizer.step()
            out["torch"] = {"loss": float(tloss.detach()), "grad_norm": grads}
        return out

    def _sharded_step(self, x, y):
        """step() on this rank's shard of the batch: the loss gradient seeded with W d_r / D, then each
        side's DDP averages the gradients over the ranks: the whole batch's gradient on every rank."""
        xs, ys, scale, share = _dist.shard(self.criterion, np.asarray(x), np.asarray(y))
        (xm, ym), (xt, yt) = self.place(xs, ys)
        out, local = {}, {}
        if "manual" in self.impls:
            self.optimizer.zero_grad()
            loss = self.criterion(self.mddp(xm), ym)
            self.mddp.backward(self.criterion.backward(B.place(np.asarray(scale), self.mdev, self.dtype)))
            grads = {n: float(np.linalg.norm(B.to_numpy(p.grad))) for n, p in self.model.named_parameters()}
            self.optimizer.step()
            local["manual"], out["manual"] = float(B.to_numpy(loss)), {"grad_norm": grads}
        if "torch" in self.impls:
            self.toptimizer.zero_grad()
            tloss = self.tcriterion(self.tddp(xt), yt)
            (tloss * scale).backward()
            grads = {n: float(p.grad.norm()) for n, p in self.tmodel.named_parameters()}
            self.toptimizer.step()
            local["torch"], out["torch"] = float(tloss.detach()), {"grad_norm": grads}
        return self._whole_batch_loss(out, local, share)

    @staticmethod
    def _whole_batch_loss(out, local, share):
        """out with each impl's "loss" the whole batch's, sum over ranks of share_r x (this rank's local loss)."""
        whole = _dist.all_sum([local.get(i, 0.0) * share for i in IMPLS])
        for k, impl in enumerate(IMPLS):
            if impl in out:
                out[impl]["loss"] = whole[k]
        return out

    def forward(self, x):
        """impl -> NumPy outputs (no training state touched)."""
        xm, xt = self.place(x)
        out = {}
        if "manual" in self.impls:
            with manual.no_grad():  # an evaluation pass saves nothing for backward
                out["manual"] = B.to_numpy(self.model(xm))
        if "torch" in self.impls:
            with torch.no_grad():
                out["torch"] = self.tmodel(xt).cpu().numpy()
        return out

    def evaluate(self, x, y):
        """impl -> (loss, accuracy) on (x, y) at the current weights; nothing is trained."""
        (xm, ym), (xt, yt) = self.place(x, y)
        out = {}
        if "manual" in self.impls:
            with manual.no_grad():
                logits = self.model(xm)
                out["manual"] = (float(B.to_numpy(self.criterion(logits, ym))), accuracy(B.to_numpy(logits), y))
        if "torch" in self.impls:
            with torch.no_grad():
                logits = self.tmodel(xt)
                out["torch"] = (float(self.tcriterion(logits, yt)), accuracy(logits.cpu().numpy(), y))
        return out

    def gradients(self, x, y):
        """impl -> {parameter name: dL/dparam} at the current weights (no step; grads cleared after)."""
        (xm, ym), (xt, yt) = self.place(x, y)
        out = {}
        if "manual" in self.impls:
            self.model.zero_grad()
            self.criterion(self.model(xm), ym)
            self.model.backward(self.criterion.backward())  # each layer's backward, last to first
            out["manual"] = {n: B.to_numpy(p.grad).copy() for n, p in self.model.named_parameters()}
            self.model.zero_grad()
        if "torch" in self.impls:
            self.tmodel.zero_grad()
            self.tcriterion(self.tmodel(xt), yt).backward()
            out["torch"] = {n: p.grad.cpu().numpy().copy() for n, p in self.tmodel.named_parameters()}
            self.tmodel.zero_grad()
        return out

    def set_lr(self, lr):
        """Set the learning rate of both optimizers (a schedule applied identically to each)."""
        for opt_ in (self.optimizer, self.toptimizer):
            for g in opt_.param_groups:
                g["lr"] = lr

    def state_dict(self):
        """{impl: {"model": state_dict, "optimizer": state_dict[, "scheduler": ...]}} for the impls trained.

        Both sides use torch's layouts and names, so either side's state loads into the other."""
        out = {}
        for impl in self.impls:
            model, opt_ = (self.model, self.optimizer) if impl == "manual" else (self.tmodel, self.toptimizer)
            out[impl] = {"model": model.state_dict(), "optimizer": opt_.state_dict()}
            sched = getattr(self, "schedulers", {}).get(impl)
            if sched is not None:
                out[impl]["scheduler"] = sched.state_dict()
        return out

    def load_state_dict(self, state):
        """Load `state_dict()`'s output; an implementation missing from it takes the other's state."""
        for impl in self.impls:
            src = state.get(impl) or next(iter(state.values()))
            if impl == "manual":
                self.model.load_state_dict(src["model"])
                self.optimizer.load_state_dict(src["optimizer"])
            else:
                self.tmodel.load_state_dict({k: torch.as_tensor(v) for k, v in src["model"].items()})
                self.toptimizer.load_state_dict(_torch_optimizer_state(src["optimizer"], self.toptimizer))
            sched = getattr(self, "schedulers", {}).get(impl)
            if sched is not None and "scheduler" in src:
                sched.load_state_dict(src["scheduler"])

    def params(self, impl):
        if impl == "manual":
            return {n: B.to_numpy(p.data) for n, p in self.model.named_parameters()}
        return {n: p.detach().cpu().numpy() for n, p in self.tmodel.named_parameters()}

    def drift(self):
        """max |manual param - torch param| over all parameters (None with one implementation)."""
        if len(self.impls) < 2:
            return None
        return max(float(np.max(np.abs(B.to_numpy(p.data) - t.detach().cpu().numpy()), initial=0.0))
                   for p, t in self._pairs)


def train(twins: Twins, log: RunLogger, batches, steps: int, *, evaluate=None, eval_every=10,
          log_histograms_every=None, desc="train", progress=True, lr=None, prefix=""):
    """Train both implementations for `steps` steps.

    batches(step) -> (x, y) NumPy arrays; evaluate(step) -> {tag: {impl: value}} logged as scalars.
    prefix namespaces the tags of a second model in one run ("linear/" -> "linear/loss/train").
    lr: a constant learning rate is a setting (the config and HParams show it), not a curve:
    it is not logged per step; a schedule logs its own "lr" tag.
    Returns a history: {"loss": {impl: [...]}, "drift": [...], "steps": n_done, "status": ...}.
    Stops early (status "diverged") when a loss is NaN/inf; Ctrl-C propagates after the
    logger has been told (the caller's `with RunLogger(...)` flushes the files).
    Checkpoints (experiments/checkpoint.py): every cfg.save_every steps and at the end; under
    the CLI's signal handlers a Ctrl-C/SIGTERM stops at a step boundary with a checkpoint. On
    resume a segment (one train() call) finished before the checkpoint is not trained again:
    its end state and history are restored. batches(step) must depend only on the step and on
    generators from `seeded` (captured), so that step k's batch is the same after a resume.
    """
    hist = {"loss": {i: [] for i in twins.impls}, "drift": [], "steps": 0, "status": "ok"}
    ck = getattr(log, "checkpoints", None)  # checkpoint.Session: --save-every, --resume, signals
    key = f"{prefix}{desc} ({steps} steps)"
    how, saved, start = ck.begin(twins, key) if ck else ("fresh", None, 0)
    if how == "done":  # finished before the checkpoint: its end state is restored, nothing trains
        return saved
    if how == "resume":
        hist = saved
    with checkpoint.step_boundaries():  # a first Ctrl-C/SIGTERM waits for the end of the step
        _train_steps(twins, log, batches, steps, start, hist, ck, key, evaluate, eval_every,
                     log_histograms_every, desc, progress, lr, prefix)
    if ck:
        ck.end(twins, key, hist)
    return hist


def _train_steps(twins, log, batches, steps, start, hist, ck, key, evaluate, eval_every, log_histograms_every,
                 desc, progress, lr, prefix):
    from tqdm.auto import tqdm

    bar = tqdm(range(start, steps), initial=start, total=steps, desc=desc, leave=False,
               disable=not progress or not _dist.is_main() or None, dynamic_ncols=True)
    # per-parameter gradient norms: at most GRAD_NORM_POINTS points per curve (and the last step). Every
    # step of every parameter was most of a run's events: writing them cost more than training
    # activations' 12-layer nets (profiled: 84k of 91k scalars)
    norm_every = max(1, math.ceil(steps / GRAD_NORM_POINTS))
    for step in bar:
        x, y = batches(step)
        out = twins.step(x, y)
        for impl, o in out.items():
            hist["loss"][impl].append(o["loss"])
        log.scalar(f"{prefix}loss/train", {i: o["loss"] for i, o in out.items()}, step)
        bad = [i for i, o in out.items() if not math.isfinite(o["loss"])]
        if step % norm_every == 0 or step == steps - 1 or bad:  # and the step that diverges
            for impl, o in out.items():
                for name, g in o["grad_norm"].items():
                    log.scalar(f"{prefix}grad_norm/{name}", {impl: g}, step)
        d = twins.drift()
        if d is not None:
            hist["drift"].append(d)
            log.scalar_all(f"{prefix}parity/max_abs_param_diff", d, step)
        if evaluate is not None and (step % eval_every == 0 or step == steps - 1):
            for tag, vals in evaluate(step).items():
                log.scalar(prefix + tag, vals, step)
        if log_histograms_every and (step % log_histograms_every == 0 or step == steps - 1):
            log_histograms(twins, log, step, prefix)
        hist["steps"] = step + 1
        if bad:
            hist["status"] = "diverged"
            log.status = "diverged"
            log.note(f"diverged at step {step}: loss is {out[bad[0]]['loss']} for {', '.join(bad)}", step)
            break
        signum = checkpoint.pending_stop()
        if twins.sharded:  # every rank stops at the same step, on any rank's signal
            signum = _dist.agree_stop(signum)
        if signum is not None:  # stopped between two steps: a checkpoint resumes exactly here
            if ck:
                ck.save(twins, key, hist, reason=checkpoint.Stop(signum).name)
            raise checkpoint.Stop(signum)
        if ck:
            ck.after_step(twins, key, hist, steps)
    bar.close()


def _torch_optimizer_state(sd, toptimizer):
    """A state_dict from either side, as torch.optim loads it: tensors, `step` a float32 tensor, and
    torch-only group options (foreach, maximize, ...) kept at the twin's own values when absent."""
    state = {}
    for i, st in sd["state"].items():
        state[int(i)] = {k: (torch.tensor(float(v), dtype=torch.float32) if k == "step" else torch.as_tensor(v))
                         for k, v in st.items()}
    groups = [{**{k: v for k, v in own.items() if k != "params"}, **g}
              for own, g in zip(toptimizer.param_groups, sd["param_groups"])]
    return {"state": state, "param_groups": groups}


def log_histograms(twins: Twins, log: RunLogger, step, prefix=""):
    for impl in twins.impls:
        if impl == "manual":
            items = [(n, p.data, p.grad) for n, p in twins.model.named_parameters()]
        else:
            items = [(n, p, p.grad) for n, p in twins.tmodel.named_parameters()]
        for name, w, g in items:
            log.histogram(impl, f"{prefix}weights/{name}", w, step)
            if g is not None:
                log.histogram(impl, f"{prefix}grads/{name}", g, step)


def cosine_lr(lr, step, steps):
    """lr (1 + cos(pi step / steps)) / 2: a schedule that lets a fit settle instead of bouncing around
    its minimum (circles, landscape); set on both optimizers with Twins.set_lr."""
    return lr * 0.5 * (1 + np.cos(np.pi * step / steps))


def batch_order(rng, n, batch_size, epochs):
    """One seeded permutation per epoch, cut into mini-batches: the index arrays both implementations see."""
    return [p[i:i + batch_size] for _ in range(epochs) for p in [rng.permutation(n)] for i in range(0, n, batch_size)]


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    """Fraction correct: argmax for (N, C) logits, sign for (N, 1) binary logits."""
    if logits.ndim == 2 and logits.shape[1] > 1:
        pred = logits.argmax(1)
    else:
        pred = (logits.reshape(-1) > 0).astype(np.int64)
    return float(np.mean(pred == np.asarray(y).reshape(-1)))


@dataclass(frozen=True)
class Claim:
    """One of the guide's claims and its verdict, built with `Claim.each` or `Claim.pair`.

    holds_manual / holds_torch: the claim tested on that implementation's own result (None where
    it did not run or is not tested); joint: the verdict of a claim about the two together (their
    drift). manual / torch: what the claims table shows in each column.
    """

    text: str
    holds_manual: bool | None = None
    holds_torch: bool | None = None
    manual: object = None
    torch: object = None
    joint: bool | None = None

    @classmethod
    def each(cls, text: str, values: Mapping[str, object], test: Callable[[object], bool],
             shown: Mapping[str, object] | None = None) -> Claim:
        """Tested on each implementation's own value: holds_<impl> = test(values[impl]) for every impl
        in `values` (the ones that ran); shown: what the table prints per impl (default: the values)."""
        unknown = set(values) - set(IMPLS)
        if unknown:
            raise ValueError(f"Claim.each({text!r}): values are keyed by implementation {IMPLS}, got {sorted(unknown)}")
        shown = values if shown is None else shown
        holds = {i: bool(test(values[i])) for i in IMPLS if i in values}
        return cls(text, holds.get("manual"), holds.get("torch"), shown.get("manual"), shown.get("torch"))

    @classmethod
    def pair(cls, text: str, value, holds: bool) -> Claim:
        """A claim about manual and torch together (their drift, their agreement): one value, shown in
        both columns, and one verdict."""
        return cls(text, manual=value, torch=value, joint=bool(holds))

    @property
    def holds(self) -> bool:
        """joint's verdict for a pair claim; else every tested implementation holds (and at least one was tested)."""
        if self.joint is not None:
            return self.joint
        parts = [h for h in (self.holds_manual, self.holds_torch) if h is not None]
        return bool(parts) and all(parts)

    def as_dict(self) -> dict:
        """The record `--json` and the claims table use."""
        return {"claim": self.text, "manual": self.manual, "torch": self.torch,
                "holds_manual": self.holds_manual, "holds_torch": self.holds_torch, "holds": self.holds}


def result(cfg, log: RunLogger, results: dict, claims: list[Claim], drift=None, drift_tol=None, **extra):
    """The dict every experiment's main() returns (and `--json` writes). drift_tol: an experiment's own,
    measured drift tolerance (the gpt experiment's rounding yardstick) instead of DRIFT_TOL[dtype]."""
    bad = [type(c).__name__ for c in claims if not isinstance(c, Claim)]
    if bad:
        raise TypeError(f"_lab.result: claims must be Claim records (Claim.each / Claim.pair), got {bad}")
    tol = DRIFT_TOL[cfg.dtype] if drift_tol is None else drift_tol
    out = {
        "config": dataclasses.asdict(cfg),
        "logdir": log.root,
        "status": log.status,
        "notes": list(log.notes),
        "results": results,
        "max_drift": drift,
        "drift_tolerance": tol,
        "drift_ok": None if drift is None else bool(drift <= tol),
        "claims": [c.as_dict() for c in claims],
        **extra,
    }
    if log.root is not None:  # rank 0 (or one process) only
        write_outcome(log.root, log.experiment, out)
    return out


OUTCOME = "outcome.json"  # in each run folder: what `backprop-lab runs` lists
CURRENT_ROOT = None  # the run folder of the RunLogger made last (runner.run_one resets it before each run)


def strict_json(obj, indent=2) -> str:
    """JSON that any reader takes: NaN and +-Infinity (a diverged run's loss or drift), which Python writes
    as bare NaN / Infinity tokens that JSON does not have, become the strings "nan", "inf", "-inf" (as
    `verify --json` writes them); NumPy numbers and arrays become numbers and lists, anything else str()."""
    import json

    def default(o):
        if isinstance(o, (np.floating, np.integer)):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        return str(o)

    text = json.dumps(obj, default=default)
    return json.dumps(json.loads(text, parse_constant=lambda c: str(float(c))), indent=indent)


def write_outcome(root, experiment, metrics):
    """A small JSON beside the run's event files: settings, status, claims holding, drift."""
    claims = metrics.get("claims", [])
    outcome = {"experiment": experiment, "status": metrics["status"], "config": metrics["config"],
               "claims_hold": sum(bool(c["holds"]) for c in claims), "claims": len(claims),
               "max_drift": metrics.get("max_drift"), "drift_ok": metrics.get("drift_ok"),
               **{k: metrics[k] for k in ("signal", "checkpoint", "stopped_at", "error") if metrics.get(k)}}
    try:
        with open(os.path.join(root, OUTCOME), "w") as f:
            f.write(strict_json(outcome, indent=1))
    except OSError:  # the run's results are returned anyway; only the listing loses this run's outcome
        pass


def seeded(cfg):
    """Seed manual's initialiser and return a NumPy generator for data and batch order."""
    manual.init.manual_seed(cfg.seed)
    checkpoint.reset_tracking()
    return checkpoint.track(np.random.default_rng(cfg.seed))  # its state goes into checkpoints
