"""Programs that try to forge a pass of an assert-style (HumanEval) test instead of solving it.

Every forger below defines a *wrong* ``add``, so a pass would be a forgery; each must be graded
incorrect. The honest side is checked by equivalence: for a battery of honest and wrong solutions,
the sandbox's verdict equals the verdict of running solution and tests in one plain Python process
(what the grader did before the tests moved to their own process).

Each forger is a real attack on the former design (all ran in one process, the token one frame
above the solution): frame digging, writing the pass file, exiting 0 early, reading the tests
(job.json) and an object equal to everything pass there.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sandbox_host import STRICT_ENV, host_caps

from dasd.grading.code import run_tests
from dasd.grading.sandbox import Limits, run_python

pytestmark = pytest.mark.sandbox
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

ADD = {"style": "assert", "entry_point": "add",
       "code": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(10, 20) == 30\n"}

# Looks for a 32-hex token in every process it can see: descriptors (stdin files), environments,
# command lines, and memory (every readable mapping). Prints what it found.
DIG = r'''
import os, re, stat
pat = re.compile(rb"(?<![0-9a-f])[0-9a-f]{32}(?![0-9a-f])")
found, in_files = set(), set()  # in_files: found in a file someone holds open (a stdin)
def scan(b, into=found):
    into.update(m.group().decode() for m in pat.finditer(b))
for pid in [p for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]:
    for name in ("environ", "cmdline"):
        try:
            scan(open(f"/proc/{pid}/{name}", "rb").read())
        except OSError:
            pass
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        fds = []
    for fd in fds:  # regular files only (reading someone's pipe would block)
        try:
            if stat.S_ISREG(os.stat(f"/proc/{pid}/fd/{fd}").st_mode):
                with open(f"/proc/{pid}/fd/{fd}", "rb") as f:
                    scan(f.read(1 << 20), in_files)
        except OSError:
            pass
    try:
        maps = open(f"/proc/{pid}/maps").read().splitlines()
        mem = open(f"/proc/{pid}/mem", "rb", buffering=0)
    except OSError:
        continue
    for line in maps:
        lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
        if line.split()[1][0] != "r" or hi - lo > 1 << 28:
            continue
        for at in range(lo, hi, 1 << 20):  # 1 MB steps, overlapping by a token's length
            try:
                mem.seek(at)
                scan(mem.read(min(hi - at, (1 << 20) + 32)))
            except (OSError, OverflowError, ValueError):
                break
'''

FORGERS = {
    # The one-liner of the issue, then every frame's globals and locals.
    "frame_dig": """
import os, sys
def add(a, b):
    return 0
f = sys._getframe(0)
while f is not None:
    for d in (f.f_globals, f.f_locals):
        for v in list(d.values()):
            if isinstance(v, str) and len(v) == 32:
                open("pass_0.txt", "w").write(v)
                os._exit(0)
    f = f.f_back
open("pass_0.txt", "w").write(sys._getframe(1).f_globals["token"])
os._exit(0)
""",
    "write_pass_and_status_files": """
import json, os, secrets
def add(a, b):
    return 0
for i in range(4):
    open(f"pass_{i}.txt", "w").write(secrets.token_hex(16))
json.dump([{"case": 0, "status": "ok", "rc": 0}], open("status.json", "w"))
os._exit(0)
""",
    "exit_0_at_import": "import os\ndef add(a, b):\n    return 0\nos._exit(0)\n",
    "exit_0_in_the_call": "import os\ndef add(a, b):\n    os._exit(0)\n",
    "sys_exit_0_at_import": "import sys\ndef add(a, b):\n    return 0\nsys.exit(0)\n",
    "system_exit_0_in_the_call": "def add(a, b):\n    raise SystemExit(0)\n",
    "sys_exit_from_atexit": ("import atexit, os, sys\ndef add(a, b):\n    return 0\n"
                             "atexit.register(lambda: open('pass_0.txt', 'w').write('0' * 32))\nsys.exit(0)\n"),
    "equal_to_everything": ("class Eq:\n    def __eq__(self, other):\n        return True\n"
                            "    def __ne__(self, other):\n        return False\n    def __bool__(self):\n        return True\n"
                            "    __hash__ = object.__hash__\n"
                            "def add(a, b):\n    return Eq()\n"),
    "monkeypatch_builtins_and_check": """
import builtins
class Never(BaseException):
    pass
builtins.AssertionError = Never
builtins.Exception = Never
builtins.isinstance = lambda *a: True
def check(candidate):
    return None
def add(a, b):
    return 0
""",
    "kill_the_checker": "import os, signal\ndef add(a, b):\n    os.kill(os.getppid(), signal.SIGKILL)\n    return 0\n",
    "kill_the_harness": ("import os, signal\ndef add(a, b):\n"
                         "    ppid = int(open(f'/proc/{os.getppid()}/stat').read().rsplit(')', 1)[1].split()[1])\n"
                         "    os.kill(ppid, signal.SIGKILL)\n    return 0\n"),
    "say_pass_on_every_descriptor": ("import os\ndef add(a, b):\n    for fd in range(3, 64):\n        try:\n"
                                     "            os.write(fd, b'pass')\n        except OSError:\n            pass\n"
                                     "    os._exit(0)\n"),
    # Reads the tests (job.json) and answers from their literals.
    "read_the_tests": r"""
import json, re
def add(a, b):
    try:
        code = json.load(open("job.json"))["test_code"]
    except (OSError, ValueError, KeyError):
        return 0
    for x, y, z in re.findall(r"candidate\((\d+), (\d+)\) == (\d+)", code):
        if (int(x), int(y)) == (a, b):
            return int(z)
    return 0
""",
    # Digs the token out of every process and descriptor it can see (the harness's stdin among them).
    "dig_the_token_from_proc": "import os\n" + DIG + """
def add(a, b):
    return 0
if in_files or found:
    open("pass_0.txt", "w").write(sorted(in_files or found)[0])
    os._exit(0)
""",
}


@pytest.mark.parametrize("name", sorted(FORGERS))
def test_forger_is_graded_incorrect(name):
    if name == "dig_the_token_from_proc":
        caps = host_caps()
        # Without either, the run shares the caller's uid and user namespace: it could read the
        # caller's memory (documented).
        if not (caps.uid_drop or caps.namespaces):
            pytest.skip("no per-run uid and no namespaces: the caller's memory is readable by the run")
    res = run_tests(FORGERS[name], ADD, case_timeout_s=10)
    assert res["passed"] is False, res
    assert res["detail"]["passed_cases"] == 0


def test_forgers_fail_for_a_non_root_caller():
    """The same, with the sandbox run by an unprivileged user (nobody) in a user namespace, where
    the run is root of its namespace: it holds no capability there either (else CAP_SYS_PTRACE would
    reach the harness), and the forgers and the digger fail while the honest solution passes."""
    import json
    import shutil
    import tempfile

    import dasd

    if not (host_caps().root and shutil.which("setpriv") and os.path.exists("/usr/bin/python3")):
        pytest.skip("needs root (to become nobody), setpriv and /usr/bin/python3")
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    if subprocess.run([*as_nobody, "unshare", "--map-root-user", "--net", "--pid", "--fork", "--mount-proc", "true"],
                      capture_output=True, timeout=60, cwd="/").returncode != 0:
        pytest.skip("no user namespaces for nobody: the run shares the caller's uid and could read its memory")
    src = str(Path(dasd.__file__).resolve().parents[1])
    here = Path(tempfile.mkdtemp(prefix="dasd-nonroot-"))  # pytest's tmp_path is private to root
    names = ["frame_dig", "dig_the_token_from_proc", "equal_to_everything", "read_the_tests", "exit_0_in_the_call"]
    caps = ("st = dict(l.split(':', 1) for l in open('/proc/self/status') if l.startswith('Cap'))\n"
            "print(*(int(st[k], 16) for k in ('CapEff', 'CapPrm', 'CapInh', 'CapAmb')))\n")
    (here / "job.json").write_text(json.dumps({"forgers": {n: FORGERS[n] for n in names}, "tests": ADD,
                                               "honest": "def add(a, b):\n    return a + b\n", "caps": caps}))
    (here / "caller.py").write_text(
        f"import json, sys\nsys.path.insert(0, {src!r})\n"
        "from dasd.grading.code import run_tests\nfrom dasd.grading.sandbox import isolation, run_python\n"
        f"job = json.load(open({str(here / 'job.json')!r}))\n"
        "out = {n: run_tests(c, job['tests'], case_timeout_s=10)['passed'] for n, c in job['forgers'].items()}\n"
        "out['honest'] = run_tests(job['honest'], job['tests'], case_timeout_s=10)['passed']\n"
        "out['caps'] = run_python({'m.py': job['caps']}, 'm.py').stdout.decode().split()\n"
        "out['namespaces'] = isolation()['namespaces']\n"
        "print(json.dumps(out))\n")
    for f in (here, here / "job.json", here / "caller.py"):
        os.chmod(f, 0o755 if f == here else 0o644)
    try:
        p = subprocess.run([*as_nobody, "/usr/bin/python3", str(here / "caller.py")], capture_output=True, text=True,
                           timeout=300, cwd="/", env={"PATH": "/usr/bin:/bin", "TMPDIR": "/tmp"})
    finally:
        shutil.rmtree(here)
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert got == {**{n: False for n in names}, "honest": True, "caps": ["0", "0", "0", "0"], "namespaces": True}


def test_the_digger_finds_a_token_where_it_is_readable():
    """Control for the digging forger, inside the real sandbox: a dumpable process holding a token on
    stdin is dug out; the same process made non-dumpable (as the harness makes itself) is not."""
    token = "0123456789abcdef" * 2
    holder = ("import ctypes, subprocess, sys\n"
              "if open('mode').read() == 'protected':\n    ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)\n"
              "p = subprocess.run([sys.executable, '-I', '-c', open('dig.py').read()], stdin=subprocess.DEVNULL, capture_output=True)\n"
              "print(p.stdout.decode().strip() or 'nothing')\n")
    dig = DIG + "print(' '.join(sorted(found | in_files)))\n"
    out = {}
    for mode in ("open", "protected"):
        r = run_python({"m.py": holder, "dig.py": dig, "mode": mode}, "m.py", stdin=(token + "\n").encode(),
                       limits=Limits(wall_s=60, cpu_s=60))
        assert r.returncode == 0, r
        out[mode] = r.stdout.decode().split()
    assert token in out["open"], out
    assert token not in out["protected"], out


# ------------------------------------------------------------------------------------------------
# Honest solutions: the same verdict as solution and tests run together in one plain process

_IN_PROCESS = """
import json, os, sys
job = json.load(open("job.json"))
ns = {"__name__": "__solution__"}
exec(compile(open("solution.py").read(), "solution.py", "exec"), ns)
exec(compile(job["code"], "test.py", "exec"), ns)
ns["check"](ns[job["entry_point"]])
sys.stdout.flush()
os.write(int(sys.argv[1]), b"pass")
"""


def in_process_verdict(code: str, tests: dict, tmp: Path) -> bool:
    """Solution, then tests, in one namespace of one plain Python process; pass = check returned."""
    tmp.mkdir()
    (tmp / "solution.py").write_text(code)
    (tmp / "job.json").write_text(__import__("json").dumps(tests))
    (tmp / "run.py").write_text(_IN_PROCESS)
    r, w = os.pipe()
    try:
        subprocess.run([sys.executable, "-I", "run.py", str(w)], cwd=tmp, pass_fds=(w,), capture_output=True, timeout=60)
        os.close(w)
        w = -1
        return os.read(r, 16) == b"pass"
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def _t(entry: str, body: str) -> dict:
    return {"style": "assert", "entry_point": entry, "code": "def check(candidate):\n" + textwrap.indent(body, "    ")}


POLY = ("import math\ndef poly(xs, x):\n    return sum(c * math.pow(x, i) for i, c in enumerate(xs))\n"
        "def find_zero(xs):\n    lo, hi = -100.0, 100.0\n    for _ in range(200):\n        mid = (lo + hi) / 2\n"
        "        if poly(xs, lo) * poly(xs, mid) <= 0:\n            hi = mid\n        else:\n            lo = mid\n"
        "    return lo\n")
RICH = ('def f():\n    return {"a": [1, (2, 3)], 4: {5, 6}, None: b"x", "big": 10 ** 5000, "c": 1 + 2j,\n'
        '            "t": True, "fs": frozenset({1}), "r": range(3), "ba": bytearray(b"y"), "neg0": -0.0}\n')
RICH_EXPECT = ('candidate() == {"a": [1, (2, 3)], 4: {5, 6}, None: b"x", "big": 10 ** 5000, "c": 1 + 2j, '
               '"t": True, "fs": frozenset({1}), "r": range(3), "ba": bytearray(b"y"), "neg0": -0.0}')
HONEST = [
    ("add", "def add(a, b):\n    return a + b\n", ADD),
    ("add wrong", "def add(a, b):\n    return a * b\n", ADD),
    ("tuple", "def f(x):\n    return (x, x)\n", _t("f", "assert candidate(1) == (1, 1)\n")),
    ("tuple is no list", "def f(x):\n    return (x, x)\n", _t("f", "assert candidate(1) == [1, 1]\n")),
    ("float", "def f(x):\n    return x / 3\n", _t("f", "assert abs(candidate(1.0) - 0.3333333) < 1e-6\n")),
    ("float wrong", "def f(x):\n    return x / 4\n", _t("f", "assert abs(candidate(1.0) - 0.3333333) < 1e-6\n")),
    ("helper of the solution used by the tests", POLY,
     _t("find_zero", "import random\nrng = random.Random(0)\nfor _ in range(20):\n"
                     "    xs = [rng.randint(-5, 5) or 1, rng.randint(1, 5)]\n"
                     "    assert abs(poly(xs, candidate(list(xs)))) < 1e-4\n")),
    ("expected exception", "def f(x):\n    if x < 0:\n        raise ValueError('neg')\n    return x\n",
     _t("f", "try:\n    candidate(-1)\nexcept ValueError:\n    pass\nelse:\n    assert False\nassert candidate(2) == 2\n")),
    ("wrong exception", "def f(x):\n    if x < 0:\n        raise TypeError('neg')\n    return x\n",
     _t("f", "try:\n    candidate(-1)\nexcept ValueError:\n    pass\nelse:\n    assert False\n")),
    ("custom exception subclass", "class Neg(ValueError):\n    pass\ndef f(x):\n    raise Neg('no')\n",
     _t("f", "try:\n    candidate(-1)\nexcept ValueError as e:\n    assert 'no' in str(e)\nelse:\n    assert False\n")),
    ("keyword arguments", "def f(a, b=2):\n    return a * b\n", _t("f", "assert candidate(3, b=4) == 12\nassert candidate(3) == 6\n")),
    ("prints", "def f(x):\n    print('debug', x)\n    return x\nprint('loaded')\n", _t("f", "assert candidate(5) == 5\n")),
    ("rich data", RICH, _t("f", f"assert {RICH_EXPECT}\n")),
    ("rich data wrong", RICH.replace("10 ** 5000", "10 ** 5000 + 1"), _t("f", f"assert {RICH_EXPECT}\n")),
    ("raises at import", "raise RuntimeError('boom')\ndef f():\n    return 1\n", _t("f", "assert candidate() == 1\n")),
    ("constant of the solution", "N = 7\ndef f():\n    return N\n", _t("f", "assert candidate() == N\n")),
    ("module imported by the solution", "import math\ndef f(x):\n    return math.sqrt(x)\n",
     _t("f", "assert candidate(4.0) == math.sqrt(4.0)\n")),
    ("recursion", "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
     _t("fib", "assert [candidate(i) for i in range(15)][-1] == 377\n")),
    ("strings", "def f(s):\n    return s[::-1]\n", _t("f", "assert candidate('h\\u00e9llo\\ud800') == '\\ud800oll\\u00e9h'\n")),
    ("nan and inf", "def f():\n    return [float('nan'), float('inf')]\n",
     _t("f", "import math\nr = candidate()\nassert math.isnan(r[0]) and r[1] == math.inf\n")),
    ("SystemExit caught by the tests", "def f():\n    raise SystemExit(3)\n",
     _t("f", "try:\n    candidate()\nexcept SystemExit as e:\n    assert e.code == 3\n")),
    ("no entry point", "def g():\n    return 1\n", _t("f", "assert candidate() == 1\n")),
    ("many calls", "def sq(x):\n    return x * x\n", _t("sq", "for i in range(300):\n    assert candidate(i) == i * i\n")),
    ("namedtuple and IntEnum", "import collections, enum\nP = collections.namedtuple('P', 'x y')\n"
                               "class C(enum.IntEnum):\n    A = 2\ndef f():\n    return P(1, C.A)\n",
     _t("f", "assert candidate() == (1, 2)\n")),
    ("solution function passed to the tests and back", "def inc(x):\n    return x + 1\ndef apply(fn, x):\n    return fn(x)\n",
     _t("apply", "assert candidate(inc, 1) == 2\n")),
]


def test_honest_verdicts_equal_one_process(tmp_path):
    def both(i_case):
        i, (name, code, tests) = i_case
        return name, run_tests(code, tests, case_timeout_s=20)["passed"], in_process_verdict(code, tests, tmp_path / str(i))

    with ThreadPoolExecutor(4) as ex:
        got = list(ex.map(both, enumerate(HONEST)))
    assert [(n, s) for n, s, _ in got] == [(n, p) for n, _, p in got]
    # The battery has both outcomes (an equivalence over passes only would prove little).
    assert {p for _, _, p in got} == {True, False}


def test_known_differences_from_one_process(tmp_path):
    """Documented (docs/evaluation.md): the solution gets copies of plain data, so in-place changes
    to arguments are not seen by the tests, and a return value that is not plain data fails."""
    mutate = ("def f(xs):\n    xs.append(1)\n", _t("f", "xs = []\ncandidate(xs)\nassert xs == [1]\n"))
    obj = ("class Box:\n    def __init__(self, v):\n        self.v = v\ndef f():\n    return Box(1)\n",
           _t("f", "assert candidate().v == 1\n"))
    for i, (code, tests) in enumerate((mutate, obj)):
        assert in_process_verdict(code, tests, tmp_path / str(i)) is True
        res = run_tests(code, tests, case_timeout_s=20)
        assert res["passed"] is False
    assert "plain data only" in res["detail"]["stderr"]


# ------------------------------------------------------------------------------------------------
# Strict mode: a broken namespace detection fails instead of skipping


def _pytest(plugin: str, test: str, strict: bool, tmp_path: Path) -> subprocess.CompletedProcess:
    (tmp_path / "breakit.py").write_text(plugin)
    env = {k: v for k, v in os.environ.items() if k != STRICT_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(HERE), str(ROOT / "src"), env.get("PYTHONPATH", "")])
    if strict:
        env[STRICT_ENV] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "breakit", "-rs",
                           f"tests/grading/test_sandbox.py::{test}"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def test_strict_mode_turns_a_broken_probe_into_a_failure(tmp_path):
    """The tests' own probe, broken to say "no namespaces": the loopback test skips; with
    DASD_STRICT_SANDBOX=1 the same skip is a failure."""
    plugin = ("import sandbox_host\nsandbox_host.host_caps = lambda: sandbox_host.HostCaps(\n"
              "    root=True, namespaces=False, private_tmp=False, uid_drop=True, cgroups=True)\n")
    loose = _pytest(plugin, "test_connecting_to_a_loopback_server", False, tmp_path)
    assert "1 skipped" in loose.stdout and "failed" not in loose.stdout, loose.stdout
    strict = _pytest(plugin, "test_connecting_to_a_loopback_server", True, tmp_path)
    assert "1 failed" in strict.stdout and "may not skip" in strict.stdout, strict.stdout


def test_a_broken_module_detection_fails_even_without_strict_mode(tmp_path):
    """The sandbox module's detection, broken to say "no namespaces" (runs then go without them):
    the skip decision does not come from it, so the containment test runs and fails, as does the
    comparison of the module's detection with the host."""
    if not host_caps().namespaces:
        pytest.skip("this host has no namespaces: nothing to break")
    plugin = ("from dasd.grading import sandbox\nreal = sandbox._isolation\n"
              "def broken(python):\n    iso = dict(real(python))\n"
              "    iso.update(namespaces=False, private_tmp=False, unshare_cmd=[])\n    return iso\n"
              "sandbox._isolation = broken\n")
    p = _pytest(plugin, "test_connecting_to_a_loopback_server", False, tmp_path)
    assert "1 failed" in p.stdout and "skipped" not in p.stdout, p.stdout
    assert "E       assert (not True)" in p.stdout  # the program reached the server and passed its grade
    p = _pytest(plugin, "test_isolation_matches_the_host", False, tmp_path)
    assert "1 failed" in p.stdout and "skipped" not in p.stdout, p.stdout
