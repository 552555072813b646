"""Code answers: run the last fenced code block against the problem's tests, in the sandbox.

A problem's ``tests`` take one of three forms:

- ``{"style": "stdio", "cases": [{"input": str, "output": str}, ...]}``: the program reads stdin and
  writes stdout; it runs as ``__main__`` (so ``if __name__ == "__main__":`` guards run, and code with
  no guard runs too). Outputs compare as LiveCodeBench does: lines stripped, trailing blank lines
  dropped; when lines differ, their whitespace-separated tokens must be equal or equal as decimals
  ("1.0" == "1", "0.50" == "0.5").
- ``{"style": "call", "fn_name": str, "cases": [{"input": [args...], "output": value}, ...]}``: the
  code is run as a module named ``__solution__`` (so a guarded ``main()`` does not run, stdin is
  empty), then ``Solution().fn_name(*args)`` if a class ``Solution`` has that method, else the
  top-level ``fn_name(*args)``; its JSON-serialised return value must equal ``output`` (tuples
  become lists).
- ``{"style": "assert", "entry_point": str, "code": str}``: HumanEval style: the test ``code``
  (which defines ``check(candidate)``) runs in a namespace holding the solution's top-level names,
  then ``check(namespace[entry_point])``; passing = returning without an exception. The tests and
  the solution run in **separate processes**: the solution's functions are called through pipes
  (arguments and results cross as plain data: None, bool, int, float, complex, str, bytes, list,
  tuple, set, frozenset, dict, range, and the solution's own functions by reference), so nothing
  the solution does can reach the tests' process.

All cases run in **one** sandboxed process tree: a harness forks one child per case (per-case time
limit, its own process group, killed on timeout) and stops at the first crash or timeout. Expected
outputs never enter the sandbox: the harness writes each case's raw output to a file and the host
compares. For ``assert`` the tests must run inside, so a pass is a per-run random token that the
solution can never reach: the case child (the *checker*) runs the tests and starts the solution as
a fresh interpreter; when ``check`` returns it says so on a pipe only the harness holds, and only
then does the harness read the token from its stdin and write the pass file. Harness and checker
are non-dumpable and the run holds no capabilities, so the solution can read neither their memory
nor their descriptors (stdin included); the tests file is deleted once read. If the solution's
process ends during the tests, the checker ends the same way (as one process would have).
"""

from __future__ import annotations

import json
import logging
import secrets
from decimal import Decimal, InvalidOperation
from typing import Any

from dasd.grading.answer import final_part, last_code_block
from dasd.grading.sandbox import Limits, run_python

log = logging.getLogger(__name__)

DEFAULT_CASE_TIMEOUT_S = 6.0

# Plain data passed between the tests' process and the solution's (assert style): JSON in which every
# container is a {"$": tag, "v": ...} object, so tuples stay tuples, sets stay sets and dict keys keep
# their types. Each side sets REF (object -> name of a solution function, or None) and DEREF (name ->
# object) for functions of the solution passed by reference.
_WIRE = r'''
import json

def enc(o):
    """``o`` as JSON-able wire data; TypeError when it is not plain data."""
    t = type(o)
    if o is None or t is bool or t is str or t is float:
        return o
    if t is int:
        return o if o.bit_length() <= 4000 else {"$": "int", "v": hex(o)}
    name = REF(o)
    if name is not None:
        return {"$": "ref", "v": name}
    if isinstance(o, int):  # IntEnum and other int subclasses travel as int (bool is handled above)
        return enc(int(o))
    if isinstance(o, float):
        return float(o)
    if isinstance(o, str):
        return str(o)
    for k in (list, tuple, frozenset, set):  # subclasses (namedtuple, ...) travel as their base
        if isinstance(o, k):
            return {"$": k.__name__, "v": [enc(x) for x in o]}
    if isinstance(o, dict):
        return {"$": "dict", "v": [[enc(k), enc(v)] for k, v in o.items()]}
    if isinstance(o, (bytes, bytearray)):
        return {"$": "bytearray" if isinstance(o, bytearray) else "bytes", "v": bytes(o).hex()}
    if isinstance(o, complex):
        return {"$": "complex", "v": [o.real, o.imag]}
    if isinstance(o, range):
        return {"$": "range", "v": [o.start, o.stop, o.step]}
    if getattr(o, "shape", None) == () and hasattr(o, "item"):  # numpy scalars
        v = o.item()
        if type(v) is not t:
            return enc(v)
    raise TypeError(f"a {t.__name__} cannot pass between the tests and the solution (plain data only)")

_SEQ = {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}

def dec(x):
    """The value of wire data ``x``; ValueError (or TypeError) when it is not wire data."""
    if x is None or type(x) in (bool, int, float, str):
        return x
    if type(x) is not dict or set(x) != {"$", "v"}:
        raise ValueError("not wire data")
    tag, v = x["$"], x["v"]
    if tag in _SEQ and type(v) is list:
        return _SEQ[tag](dec(i) for i in v)
    if tag == "dict" and type(v) is list:
        out = {}
        for pair in v:
            if type(pair) is not list or len(pair) != 2:
                raise ValueError("bad dict item")
            out[dec(pair[0])] = dec(pair[1])
        return out
    if tag in ("bytes", "bytearray") and type(v) is str:
        return (bytes if tag == "bytes" else bytearray).fromhex(v)
    if tag == "complex" and type(v) is list and len(v) == 2 and all(type(p) is float for p in v):
        return complex(v[0], v[1])
    if tag == "int" and type(v) is str:
        return int(v, 16)
    if tag == "range" and type(v) is list and len(v) == 3 and all(type(p) is int for p in v):
        return range(*v)
    if tag == "ref" and type(v) is str:
        return DEREF(v)
    raise ValueError(f"bad wire tag {tag!r}")
'''

# The solution's process in assert style: a fresh interpreter (nothing of the harness's memory) that
# runs the solution as module ``__solution__``, lists what it defined, then answers calls, each a line
# of JSON on its own pipe: {"call", "args", "kwargs"} -> {"return": data} or {"raise": ...}.
_RUNNER = _WIRE + r'''
import builtins, os, sys, traceback, types
CHAN_IN, CHAN_OUT = os.fdopen(int(sys.argv[1]), "rb"), os.fdopen(int(sys.argv[2]), "wb")
sys.argv = ["solution.py"]
sys.stdout.reconfigure(encoding="utf-8", errors="replace")
HANDLES, NAMES = {}, {}
REF = lambda o: NAMES.get(id(o)) if callable(o) else None
DEREF = lambda name: HANDLES[name]

def send(msg):
    CHAN_OUT.write(json.dumps(msg).encode("ascii") + b"\n")
    CHAN_OUT.flush()

def raised(e):
    types_ = [k.__name__ for k in type(e).__mro__ if k.__module__ == "builtins" and issubclass(k, BaseException)]
    try:
        args = enc(list(e.args))
    except Exception:
        args = None
    try:
        text = f"{type(e).__name__}: {e}"
        tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    except Exception:
        text = tb = type(e).__name__
    return {"raise": {"types": types_, "args": args, "text": text[:2000], "tb": tb[-4000:]}}

ns = {"__name__": "__solution__", "__builtins__": builtins}
try:
    with open("solution.py", encoding="utf-8") as f:
        exec(compile(f.read(), "solution.py", "exec"), ns)
except BaseException as e:
    send(raised(e))
    os._exit(0)
entries = []
for name, val in list(ns.items()):
    if name.startswith("__"):
        continue
    if isinstance(val, types.ModuleType):
        entries.append([name, "module", val.__name__])
    elif callable(val):
        HANDLES[name] = val
        NAMES[id(val)] = name
        entries.append([name, "ref"])
    else:
        try:
            entries.append([name, "value", enc(val)])
        except Exception:
            pass  # neither a function nor plain data: the tests cannot see it
send({"ready": entries})
while True:
    line = CHAN_IN.readline()
    if not line:
        os._exit(0)
    try:
        msg = json.loads(line)
        fn, args, kwargs = HANDLES[msg["call"]], dec(msg["args"]), dec(msg["kwargs"])
    except Exception as e:
        sys.stderr.write(f"solution runner: bad call from the tests: {e}\n")
        os._exit(1)
    try:
        result = fn(*args, **kwargs)
    except BaseException as e:
        send(raised(e))
        continue
    try:
        data = enc(result)
    except Exception as e:
        send(raised(TypeError(f"the solution returned {e}")))
        continue
    send({"return": data})
'''

# The harness: runs every case (a forked child each, killed on timeout), records statuses in
# status.json. In assert style the case child is the *checker*: it runs the trusted test code and
# calls the solution's functions in the solution's own process (above), and tells the harness over a
# private pipe that check() returned; only then does the harness read the per-run token (stdin) and
# write the pass file. Harness and checker are non-dumpable, and the run holds no capabilities, so
# the solution can read neither their memory nor their file descriptors.
_HARNESS = _WIRE + r'''
import builtins, ctypes, importlib, io, os, signal, sys, traceback
if ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0) != 0:  # PR_SET_DUMPABLE = 0
    sys.stderr.write("sandbox harness: cannot make the harness non-dumpable\n")
    sys.exit(125)
with open("job.json") as f:
    job = json.load(f)
try:
    os.unlink("job.json")  # the tests now live only in this process (the solution cannot read them)
except OSError:
    pass
src = open("solution.py", encoding="utf-8").read()
statuses = []

def report():
    with open("status.json", "w") as f:
        json.dump(statuses, f)

try:
    code = compile(src, "solution.py", "exec")
except (SyntaxError, ValueError) as e:
    statuses.append({"case": 0, "status": "compile_error", "error": f"{type(e).__name__}: {e}"})
    report()
    sys.exit(0)

class CaseTimeout(Exception):
    pass

def on_alarm(sig, frame):
    raise CaseTimeout()

def exit_after(run):
    """Run ``run()`` and end this process at once: its status is SystemExit's code, 1 after any other
    exception (traceback to the log) or when stdout cannot be flushed, else 0."""
    rc = 0
    try:
        run()
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()
        rc = 1
    try:
        sys.stdout.flush()
    except BaseException:
        rc = rc or 1
    os._exit(rc)

def child(i):
    os.setpgid(0, 0)
    style = job["style"]
    fin = os.open(f"in_{i}.txt" if style == "stdio" else os.devnull, os.O_RDONLY)
    os.dup2(fin, 0)
    fout = os.open(f"out_{i}.txt" if style == "stdio" else f"log_{i}.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(fout, 1)
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8", errors="replace")
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", errors="replace")

    def run():
        if style == "stdio":
            exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
        else:
            ns = {"__name__": "__solution__", "__builtins__": __builtins__}
            exec(code, ns)
            name = job["fn_name"]
            cls = ns.get("Solution")
            fn = getattr(cls(), name) if isinstance(cls, type) and hasattr(cls, name) else ns[name]
            args = json.load(open(f"args_{i}.json"))
            result = fn(*args)
            data = json.dumps(result, default=lambda o: list(o) if isinstance(o, (set, frozenset, tuple)) else repr(o))
            with open(f"ret_{i}.json", "w") as f:
                f.write(data)

    exit_after(run)

class Remote:
    """A function of the solution: calling it runs it in the solution's process."""

    def __init__(self, name):
        self.__name__ = self.__qualname__ = name

    def __call__(self, *args, **kwargs):
        return SOLUTION.call(self.__name__, args, kwargs)

    def __repr__(self):
        return f"<solution function {self.__name__}>"

REF = lambda o: o.__name__ if type(o) is Remote else None
DEREF = Remote

class Solution:
    """The solution's process (a fresh interpreter running the runner) and its two pipes."""

    def __init__(self):
        to_r, self_w = os.pipe()
        self_r, to_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            try:
                keep = (to_r, to_w)
                for fd in keep:
                    os.set_inheritable(fd, True)
                os.closerange(3, min(keep))
                os.closerange(min(keep) + 1, max(keep))
                os.closerange(max(keep) + 1, os.sysconf("SC_OPEN_MAX"))
                os.execv(sys.executable, [sys.executable, "-I", "-B", "-c", job["runner"], str(to_r), str(to_w)])
            finally:
                os._exit(127)
        os.close(to_r)
        os.close(to_w)
        self.w, self.r = os.fdopen(self_w, "wb"), os.fdopen(self_r, "rb")

    def recv(self):
        """The next message; the end of the checker (as the solution ended) when there is none."""
        try:
            line = self.r.readline()
        except BaseException:
            line = b""
        if not line.endswith(b"\n"):
            self.gone()
        try:
            msg = json.loads(line)
            assert type(msg) is dict and len(msg) == 1
            return msg
        except BaseException as e:
            self.broken(e)

    def gone(self):
        """The solution's process ended mid-test: the checker ends the same way (as one process would)."""
        try:
            _, st = os.waitpid(self.pid, 0)
        except ChildProcessError:
            os._exit(1)
        if os.WIFSIGNALED(st):
            sig = os.WTERMSIG(st)
            try:
                signal.signal(sig, signal.SIG_DFL)
            except (OSError, ValueError):
                pass
            os.kill(os.getpid(), sig)
            os._exit(128 + sig)
        os._exit(os.WEXITSTATUS(st) if os.WIFEXITED(st) else 1)

    def broken(self, why):
        sys.stderr.write(f"harness: the solution's process broke the protocol: {type(why).__name__}: {why}\n")
        try:
            os.kill(self.pid, signal.SIGKILL)
        except OSError:
            pass
        os._exit(1)

    def raised(self, info):
        """The exception the solution raised, as the nearest builtin exception class."""
        try:
            args = dec(info["args"]) if info.get("args") is not None else [str(info["text"])]
            names = [n for n in info["types"] if type(n) is str]
            text, tb = str(info["text"]), str(info["tb"])
        except BaseException as e:
            self.broken(e)
        for name in names:
            cls = getattr(builtins, name, None)
            if isinstance(cls, type) and issubclass(cls, BaseException):
                for a in (args, [text]):
                    try:
                        e = cls(*a)
                        break
                    except Exception:
                        e = None
                if e is not None:
                    break
        else:
            e = Exception(text)
        if hasattr(e, "add_note"):
            e.add_note("raised in the solution's process:\n" + tb.rstrip())
        return e

    def ready(self):
        """Load the solution; its top-level names for the tests' namespace (functions by reference)."""
        msg = self.recv()
        if "raise" in msg:
            raise self.raised(msg["raise"])
        out = {}
        try:
            for entry in msg["ready"]:
                name, kind = entry[0], entry[1]
                if type(name) is not str or name.startswith("__"):
                    continue
                if kind == "ref":
                    out[name] = Remote(name)
                elif kind == "value":
                    out[name] = dec(entry[2])
                elif kind == "module" and type(entry[2]) is str:
                    mod = entry[2]
                    top = mod.partition(".")[0]
                    if mod in sys.modules or top in getattr(sys, "stdlib_module_names", ()):
                        try:
                            out[name] = importlib.import_module(mod)
                        except ImportError:
                            pass
        except Exception as e:
            self.broken(e)
        return out

    def call(self, name, args, kwargs):
        line = json.dumps({"call": name, "args": enc(list(args)), "kwargs": enc(dict(kwargs))})
        try:
            self.w.write(line.encode("ascii") + b"\n")
            self.w.flush()
        except BaseException:
            self.gone()
        msg = self.recv()
        if "raise" in msg:
            raise self.raised(msg["raise"])
        if "return" not in msg:
            self.broken(ValueError(f"unexpected message {sorted(msg)}"))
        try:
            return dec(msg["return"])
        except BaseException as e:
            self.broken(e)

def checker(i, verdict_w):
    """Assert style: run the tests here, the solution in its own process; say "pass" on verdict_w
    when check() returns."""
    os.setpgid(0, 0)
    for sig in (signal.SIGALRM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    fin = os.open(os.devnull, os.O_RDONLY)
    os.dup2(fin, 0)
    os.close(fin)
    fout = os.open(f"log_{i}.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(fout, 1)
    os.close(fout)
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8", errors="replace")
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", errors="replace")

    def run():
        global SOLUTION
        SOLUTION = Solution()
        ns = {"__name__": "__solution__", "__builtins__": builtins, **SOLUTION.ready()}
        exec(compile(job["test_code"], "test.py", "exec"), ns)
        check = ns.get("check")
        if not callable(check) or type(check) is Remote:
            raise NameError("the tests define no check(candidate) function")
        check(ns[job["entry_point"]])
        os.write(verdict_w, b"pass")

    exit_after(run)

def write_pass(i):
    """Check returned: the per-run token, read only now, goes to pass_<i>.txt."""
    token = sys.stdin.readline().strip()
    path = f"pass_{i}.txt"
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, token.encode("ascii"))
    finally:
        os.close(fd)

signal.signal(signal.SIGALRM, on_alarm)
for i in range(job["n_cases"]):
    verdict_r = verdict_w = None
    if job["style"] == "assert":
        verdict_r, verdict_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        if verdict_r is not None:
            os.close(verdict_r)
            checker(i, verdict_w)
        child(i)
    if verdict_w is not None:
        os.close(verdict_w)
    st = {"case": i}
    signal.setitimer(signal.ITIMER_REAL, job["case_timeout_s"])
    try:
        _, status = os.waitpid(pid, 0)
        signal.setitimer(signal.ITIMER_REAL, 0)
        if os.WIFSIGNALED(status):
            st.update(status="signal", signal=os.WTERMSIG(status))
        else:
            code_ = os.WEXITSTATUS(status)
            st.update(status="ok" if code_ == 0 else "error", rc=code_)
    except CaseTimeout:
        st.update(status="timeout")
    for target in (-pid, pid):
        try:
            os.kill(target, signal.SIGKILL)
        except OSError:
            pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
    if verdict_r is not None:
        os.set_blocking(verdict_r, False)
        try:
            said = os.read(verdict_r, 16)
        except OSError:
            said = b""
        os.close(verdict_r)
        if st.get("status") == "ok" and said == b"pass":
            try:
                write_pass(i)
            except OSError as e:
                sys.stderr.write(f"harness: cannot write the pass file: {e}\n")
    statuses.append(st)
    report()
    if st["status"] != "ok":
        break
'''


def outputs_match(got: str, expected: str) -> bool:
    """LiveCodeBench-style stdout comparison (see module docstring)."""
    g = [ln.strip() for ln in got.strip().splitlines()]
    e = [ln.strip() for ln in expected.strip().splitlines()]
    if g == e:
        return True
    if len(g) != len(e):
        return False
    for a, b in zip(g, e):
        if a == b:
            continue
        ta, tb = a.split(), b.split()
        if len(ta) != len(tb):
            return False
        for x, y in zip(ta, tb):
            if x == y:
                continue
            try:
                if Decimal(x) != Decimal(y):
                    return False
            except (InvalidOperation, ValueError):
                return False
    return True


def _normalise(v: Any) -> Any:
    return json.loads(json.dumps(v, default=lambda o: list(o) if isinstance(o, (set, frozenset, tuple)) else repr(o)))


def check_tests(tests: dict[str, Any]) -> str | None:
    """Why ``tests`` is not a valid tests spec (a message naming the field), or None if it is."""
    style = tests.get("style")
    if style in ("stdio", "call"):
        cases = tests.get("cases")
        if not isinstance(cases, list) or not cases:
            return "tests.cases: needs a non-empty list"
        for i, c in enumerate(cases):
            if not isinstance(c, dict) or "input" not in c or "output" not in c:
                return f"tests.cases[{i}]: needs 'input' and 'output'"
            if style == "stdio" and not (isinstance(c["input"], str) and isinstance(c["output"], str)):
                return f"tests.cases[{i}]: stdio input and output must be strings"
            if style == "call" and not isinstance(c["input"], list):
                return f"tests.cases[{i}].input: call-style input must be a list of arguments"
        if style == "call" and not isinstance(tests.get("fn_name"), str):
            return "tests.fn_name: call-style tests need the function name"
        return None
    if style == "assert":
        if not isinstance(tests.get("entry_point"), str) or not isinstance(tests.get("code"), str):
            return "tests: assert-style tests need 'entry_point' and 'code' strings"
        return None
    return f"tests.style: must be stdio, call or assert, got {style!r}"


def run_tests(code: str, tests: dict[str, Any], case_timeout_s: float = DEFAULT_CASE_TIMEOUT_S,
              limits: Limits | None = None) -> dict[str, Any]:
    """Run ``code`` against ``tests`` in the sandbox; return ``{"passed": bool, "detail": {...}}``.

    ``detail``: ``cases`` (how many), ``passed_cases``, ``failure`` (first failing case: index and
    reason: compile_error, runtime_error, timeout, signal, wrong_answer, no_output, no_status (the
    harness died), sandbox_error (the sandbox could not start: logged as a warning)), ``stderr`` (tail),
    ``isolation`` and ``wall_s``. ``limits`` defaults to ``Limits()`` with the wall clock set from the
    per-case timeout and the number of cases.
    """
    problem = check_tests(tests)
    if problem:
        raise ValueError(problem)
    style = tests["style"]
    cases = tests["cases"] if style != "assert" else [None]
    n = len(cases)
    job: dict[str, Any] = {"style": style, "n_cases": n, "case_timeout_s": float(case_timeout_s)}
    files: dict[str, str | bytes] = {"solution.py": code}
    if style == "call":
        job["fn_name"] = tests["fn_name"]
        for i, c in enumerate(cases):
            files[f"args_{i}.json"] = json.dumps(c["input"])
    elif style == "stdio":
        for i, c in enumerate(cases):
            files[f"in_{i}.txt"] = c["input"]
    else:
        job.update(entry_point=tests["entry_point"], test_code=tests["code"], runner=_RUNNER)
    files["job.json"] = json.dumps(job)
    files["harness.py"] = _HARNESS
    token = secrets.token_hex(16)
    if limits is None:
        limits = Limits(wall_s=case_timeout_s * n + 10, cpu_s=int(case_timeout_s * n) + 10)
    outs = {"stdio": "out_{}.txt", "call": "ret_{}.json", "assert": "pass_{}.txt"}[style]
    collect = ["status.json", *[outs.format(i) for i in range(n)]]
    stdin = (token + "\n").encode() if style == "assert" else b""
    res = run_python(files, "harness.py", stdin=stdin, limits=limits, collect=collect)
    detail: dict[str, Any] = {"cases": n, "isolation": res.isolation, "wall_s": round(res.wall_s, 3)}
    try:
        statuses = json.loads(res.files.get("status.json", b"[]").decode("utf-8", "replace"))
        assert isinstance(statuses, list)
    except (ValueError, AssertionError):
        statuses = []
    passed = 0
    failure: dict[str, Any] | None = None
    for i, c in enumerate(cases):
        st = statuses[i] if i < len(statuses) and isinstance(statuses[i], dict) else None
        if st is None:
            if res.timed_out:
                reason = "timeout"
            elif i == 0 and res.stderr.startswith(b"sandbox launcher:"):
                reason = "sandbox_error"  # the sandbox failed to start: not the program's fault
                log.warning("code grading: %s", res.stderr[:300].decode("utf-8", "replace").strip())
            else:
                reason = "no_status"  # the harness was killed (e.g. by a limit) before reporting
            failure = {"case": i, "reason": reason}
            break
        if st.get("status") != "ok":
            reason = {"error": "runtime_error"}.get(st.get("status"), st.get("status"))
            failure = {"case": i, "reason": reason, **({"error": st["error"]} if "error" in st else {})}
            break
        raw = res.files.get(outs.format(i))
        if raw is None:
            failure = {"case": i, "reason": "no_output"}
            break
        text = raw.decode("utf-8", "replace")
        if style == "stdio":
            ok = outputs_match(text, c["output"])
        elif style == "call":
            try:
                ok = json.loads(text) == _normalise(c["output"])
            except ValueError:
                ok = False
        else:
            ok = text == token
        if not ok:
            failure = {"case": i, "reason": "wrong_answer"}
            break
        passed += 1
    detail["passed_cases"] = passed
    if failure:
        detail["failure"] = failure
        tail = res.stderr[-1000:].decode("utf-8", "replace")
        if tail:
            detail["stderr"] = tail
    return {"passed": failure is None and passed == n, "detail": detail}


def grade_code(text: str, tests: dict[str, Any], case_timeout_s: float = DEFAULT_CASE_TIMEOUT_S) -> dict[str, Any]:
    """Grade one response: extract the last code block (``answer.last_code_block``) and run the tests."""
    part = final_part(text)
    code = last_code_block(part) if part is not None else None
    detail: dict[str, Any] = {"grader": "code"}
    if code is None:
        detail["failure"] = {"reason": "no_code_block"}
        return {"extracted": None, "correct": False, "detail": detail}
    run = run_tests(code, tests, case_timeout_s=case_timeout_s)
    detail.update(run["detail"])
    return {"extracted": code, "correct": run["passed"], "detail": detail}
