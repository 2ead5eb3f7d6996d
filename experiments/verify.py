"""`backprop-lab verify`: every hand-written derivative against torch autograd, on every backend.

Runs every op x sample x dtype x backend of the registry (torch_ref.opinfo) and a small MLP per
activation with each loss, through the same engine as parity_tests (experiments.parity). Prints
one row per op (or MLP) x dtype x device, naming the worst sample; for an MLP whose gradients
disagree, the first layer (in backward order) whose gradient diverges. Exit 1 on any failure.
"""

from __future__ import annotations

import math
import time

import torch

from experiments.parity import (ACTIVATIONS, LOSSES, MODEL_TOL, NETS, available_backends, check_model, check_op,
                                gpt_case, mlp_case, net_case)
from torch_ref.opinfo import DTYPES, OPS, samples

DEVICES = {  # --device -> backends
    "auto": ["numpy", "torch-cpu", "torch-cuda"],  # CUDA only when present
    "cpu": ["numpy", "torch-cpu"],
    "cuda": ["torch-cuda"],
    "all": ["numpy", "torch-cpu", "torch-cuda"],
}


def register(subparsers):
    p = subparsers.add_parser("verify", help="check every hand-written derivative against torch autograd",
                              description=__doc__.split("\n\n")[1])
    p.add_argument("--json", metavar="PATH", help="also write the rows and every sample's detail as JSON")
    p.add_argument("--device", choices=list(DEVICES), default="auto",
                   help="auto: NumPy, torch-cpu and torch-cuda when present; cpu: NumPy and torch-cpu; "
                        "cuda: torch-cuda; all: all three (default: auto)")
    p.add_argument("--dtype", choices=[*DTYPES, "all"], default="all", help="default: all")
    p.add_argument("--only", nargs="+", metavar="NAME",
                   help="only these ops and models (e.g. tanh cross_entropy mlp[gelu])")
    p.set_defaults(func=run)


def _finite(x):
    return x if isinstance(x, (int, str, bool)) or x is None or math.isfinite(x) else str(x)


def _op_rows(dtypes, backends, only):
    rows, details = [], []
    for op in OPS:
        if only and op.name not in only:
            continue
        cases = samples(op)
        for dt in dtypes:
            for be in backends:
                tol, results = op.tol(dt), []
                for s in cases:
                    try:
                        r = check_op(op, s, dt, be)
                        d = dict(max_abs=r.abs_err, max_rel=r.rel_err, used=max(r.used.values(), default=0.0),
                                 worst_tensor=r.worst, passed=r.passed, problems=r.problems,
                                 errors={k: list(v) for k, v in r.errors.items()})
                    except Exception as e:  # a crash is a failure of that sample, not of the command
                        d = dict(max_abs=math.inf, max_rel=math.inf, used=math.inf, worst_tensor="",
                                 passed=False, problems=[f"raised {type(e).__name__}: {e}"], errors={})
                    results.append(dict(op=op.name, sample=s.id, dtype=dt, device=be, **d))
                worst = max(results, key=lambda d: (not d["passed"], d["used"]))
                rows.append(dict(name=op.name, kind="op", dtype=dt, device=be,
                                 max_abs=max(d["max_abs"] for d in results),
                                 max_rel=max(d["max_rel"] for d in results),
                                 rtol=tol.rtol, atol=tol.atol, tol_reason=tol.reason,
                                 passed=all(d["passed"] for d in results), cases=len(results),
                                 failed=sum(not d["passed"] for d in results),
                                 worst=_describe(worst), note="; ".join(worst["problems"][:1])))
                details += results
    return rows, details


def _describe(d):
    if d["used"] == 0 and d["passed"]:
        return "all exact"
    return f"{d['sample']} ({d['worst_tensor']})" if d["worst_tensor"] else d["sample"]


def _model_rows(dtypes, backends, only):
    rows, details = [], []
    for act in ACTIVATIONS:
        name = f"mlp[{act}]"
        if only and name not in only:
            continue
        for dt in dtypes:
            for be in backends:
                results = []
                for loss in LOSSES:
                    r = check_model(*mlp_case(act, loss, dt, be))
                    results.append(dict(model=name, loss=loss, dtype=dt, device=be, passed=r.passed,
                                        first_divergent=r.first_divergent,
                                        first_divergent_tensor=r.first_divergent_tensor,
                                        errors={k: list(v) for k, v in r.errors.items()}))
                bad = [d for d in results if not d["passed"]]
                errs = [e for d in results for e in d["errors"].values()]
                note = ""
                if bad:
                    b = bad[0]
                    note = (f"first diverging layer: {b['first_divergent']} ({b['first_divergent_tensor']}) "
                            f"with {b['loss']}" if b["first_divergent"] else f"forward differs with {b['loss']}")
                tol = MODEL_TOL[dt]
                rows.append(dict(name=name, kind="model", dtype=dt, device=be,
                                 max_abs=max(e[0] for e in errs), max_rel=max(e[1] for e in errs),
                                 rtol=tol.rtol, atol=tol.atol, tol_reason=tol.reason, passed=not bad,
                                 cases=len(results), failed=len(bad),
                                 worst=(bad or [max(results, key=_model_abs)])[0]["loss"], note=note))
                details += results
    return rows, details


def _gpt_rows(dtypes, backends, only):
    """One row per dtype x device: a 2-block GPT (random weights, token ids in) against its torch twin."""
    rows, details = [], []
    if only and "gpt" not in only:
        return rows, details
    for dt in dtypes:
        for be in backends:
            r = check_model(*gpt_case(dt, be))
            errs = [e for e in r.errors.values() if math.isfinite(e[0])]  # not the token ids' (no) gradient
            d = dict(model="gpt", loss="mse", dtype=dt, device=be, passed=r.passed, first_divergent=r.first_divergent,
                     first_divergent_tensor=r.first_divergent_tensor, errors={k: list(v) for k, v in r.errors.items()})
            note = "" if r.passed else (f"first diverging layer: {r.first_divergent} ({r.first_divergent_tensor})"
                                        if r.first_divergent else "forward differs")
            tol = MODEL_TOL[dt]
            rows.append(dict(name="gpt", kind="model", dtype=dt, device=be, max_abs=max(e[0] for e in errs),
                             max_rel=max(e[1] for e in errs), rtol=tol.rtol, atol=tol.atol, tol_reason=tol.reason,
                             passed=r.passed, cases=1, failed=int(not r.passed), worst="2 blocks, 28 parameters",
                             note=note))
            details.append(d)
    return rows, details


def _net_rows(dtypes, backends, only):
    """One row per network x dtype x device, each checked in train and in eval mode (running statistics,
    dropout): residual blocks around each normalization, an embedding front end, a small CNN."""
    rows, details = [], []
    for name in NETS:
        if only and name not in only:
            continue
        for dt in dtypes:
            for be in backends:
                results = []
                for mode in ("train", "eval"):
                    r = check_model(*net_case(name, mode, dt, be))
                    results.append(dict(model=name, loss=mode, dtype=dt, device=be, passed=r.passed,
                                        first_divergent=r.first_divergent,
                                        first_divergent_tensor=r.first_divergent_tensor,
                                        errors={k: list(v) for k, v in r.errors.items()}))
                bad = [d for d in results if not d["passed"]]
                errs = [e for d in results for e in d["errors"].values() if math.isfinite(e[0])]
                note = ""
                if bad:
                    b = bad[0]
                    note = (f"first diverging layer: {b['first_divergent']} ({b['first_divergent_tensor']}) "
                            f"in {b['loss']} mode" if b["first_divergent"] else f"forward differs in {b['loss']} mode")
                tol = MODEL_TOL[dt]
                rows.append(dict(name=name, kind="model", dtype=dt, device=be,
                                 max_abs=max(e[0] for e in errs), max_rel=max(e[1] for e in errs),
                                 rtol=tol.rtol, atol=tol.atol, tol_reason=tol.reason, passed=not bad,
                                 cases=len(results), failed=len(bad),
                                 worst=(bad or [max(results, key=_model_abs)])[0]["loss"], note=note))
                details += results
    return rows, details


def _model_abs(d):
    return max((e[0] for e in d["errors"].values() if math.isfinite(e[0])), default=0.0)


WIDTH = 100  # terminal output fits this many columns
COLS = "  {:8} {:10} {:>8} {:>8} {:>6} {:>6}  {:4}  "  # then the worst sample, wrapped at WIDTH


def _table(rows) -> str:
    """One heading per op or model, then a row per dtype and device (the name on each row took 35 of the
    100 columns); the worst sample wraps in its column, a failure's note goes below its row."""
    import textwrap

    head = COLS.format("dtype", "device", "max abs", "max rel", "rtol", "atol", "pass")
    indent = len(head)
    lines = ["op / model", head + "worst sample", None]
    name = None
    for r in rows:
        if r["name"] != name:
            name = r["name"]
            lines.append(name)
        ok = "ok" if r["passed"] else f"FAIL {r['failed']}/{r['cases']}"
        cells = COLS.format(r["dtype"], r["device"], f"{r['max_abs']:.1e}", f"{r['max_rel']:.1e}",
                            f"{r['rtol']:.0e}", f"{r['atol']:.0e}", ok)
        worst = textwrap.wrap(r["worst"], WIDTH - max(indent, len(cells)), break_on_hyphens=False) or [""]
        lines.append((cells + worst[0]).rstrip())
        lines += [" " * indent + w for w in worst[1:]]
        if r["note"]:
            lines += textwrap.wrap(f"<- {r['note']}", WIDTH, initial_indent="    ", subsequent_indent="       ")
    lines[2] = "-" * max(map(len, lines[3:] or [head]))
    return "\n".join(lines)


def run(args) -> int:
    backends = [b for b in DEVICES[args.device] if b in available_backends()]
    if args.device in ("cuda", "all") and "torch-cuda" not in backends:
        args._parser.error(f"--device {args.device}: torch sees no CUDA GPU (torch.cuda.is_available() is False); "
                           "--device cpu or auto checks NumPy and torch-cpu")
    dtypes = list(DTYPES) if args.dtype == "all" else [args.dtype]
    only = set(args.only or ())
    known = {op.name for op in OPS} | {f"mlp[{a}]" for a in ACTIVATIONS} | {"gpt"} | set(NETS)
    if only - known:
        args._parser.error(f"--only: unknown name(s) {', '.join(sorted(only - known))}; "
                           f"expected some of: {', '.join(sorted(known))}")
    t0 = time.perf_counter()
    rows, details = _op_rows(dtypes, backends, only)
    mrows, mdetails = _model_rows(dtypes, backends, only)
    grows, gdetails = _gpt_rows(dtypes, backends, only)
    nrows, ndetails = _net_rows(dtypes, backends, only)
    mrows, mdetails = mrows + nrows + grows, mdetails + ndetails + gdetails
    seconds = time.perf_counter() - t0
    print(_table(rows + mrows))
    failed = [r for r in rows + mrows if not r["passed"]]
    n = sum(r["cases"] for r in rows + mrows)
    skipped = "" if "torch-cuda" in backends or args.device == "cpu" else " (torch-cuda skipped: no CUDA GPU)"
    print(f"\n{n} checks over {', '.join(backends)}{skipped} in {seconds:.1f}s: "
          + ("all passed" if not failed else f"{len(failed)} row(s) FAILED: "
             + ", ".join(sorted({f"{r['name']}" for r in failed}))))
    if args.json:  # atomically, inf/nan as strings (runner.write_json): a failed write is exit 74, as run's
        from .runner import EXIT_WRITE_FAILED, write_json

        out = dict(passed=not failed, backends=backends, dtypes=dtypes, torch=torch.__version__,
                   rows=rows + mrows, samples=details, models=mdetails)
        if not write_json(args.json, out):
            return EXIT_WRITE_FAILED
    return 1 if failed else 0
