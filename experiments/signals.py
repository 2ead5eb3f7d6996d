"""SIGINT and SIGTERM stop a run cleanly (stdlib only: the CLI installs these first thing).

Inside a training loop (`step_boundaries`), the first signal is noted and the loop stops at the
next step boundary, writes a checkpoint and raises `Stop` (a KeyboardInterrupt); outside one,
`Stop` is raised at once. A second signal stops at once without the checkpoint; during the
clean-up after a stop it is ignored with a message; a third exits immediately. Exit codes:
128 + the signal's number (130 for SIGINT, 143 for SIGTERM).
"""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager

class Stop(KeyboardInterrupt):
    """Raised when SIGINT or SIGTERM stops a run; `exit_code` is 128 + the signal's number."""

    def __init__(self, signum=signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)
        self.exit_code = 128 + self.signum

    @property
    def name(self):
        return signal.Signals(self.signum).name


_SIG = {"count": 0, "pending": None, "defer": 0, "raised": False}
_WORDS = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}


def _say(text):
    try:
        os.write(2, (text + "\n").encode())
    except OSError:
        pass


def _handler(signum, frame):
    _SIG["count"] += 1
    n, word = _SIG["count"], _WORDS.get(signum, signal.Signals(signum).name)
    if n >= 3:
        _say(f"{word} a third time: quitting now, without writing logs or results")
        os._exit(128 + signum)
    if _SIG["raised"]:  # cleaning up after the first stop: let it finish
        _say(f"{word}: already stopping (flushing logs, writing results); {word} once more quits at once")
        return
    if n == 1 and _SIG["defer"]:
        _SIG["pending"] = signum
        _say(f"{word}: stopping after this training step, writing a checkpoint ({word} again stops at once)")
        return
    _SIG["raised"] = True
    raise Stop(signum)


@contextmanager
def handle_signals():
    """SIGINT and SIGTERM become `Stop` (see the module docstring); the old handlers come back after."""
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    _SIG.update(count=0, pending=None, defer=0, raised=False)
    for s in old:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        _SIG.update(count=0, pending=None, defer=0, raised=False)


@contextmanager
def step_boundaries():
    """Inside: a first signal waits for `pending_stop()` at the next step boundary."""
    _SIG["defer"] += 1
    try:
        yield
    finally:
        _SIG["defer"] -= 1
    if not _SIG["defer"]:  # a signal that came after the last boundary check
        s = pending_stop()
        if s is not None:
            raise Stop(s)


def pending_stop():
    """The signal number waiting for a step boundary, or None. Claims it: the caller raises Stop."""
    s = _SIG["pending"]
    if s is not None:
        _SIG["pending"] = None
        _SIG["raised"] = True
    return s


def claim_stop():
    """Mark this process as stopping though no signal reached it (another rank's did): a signal that
    arrives during the clean-up is then told to wait, as after a signal of its own."""
    _SIG["raised"] = True
