"""`backprop-lab list | run NAME | all`: find, configure and run experiments."""

from __future__ import annotations

import dataclasses
import importlib
import json
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
    "activations": "activations",
    "optimizers": "optimizers",
    "backprop": "backprop",
}


def load(name):
    return importlib.import_module(f"experiments.{EXPERIMENTS[name]}")


def available():
    """Experiments whose module exists (lets the list grow one module at a time)."""
    out = {}
    for name in EXPERIMENTS:
        try:
            out[name] = load(name)
        except ModuleNotFoundError as e:
            if e.name != f"experiments.{EXPERIMENTS[name]}":
                raise
    return out


# -- argparse from dataclasses ---------------------------------------------------------------

def add_config_arguments(parser, config_cls, skip=()):
    for f in dataclasses.fields(config_cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_ = f.metadata.get("help", "")
        if f.type in ("bool", bool):
            parser.add_argument(flag, dest=f.name, action=argparse_bool(), default=f.default, help=help_)
            continue
        kind = {"int": int, "float": float, "str": str}.get(f.type if isinstance(f.type, str) else f.type.__name__, str)
        if kind is int and f.name != "seed":
            kind = _at_least_one  # counts and sizes: steps, epochs, hidden, batch, ...
        elif kind is float and (f.name == "lr" or f.name.endswith("_lr")):
            kind = _positive
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if isinstance(default, (list, tuple)):
            parser.add_argument(flag, dest=f.name, type=type(default[0]) if default else float, nargs="+",
                                default=default, help=f"{help_} (default: {' '.join(map(str, default))})")
            continue
        parser.add_argument(flag, dest=f.name, type=kind, default=default, choices=f.metadata.get("choices"),
                            help=f"{help_} (default: {default})")


def _at_least_one(text):
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _positive(text):
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value}")
    return value


def argparse_bool():
    import argparse

    return argparse.BooleanOptionalAction


def config_from_args(config_cls, args, **overrides):
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls) if hasattr(args, f.name)}
    values.update(overrides)
    return config_cls(**values)


# -- commands --------------------------------------------------------------------------------

def register(sub):
    exps = available()
    p = sub.add_parser("list", help="list the experiments, what each shows and its guide section")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("run", help="run one experiment (both implementations side by side by default)")
    runs = p.add_subparsers(dest="experiment", metavar="NAME", parser_class=type(p))
    runs.required = True
    for name, mod in exps.items():
        rp = runs.add_parser(name, help=mod.SUMMARY, description=f"{mod.SUMMARY} (guide: {mod.SECTION})")
        add_config_arguments(rp, mod.Config)
        rp.add_argument("--json", metavar="PATH", help="write the config, final metrics, drift and claims as JSON")
        rp.set_defaults(func=cmd_run, _config=mod.Config, _module=mod, _parser=rp)

    p = sub.add_parser("all", help="run every experiment, then print the claims table (the main job)")
    p.add_argument("--quick", action="store_true", help="smaller, faster profile of every experiment")
    from ._lab import RunConfig

    add_config_arguments(p, RunConfig, skip=("quick",))
    p.add_argument("--json", metavar="PATH", help="write every experiment's metrics as JSON")
    p.add_argument("--only", nargs="+", choices=list(exps), metavar="NAME", help="run only these experiments")
    p.set_defaults(func=cmd_all)


def cmd_list(args):
    exps = available()
    width = max(map(len, exps))
    for name, mod in exps.items():
        print(f"{name:<{width}}  {mod.SUMMARY}  [guide: {mod.SECTION}]")
    return 0


def cmd_run(args):
    cfg = config_from_args(args._config, args)
    t0 = time.perf_counter()
    metrics = run_one(args._module, cfg)
    metrics["seconds"] = round(time.perf_counter() - t0, 2)
    print_summary({args.experiment: metrics})
    print_tensorboard_hint(cfg.logdir)
    if args.json:
        write_json(args.json, {args.experiment: metrics})
    return exit_code({args.experiment: metrics})


def cmd_all(args):
    from tqdm.auto import tqdm

    from ._lab import RunConfig

    exps = available()
    names = args.only or list(exps)
    results = {}
    t0 = time.perf_counter()
    bar = tqdm(names, desc="experiments", disable=not args.progress or None, dynamic_ncols=True)
    for name in bar:
        bar.set_postfix_str(name)
        mod = exps[name]
        base = config_from_args(RunConfig, args, quick=args.quick)
        cfg = mod.Config(**dataclasses.asdict(base))
        t = time.perf_counter()
        metrics = run_one(mod, cfg)
        metrics["seconds"] = round(time.perf_counter() - t, 2)
        results[name] = metrics
        if metrics["status"] == "interrupted":
            break
    bar.close()
    print_summary(results)
    print(f"\n{len(results)} experiments in {time.perf_counter() - t0:.1f} s")
    print_tensorboard_hint(args.logdir)
    if args.json:
        write_json(args.json, results)
    return exit_code(results)


def run_one(mod, cfg):
    """Run an experiment; a Ctrl-C inside it comes back as status 'interrupted', not a traceback."""
    from ._threads import one_thread

    try:
        with one_thread():  # the experiments' models are small; see _threads.py
            return mod.main(cfg)
    except KeyboardInterrupt:
        return {"config": dataclasses.asdict(cfg), "status": "interrupted", "claims": [], "results": {},
                "max_drift": None, "drift_ok": None, "notes": ["interrupted by the user (Ctrl-C)"]}


def exit_code(results):
    if any(m["status"] == "interrupted" for m in results.values()):
        return 130
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


def print_summary(results):
    rows = [("experiment", "the guide's claim", "manual", "torch", "max drift", "holds")]
    for name, m in results.items():
        drift = m.get("max_drift")
        dtxt = "-" if drift is None else f"{drift:.1e}" + ("" if m.get("drift_ok") else " (over tol)")
        if not m["claims"]:
            rows.append((name, m["status"], "-", "-", dtxt, "-"))
        for i, c in enumerate(m["claims"]):
            rows.append((name if i == 0 else "", c["claim"], _fmt(c["manual"]), _fmt(c["torch"]),
                         dtxt if i == 0 else "", "yes" if c["holds"] else "NO"))
        if m["status"] != "ok":
            rows.append(("", f"({m['status']}: {'; '.join(m.get('notes', []))})", "", "", "", ""))
    widths = [min(max(len(r[i]) for r in rows), 60 if i == 1 else 40) for i in range(len(rows[0]))]
    for j, r in enumerate(rows):
        cells = [(c if len(c) <= widths[i] else c[: widths[i] - 1] + "…").ljust(widths[i]) for i, c in enumerate(r)]
        print("  ".join(cells).rstrip())
        if j == 0:
            print("  ".join("-" * w for w in widths))


def print_tensorboard_hint(logdir):
    print(f"\nview the runs:  tensorboard --logdir {logdir}   (then open http://localhost:6006)")


def write_json(path, results):
    with open(path, "w") as f:
        json.dump(results, f, indent=2, default=_json_default)
    print(f"wrote {path}", file=sys.stderr)


def _json_default(o):
    import numpy as np

    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
