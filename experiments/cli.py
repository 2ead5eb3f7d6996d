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
COMMANDS = ["runner", "bench", "verify"]


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on a bad option; make the message list what is valid."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n(see `{self.prog} --help` for the valid options)\n")


def check_paths(args):
    """A message if --json's folder is missing or --logdir cannot be created/written, else None."""
    path = getattr(args, "json", None)
    if path:
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            return f"--json {path}: the folder {folder} does not exist"
        if not os.access(folder, os.W_OK):
            return f"--json {path}: the folder {folder} is not writable"
    logdir = getattr(args, "logdir", None)
    if logdir:
        try:
            os.makedirs(logdir, exist_ok=True)
        except OSError as e:
            return f"--logdir {logdir}: cannot create it ({e.strerror})"
        if not os.access(logdir, os.W_OK):
            return f"--logdir {logdir}: not writable"
    return None


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


def main(argv=None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    owner = getattr(args, "_parser", parser)
    if extra:  # report it with the innermost parser's usage, which lists the valid options
        owner.error(f"unrecognized arguments: {' '.join(extra)}")
    problem = check_paths(args)
    if problem:  # before any work: a run must not end by failing to write its results
        owner.error(problem)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
