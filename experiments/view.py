"""`backprop-lab view [NAME ...]` and `backprop-lab runs [--clean --keep N]`: look at runs.

`view` starts the virtual environment's own TensorBoard on 127.0.0.1 at a free port, on the
latest run of each experiment (two runs each, manual and torch: well under TensorBoard's
40-run limit, past which it enables no run by default and every chart opens empty), and
prints the URL. `runs` lists the runs under LOGDIR with their settings and outcome, and
`runs --clean --keep N` removes all but the newest N runs of each experiment.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

from ._lab import OUTCOME

WIDTH = 100


def find_runs(logdir):
    """experiment -> [run folder, ...], oldest first (folder names start with the time stamp)."""
    out = {}
    if not os.path.isdir(logdir):
        return out
    for exp in sorted(os.listdir(logdir)):
        folder = os.path.join(logdir, exp)
        if not os.path.isdir(folder):
            continue
        runs = [os.path.join(folder, r) for r in sorted(os.listdir(folder)) if _is_run(os.path.join(folder, r))]
        if runs:
            out[exp] = runs
    return out


def _is_run(path):
    if not os.path.isdir(path):
        return False
    if os.path.exists(os.path.join(path, OUTCOME)):
        return True
    return any(f.startswith("events.out.tfevents") for _, _, files in os.walk(path) for f in files)


def outcome(run):
    try:
        with open(os.path.join(run, OUTCOME)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def describe(run):
    """(folder name, outcome text) for the listing."""
    o = outcome(run)
    if o is None:
        return os.path.basename(run), "no outcome recorded (running, stopped, or not an experiment)"
    text = o["status"]
    if o.get("signal"):  # interrupted: by which signal, and the checkpoint that continues it
        text += f" ({o['signal']})"
    if o.get("checkpoint"):
        text += f", checkpoint {os.path.basename(o['checkpoint'])}"
    if o.get("claims"):
        text += f", {o['claims_hold']}/{o['claims']} claims hold"
    if o.get("max_drift") is not None:  # a number, or "nan"/"inf" (strict JSON): float() reads both
        text += f", drift {float(o['max_drift']):.1e}" + ("" if o.get("drift_ok") else " OVER tolerance")
    return os.path.basename(run), text


# -- runs ------------------------------------------------------------------------------------

RUNNING_S = 600  # a run without an outcome, written to this recently, may be running: --clean keeps it


def maybe_running(run, now=None):
    """No outcome yet (a finished, interrupted or failed run records one) and a file changed in the last
    RUNNING_S seconds: another process may be writing it."""
    if outcome(run) is not None:
        return False
    newest = max((os.path.getmtime(os.path.join(d, f)) for d, _, files in os.walk(run) for f in files),
                 default=os.path.getmtime(run))
    return (now or time.time()) - newest < RUNNING_S


def cmd_runs(args):
    if not args.clean:  # else they would be ignored, and `runs --keep 2` would look like it kept 2
        given = [f"--keep {args.keep}"] * (args.keep != 1) + ["--dry-run"] * args.dry_run
        if given:
            args._parser.error(f"{' '.join(given)}: only with --clean (runs --clean --keep N [--dry-run])")
    if not args.where or (os.path.exists(args.where) and not os.path.isdir(args.where)):
        args._parser.error(f"--logdir {args.where!r}: expected a folder of runs, got "
                           + ("an empty path" if not args.where else "a file"))
    runs = find_runs(args.where)
    if not runs:
        print(f"no runs under {args.where}")
        return 0
    if args.clean:
        doomed = [r for rs in runs.values() for r in rs[:max(len(rs) - args.keep, 0)]]
        live = [r for r in doomed if maybe_running(r)]
        doomed = [r for r in doomed if r not in live]
        for r in live:  # removing it under a running `all` ended that run with exit 74
            print(f"keeping {r}: no outcome recorded and written to in the last {RUNNING_S // 60} minutes "
                  "(still running?)")
        if not doomed:
            print(f"nothing to remove: no experiment has more than {args.keep} run(s) under {args.where}")
            return 0
        verb = "would remove" if args.dry_run else "removing"
        print(f"{verb} {len(doomed)} run(s), keeping the newest {args.keep} of each experiment:")
        for r in doomed:
            print(f"  {r}")
        if not args.dry_run:
            for r in doomed:
                shutil.rmtree(r)
        return 0
    print(f"runs under {args.where} (folder: time stamp, then the settings that differ from the defaults)")
    for exp, rs in runs.items():
        print(f"{exp}  ({len(rs)} run{'s' * (len(rs) != 1)})")
        for r in rs:
            name, text = describe(r)
            line = f"  {name}  {text}"
            print(line if len(line) <= WIDTH else f"  {name}\n      {text}")
    return 0


# -- view ------------------------------------------------------------------------------------

def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as TensorBoard's server: TIME_WAIT is no obstacle
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _port(text):
    from .runner import _int_in

    return _int_in("a port in 0..65535 (0: a free one)", lambda v: 0 <= v <= 65535)(text)


def tensorboard_command():
    """The venv's own TensorBoard: the one installed beside this Python (no activated venv needed)."""
    return [sys.executable, "-m", "tensorboard.main"]


def select(logdir, names, all_runs):
    """The --logdir_spec: NAME:LOGDIR/NAME/<latest> for each experiment (or NAME:LOGDIR/NAME with --all-runs)."""
    runs = find_runs(logdir)
    if not names and not runs:  # else TensorBoard starts on an empty --logdir_spec and exits with its own error
        raise LookupError(f"no runs under {logdir}{'' if os.path.isdir(logdir) else ' (no such folder)'}; "
                          "make one with `backprop-lab run xor` (or pass --logdir where the runs are)")
    names = names or list(runs)
    missing = [n for n in names if n not in runs]
    from .runner import EXPERIMENTS, RUN_ONLY

    known = [*EXPERIMENTS, *RUN_ONLY, "bench"]
    unknown = [n for n in missing if n not in known]
    if unknown:  # else it said "make one with `backprop-lab run nosuch`"
        raise LookupError(f"{', '.join(unknown)}: not an experiment; expected some of: {', '.join(known)}")
    if missing:
        have = ", ".join(runs) or "none"
        raise LookupError(f"no runs of {', '.join(missing)} under {logdir} (runs there: {have}); "
                          f"make one with `backprop-lab run {missing[0]}`")
    spec = {n: (os.path.join(logdir, n) if all_runs else runs[n][-1]) for n in names}
    bad = [p for p in spec.values() if "," in p or ":" in os.path.relpath(p)]
    if bad:
        raise LookupError(f"TensorBoard cannot take a path with ',' or ':': {bad[0]}")
    return spec


LOAD_WAIT_S = 120  # how long view waits for TensorBoard to load every run before it prints the URL anyway


def _get(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read().decode())


def expected_runs(spec):
    """(runs, runs with scalars) that TensorBoard will find under the spec: every folder with an event file; of
    those, the ones in a run that finished (its outcome: ok or diverged) surely hold scalars (a run stopped
    before its first step, or killed, may hold only its config text)."""
    runs = scalars = 0
    for path in spec.values():
        for folder, _, files in os.walk(path):
            if any(f.startswith("events.out.tfevents") for f in files):
                runs += 1
                o = outcome(os.path.dirname(folder))  # LOGDIR/<experiment>/<run>/<impl>: the run's outcome
                scalars += bool(o and o.get("status") in ("ok", "diverged"))
    return runs, scalars


def wait_until_loaded(url, proc, deadline, expected):
    """True once TensorBoard has read the expected (runs, runs with scalars): text tags for every run (each
    writes its config first), scalar tags for the finished ones. TensorBoard answers before it has read the
    event files, and finds and reads the runs one after another: a URL opened at once showed some
    experiments and not others (after one `all --quick`, 20 of the 26 runs 1 s after the URL)."""
    runs, with_scalars = expected
    while proc.poll() is None:
        try:
            if (len(_get(url + "data/plugin/scalars/tags")) >= with_scalars
                    and len(_get(url + "data/plugin/text/tags")) >= runs):
                return True
        except (OSError, ValueError):  # HTTP 500 seen now and then while runs are still loading
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.25)
    return False


def cmd_view(args):
    try:
        spec = select(args.where, args.names, args.all_runs)
    except LookupError as e:
        from .cli import wrap_message

        print(wrap_message(f"backprop-lab view: error: {e}"), file=sys.stderr)
        return 2
    if args.port and not port_is_free(args.port):  # else TensorBoard starts and exits with its own error
        args._parser.error(f"--port {args.port}: in use on 127.0.0.1; leave --port out for a free one")
    port = args.port or free_port()
    url = f"http://127.0.0.1:{port}/"
    cmd = tensorboard_command() + ["--logdir_spec", ",".join(f"{n}:{p}" for n, p in spec.items()),
                                   "--host", "127.0.0.1", "--port", str(port), "--load_fast", "false"]
    for name, path in spec.items():
        print(f"{name}: {path}")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:  # until it answers (a few seconds), so the URL printed works when clicked
            if proc.poll() is not None:
                print(f"backprop-lab view: TensorBoard exited ({proc.returncode}):\n{proc.stderr.read()[-2000:]}",
                      file=sys.stderr)
                return 1
            try:
                urllib.request.urlopen(url + "data/runs", timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    print("backprop-lab view: TensorBoard did not answer within 60 s", file=sys.stderr)
                    return 1
                time.sleep(0.25)
        expected = expected_runs(spec)
        loaded = wait_until_loaded(url, proc, time.monotonic() + LOAD_WAIT_S, expected)
        print(f"\nTensorBoard: {url}   ({len(spec)} experiment(s), {expected[0]} runs; Ctrl-C stops it)" + ("" if loaded else f"\n(still loading after {LOAD_WAIT_S} s: charts fill in "
                                           "as the runs load)"), flush=True)
        proc.wait()
        return 0
    except KeyboardInterrupt:  # Ctrl-C (or SIGTERM) is how one stops viewing: not an error
        return 0
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def register(sub):
    p = sub.add_parser("view", help="open TensorBoard (the venv's, 127.0.0.1, a free port) on the latest run of "
                                    "each experiment; prints the URL")
    p.add_argument("names", nargs="*", metavar="NAME", help="experiments to show (default: every one with a run)")
    p.add_argument("--all-runs", action="store_true", help="every run of those experiments, not only the latest")
    p.add_argument("--logdir", dest="where", default="runs", help="where the runs are (default: runs)")
    p.add_argument("--port", type=_port, default=0, help="port on 127.0.0.1 (default: a free one)")
    p.set_defaults(func=cmd_view)

    p = sub.add_parser("runs", help="list the runs with their settings and outcome; --clean --keep N removes older ones")
    p.add_argument("--logdir", dest="where", default="runs", help="where the runs are (default: runs)")
    p.add_argument("--clean", action="store_true", help="remove all but the newest --keep runs of each experiment")
    p.add_argument("--keep", type=_at_least_one, default=1, help="runs kept per experiment by --clean (default: 1)")
    p.add_argument("--dry-run", action="store_true", help="with --clean: say what would be removed, remove nothing")
    p.set_defaults(func=cmd_runs)


def _at_least_one(text):
    from .runner import _at_least_one as check

    return check(text)
