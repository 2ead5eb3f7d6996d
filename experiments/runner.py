"""`backprop-lab list | run NAME | all`: find, configure and run experiments."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import importlib
import os
import signal
import sys
import time

# CLI name -> module in this package. Each module has NAME, SUMMARY, SECTION, Config
# (a dataclass extending _lab.RunConfig) and main(config) -> metrics.
EXPERIMENTS = {
    "gradient-descent": "gradient_descent",
    "linear-regression": "linear_regression",
    "stopping": "stopping",
    "landscape": "landscape",
    "xor": "xor",
    "circles": "circles",
    "digits": "digits",
    "cnn": "cnn",
    "activations": "activations",
    "normalization": "normalization",
    "optimizers": "optimizers",
    "backprop": "backprop",
    "gpt": "gpt",
}
# `run NAME` also offers these; `all` leaves them out: their claims are about several processes
# (`run ddp --nproc 2`, or torchrun), and `all` is the one-process main job.
RUN_ONLY = {
    "ddp": "ddp",
}


CONTRACT = ("NAME", "SUMMARY", "SECTION", "Config", "main")


class ExperimentError(RuntimeError):
    """A listed experiment that is missing or breaks the contract: an error, never a silent omission."""


def load(name):
    module = f"experiments.{EXPERIMENTS.get(name) or RUN_ONLY[name]}"
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name == module:
            raise ExperimentError(f"experiment {name!r} is listed in runner.EXPERIMENTS, but its module {module} "
                                  f"does not exist (renamed? remove or fix the entry)") from None
        raise
    missing = [a for a in CONTRACT if not hasattr(mod, a)]
    if missing:
        raise ExperimentError(f"experiment {name!r} ({module}) lacks {', '.join(missing)}: every experiment "
                              f"module defines {', '.join(CONTRACT)}")
    if mod.NAME != name:
        raise ExperimentError(f"experiment {name!r} ({module}) says NAME = {mod.NAME!r}: the two must agree")
    return mod


def experiments():
    """Every listed experiment, in order: name -> module (ExperimentError if one is missing or broken)."""
    return {name: load(name) for name in EXPERIMENTS}


available = experiments  # the older name


def runnable():
    """What `run NAME` offers: every experiment of `all`, then the run-only ones."""
    return {**experiments(), **{name: load(name) for name in RUN_ONLY}}


# -- argparse from dataclasses ---------------------------------------------------------------

def add_config_arguments(parser, config_cls, skip=()):
    for f in dataclasses.fields(config_cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_ = _esc(f.metadata.get("help", ""))
        if f.type in ("bool", bool):
            parser.add_argument(flag, dest=f.name, action=_GivenBool, default=f.default, help=help_)
            continue
        kind = {"int": int, "float": float, "str": str}.get(f.type if isinstance(f.type, str) else f.type.__name__, str)
        if kind is int and f.name in ("seed", "save_every"):
            kind = _non_negative  # NumPy seeds are >= 0; --save-every 0 saves only when stopped
        elif kind is int:
            kind = _at_least_one  # counts and sizes: steps, epochs, hidden, batch, ...
        elif kind is float and (f.name in ("lr", "lrs") or f.name.endswith("_lr") or f.name == "grad_clip"):
            kind = _positive  # a negative grad_clip would flip the gradients (torch's clip_grad_norm_ scales by it)
        elif kind is float:
            kind = _FLOAT_RANGES.get(f.name, _finite)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if isinstance(default, (list, tuple)):  # each value checked as one of its own (--lrs: each > 0)
            item = _positive if f.name == "lrs" else type(default[0]) if default else float
            parser.add_argument(flag, dest=f.name, type=item, nargs="+",
                                action=_Given, default=default, help=f"{help_} (default: {' '.join(map(str, default))})")
            continue
        parser.add_argument(flag, dest=f.name, type=kind, default=default, choices=f.metadata.get("choices"),
                            action=_Given, help=f"{help_} (default: {default})")


def _mark_given(namespace, dest):
    namespace._given = getattr(namespace, "_given", set()) | {dest}


class _Given(argparse.Action):
    """argparse's store, remembering that the option was on the command line (for --resume)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        _mark_given(namespace, self.dest)


class _GivenBool(argparse.BooleanOptionalAction):
    def __call__(self, parser, namespace, values, option_string=None):
        super().__call__(parser, namespace, values, option_string)
        _mark_given(namespace, self.dest)


def _esc(text):
    """argparse formats an argument's or a subcommand's help with %: a literal % (as in "75%") must be
    doubled there. A description is formatted only when it holds "%(prog)", so it stays as written."""
    return text.replace("%", "%%")


def _number_in(convert, expected, ok):
    """A number parser for argparse (convert: int or float): an ArgumentTypeError naming `expected` and what came."""
    def parse(text):
        import argparse

        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
        return value

    return parse


def _int_in(expected, ok):
    return _number_in(int, expected, ok)


_non_negative = _int_in("an integer >= 0", lambda v: v >= 0)
_at_least_one = _int_in("an integer >= 1", lambda v: v >= 1)


def _positive(text):
    return _float_in("a number > 0", lambda v: v > 0)(text)


def _finite(text):
    return _float_in("a finite number", lambda v: True)(text)


def _float_in(expected, ok):
    """A float parser: nan and inf (also 1e400, which overflows to inf) are refused, whatever `ok` says."""
    import math

    return _number_in(float, expected, lambda v: math.isfinite(v) and ok(v))


# float options with a range, by name (as lr above): refused by argparse, before any work
_FLOAT_RANGES = {
    "dropout": _float_in("a probability in [0, 1)", lambda v: 0.0 <= v < 1.0),
    "weight_decay": _float_in("a number >= 0", lambda v: v >= 0.0),
    "test_fraction": _float_in("a number in (0, 1)", lambda v: 0.0 < v < 1.0),
}


def argparse_bool():
    import argparse

    return argparse.BooleanOptionalAction


def config_from_args(config_cls, args, **overrides):
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls) if hasattr(args, f.name)}
    values.update(overrides)
    return config_cls(**values)


# -- commands --------------------------------------------------------------------------------

def register(sub):
    exps = experiments()
    p = sub.add_parser("list", help="list the experiments, what each shows and its guide section")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("run", help="run one experiment (both implementations side by side by default)")
    runs = p.add_subparsers(dest="experiment", metavar="NAME", parser_class=type(p))
    runs.required = True
    every = runnable()
    for name, mod in every.items():
        rp = runs.add_parser(name, help=_esc(mod.SUMMARY), description=f"{mod.SUMMARY} (guide: {mod.SECTION})")
        add_config_arguments(rp, mod.Config)
        rp.add_argument("--json", metavar="PATH", help="write the config, final metrics, drift and claims as JSON")
        rp.add_argument("--nproc", type=_at_least_one, default=1, metavar="N",
                        help=("processes on this machine, launched with torchrun (gloo on CPU, nccl on CUDA)"
                              + (", each step's batch split over them" if data_parallel(mod) else "")
                              + "; rank 0 writes the logs, checkpoints and JSON (default: 1)") if name in multiprocess(every)
                        else f"processes: 1 for {name} ({_esc(single_process_reason(mod))}; default: 1)")
        rp.set_defaults(func=cmd_run, _config=mod.Config, _module=mod, _parser=rp)

    p = sub.add_parser("all", help="run every experiment, then print the claims table (the main job)")
    p.add_argument("--quick", action="store_true", help="smaller, faster profile of every experiment")
    from ._lab import RunConfig

    add_config_arguments(p, RunConfig, skip=("quick", "resume"))  # --resume names one experiment's checkpoint
    p.add_argument("--json", metavar="PATH", help="write every experiment's metrics as JSON")
    p.add_argument("--only", nargs="+", choices=list(exps), metavar="NAME", help="run only these experiments")
    p.add_argument("--nproc", type=_at_least_one, default=1, metavar="N",
                   help="processes on this machine, launched with torchrun: the batch experiments split each step's "
                        "batch over them, the others run the same on every process; rank 0 writes the logs (default: 1)")
    p.set_defaults(func=cmd_all, _parser=p)


WIDTH = 100  # terminal output fits this many columns


def cmd_list(args):
    import textwrap

    exps = runnable()
    width = max(map(len, exps))
    for name, mod in exps.items():
        text = f"{mod.SUMMARY} [guide: {mod.SECTION}]" + (
            " (run only, not in `all`; `run ddp --nproc N` on N processes)" if name in RUN_ONLY else "")
        lines = textwrap.wrap(text, WIDTH - width - 2) or [""]
        print(f"{name:<{width}}  {lines[0]}")
        for line in lines[1:]:
            print(" " * (width + 2) + line)
    several = [n for n, m in exps.items() if data_parallel(m)]
    print("\n" + "\n".join(textwrap.wrap(
        f"On several processes (--nproc N, or torchrun), each step's batch split over them: {', '.join(several)}; "
        "`all --nproc N` runs the others the same on each (README: More than one process).", WIDTH)))
    return 0


def no_gpu(parser, device, backend="auto", nproc=1):
    """--device cuda without a GPU (or with --backend numpy) is a usage error: exit 2 before any work,
    as verify and bench do; so is --nproc N on CUDA with fewer than N GPUs (nccl: one GPU per process)."""
    from . import _dist
    from ._lab import resolve_device

    try:
        tdev, _ = resolve_device(device, backend)
    except SystemExit as e:  # the one place that knows which device/backend pairs work
        parser.error(str(e))
    problem = _dist.gpus_for(tdev, nproc) if device == "cuda" else None  # auto: the CPU when GPUs are too few
    if problem:
        parser.error(problem)


MAX_NPROC = 64  # one machine's processes; more nodes are torchrun's own (--nnodes, README)


def data_parallel(mod) -> bool:
    """An experiment that trains on batches and splits them over ranks (DATA_PARALLEL = True)."""
    return getattr(mod, "DATA_PARALLEL", False)


def single_process_reason(mod) -> str:
    """Why an experiment does not run on several processes (its SINGLE_PROCESS text, else the usual reason)."""
    return getattr(mod, "SINGLE_PROCESS", "it trains on no batches to split")


def multiprocess(exps=None):
    """The experiments that run on several processes: their own (MULTIPROCESS = True, ddp) or data parallel."""
    mods = exps or runnable()
    return [n for n, m in mods.items() if getattr(m, "MULTIPROCESS", False) or data_parallel(m)]


def forwarded_options(args, config_cls):
    """The options given on the command line, rebuilt as arguments for the same experiment's own parser."""
    out = []
    for f in dataclasses.fields(config_cls):
        if f.name not in getattr(args, "_given", set()):
            continue
        flag, value = "--" + f.name.replace("_", "-"), getattr(args, f.name)
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, (list, tuple)):
            out += [flag, *map(str, value)]
        else:
            out += [flag, str(value)]
    return out + (["--json", args.json] if args.json else [])


def launch(args, nproc, target=None):
    """`torchrun --standalone --nproc-per-node N -m <target...>` with this venv's Python; its exit code.
    target: the module and its arguments (default: the experiment's own module, ddp's torchrun entry).
    Ctrl-C / SIGTERM here is passed on to torchrun, which stops every rank."""
    import subprocess

    from .signals import Stop

    target = target or [args._module.__name__, *forwarded_options(args, args._config)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", *target]
    print(f"launching {nproc} processes: torchrun --standalone --nproc-per-node={nproc} -m " + " ".join(cmd[6:]),
          file=sys.stderr, flush=True)
    # one thread per rank (as the experiments run anyway); set, torchrun skips its OMP_NUM_THREADS banner
    proc = subprocess.Popen(cmd, env={"OMP_NUM_THREADS": "1", **os.environ})
    try:
        return proc.wait()
    except KeyboardInterrupt as e:  # signals.Stop: SIGINT or SIGTERM reached us
        stop = e if isinstance(e, Stop) else Stop()
        proc.send_signal(stop.signum)  # torchrun forwards it to every worker
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        print(f"backprop-lab: interrupted ({stop.name}); every rank stopped", file=sys.stderr)
        return stop.exit_code


def cmd_run(args):
    from . import checkpoint

    from . import _dist

    no_gpu(args._parser, args.device, args.backend)
    world = int(os.environ.get("WORLD_SIZE", "1"))  # set by torchrun in each worker it starts
    ddp_own = getattr(args._module, "MULTIPROCESS", False)  # ddp: its own torchrun entry (experiments/ddp.py)
    if _dist.launched():  # `torchrun ... -m experiments run NAME`: we are one rank
        if args.experiment not in multiprocess():
            args._parser.error(f"{args.experiment} runs in one process ({single_process_reason(args._module)}), "
                               f"but torchrun started {world} of them; these run on several: "
                               f"{', '.join(multiprocess())}")
        if args.nproc > 1:
            args._parser.error(f"--nproc {args.nproc} inside torchrun: torchrun already started the processes")
        if ddp_own:
            return args._module.cli(forwarded_options(args, args._config))  # its ranks: rank 0 reports, failures named
    if args.nproc > 1:
        if args.experiment not in multiprocess():
            args._parser.error(f"--nproc {args.nproc}: {args.experiment} runs in one process "
                               f"({single_process_reason(args._module)}); these run on several: "
                               f"{', '.join(multiprocess())} (--nproc 1, the default, runs it here)")
        if args.nproc > MAX_NPROC:
            args._parser.error(f"--nproc {args.nproc}: expected at most {MAX_NPROC} processes on one machine "
                               "(more machines: torchrun --nnodes, README 'More than one process')")
        if args.resume and ddp_own:
            args._parser.error(f"--nproc {args.nproc} with --resume: the ddp experiment is a short check that writes "
                               "no checkpoints; the batch experiments (run NAME --nproc N) resume on any number of processes")
        no_gpu(args._parser, args.device, args.backend, args.nproc)  # --device cuda: a GPU for each process
    cfg = config_from_args(args._config, args)
    if cfg.resume:  # the checkpoint's options, unless given here (and then they must agree)
        try:
            cfg, state = checkpoint.resume_config(args._module.NAME, cfg, getattr(args, "_given", set()))
            checkpoint.check_world(state, args.nproc if args.nproc > 1 else world)
        except checkpoint.CheckpointError as e:
            args._parser.error(str(e))
    check = getattr(args._module, "check_config", None)  # options that clash (gpt: --n-embd and --n-head)
    problem = check(cfg) if check else None
    if problem:
        args._parser.error(problem)
    if args.nproc > 1:
        if ddp_own:
            return launch(args, args.nproc)
        return launch(args, args.nproc, ["experiments", "run", args.experiment,
                                         *forwarded_options(args, args._config)])
    if not _dist.launched():
        return _run_here(args, cfg)
    with _dist.job(cfg.device, cfg.backend), _dist.sharding(True):  # a batch experiment on this rank's shards
        return _dist.run_rank(lambda: _run_here(args, cfg))


def _run_here(args, cfg):
    """Run the experiment in this process (one rank of several under torchrun: rank 0 alone prints and writes)."""
    from . import _dist, _lab

    t0 = time.perf_counter()
    _lab.GIVEN = set(getattr(args, "_given", ()))  # --quick caps them too, and says so (_lab.quick_cap)
    metrics = run_one(args._module, cfg)
    metrics["seconds"] = round(time.perf_counter() - t0, 2)
    if not _dist.is_main():
        return _rank_exit_code({args.experiment: metrics})
    print_summary({args.experiment: metrics})
    if metrics.get("logdir"):
        print(f"\nrun folder: {metrics['logdir']}")
    if _dist.world_size() > 1:
        print(f"{_dist.world_size()} processes: each step's batch split over them (rank 0 wrote the logs)")
    run_root = os.path.dirname(os.path.dirname(metrics["logdir"])) if metrics.get("logdir") else cfg.logdir
    print_tensorboard_hint(run_root, [args.experiment])  # a resumed run stays in its folder, whatever --logdir says
    if args.json and not write_json(args.json, {args.experiment: metrics}):
        return EXIT_WRITE_FAILED
    return exit_code({args.experiment: metrics})


def _rank_exit_code(results):
    """A rank other than 0: 0, or the stop signal's code. The claims' verdict is rank 0's exit code (the job's)."""
    code = exit_code(results)
    return code if code in (130, 143) else 0


def cmd_all(args):
    from . import _dist, _lab
    from ._lab import RunConfig

    _lab.GIVEN = set()  # all's options are not an experiment's sizes: --quick's caps apply unsaid
    no_gpu(args._parser, args.device, args.backend)
    if _dist.launched() and args.nproc > 1:
        args._parser.error(f"--nproc {args.nproc} inside torchrun: torchrun already started the processes")
    if args.nproc > 1:
        if args.nproc > MAX_NPROC:
            args._parser.error(f"--nproc {args.nproc}: expected at most {MAX_NPROC} processes on one machine "
                               "(more machines: torchrun --nnodes, README 'More than one process')")
        no_gpu(args._parser, args.device, args.backend, args.nproc)
        return launch(args, args.nproc, ["experiments", "all", *forwarded_options(args, RunConfig)]
                      + (["--quick"] if args.quick else []) + (["--only", *args.only] if args.only else []))
    if not _dist.launched():
        return _all_here(args)
    with _dist.job(args.device, args.backend):
        return _dist.run_rank(lambda: _all_here(args))


def _all_here(args):
    """Every experiment in this process; under torchrun one rank's share: batch experiments sharded
    (DATA_PARALLEL), the others computed the same on every rank; rank 0 alone prints and writes."""
    from tqdm.auto import tqdm

    from . import _dist
    from ._lab import RunConfig

    exps = experiments()
    names = list(dict.fromkeys(args.only or exps))  # `--only xor xor` runs xor once
    results = {}
    t0 = time.perf_counter()
    bar = tqdm(names, desc="experiments", disable=not args.progress or not _dist.is_main() or None, dynamic_ncols=True)
    for name in bar:
        bar.set_postfix_str(name)
        mod = exps[name]
        base = config_from_args(RunConfig, args, quick=args.quick)
        cfg = mod.Config(**dataclasses.asdict(base))
        t = time.perf_counter()
        with _dist.sharding(data_parallel(mod)):
            metrics = run_one(mod, cfg)
        metrics["seconds"] = round(time.perf_counter() - t, 2)
        results[name] = metrics
        if metrics["status"] in ("interrupted", "write-failed"):
            break
    bar.close()
    if not _dist.is_main():
        return _rank_exit_code(results)
    print_summary(results)
    if _dist.world_size() > 1:
        print(f"{_dist.world_size()} processes: the batch experiments split each step's batch over them, the others "
              "ran the same on each (rank 0 wrote the logs)")
    print(f"{len(results)} experiment{'s' * (len(results) != 1)} in {time.perf_counter() - t0:.1f} s")
    print_tensorboard_hint(args.logdir, list(results) if args.only else ())
    if args.json and not write_json(args.json, results):
        return EXIT_WRITE_FAILED
    return exit_code(results)


def run_one(mod, cfg):
    """Run an experiment. A Ctrl-C or SIGTERM inside it comes back as status 'interrupted' (with
    the signal and the checkpoint written), a failed write (disk full, ...) as 'write-failed':
    a record for the JSON and the exit code, not a traceback."""
    from . import _lab, checkpoint
    from ._threads import one_thread

    checkpoint.reset_stats()
    _lab.CAPPED.clear()
    _lab.CURRENT_ROOT = None
    base = {"config": dataclasses.asdict(cfg), "claims": [], "results": {}, "max_drift": None, "drift_ok": None}
    try:
        with one_thread():  # the experiments' models are small; see _threads.py
            metrics = mod.main(cfg)
    except KeyboardInterrupt as e:
        sig = signal.Signals(getattr(e, "signum", signal.SIGINT)).name
        saved = checkpoint.save_on_stop(sig)  # after a finished training loop, outside one: that loop kept
        how = "by SIGTERM" if sig == "SIGTERM" else "by the user (Ctrl-C)"
        notes = [f"interrupted {how}"] + ([f"checkpoint {saved}: continue with --resume {saved}"] if saved else [])
        return _stopped(mod, {**base, "status": "interrupted", "signal": sig, "checkpoint": saved,
                              "stopped_at": checkpoint.stats()["at"], "notes": notes})
    except OSError as e:
        if not checkpoint.is_write_failure(e):
            raise
        saved, st = checkpoint.last_written(), checkpoint.stats()
        where = os.fsdecode(e.filename) if e.filename is not None else st["root"] or cfg.logdir
        code = errno.errorcode.get(e.errno, e.errno)
        after = f" after step {st['at'][1]} of {st['at'][0]}" if st["at"] else ""
        if e.errno == errno.ENOENT:  # the run's folder removed under it: nothing there is kept
            notes = [f"stopped: {where} is gone ({code}: the run folder was removed while the run wrote it){after}"]
            saved = saved if saved and os.path.exists(saved) else None
        else:
            notes = [f"stopped: a write failed ({code}: {e.strerror}) under {where}{after}; "
                     "the logs written before it are kept"]
        if saved:
            notes.append(f"checkpoint {saved}: continue with --resume {saved} once there is room")
        return _stopped(mod, {**base, "status": "write-failed", "error": f"{code}: {e.strerror}", "stopped_at": st["at"],
                              "checkpoint": saved, "notes": notes})
    if _lab.CAPPED:  # given values that --quick capped: said, not silent
        metrics.setdefault("notes", []).extend(dict.fromkeys(_lab.CAPPED))
    if cfg.save_every and not checkpoint.stats()["segments"]:
        metrics.setdefault("notes", []).append(
            f"--save-every {cfg.save_every}: {getattr(mod, 'NAME', '?')} has no _lab.train loop to checkpoint; nothing saved")
    return metrics


def _stopped(mod, metrics):
    """A run that did not reach its end: its folder (the checkpoint's, else the one its logger made, even before
    a training loop began) and, there, its outcome, so that `backprop-lab runs` lists it as interrupted (or
    write-failed), not as "no outcome recorded"."""
    from . import _lab, checkpoint

    root = checkpoint.stats()["root"] or _lab.CURRENT_ROOT
    if root is not None:
        _lab.write_outcome(root, getattr(mod, "NAME", "?"), metrics)  # a failed write here changes nothing
    return {**metrics, "logdir": root}


# exit codes (README "Exit codes"): 0 every claim holds, 1 a claim does not hold or drift is over
# tolerance, 2 bad command line (before any work), 74 a write failed (disk full, ...: sysexits'
# EX_IOERR), 130 Ctrl-C (SIGINT), 143 SIGTERM.
EXIT_WRITE_FAILED = 74


def exit_code(results):
    stopped = [m for m in results.values() if m["status"] == "interrupted"]
    if stopped:
        return 143 if any(m.get("signal") == "SIGTERM" for m in stopped) else 130
    if any(m["status"] == "write-failed" for m in results.values()):
        return EXIT_WRITE_FAILED
    ok = all(c["holds"] for m in results.values() for c in m["claims"])
    ok = ok and all(m.get("drift_ok") is not False for m in results.values())
    return 0 if ok else 1


def _fmt(v):
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


COLUMNS = (50, 19, 19, 5)  # claim, manual, torch, holds: 50 + 19 + 19 + 5 + 3 gaps of 2 = 99 columns
LEGEND = ("manual, torch: the value each implementation measured for the claim (the claim names the quantity: "
          "a value, an error, a count). holds: yes when the claim holds on each implementation's own result. "
          "drift: max |manual param - torch param| over the whole run.")


def summary_lines(results):
    """The claims table (<= WIDTH columns; claims wrapped, never cut) and the closing verdict."""
    import textwrap

    def row(cells, indent=""):
        cols = [textwrap.wrap(c, w, initial_indent=indent if i == 0 else "", subsequent_indent=indent * 2 if i == 0
                              else "", break_on_hyphens=False) or [""] for i, (c, w) in enumerate(zip(cells, COLUMNS))]
        for k in range(max(map(len, cols))):
            yield "  ".join((col[k] if k < len(col) else "").ljust(w) for col, w in zip(cols, COLUMNS)).rstrip()

    lines = [*row(("the guide's claim", "manual", "torch", "holds")), "  ".join("-" * w for w in COLUMNS)]
    total = held = 0
    failing = []
    for name, m in results.items():
        drift = m.get("max_drift")
        dtxt = "drift -" if drift is None else (f"drift {drift:.1e}" + (" <= " if m.get("drift_ok") else " OVER ")
                                                + f"tolerance {m.get('drift_tolerance', 0):.0e}")
        status = "" if m["status"] == "ok" else f"  [{m['status']}]"
        lines.append(f"{name}{status}  ({dtxt})")
        for c in m["claims"]:
            total += 1
            held += bool(c["holds"])
            if not c["holds"]:
                failing.append(f"{name}: {c['claim']}")
            lines += row((c["claim"], _fmt(c["manual"]), _fmt(c["torch"]), "yes" if c["holds"] else "NO"), "  ")
        # notes always: a divergence that is the point of a run (a large lr, a large init) is
        # reported here beside the claim that checks it, not hidden behind status "ok"
        lines += ["  " + t for note in m.get("notes", []) for t in textwrap.wrap(f"({note})", WIDTH - 2)]
        if m["status"] != "ok":
            if not m["claims"]:
                failing.append(f"{name}: {m['status']}, no claim checked")
        if m.get("drift_ok") is False:
            failing.append(f"{name}: manual and torch drifted apart (max drift {drift:.1e})")
    both = all(m.get("config", {}).get("impl", "both") == "both" for m in results.values())
    verdict = f"{held}/{total} claims hold for " + ("both implementations" if both else "the implementation(s) run")
    lines += ["", *textwrap.wrap(LEGEND, WIDTH), ""]
    if failing:
        lines.append(verdict + "; not holding:")
        lines += [t for f in failing for t in textwrap.wrap(f, WIDTH, initial_indent="  - ", subsequent_indent="    ")]
    else:
        lines.append(verdict)
    return lines


def print_summary(results):
    print("\n".join(summary_lines(results)))


def venv_command(script, module):
    """The venv's own `script` (beside this Python: works with the venv not activated), else `python -m module`,
    quoted for pasting."""
    from shlex import quote

    exe = os.path.join(os.path.dirname(sys.executable), script)
    return quote(exe) if os.path.exists(exe) else f"{quote(sys.executable)} -m {module}"


def print_tensorboard_hint(logdir, names=()):
    """How to look at what just ran: `backprop-lab view` (the venv's TensorBoard, latest runs only). Both
    commands name the venv's own executables: they work whether or not the venv is activated."""
    from shlex import quote  # the lines are for pasting: a path with a space stays one argument

    tb, cli = venv_command("tensorboard", "tensorboard.main"), venv_command("backprop-lab", "experiments")
    print(f"\nview the latest runs:  {cli} view {' '.join(names)}".rstrip()
          + ("" if logdir == "runs" else f" --logdir {quote(logdir)}"))
    print(f"every run, not only the latest:\n  {tb} --logdir {quote(logdir)}")


def write_json(path, results):
    """Write atomically (a half-written JSON never replaces a good one); False if it could not be written."""
    from ._lab import strict_json
    from .checkpoint import atomic_write, replaceable

    data = strict_json(results).encode()  # NaN and Infinity are not JSON: strings, as verify writes them
    try:
        if replaceable(path):
            atomic_write(path, data)
        else:  # /dev/stdout, /dev/null, a FIFO, a link: written into, never replaced by a regular file
            with open(path, "wb") as f:
                f.write(data)
    except OSError as e:
        print(f"backprop-lab: could not write --json {path}: {e.strerror or e}", file=sys.stderr)
        return False
    print(f"wrote {path}", file=sys.stderr)
    return True
