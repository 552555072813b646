"""One writer per run directory: ``RUN/.lock``, held with ``flock`` for as long as the process lives.

``hold_run_lock(root)`` takes the lock or raises ``RunLockedError`` naming the holder (pid, host,
since). The kernel drops an ``flock`` when its process dies, however it dies (``kill -9``
included), so a lock left by a dead process is simply taken over: nothing is guessed from pids.
The lock file keeps the holder's description (JSON) for the message only.

Within one process the lock is taken once per directory and kept until the process exits (every
``RunStore`` of the same run in one process shares it); ``release_run_lock`` drops it early. The
processes of one distributed job (``accelerate launch -m dasd train ...``) are one writer: ranks
above 0 (``RANK``) work under rank 0's lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
from pathlib import Path

from dasd.errors import DasdError

LOCK = ".lock"

_held: dict[str, int] = {}  # real path of a run directory -> fd of its lock file, in this process
_guard = threading.Lock()


class RunLockedError(DasdError):
    """Another live process writes to this run directory."""


def holder(root: str | Path) -> dict | None:
    """The description the current (or last) holder left in ``RUN/.lock``, or None."""
    try:
        data = json.loads((Path(root) / LOCK).read_text(encoding="utf-8") or "null")
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def hold_run_lock(root: str | Path) -> bool:
    """Take the run directory's writer lock for this process (a no-op if it holds it already); True
    when this process holds it, False for a rank > 0 of a distributed job (rank 0 holds it for the
    job, and alone writes the run's own files)."""
    if os.environ.get("RANK", "0") not in ("", "0"):
        return False  # a rank > 0 of a distributed job: rank 0 holds the lock for the job
    key = os.path.realpath(root)
    with _guard:
        if key in _held:
            return True
        path = Path(root) / LOCK
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            h = holder(root)
            who = (f"pid {h.get('pid')} on {h.get('host')} since {h.get('since')}" if h
                   else "another process (it has not written its name yet)")
            raise RunLockedError(f"{root}: run directory in use by {who}; wait for it to finish or stop it "
                                 "(a second writer would mix its shards with the first one's)") from None
        me = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                         "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        os.ftruncate(fd, 0)
        os.pwrite(fd, me.encode() + b"\n", 0)
        _held[key] = fd
        return True


def release_run_lock(root: str | Path) -> None:
    """Drop this process's lock on ``root`` (if it holds it)."""
    with _guard:
        fd = _held.pop(os.path.realpath(root), None)
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
