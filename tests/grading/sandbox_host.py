"""What this host allows, probed by the tests themselves (never by asking the sandbox module), and
the strict mode that turns a sandbox test's skip into a failure.

The sandbox tests decide whether to skip from ``host_caps()``, before anything hostile runs, so a
broken detection inside ``dasd.grading.sandbox`` cannot turn a containment failure into a skip: the
test runs, and the containment check fails. ``test_isolation_matches_the_host`` also compares the
module's ``isolation()`` with these probes.

Strict mode: ``DASD_STRICT_SANDBOX=1`` makes every skip of a test marked ``sandbox`` a failure (the
hook is in tests/grading/conftest.py); CI sets it on machines where namespaces, uids and cgroups work.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

STRICT_ENV = "DASD_STRICT_SANDBOX"
SANDBOX_UIDS = range(61000, 61000 + 256)  # run_python's default uid_base and slot count
PROBE_UID = 61990  # a sandbox-range uid used only by these probes


def strict() -> bool:
    """Whether skips of sandbox tests are failures (``DASD_STRICT_SANDBOX=1``)."""
    return os.environ.get(STRICT_ENV, "") == "1"


@dataclass(frozen=True)
class HostCaps:
    """``root``: euid 0. ``namespaces``: ``unshare`` gives new network, PID and mount namespaces (as
    root of a user namespace when not root): the shell inside is pid 1 and sees no network device
    but ``lo``. ``private_tmp``: a tmpfs can be mounted on /tmp inside them. ``uid_drop``: root, and
    a Python exists that an unprivileged uid can run. ``cgroups``: root, and our own v1 memory and
    pids groups accept a child group."""

    root: bool
    namespaces: bool
    private_tmp: bool
    uid_drop: bool
    cgroups: bool


def _ok(cmd: list[str], **kw) -> subprocess.CompletedProcess | None:
    try:
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30, **kw)
    except (OSError, subprocess.SubprocessError):
        return None
    return p if p.returncode == 0 else None


def _unshare(root: bool) -> list[str]:
    return ["unshare", *([] if root else ["--map-root-user"]), "--net", "--pid", "--fork", "--mount-proc"]


def _namespaces(root: bool) -> bool:
    p = _ok([*_unshare(root), "sh", "-c", "echo $$; tail -n +3 /proc/net/dev | cut -d: -f1"])
    return p is not None and p.stdout.split() in (["1", "lo"], ["1"])


def _private_tmp(root: bool) -> bool:
    p = _ok([*_unshare(root), "sh", "-c", "mount -t tmpfs tmpfs /tmp && touch /tmp/probe && echo mounted"])
    return p is not None and p.stdout.strip() == "mounted"


def _uid_drop(root: bool) -> bool:
    if not root:
        return False
    for py in dict.fromkeys([sys.executable, "/usr/bin/python3"]):
        if os.path.exists(py) and _ok([py, "-c", "import os; assert os.getuid() == %d" % PROBE_UID],
                                      user=PROBE_UID, group=PROBE_UID, extra_groups=[], cwd="/"):
            return True
    return False


def _cgroups(root: bool) -> bool:
    if not root:
        return False
    dirs = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        for c in ("memory", "pids"):
            if c in ctrls.split(","):
                dirs[c] = Path("/sys/fs/cgroup", c, path.lstrip("/"))
    if set(dirs) != {"memory", "pids"}:
        return False
    for d in dirs.values():
        probe = d / f"dasd-test-probe-{os.getpid()}"
        try:
            probe.mkdir()
            probe.rmdir()
        except OSError:
            return False
    return True


@lru_cache(maxsize=None)
def host_caps() -> HostCaps:
    """This host's capabilities (probed once per test session)."""
    root = os.geteuid() == 0
    has_unshare = shutil.which("unshare") is not None
    ns = has_unshare and _namespaces(root)
    return HostCaps(root=root, namespaces=ns, private_tmp=ns and _private_tmp(root), uid_drop=_uid_drop(root),
                    cgroups=_cgroups(root))


def live_procs_of(uids: range) -> list[int]:
    """Live (not zombie, not dead) processes whose owner is in ``uids``, leaving out those in another
    process's sandbox cgroup (a concurrent test session's runs). A zombie has ended: whoever reaps it
    (the host's init, a moment later) decides when it disappears, so it is never counted."""
    mine = f"dasd-sbx-{os.getpid()}-"
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            if os.stat(f"/proc/{d}").st_uid not in uids:
                continue
            with open(f"/proc/{d}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
            with open(f"/proc/{d}/cgroup") as f:
                groups = f.read()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if state in (b"Z", b"X"):
            continue
        if "dasd-sbx-" in groups and mine not in groups:
            continue
        out.append(int(d))
    return out
