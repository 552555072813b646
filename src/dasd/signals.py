"""The signals that stop a command: SIGINT (Ctrl-C) and SIGTERM (what Slurm and most schedulers
send) raise ``Stopped`` in the main thread once the CLI installs ``on_signal``, so the stack unwinds
and writers keep what is complete.

``held()`` defers them while worker processes start: a parent stopped while the fork server is
handing a new worker the pool's semaphores exits and removes them, and the worker, still unpickling
them, dies printing a traceback after dasd's last line. Held, the signal is raised on leaving the
block, once every worker the block started is known to the pool (whose shutdown then waits for it).

``exit_with_parent()`` is the other direction: a worker process (grading pool, toy-build pool, the
server's engine process) ends when the dasd process that started it dies, SIGKILL and OOM-kill
included. Without it such workers block forever on their task queue (they hold its write end too,
so they never see end-of-file), keep the fork server and resource tracker alive, and hold the
command's stdout open, so whatever waits for that output (a shell pipe, a scheduler) never ends.
"""

from __future__ import annotations

import os
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


# How long a worker whose parent died may spend unwinding (sandbox runs killed, temp files
# removed) before it is ended outright.
PARENT_GONE_GRACE_S = 5.0


def _parent_gone(signum, frame) -> None:
    raise SystemExit(1)  # quietly: the command's own stderr has ended with its process


def exit_with_parent() -> None:
    """Make this process (a ``multiprocessing`` child) end when its parent process dies.

    Use as a pool's ``initializer`` or call first thing in a ``Process`` target; a no-op in a process
    that multiprocessing did not start. A daemon thread waits on the parent's sentinel (a pipe that
    the parent's death closes: no polling). Then it raises ``SystemExit`` in the main thread (via
    SIGUSR1, which interrupts a blocking wait), so ``finally`` blocks run: a sandboxed code run in
    progress is killed and its files removed. A worker still alive ``PARENT_GONE_GRACE_S`` later (a
    pool loop that caught the exit and went back to its queue) ends with ``os._exit(1)``.

    Pitfall: the sentinel closes when every copy of the parent's end is closed; a grandchild that the
    parent forked (not spawned: ``fork`` copies descriptors) would keep it open until it ends too.
    """
    import multiprocessing as mp
    from multiprocessing.connection import wait

    parent = mp.parent_process()
    if parent is None or threading.current_thread() is not threading.main_thread():
        return
    main_ident = threading.main_thread().ident
    signal.signal(signal.SIGUSR1, _parent_gone)

    def watch() -> None:
        wait([parent.sentinel])
        signal.pthread_kill(main_ident, signal.SIGUSR1)
        threading.Event().wait(PARENT_GONE_GRACE_S)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="dasd-exit-with-parent").start()
