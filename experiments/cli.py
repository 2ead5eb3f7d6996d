"""`backprop-lab` (= `python -m experiments`): one subcommand per module.

Each command module exposes `register(subparsers)`, which adds its parser and sets
`func=<callable(args) -> exit code>` as the parser's default.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Subcommand modules, in the order `--help` lists them.
COMMANDS = ["runner", "view", "bench", "verify"]


WIDTH = 100  # terminal output fits this many columns


def wrap_message(text):
    """A message within WIDTH columns: each line wrapped at spaces, continued with a 2-space indent; a path or a
    word longer than a line is left whole (cut, it could not be pasted)."""
    import textwrap

    return "\n".join(w for line in text.split("\n") for w in textwrap.wrap(
        line, WIDTH, subsequent_indent="  ", break_long_words=False, break_on_hyphens=False) or [""])


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on a bad option; make the message list what is valid."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(2, wrap_message(f"{self.prog}: error: {message}") + f"\n(see `{self.prog} --help` for the valid options)\n")


def check_paths(args):
    """A message if --json or --logdir cannot take what the run will write, else None: checked
    before any work, so that a run never trains and then fails to write its results."""
    path = getattr(args, "json", None)
    if path is not None and not path.strip():
        return "--json '': expected a file path, got an empty string"
    if path:
        if path.endswith(("/", os.sep)) or os.path.isdir(path):
            return f"--json {path}: is a folder, expected a file path (for example {os.path.join(path, 'results.json')})"
        if os.path.exists(path) and not os.access(path, os.W_OK):
            return f"--json {path}: the file exists and is not writable"
        folder = os.path.dirname(os.path.abspath(path))
        from .checkpoint import replaceable

        into = not replaceable(path)  # /dev/stdout, a FIFO, a link: written into, so its folder is not written
        if not into and not os.path.isdir(folder):
            return f"--json {path}: the folder {folder} does not exist"
        if not into and not os.access(folder, os.W_OK):
            return f"--json {path}: the folder {folder} is not writable"
        if not into:  # ENAMETOOLONG only when the results are written, after the run
            name = len(os.fsencode(os.path.basename(path)))
            most = os.pathconf(folder, "PC_NAME_MAX") if hasattr(os, "pathconf") else 255
            if name > most:
                return f"--json {path}: its name is {name} bytes, longer than the {most} its folder takes"
    text = getattr(args, "text", None)
    if text:  # gpt --text: read before any work, not after the run folder is made
        if os.path.isdir(text):
            return f"--text {text}: is a folder, expected a UTF-8 text file"
        try:
            with open(text, encoding="utf-8") as f:
                f.read()
        except OSError as e:
            return f"--text {text}: cannot read it ({e.strerror})"
        except UnicodeDecodeError as e:
            return f"--text {text}: not UTF-8 text (byte {e.start}: {e.reason}); expected a UTF-8 text file"
    logdir = getattr(args, "logdir", None)
    if logdir is not None and not logdir.strip():
        return "--logdir '': expected a folder path (runs go to LOGDIR/<experiment>/...), got an empty string"
    if logdir and not getattr(args, "resume", None):  # a resumed run continues in its own folder: none made here
        try:
            os.makedirs(logdir, exist_ok=True)
        except OSError as e:
            return f"--logdir {logdir}: cannot create it ({e.strerror})"
        if not os.access(logdir, os.W_OK):
            return f"--logdir {logdir}: not writable"
        for name in _experiments_to_run(args):  # each run goes to LOGDIR/<name>/<stamp>
            folder = os.path.join(logdir, name)
            if os.path.exists(folder) and not (os.path.isdir(folder) and os.access(folder, os.W_OK | os.X_OK)):
                what = "is not a folder" if not os.path.isdir(folder) else "is not writable"
                return f"--logdir {logdir}: the experiment folder {folder} {what}"
    return None


def _experiments_to_run(args):
    if getattr(args, "_module", None) is not None:
        return [args._module.NAME]
    if getattr(args, "command", None) == "all":
        from . import runner

        return list(getattr(args, "only", None) or runner.EXPERIMENTS)
    return [getattr(args, "command", None) or ""] if getattr(args, "command", None) == "bench" else []


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="backprop-lab",
        description="Hand-written backprop next to its torch autograd twin: verify, run, benchmark.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"experiments.{name}").register(sub)
    for p in sub.choices.values():  # so an unknown option is reported by the parser that owns it
        if p.get_default("_parser") is None:
            p.set_defaults(_parser=p)
    return parser


class _PipeGuard:
    """sys.stdout / sys.stderr while a command runs: once the reader of a pipe is gone (`backprop-lab run xor
    | head -3`, head has exited) the rest of what is printed is dropped, not a BrokenPipeError in the middle of
    the command: a run still writes its JSON and logs and ends with its own exit code."""

    def __init__(self, stream):
        self._stream, self.broken = stream, False

    def _lost(self):
        self.broken = True
        try:  # what is still buffered goes nowhere, so that Python's flush at exit cannot fail either
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):  # not a real file (pytest's capture): nothing to redirect
            pass

    def write(self, text):
        if not self.broken:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._lost()
        return len(text)

    def flush(self):
        if not self.broken:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._lost()

    def __getattr__(self, name):
        return getattr(self._stream, name)


def main(argv=None) -> int:
    """Exit codes: README "Exit codes" (runner.exit_code). SIGINT and SIGTERM, from start-up on,
    end the run cleanly (experiments/signals.py: Stop); exit 130 and 143."""
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _PipeGuard(sys.stdout), _PipeGuard(sys.stderr)
    try:
        return _guarded_main(argv)
    finally:  # --help and usage errors leave with SystemExit: what they printed is flushed here too
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = streams
        if argv is None:  # the command line's own process (not a caller's, as the tests'): it is about to exit
            _done_with_signals()


def _done_with_signals():
    """The command is done and its exit code decided: a Ctrl-C or SIGTERM during the interpreter's exit (half a
    second of joining threads and freeing modules after `run xor --quick`) turned exit 0 into a silent 130 after
    every result was printed and written. Ignored from here to the end of the process."""
    import signal

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)


def _guarded_main(argv):
    from .signals import Stop, handle_signals  # stdlib only: installed before the heavy imports

    with handle_signals():
        try:
            from . import checkpoint

            with checkpoint.quiet_writer_threads():
                try:
                    return _main(argv)
                except checkpoint.CheckpointError as e:  # a checkpoint that does not fit the run, found late
                    print(wrap_message(f"backprop-lab: error: {e}"), file=sys.stderr)
                    return 2
        except KeyboardInterrupt as e:  # during start-up, or outside an experiment
            stop = e if isinstance(e, Stop) else Stop()
            print(f"backprop-lab: interrupted ({stop.name})", file=sys.stderr)
            return stop.exit_code


def _main(argv):
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    owner = getattr(args, "_parser", parser)
    if extra:  # report it with the innermost parser's usage, which lists the valid options
        owner.error(f"unrecognized arguments: {' '.join(extra)}")
    problem = check_paths(args)
    if problem:  # before any work: a run must not end by failing to write its results
        owner.error(problem)
    import torch_ref

    torch_ref.ieee_float32()  # CUDA float32 compared as IEEE float32 on both sides (no TF32 convolutions)
    return int(args.func(args) or 0)
