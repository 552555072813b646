"""Run untrusted (model-written) Python in a contained child process.

``run_python(files, main, stdin=..., limits=Limits(), collect=[...])`` writes ``files`` into a fresh
temporary directory, runs ``python -I -B main`` there and returns a ``RunResult`` (exit status,
capped stdout/stderr, timeout flag, the ``collect``-ed files read back safely, and which isolation
was in force). Every run gets:

- its own process, in a new session/process group, with a **minimal environment** (PATH, HOME and
  TMPDIR, LANG, single-thread BLAS knobs: nothing inherited from the parent);
- rlimits: CPU seconds, address space (memory), process count, file size, open files, no core;
- **no capabilities** (bounding set emptied where allowed, then all sets cleared: as root of a user
  namespace too), so no process of the run can read the memory or descriptors of one that made
  itself non-dumpable (the code grader's harness keeps its secret that way); the supervisor is
  non-dumpable and keeps no handle on the program's stdin, whose file is unlinked on the host
  before the run starts;
- a wall-clock timeout after which the **whole process group is SIGKILLed**;
- when the OS allows it (see ``isolation()``):
  * a new **network namespace** (no interface is up: no loopback, no internet),
  * a new **mount namespace** with fresh, small tmpfs on ``/tmp``, ``/var/tmp`` and ``/dev/shm``
    (nothing the program writes there reaches the host; HOME and TMPDIR point there),
  * a new **PID namespace** with a fresh ``/proc``: the sandbox sees none of the host's processes
    (so no parent environment to read, no parent to kill), and when the run ends the kernel kills
    every process left in it, detached (``setsid``, double-fork) children included,
  * as root, a child **cgroup** (v1 memory and pids controllers, under our own group) per run: the
    memory of the whole run (``Limits.total_memory_mb``) and its process count are bounded, and
    whatever is left in the group afterwards is killed before the group is removed (the groups of
    a caller killed mid-run are removed, with what runs in them, by the next process that probes
    the sandbox: those whose maker's pid no longer exists);
  * as root, a **dedicated unprivileged uid** per concurrent run (``uid_base + slot``, the slot held
    by a lock file): the process-count limit then counts only this run's processes, the program
    cannot write to files it does not own, and a final ``kill(-1)`` as that uid sweeps stragglers.
    A slot whose uid still owns a process (a killed run's zombies, which without a PID namespace
    linger until the host's init reaps them, and would count against RLIMIT_NPROC) is passed over.

What degrades, and where (each is logged once per process as a WARNING, never silent):
- no ``unshare`` or namespaces refused (unprivileged containers): network is NOT isolated, detached
  children are swept only by cgroup/uid (root) or not at all (non-root), the host's /proc is visible
  and its /tmp writable;
- not root: no uid drop and no cgroup; RLIMIT_NPROC is shared with every process of the calling user
  (it is set to the user's current count plus ``limits.nproc``), and the program can write wherever
  the user can. Unprivileged user namespaces (``unshare --map-root-user``) still give network, PID
  and mount isolation;
- no writable cgroup v1 memory/pids hierarchy (e.g. cgroup v2-only hosts): the memory limit is per
  process only (RLIMIT_AS), so the worst total is ``nproc x memory_mb``.

Pitfalls: no seccomp filter; files readable by everyone on the host stay readable by the run.
This guards against accidents and casual hostility, not targeted attacks (use a VM for those).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_DIR = Path(tempfile.gettempdir()) / f"dasd-sandbox-slots-{os.geteuid()}"
MAX_SLOTS = 256
PROBE_UID = 60999
PRIVATE_TMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")


@dataclass
class Limits:
    """Resource limits of one sandboxed run.

    - ``wall_s``: wall-clock seconds before the whole run is killed (sleeping counts).
    - ``cpu_s``: CPU seconds per process (RLIMIT_CPU; SIGXCPU then SIGKILL).
    - ``memory_mb``: address space per process (RLIMIT_AS). Python needs ~30 MB; numpy ~200 MB.
    - ``total_memory_mb``: memory of the whole run (all its processes, its tmpfs pages), enforced by
      a cgroup when one can be made (``isolation()["cgroup"]``); over it, the kernel OOM-kills inside
      the run.
    - ``nproc``: processes+threads the run may have at once (RLIMIT_NPROC, under its own uid).
    - ``fsize_mb``: largest file the run may write, stdout/stderr included (RLIMIT_FSIZE; SIGXFSZ).
    - ``nofile``: open file descriptors per process (RLIMIT_NOFILE).
    - ``read_bytes``: most bytes read back from stdout, stderr or a collected file.
    """

    wall_s: float = 10.0
    cpu_s: int = 10
    memory_mb: int = 1024
    total_memory_mb: int = 2048
    nproc: int = 16
    fsize_mb: int = 64
    nofile: int = 64
    read_bytes: int = 16 * 1024 * 1024


@dataclass
class RunResult:
    """Outcome of one sandboxed run.

    ``returncode`` is the program's exit code, or ``-signum`` when a signal ended it (as subprocess
    does); ``timed_out`` means the wall clock ran out and the run was killed. ``files`` holds the
    collected files that exist and are regular files (symlinks, FIFOs, directories are refused).
    ``isolation`` records what was in force for this run.
    """

    returncode: int | None
    stdout: bytes
    stderr: bytes
    timed_out: bool
    wall_s: float
    files: dict[str, bytes] = field(default_factory=dict)
    isolation: dict[str, bool] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# What this machine allows


def _probe(cmd: list[str]) -> bool:
    try:
        return subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def isolation(python: str | None = None) -> dict[str, object]:
    """What isolation this process can set up for ``python``, probed once (and warned about once).

    Keys: ``namespaces`` (network + PID + mount namespaces via ``unshare``), ``private_tmp`` (fresh
    tmpfs on /tmp, /var/tmp, /dev/shm inside them), ``cgroups`` (controller -> our own v1 cgroup dir,
    under which each run gets a child group: memory and pids of the whole run; root only),
    ``unshare_cmd`` (the prefix used), ``uid_drop`` (running as root with an interpreter that an
    unprivileged uid can execute: each run gets its own uid), ``python`` (the interpreter runs use:
    ``python`` or this one, else the system ``/usr/bin/python3`` when ours is unreadable to other
    uids, e.g. a venv under /root).
    """
    return _isolation(python or sys.executable)


@lru_cache(maxsize=None)
def _isolation(python: str) -> dict[str, object]:
    root = os.geteuid() == 0
    unshare = shutil.which("unshare")
    prefix: list[str] = []
    if unshare:
        base = [unshare, "--net", "--pid", "--fork", "--kill-child", "--mount-proc"]
        cand = base if root else [unshare, "--map-root-user", *base[1:]]
        if _probe([*cand, "true"]):
            prefix = cand
    uid_drop = False
    if root:
        for interp in dict.fromkeys([python, "/usr/bin/python3"]):
            if os.path.exists(interp) and _probe(_launch_cmd(prefix, interp, PROBE_UID, ["-c", "pass"], Limits(), 64)):
                if interp != python:
                    log.warning("sandbox: %s cannot be run by an unprivileged uid; model code runs with %s",
                                python, interp)
                python, uid_drop = interp, True
                break
        else:
            log.warning("sandbox: no interpreter runnable by an unprivileged uid; runs keep root's uid "
                        "(model code can write anywhere root can)")
    else:
        log.warning("sandbox: not running as root, so no per-run uid or cgroup: the process limit is shared "
                    "with your user's processes, total memory is bounded only by nproc x memory_mb, and "
                    "model code can write wherever you can")
    cgroups = _probe_cgroups() if root else {}
    if root and set(cgroups) != {"memory", "pids"}:
        log.warning("sandbox: no writable cgroup v1 %s controller here; a run's total memory is bounded "
                    "only by nproc x memory_mb", " and ".join(sorted({"memory", "pids"} - set(cgroups))))
    private_tmp = bool(prefix) and _probe(_launch_cmd(prefix, python, PROBE_UID if uid_drop else None,
                                                      ["-c", "pass"], Limits(), 64, private_tmp=True))
    if prefix and not private_tmp:
        log.warning("sandbox: cannot mount private /tmp, /var/tmp, /dev/shm: model code can write to the host's")
    if not prefix:
        log.warning("sandbox: network/PID namespaces unavailable (%s); model code CAN reach the network "
                    "and see host processes; detached children are swept %s",
                    "no unshare binary" if not unshare else "unshare refused",
                    "by uid" if uid_drop else "only by process group")
    return {"uid_drop": uid_drop, "namespaces": bool(prefix), "private_tmp": private_tmp,
            "cgroups": cgroups, "unshare_cmd": prefix, "python": python}


# ----------------------------------------------------------------------------------------------
# cgroups (v1 memory and pids controllers): one child group per run, under our own group


def _own_cgroup_dirs() -> dict[str, Path]:
    """``{"memory": dir, "pids": dir}``: this process's own v1 cgroup directories that exist."""
    out: dict[str, Path] = {}
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for ctrl in ("memory", "pids"):
            if ctrl in parts[1].split(","):
                d = Path("/sys/fs/cgroup") / ctrl / parts[2].lstrip("/")
                if d.is_dir():
                    out[ctrl] = d
    return out


class _Cgroups:
    """Per-run child cgroups: memory limit on the whole run, pids limit; kills and removes them."""

    _counter = 0

    def __init__(self, parents: dict[str, Path], tag: str, limits: Limits):
        _Cgroups._counter += 1
        name = f"dasd-sbx-{os.getpid()}-{_Cgroups._counter}-{tag}"
        self.dirs: list[Path] = []
        try:
            for ctrl, parent in parents.items():
                d = parent / name
                d.mkdir()
                self.dirs.append(d)
                if ctrl == "memory":
                    (d / "memory.limit_in_bytes").write_text(str(int(limits.total_memory_mb) * 1024 * 1024))
                    try:
                        (d / "memory.swappiness").write_text("0")  # best effort: OOM rather than swap
                    except OSError:
                        pass
                else:
                    (d / "pids.max").write_text(str(int(limits.nproc)))
        except OSError:
            self.remove()
            raise

    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs]

    def remove(self) -> None:
        """Kill whatever is left in the groups (detached children included), then remove them."""
        for d in self.dirs:
            _remove_group(d)
        self.dirs = []


def _remove_group(d: Path) -> None:
    """Kill every process in cgroup ``d``, then remove it (a warning if it will not go)."""
    for _ in range(200):
        try:
            pids = [int(x) for x in (d / "cgroup.procs").read_text().split()]
        except OSError:
            pids = []
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            d.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.01)
    log.warning("sandbox: could not remove cgroup %s", d)


def _probe_cgroups() -> dict[str, Path]:
    parents = _own_cgroup_dirs()
    if not parents:
        return {}
    try:
        _Cgroups(parents, "probe", Limits()).remove()
    except OSError:
        return {}
    _remove_stale_groups(parents)
    return parents


def _remove_stale_groups(parents: dict[str, Path]) -> None:
    """Kill and remove the run groups of dead processes: a caller killed mid-run (SIGKILL, OOM)
    never removes its group, and the groups would pile up under ours."""
    for parent in parents.values():
        for d in parent.glob("dasd-sbx-*-*-*"):
            owner = d.name.split("-")[2]
            if not owner.isdigit():
                continue
            try:
                os.kill(int(owner), 0)
                continue  # its maker is alive (or its pid was reused): not ours to remove
            except ProcessLookupError:
                pass
            except OSError:
                continue
            _remove_group(d)


# ----------------------------------------------------------------------------------------------
# Slots: one lock file (and, as root, one uid) per concurrent run


class _Slot:
    """A free slot: its lock file held, and (``skip_used_uids``) its uid owning no process at all: a
    killed run's processes linger as zombies until the host's init reaps them (without a PID
    namespace), and they would count against the next run's RLIMIT_NPROC."""

    def __init__(self, uid_base: int, skip_used_uids: bool = False):
        LOCK_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(LOCK_DIR)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise RuntimeError(f"sandbox: {LOCK_DIR} is not a directory owned by uid {os.geteuid()}; remove it")
        self.fd = -1
        for i in range(MAX_SLOTS):
            fd = os.open(LOCK_DIR / f"slot-{i}", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            if skip_used_uids and _count_user_processes(uid_base + i):
                os.close(fd)
                continue
            self.fd, self.index, self.uid = fd, i, uid_base + i
            return
        raise RuntimeError(f"sandbox: all {MAX_SLOTS} slots in {LOCK_DIR} are busy")

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing drops the flock
            self.fd = -1


# ----------------------------------------------------------------------------------------------
# The launcher: runs inside the namespaces, sets limits, drops privileges, supervises the program.

_LAUNCHER = r"""
import ctypes, json, os, resource, signal, sys
cfg = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)

def fail(why):
    sys.stderr.write(f"sandbox launcher: {why}\n")
    os._exit(125)

if cfg["private_tmp"]:
    for d in cfg["private_tmp"]:
        opts = f"size={cfg['tmp_mb']}m,mode=1777".encode()
        if libc.mount(b"tmpfs", d.encode(), b"tmpfs", 2 | 4, opts) != 0:  # MS_NOSUID | MS_NODEV
            fail(f"cannot mount a private {d}: {os.strerror(ctypes.get_errno())}")
for procs in cfg["cgroup_procs"]:
    with open(procs, "w") as f:
        f.write(str(os.getpid()))
for name, val in cfg["rlimits"].items():
    resource.setrlimit(getattr(resource, name), (val, val))
# No capabilities for the run (as root, or as root of a user namespace): empty the bounding set
# (where we may: it keeps an exec as uid 0 from regaining them), drop uid, then clear the rest. Without
# CAP_SYS_PTRACE, no process of the run can read a non-dumpable one's memory or descriptors.
for cap in range(64):
    libc.prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP; EPERM without CAP_SETPCAP, EINVAL past the last cap
if cfg["uid"] is not None:
    os.setgroups([])
    os.setgid(cfg["uid"])
    os.setuid(cfg["uid"])

class CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

class CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

libc.prctl(47, 4, 0, 0, 0)  # PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL
libc.capset(ctypes.byref(CapHeader(0x20080522, 0)), (CapData * 2)())  # _LINUX_CAPABILITY_VERSION_3
with open("/proc/self/status") as f:
    caps = {k: int(v, 16) for k, v in (ln.split(":", 1) for ln in f if ln.startswith("Cap"))}
if any(caps.get(k, 0) for k in ("CapInh", "CapPrm", "CapEff", "CapAmb")):
    fail(f"cannot drop capabilities: {caps}")
libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 0 (the program, once exec'd, is dumpable again)
pid = os.fork()
if pid == 0:
    try:
        os.execve(cfg["argv"][0], cfg["argv"], cfg["env"])
    except BaseException as e:
        sys.stderr.write(f"sandbox launcher: cannot run {cfg['argv'][0]}: {e}\n")
    os._exit(127)
null = os.open(os.devnull, os.O_RDONLY)  # the supervisor keeps no handle on the program's stdin
os.dup2(null, 0)
os.close(null)
# Supervisor (pid 1 of the namespace when there is one): reap everything, report the program's status.
status = None
while True:
    try:
        p, st = os.wait()
    except ChildProcessError:
        break
    if p == pid:
        status = st
        break
if status is None:
    os._exit(126)
if os.WIFSIGNALED(status):
    os._exit(128 + os.WTERMSIG(status))
os._exit(os.WEXITSTATUS(status))
"""


def _launch_cmd(prefix: list[str], python: str, uid: int | None, args: list[str], limits: Limits,
                nproc: int, env: dict[str, str] | None = None, private_tmp: bool = False,
                cgroup_procs: list[str] | None = None) -> list[str]:
    cfg = {
        "cgroup_procs": cgroup_procs or [],
        "private_tmp": [d for d in PRIVATE_TMP_DIRS if os.path.isdir(d)] if private_tmp else [],
        "tmp_mb": int(limits.fsize_mb),
        "rlimits": {
            "RLIMIT_CPU": int(limits.cpu_s),
            "RLIMIT_AS": int(limits.memory_mb) * 1024 * 1024,
            "RLIMIT_NPROC": int(nproc),
            "RLIMIT_FSIZE": int(limits.fsize_mb) * 1024 * 1024,
            "RLIMIT_NOFILE": int(limits.nofile),
            "RLIMIT_CORE": 0,
        },
        "uid": uid,
        "argv": [python, "-I", "-B", *args],  # args: [script] or ["-c", code]
        "env": env or _env("/"),
    }
    return [*prefix, python, "-I", "-S", "-c", _LAUNCHER, json.dumps(cfg)]


# The script is run by a relative path from the working directory: under a private /tmp the run dir's
# absolute path (on the host's /tmp) is hidden, and Python would open a script by its absolute path.
_RUN_MAIN = ("import sys; sys.argv = sys.argv[1:]; f = open(sys.argv[0], 'rb'); c = compile(f.read(), sys.argv[0], "
             "'exec'); f.close(); del f; exec(c, {'__name__': '__main__', '__builtins__': __builtins__})")


def _count_user_processes(uid: int) -> int:
    n = 0
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.stat(f"/proc/{d}").st_uid == uid:
                    n += 1
            except OSError:
                pass
    return n


def _sweep_uid(uid: int) -> None:
    """Kill every process owned by ``uid`` (from a helper that becomes that uid and kills -1)."""
    code = ("import os,signal\nos.setgroups([]);os.setgid(%d);os.setuid(%d)\n"
            "try: os.kill(-1, signal.SIGKILL)\nexcept ProcessLookupError: pass\n") % (uid, uid)
    subprocess.run([sys.executable, "-I", "-S", "-c", code], stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)


def _read_capped(path: Path, limit: int) -> bytes | None:
    """Read a regular file without following symlinks or blocking on FIFOs; None if not a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks, left = [], limit
        while left > 0:
            b = os.read(fd, min(left, 1 << 20))
            if not b:
                break
            chunks.append(b)
            left -= len(b)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _env(home: str) -> dict[str, str]:
    """The run's whole environment: nothing inherited from the caller."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": home,
        "TMPDIR": home,
        "LANG": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONIOENCODING": "utf-8",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def run_python(
    files: dict[str, str | bytes],
    main: str,
    stdin: bytes = b"",
    limits: Limits | None = None,
    collect: list[str] | tuple[str, ...] = (),
    python: str | None = None,
    uid_base: int = 61000,
) -> RunResult:
    """Run ``python -I -B <main>`` in a fresh directory holding ``files``, under ``limits``.

    ``files`` maps plain file names (no directories) to contents; ``stdin`` is fed to the program;
    ``collect`` names files to read back from the directory afterwards. ``python`` defaults to this
    interpreter (see ``isolation`` for when another one is used). ``uid_base``: first
    uid of the per-run uids used when running as root. Safe to call from many processes at once.
    """
    limits = limits or Limits()
    iso = isolation(python)
    slot = _Slot(uid_base, skip_used_uids=bool(iso["uid_drop"]))
    work = Path(tempfile.mkdtemp(prefix="dasd-sbx-"))
    host = Path(tempfile.mkdtemp(prefix="dasd-sbx-io-"))  # stdout/stderr files, not visible to the run
    uid = slot.uid if iso["uid_drop"] else None
    cg: _Cgroups | None = None
    try:
        run_dir = work / "run"
        run_dir.mkdir()
        for name, content in files.items():
            if "/" in name or name in ("", ".", ".."):
                raise ValueError(f"sandbox file name must be a plain name, got {name!r}")
            data = content.encode("utf-8") if isinstance(content, str) else content
            (run_dir / name).write_bytes(data)
        if uid is not None:
            os.chmod(work, 0o711)
            for p in [run_dir, *run_dir.iterdir()]:
                os.chown(p, uid, uid)
        nproc = limits.nproc if uid is not None else _count_user_processes(os.geteuid()) + limits.nproc
        if iso["cgroups"]:
            cg = _Cgroups(iso["cgroups"], str(slot.index), limits)
        # With a private /tmp the run dir (under the host's /tmp) is hidden behind the new tmpfs; the
        # program still reaches it as its working directory, and HOME/TMPDIR point at the private /tmp.
        env = _env("/tmp" if iso["private_tmp"] else str(run_dir))
        cmd = _launch_cmd(iso["unshare_cmd"], iso["python"], uid, ["-c", _RUN_MAIN, main], limits, nproc, env,
                          private_tmp=bool(iso["private_tmp"]), cgroup_procs=cg.procs_files() if cg else None)
        t0 = time.monotonic()
        with open(host / "stdin", "wb") as fh:
            fh.write(stdin)
        with open(host / "stdin", "rb") as fin, open(host / "stdout", "wb") as fout, \
                open(host / "stderr", "wb") as ferr:
            os.unlink(host / "stdin")  # stdin (it may hold a secret) is reachable only through the descriptor
            proc = subprocess.Popen(cmd, cwd=run_dir, env=_env(str(run_dir)), stdin=fin, stdout=fout,
                                    stderr=ferr, start_new_session=True, close_fds=True)
            timed_out = False
            try:
                proc.wait(timeout=limits.wall_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:  # also when the wait is interrupted (a stop, or dasd.signals.exit_with_parent)
                _kill_group(proc.pid)
            proc.wait()
        wall = time.monotonic() - t0
        if cg is not None:
            cg.remove()  # kills anything left in the run's groups
            cg = None
        if uid is not None and (timed_out or not iso["namespaces"]):
            _sweep_uid(uid)
        rc = proc.returncode
        if not timed_out and rc is not None and rc > 128 and rc - 128 < 65:
            rc = -(rc - 128)  # the launcher reports a signal as 128 + signum
        out = {}
        for name in collect:
            data = _read_capped(run_dir / name, limits.read_bytes)
            if data is not None:
                out[name] = data
        return RunResult(
            returncode=None if timed_out else rc,
            stdout=_read_capped(host / "stdout", limits.read_bytes) or b"",
            stderr=_read_capped(host / "stderr", limits.read_bytes) or b"",
            timed_out=timed_out,
            wall_s=wall,
            files=out,
            isolation={"uid_drop": uid is not None, "namespaces": bool(iso["namespaces"]),
                       "private_tmp": bool(iso["private_tmp"]), "cgroup": bool(iso["cgroups"])},
        )
    finally:
        if cg is not None:
            cg.remove()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(host, ignore_errors=True)
        slot.release()


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError as e:
        if e.errno not in (errno.ESRCH, errno.EPERM):
            raise
