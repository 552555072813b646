"""Hostile programs: each is contained, graded wrong, and leaves the host unharmed.

Each program is graded against a stdio test whose expected output is what it would print only if
it broke out (a secret, a server's reply, a file written outside): a wrong grade *is* the proof of
containment, and the host-side checks prove nothing leaked or survived.
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time

import pytest

from dasd.grading.code import run_tests
from dasd.grading.sandbox import Limits, isolation, run_python

FAST = 2.0  # per-case seconds for hostile programs


def stdio(expected: str) -> dict:
    return {"style": "stdio", "cases": [{"input": "", "output": expected}]}


def assert_host_ok() -> None:
    pid = os.fork()  # the host can still fork (no process table exhaustion)
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


def sandbox_uid_procs() -> list[int]:
    """Processes left under any sandbox uid (only meaningful when runs drop to their own uid)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if 61000 <= os.stat(f"/proc/{d}").st_uid < 61000 + 256:
                    out.append(int(d))
            except OSError:
                pass
    return out


def test_isolation_is_reported():
    iso = isolation()
    assert set(iso) >= {"uid_drop", "namespaces", "python"}
    r = run_python({"m.py": "print('hello')"}, "m.py")
    assert r.returncode == 0 and r.stdout == b"hello\n" and not r.timed_out
    assert r.isolation == {"uid_drop": iso["uid_drop"], "namespaces": iso["namespaces"],
                           "private_tmp": iso["private_tmp"], "cgroup": bool(iso["cgroups"])}


def test_fork_bomb():
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    res = run_tests(code, stdio("done"), case_timeout_s=FAST)
    assert not res["passed"] and res["detail"]["failure"]["reason"] in ("timeout", "signal", "runtime_error")
    assert_host_ok()
    if isolation()["uid_drop"]:
        assert sandbox_uid_procs() == []


def test_memory_bomb():
    code = "x = []\nwhile True:\n    x.append(bytearray(50 * 1024 * 1024))\nprint('survived')\n"
    # A small address-space limit so that the bomb hits it fast (page zeroing is slow on small VMs).
    res = run_tests(code, stdio("survived"), case_timeout_s=60, limits=Limits(memory_mb=256, wall_s=120, cpu_s=60))
    assert not res["passed"] and res["detail"]["failure"]["reason"] in ("runtime_error", "signal")
    assert "MemoryError" in res["detail"].get("stderr", "") or res["detail"]["failure"]["reason"] == "signal"


def test_infinite_loop_and_sleep_past_timeout():
    for code in ("while True:\n    pass\n", "import time\ntime.sleep(3600)\nprint('woke')\n"):
        res = run_tests(code, stdio("woke"), case_timeout_s=1.0)
        assert not res["passed"] and res["detail"]["failure"]["reason"] == "timeout"


def test_sleep_past_wall_clock_kills_whole_run():
    # The harness itself is bypassed: the run's wall clock kills the whole process group.
    r = run_python({"m.py": "import time\ntime.sleep(3600)"}, "m.py", limits=Limits(wall_s=1.0))
    assert r.timed_out and r.returncode is None


def test_huge_output():
    code = "import sys\nchunk = 'x' * (1 << 20)\nwhile True:\n    sys.stdout.write(chunk)\n"
    res = run_tests(code, stdio("x"), case_timeout_s=FAST)
    assert not res["passed"]
    r = run_python({"m.py": code}, "m.py", limits=Limits(wall_s=FAST * 2, fsize_mb=4))
    assert len(r.stdout) <= 4 * 1024 * 1024 and not r.timed_out and r.returncode != 0  # SIGXFSZ / EFBIG


def test_writing_outside_its_directory(tmp_path):
    # tmp_path: a root-owned directory of the host; /tmp and /dev/shm: world-writable ones.
    name = f"dasd-pwned-{os.getpid()}-{time.monotonic_ns()}"
    targets = [str(tmp_path / "pwned.txt"), f"/tmp/{name}", f"/dev/shm/{name}", f"/var/tmp/{name}"]
    code = (f"wrote = []\nfor p in {targets!r}:\n    try:\n        open(p, 'w').write('pwned')\n"
            "        wrote.append(p)\n    except OSError:\n        pass\n"
            "print(len(wrote))\n")
    res = run_tests(code, stdio("4"), case_timeout_s=FAST)
    iso = isolation()
    if not iso["uid_drop"] or not iso["private_tmp"]:
        pytest.skip("no per-run uid or no private /tmp here: the host's files are not protected (logged)")
    assert not res["passed"] and res["detail"]["failure"]["reason"] == "wrong_answer"
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
    res = run_tests(code, stdio(secret), case_timeout_s=FAST)
    if not isolation()["namespaces"] and not isolation()["uid_drop"]:
        pytest.skip("no PID namespace and no uid drop: /proc of the parent is readable here")
    assert not res["passed"] and res["detail"]["failure"]["reason"] == "wrong_answer"


def test_killing_its_parent():
    code = ("import os, signal\n"
            "for target in (os.getppid(), 1, -1):\n"
            "    try:\n        os.kill(target, signal.SIGKILL)\n    except OSError:\n        pass\n"
            "print('killed')\n")
    if not isolation()["namespaces"] and not isolation()["uid_drop"]:
        pytest.skip("kill(-1) as our own uid would kill the test runner here")
    res = run_tests(code, stdio("parent is dead"), case_timeout_s=FAST)
    assert not res["passed"]
    assert_host_ok()  # and this process (the run's parent on the host) is alive to check it


def test_connecting_to_a_loopback_server():
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
    if not isolation()["namespaces"]:
        pytest.skip("no network namespace here: the sandbox can reach loopback (logged as a warning)")
    assert not res["passed"] and res["detail"]["failure"]["reason"] == "wrong_answer"
    assert accepted == []


def test_detached_child_is_gone_afterwards():
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
    res = run_tests(code, stdio("never"), case_timeout_s=10)
    done.set()
    w.join()
    assert not res["passed"] and res["detail"]["failure"]["reason"] == "wrong_answer"
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

    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    sandbox._isolation.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="dasd.grading.sandbox"):
            iso = sandbox.isolation()
        assert iso["namespaces"] is False
        assert any("namespaces unavailable" in rec.getMessage() and "network" in rec.getMessage()
                   for rec in caplog.records)
        if not iso["uid_drop"]:
            pytest.skip("not root: detached children cannot be swept without namespaces (documented)")
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

    if os.geteuid() != 0 or not shutil.which("setpriv") or not os.path.exists("/usr/bin/python3"):
        pytest.skip("needs root (to become nobody), setpriv and /usr/bin/python3")
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
    if got["ns"]:
        assert got["out"] == "nonet\n"
    else:
        assert "namespaces unavailable" in p.stderr


def test_total_memory_of_the_run_is_bounded():
    """Four forked children of 100 MB each: each is under the per-process limit, the run as a whole
    is over its cgroup limit, so some are OOM-killed and the program cannot print 4."""
    if not isolation()["cgroups"]:
        pytest.skip("no writable cgroup here: total memory is bounded only by nproc x memory_mb (logged)")
    code = ("import os\nkids = []\nfor i in range(4):\n    pid = os.fork()\n    if pid == 0:\n"
            "        b = bytearray(100 * 1024 * 1024)\n        for j in range(0, len(b), 4096):\n            b[j] = 1\n"
            "        os._exit(0)\n    kids.append(pid)\nok = 0\nfor pid in kids:\n    _, st = os.waitpid(pid, 0)\n"
            "    ok += os.WIFEXITED(st) and os.WEXITSTATUS(st) == 0\nprint(ok)\n")
    limits = Limits(memory_mb=512, total_memory_mb=200, wall_s=120, cpu_s=60)
    res = run_tests(code, stdio("4"), case_timeout_s=60, limits=limits)
    assert not res["passed"] and res["detail"]["isolation"]["cgroup"] is True
    roots = isolation()["cgroups"].values()
    assert [d for r in roots for d in os.listdir(r) if d.startswith("dasd-sbx-")] == []  # groups removed
    roomy = run_tests(code, stdio("4"), case_timeout_s=60, limits=Limits(memory_mb=512, total_memory_mb=1024,
                                                                         wall_s=120, cpu_s=60))
    assert roomy["passed"]  # the same program passes when the run may hold all four
