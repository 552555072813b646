"""Hostile programs: each is contained, graded wrong, and leaves the host unharmed.

Each program is graded against a stdio test whose expected output is what it prints only if it
broke out (a secret, a server's reply, a count no limit would allow): a wrong grade *is* the proof of
containment, and the host-side checks prove nothing leaked or survived. Every assertion can fail:
a program that is stopped by a limit is written so that it would print the expected output (and
pass) if the limit were missing.

Skips are decided first, from what the host allows as probed by the tests themselves
(``sandbox_host.host_caps()``), never from the sandbox module; with ``DASD_STRICT_SANDBOX=1`` a skip
is a failure.
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time

import pytest
from sandbox_host import SANDBOX_UIDS, host_caps, live_procs_of

from dasd.grading.code import run_tests
from dasd.grading.sandbox import Limits, isolation, run_python

pytestmark = pytest.mark.sandbox
FAST = 2.0  # per-case seconds for hostile programs


def need(ok: bool, why: str) -> None:
    """Skip (a failure in strict mode) unless ``ok``; called before anything hostile runs."""
    if not ok:
        pytest.skip(why)


def stdio(expected: str) -> dict:
    return {"style": "stdio", "cases": [{"input": "", "output": expected}]}


def assert_host_ok() -> None:
    pid = os.fork()  # the host can still fork (no process table exhaustion)
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


def test_isolation_matches_the_host():
    """The module's own detection agrees with the tests' probes: a detection that breaks (reports
    less than the host allows) fails here, and the containment tests below run anyway."""
    caps = host_caps()
    iso = isolation()
    assert (iso["namespaces"], iso["private_tmp"], iso["uid_drop"], bool(iso["cgroups"])) == \
        (caps.namespaces, caps.private_tmp, caps.uid_drop, caps.cgroups)
    r = run_python({"m.py": "print('hello')"}, "m.py")
    assert r.returncode == 0 and r.stdout == b"hello\n" and not r.timed_out
    assert r.isolation == {"uid_drop": caps.uid_drop, "namespaces": caps.namespaces,
                           "private_tmp": caps.private_tmp, "cgroup": caps.cgroups}


def test_the_run_holds_no_capabilities():
    """No capability in the run (so no CAP_SYS_PTRACE: the harness's memory is out of reach), and
    a private uid where the host allows one."""
    code = ("import os\nst = dict(l.split(':', 1) for l in open('/proc/self/status') if l.startswith('Cap'))\n"
            "print(os.getuid(), *(int(st[k], 16) for k in ('CapEff', 'CapPrm', 'CapInh', 'CapAmb')))\n")
    r = run_python({"m.py": code}, "m.py")
    uid, *caps = map(int, r.stdout.split())
    assert caps == [0, 0, 0, 0], r.stdout
    assert (uid in SANDBOX_UIDS) is host_caps().uid_drop


def test_live_process_count_ignores_zombies():
    """The leftover-process check counts live processes only: a zombie under a sandbox uid (ended,
    not yet reaped) is not counted, a sleeping one is (so the check can fail)."""
    need(host_caps().root, "needs root to own processes under a sandbox uid")
    uid = SANDBOX_UIDS[-1]
    pids = []
    for body in ("os._exit(0)", "time.sleep(60)"):
        pid = os.fork()
        if pid == 0:
            try:
                os.setgid(uid)
                os.setuid(uid)
                exec(body)
            finally:
                os._exit(0)
        pids.append(pid)
    zombie, sleeper = pids
    try:
        def state(pid: int) -> tuple[int, bytes]:
            with open(f"/proc/{pid}/stat", "rb") as f:
                return os.stat(f"/proc/{pid}").st_uid, f.read().rsplit(b")", 1)[1].split()[0]

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if state(zombie) == (uid, b"Z") and state(sleeper)[0] == uid:
                break
            time.sleep(0.01)
        else:
            pytest.fail("the children never became a zombie and a sleeper under the sandbox uid")
        live = live_procs_of(SANDBOX_UIDS)
        assert zombie not in live and sleeper in live
    finally:
        os.kill(sleeper, 9)
        for pid in pids:
            os.waitpid(pid, 0)
    assert settled_leftovers() == []


def settled_leftovers() -> list[int]:
    """Live sandbox-uid processes once killed ones have finished dying (up to 10 s of polling)."""
    deadline = time.monotonic() + 10
    while (left := live_procs_of(SANDBOX_UIDS)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def _fork_bomb_checks() -> None:
    # A bounded bomb whose children stay alive: it prints "forked 200" only if no process limit
    # stops it, so a missing limit passes the grade (and fails the test).
    code = ("import os, time\nn = 0\nfor _ in range(200):\n    try:\n        pid = os.fork()\n"
            "    except OSError:\n        break\n    if pid == 0:\n        time.sleep(30)\n        os._exit(0)\n"
            "    n += 1\nprint('forked', n)\n")
    res = run_tests(code, stdio("forked 200"), case_timeout_s=20)
    assert not res["passed"] and res["detail"]["failure"]["reason"] == "wrong_answer", res
    # The classic unbounded bomb: stopped by the per-case timeout, the host unharmed.
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    res = run_tests(code, stdio("done"), case_timeout_s=FAST)
    assert res["detail"]["failure"]["reason"] in ("timeout", "signal", "runtime_error"), res
    assert_host_ok()
    assert settled_leftovers() == []  # nothing of either bomb is left running


def test_fork_bomb():
    need(host_caps().uid_drop, "runs share the caller's uid here: leftovers cannot be told from the caller's")
    _fork_bomb_checks()


def test_fork_bomb_without_namespaces(monkeypatch):
    """Where `unshare` is refused (a supported mode), the bomb's killed processes become zombies
    that the host reaps later: they are not leftovers."""
    need(host_caps().uid_drop, "runs share the caller's uid here: leftovers cannot be told from the caller's")
    from dasd.grading import sandbox

    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    sandbox._isolation.cache_clear()
    try:
        assert isolation()["namespaces"] is False
        _fork_bomb_checks()
    finally:
        sandbox._isolation.cache_clear()


def test_memory_bomb():
    # 1 GB in 50 MB steps: it prints 'survived' only if no memory limit stops it.
    code = "x = []\nfor _ in range(20):\n    x.append(bytearray(50 * 1024 * 1024))\nprint('survived')\n"
    # A small address-space limit so that the bomb hits it fast (page zeroing is slow on small VMs).
    res = run_tests(code, stdio("survived"), case_timeout_s=60, limits=Limits(memory_mb=256, wall_s=120, cpu_s=60))
    assert not res["passed"] and res["detail"]["failure"]["reason"] in ("runtime_error", "signal")
    assert "MemoryError" in res["detail"].get("stderr", "") or res["detail"]["failure"]["reason"] == "signal"


def test_busy_loop_and_sleep_past_timeout():
    # Each would print 'woke' after 5 s: only the 1 s per-case timeout keeps it from passing.
    for code in ("import time\nt = time.monotonic()\nwhile time.monotonic() - t < 5:\n    pass\nprint('woke')\n",
                 "import time\ntime.sleep(5)\nprint('woke')\n"):
        res = run_tests(code, stdio("woke"), case_timeout_s=1.0)
        assert not res["passed"] and res["detail"]["failure"]["reason"] == "timeout"


def test_sleep_past_wall_clock_kills_whole_run():
    # The harness itself is bypassed: the run's wall clock kills the whole process group.
    r = run_python({"m.py": "import time\ntime.sleep(5)\nprint('woke')"}, "m.py", limits=Limits(wall_s=1.0))
    assert r.timed_out and r.returncode is None and r.stdout == b""


def test_huge_output():
    # 100 MB, then a clean exit: only the file-size limit stops it (Python ignores SIGXFSZ, so the
    # write past the limit fails with EFBIG).
    code = "import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(100):\n    sys.stdout.write(chunk)\n"
    res = run_tests(code, stdio("x"), case_timeout_s=FAST * 5)
    assert res["detail"]["failure"] == {"case": 0, "reason": "runtime_error"}
    assert "File too large" in res["detail"]["stderr"]
    r = run_python({"m.py": code}, "m.py", limits=Limits(wall_s=FAST * 5, fsize_mb=4))
    assert len(r.stdout) == 4 * 1024 * 1024 and not r.timed_out and r.returncode == 1
    assert b"File too large" in r.stderr


def test_writing_outside_its_directory(tmp_path):
    # tmp_path: a root-owned directory of the host; /tmp and /dev/shm: world-writable ones.
    name = f"dasd-pwned-{os.getpid()}-{time.monotonic_ns()}"
    targets = [str(tmp_path / "pwned.txt"), f"/tmp/{name}", f"/dev/shm/{name}", f"/var/tmp/{name}"]
    caps = host_caps()
    need(caps.uid_drop and caps.private_tmp, "no per-run uid or no private /tmp here: the host's files are not "
                                             "protected (logged)")
    code = (f"wrote = []\nfor p in {targets!r}:\n    try:\n        open(p, 'w').write('pwned')\n"
            "        wrote.append(p)\n    except OSError:\n        pass\n"
            "print(len(wrote))\n")
    res = run_tests(code, stdio("4"), case_timeout_s=FAST)
    assert not res["passed"] and res["detail"]["failure"]["reason"] == "wrong_answer"
    assert [t for t in targets if os.path.exists(t)] == []
    # From inside: the host directory refused the write, the private tmpfs took the other three.
    r = run_python({"m.py": code.replace("print(len(wrote))", "print(wrote)")}, "m.py")
    assert r.stdout.decode().strip() == repr(targets[1:])
    assert [t for t in targets if os.path.exists(t)] == []


def test_reading_the_parents_environment(monkeypatch):
    secret = "dasd-secret-7d1f0c"
    monkeypatch.setenv("DASD_TEST_SECRET", secret)
    code = (
        "import os\nfound = os.environ.get('DASD_TEST_SECRET')\n"
        "for pid in [os.getppid(), 1] + [int(d) for d in os.listdir('/proc') if d.isdigit()]:\n"
        "    try:\n"
        "        env = open(f'/proc/{pid}/environ', 'rb').read()\n"
        "    except OSError:\n"
        "        continue\n"
        "    for item in env.split(b'\\0'):\n"
        "        if item.startswith(b'DASD_TEST_SECRET='):\n"
        "            found = item.split(b'=', 1)[1].decode()\n"
        "print(found)\n"
    )
    need(host_caps().namespaces or host_caps().uid_drop,
         "no PID namespace and no uid drop: /proc of the parent is readable here")
    res = run_tests(code, stdio(secret), case_timeout_s=FAST)
    assert not res["passed"] and res["detail"]["failure"]["reason"] == "wrong_answer"


def test_killing_its_parent():
    """kill(parent), kill(1), kill(-1): a process of the host (a sentinel child of this test, which
    an uncontained kill(-1) would reach) and this process survive; the program itself ran to the end."""
    need(host_caps().namespaces or host_caps().uid_drop, "kill(-1) as our own uid would kill the test runner here")
    import subprocess

    code = ("import os, signal\n"
            "for target in (os.getppid(), 1, -1):\n"
            "    try:\n        os.kill(target, signal.SIGKILL)\n    except OSError:\n        pass\n"
            "print('tried')\n")
    sentinel = subprocess.Popen(["sleep", "60"])
    try:
        r = run_python({"m.py": code}, "m.py", limits=Limits(wall_s=10))
        assert r.stdout == b"tried\n", r  # the kills were attempted (else this test proves nothing)
        assert sentinel.poll() is None  # the host's process is alive
        assert_host_ok()  # and this process (the run's parent on the host) is alive to check it
    finally:
        sentinel.kill()
        sentinel.wait()


def test_connecting_to_a_loopback_server():
    need(host_caps().namespaces, "no network namespace here: the sandbox can reach loopback (logged as a warning)")
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    port = srv.getsockname()[1]
    accepted = []

    def serve():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            accepted.append(1)
            conn.sendall(b"server-reply-42\n")
            conn.close()

    stop = threading.Event()
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        # sanity: the server really answers from the host
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            assert c.recv(100) == b"server-reply-42\n"
        accepted.clear()
        code = (f"import socket\ntry:\n    s = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
                "    print(s.recv(100).decode().strip())\nexcept OSError as e:\n    print('no network', e)\n")
        res = run_tests(code, stdio("server-reply-42"), case_timeout_s=FAST)
    finally:
        stop.set()
        t.join()
        srv.close()
    assert not res["passed"] and res["detail"]["failure"]["reason"] == "wrong_answer"
    assert accepted == []


def test_detached_child_is_gone_afterwards():
    need(host_caps().namespaces or host_caps().uid_drop or host_caps().cgroups,
         "no PID namespace, uid or cgroup here: a detached child outlives the run (documented)")
    marker = f"dasd-detached-{os.getpid()}-{time.monotonic_ns()}"
    code = (
        "import os, sys, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(600)', {marker!r}])\n"
        "    os._exit(0)\n"
        "time.sleep(1.5)\n"
        "print('parent done')\n"
    )

    def marker_pids() -> list[int]:
        pids = []
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/cmdline", "rb") as f:
                        if marker.encode() in f.read():
                            pids.append(int(d))
                except OSError:
                    pass
        return pids

    seen = []
    done = threading.Event()

    def watch():
        while not done.is_set():
            if marker_pids():
                seen.append(True)
                return
            time.sleep(0.02)

    w = threading.Thread(target=watch, daemon=True)
    w.start()
    res = run_tests(code, stdio("parent done"), case_timeout_s=10)
    done.set()
    w.join()
    assert res["passed"], res  # the program ran to its end (its child detached meanwhile)
    assert seen, "the detached child never ran (test would prove nothing)"
    assert marker_pids() == []


def test_many_runs_in_parallel():
    from concurrent.futures import ThreadPoolExecutor

    code = "import os\nprint(sum(map(int, input().split())))\n"
    tests = {"style": "stdio", "cases": [{"input": f"{i} {i}", "output": str(2 * i)} for i in range(3)]}
    with ThreadPoolExecutor(6) as ex:
        results = list(ex.map(lambda _: run_tests(code, tests, case_timeout_s=10), range(6)))
    assert all(r["passed"] for r in results)


def test_without_namespaces_it_degrades_loudly_and_still_sweeps(monkeypatch, caplog):
    """No `unshare` on PATH (as in many containers): a WARNING says what is lost; as root the
    per-run uid still sweeps a detached child away."""
    import logging

    from dasd.grading import sandbox

    need(host_caps().uid_drop, "no per-run uid: detached children cannot be swept without namespaces (documented)")
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    sandbox._isolation.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="dasd.grading.sandbox"):
            iso = sandbox.isolation()
        assert iso["namespaces"] is False and iso["uid_drop"] is True
        assert any("namespaces unavailable" in rec.getMessage() and "network" in rec.getMessage()
                   for rec in caplog.records)
        marker = f"dasd-degraded-{os.getpid()}-{time.monotonic_ns()}"
        # The grandchild touches 'alive' once running; 'bye' on stdout proves it was alive before the end.
        code = ("import os, sys, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
                "        os.execv(sys.executable, [sys.executable, '-c', "
                f"\"open('alive', 'w').close(); import time; time.sleep(600)\", {marker!r}])\n"
                "    os._exit(0)\nwhile not os.path.exists('alive'):\n    time.sleep(0.01)\nprint('bye')\n")
        r = run_python({"m.py": code}, "m.py", limits=Limits(wall_s=30))
        assert r.stdout == b"bye\n" and r.isolation["namespaces"] is False and r.isolation["uid_drop"] is True
        left = []
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/cmdline", "rb") as f:
                        if marker.encode() in f.read():
                            left.append(d)
                except OSError:
                    pass
        assert left == []
    finally:
        sandbox._isolation.cache_clear()


def test_non_root_caller():
    """Run the sandbox itself as an unprivileged user (nobody), as most users will: it must work,
    say what it lost, and still isolate the network where user namespaces are allowed."""
    import json
    import shutil
    import subprocess
    from pathlib import Path

    import dasd

    need(host_caps().root and bool(shutil.which("setpriv")) and os.path.exists("/usr/bin/python3"),
         "needs root (to become nobody), setpriv and /usr/bin/python3")
    # Can nobody get namespaces here (unprivileged user namespaces)? Probed directly, first.
    userns = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "unshare",
                             "--map-root-user", "--net", "--pid", "--fork", "--mount-proc", "true"],
                            capture_output=True, timeout=60, cwd="/").returncode == 0
    src = str(Path(dasd.__file__).resolve().parents[1])
    here = Path(tempfile.mkdtemp(prefix="dasd-nonroot-"))  # pytest's tmp_path is private to root
    script = here / "caller.py"
    script.write_text(
        "import json, logging, sys\n"
        f"sys.path.insert(0, {src!r})\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        "from dasd.grading.sandbox import isolation, run_python\n"
        "code = ('import socket\\ntry:\\n    socket.create_connection((\"127.0.0.1\", 9), timeout=1)\\n'\n"
        "        '    print(\"net\")\\nexcept OSError:\\n    print(\"nonet\")\\n')\n"
        "r = run_python({'m.py': code}, 'm.py')\n"
        "iso = isolation()\n"
        "print(json.dumps({'ns': iso['namespaces'], 'uid_drop': iso['uid_drop'], 'out': r.stdout.decode()}))\n")
    os.chmod(here, 0o755)
    os.chmod(script, 0o644)
    try:
        p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3",
                            str(script)], capture_output=True, text=True, timeout=120, cwd="/",
                           env={"PATH": "/usr/bin:/bin", "TMPDIR": "/tmp"})
    finally:
        shutil.rmtree(here)
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert got["uid_drop"] is False and "not running as root" in p.stderr
    assert got["ns"] is userns
    if userns:
        assert got["out"] == "nonet\n"
    else:
        assert "namespaces unavailable" in p.stderr


def test_a_stop_while_a_run_waits_kills_the_run_without_root():
    """Ctrl-C or SIGTERM while the caller waits for a run (inline grading, or a pool worker whose
    parent died): the run's process group is killed on the way out. Run as nobody, where no cgroup
    or uid sweep would catch a straggler: the program used to sleep on after its caller had ended."""
    import shutil
    import subprocess
    from pathlib import Path

    import dasd

    need(host_caps().root and bool(shutil.which("setpriv")) and os.path.exists("/usr/bin/python3"),
         "needs root (to become nobody), setpriv and /usr/bin/python3")
    src = str(Path(dasd.__file__).resolve().parents[1])
    here = Path(tempfile.mkdtemp(prefix="dasd-nonroot-"))
    marker = f"sleeper_{os.getpid()}_{time.monotonic_ns()}.py"  # found in the program's command line
    script = here / "caller.py"
    script.write_text(
        "import glob, os, signal, sys, threading, time\n"
        f"sys.path.insert(0, {src!r})\n"
        "from dasd.grading.sandbox import run_python\n"
        "from dasd.signals import on_signal\n"
        "signal.signal(signal.SIGTERM, on_signal)\n"
        "def stop_once_started():\n"
        "    while not glob.glob(os.environ['TMPDIR'] + '/dasd-sbx-*/run/started'):\n"
        "        time.sleep(0.05)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "threading.Thread(target=stop_once_started, daemon=True).start()\n"
        "code = 'import time\\nopen(\"started\", \"w\").close()\\ntime.sleep(600)\\n'\n"
        f"run_python({{{marker!r}: code}}, {marker!r})\n")
    (here / "tmp").mkdir()
    for d in (here, here / "tmp"):
        os.chmod(d, 0o777)
    os.chmod(script, 0o644)
    try:
        p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3",
                            str(script)], capture_output=True, text=True, timeout=120, cwd="/",
                           env={"PATH": "/usr/bin:/bin", "TMPDIR": str(here / "tmp")})

        def sleepers() -> list[int]:
            found = []
            for d in Path("/proc").iterdir():
                try:
                    if d.name.isdigit() and marker.encode() in (d / "cmdline").read_bytes():
                        found.append(int(d.name))
                except OSError:
                    pass
            return found

        left = sleepers()
        for pid in left:
            os.kill(pid, 9)
    finally:
        shutil.rmtree(here)
    assert "Stopped" in p.stderr, p.stderr  # the stop reached the caller while it waited
    assert not left, f"the sandboxed program outlived its caller: {left}"


def test_groups_left_by_a_killed_caller_are_removed_with_their_processes():
    """A caller killed mid-run (SIGKILL, OOM) never removes its run's cgroup. The next process that
    probes the sandbox kills what is left in such groups and removes them; a live caller's group
    (here: this process's own name) is left alone."""
    import subprocess
    from pathlib import Path

    from dasd.grading import sandbox

    need(host_caps().cgroups, "no writable cgroup here")
    parents = isolation()["cgroups"]
    ended = subprocess.Popen(["true"])  # a caller that has ended (and been reaped)
    ended.wait()
    straggler = subprocess.Popen(["sleep", "600"])
    stale = [Path(p) / f"dasd-sbx-{ended.pid}-1-0" for p in parents.values()]
    live = [Path(p) / f"dasd-sbx-{os.getpid()}-999999-0" for p in parents.values()]
    try:
        for d in stale + live:
            d.mkdir()
        (stale[0] / "cgroup.procs").write_text(str(straggler.pid))  # what the killed run left running
        sandbox._isolation.cache_clear()
        isolation()  # probed again, as a new process would
        assert not any(d.exists() for d in stale)
        assert straggler.wait(timeout=30) == -9
        assert all(d.exists() for d in live)
    finally:
        straggler.kill()
        for d in stale + live:
            if d.exists():
                sandbox._remove_group(d)
        sandbox._isolation.cache_clear()


def test_total_memory_of_the_run_is_bounded():
    """Four forked children of 100 MB each: each is under the per-process limit, the run as a whole
    is over its cgroup limit, so some are OOM-killed and the program cannot print 4."""
    need(host_caps().cgroups, "no writable cgroup here: total memory is bounded only by nproc x memory_mb (logged)")
    code = ("import os\nkids = []\nfor i in range(4):\n    pid = os.fork()\n    if pid == 0:\n"
            "        b = bytearray(100 * 1024 * 1024)\n        for j in range(0, len(b), 4096):\n            b[j] = 1\n"
            "        os._exit(0)\n    kids.append(pid)\nok = 0\nfor pid in kids:\n    _, st = os.waitpid(pid, 0)\n"
            "    ok += os.WIFEXITED(st) and os.WEXITSTATUS(st) == 0\nprint(ok)\n")
    limits = Limits(memory_mb=512, total_memory_mb=200, wall_s=120, cpu_s=60)
    res = run_tests(code, stdio("4"), case_timeout_s=60, limits=limits)
    assert not res["passed"] and res["detail"]["isolation"]["cgroup"] is True, res
    roots = isolation()["cgroups"].values()
    assert [d for r in roots for d in os.listdir(r) if d.startswith("dasd-sbx-")] == []  # groups removed
    roomy = run_tests(code, stdio("4"), case_timeout_s=60, limits=Limits(memory_mb=512, total_memory_mb=1024,
                                                                         wall_s=120, cpu_s=60))
    assert roomy["passed"]  # the same program passes when the run may hold all four
