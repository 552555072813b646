"""The signals that stop a command: SIGINT (Ctrl-C) and SIGTERM (what Slurm and most schedulers
send) raise ``Stopped`` in the main thread once the CLI installs ``on_signal``, so the stack unwinds
and writers keep what is complete.

``held()`` defers them while worker processes start: a parent stopped while the fork server is
handing a new worker the pool's semaphores exits and removes them, and the worker, still unpickling
them, dies printing a traceback after dasd's last line. Held, the signal is raised on leaving the
block, once every worker the block started is known to the pool (whose shutdown then waits for it).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Stopped(BaseException):
    """SIGINT or SIGTERM arrived. It unwinds the stack (writers flush what is complete) and is not
    caught by ``except Exception``; unlike KeyboardInterrupt, typer does not turn it into a silent
    exit code."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


_held = {"depth": 0, "signum": None}


def on_signal(signum, frame) -> None:
    """The handler the CLI installs for SIGINT and SIGTERM: raise ``Stopped`` (at the end of the
    outermost ``held()`` block when inside one). A second signal of the same kind ends the process at
    once (Ctrl-C: KeyboardInterrupt)."""
    signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)
    if _held["depth"]:
        _held["signum"] = _held["signum"] or signum
        return
    raise Stopped(signum)


@contextmanager
def held() -> Iterator[None]:
    """Within the block a stopping signal is remembered, not raised; it is raised on leaving it.
    Keep such blocks short: starting processes, not waiting for their results. Outside the main
    thread (where Python never runs signal handlers) it holds nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _held["depth"] += 1
    try:
        yield
    finally:
        _held["depth"] -= 1
        if not _held["depth"] and _held["signum"] is not None:
            signum, _held["signum"] = _held["signum"], None
            raise Stopped(signum)
