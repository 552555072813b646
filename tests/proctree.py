"""Process trees read from Linux /proc, for tests that check no process outlives the command."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

HAS_PROC = Path("/proc/self/task").is_dir()


def children(pid: int) -> set[int]:
    """The live child processes of ``pid``."""
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out.update(int(k) for k in (task / "children").read_text().split())
        except OSError:
            pass
    return out


def descendants(pid: int) -> set[int]:
    """Children, their children, and so on."""
    found, todo = set(), [pid]
    while todo:
        for kid in children(todo.pop()) - found:
            found.add(kid)
            todo.append(kid)
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def left_alive(pids, guard_s: float = 60.0) -> list[int]:
    """Those of ``pids`` still running once all have ended or ``guard_s`` has passed (a guard
    against a hang, not a time limit on anything)."""
    deadline = time.monotonic() + guard_s
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


def kill_all(pids) -> None:
    """SIGKILL each of ``pids`` still there (a test's clean-up, whatever it found)."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
