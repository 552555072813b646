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
- ``{"style": "assert", "entry_point": str, "code": str}``: HumanEval style: the code, then the test
  ``code`` (which defines ``check(candidate)``) run in the same namespace, then
  ``check(namespace[entry_point])``; passing = returning without an exception.

All cases run in **one** sandboxed process tree: a harness forks one child per case (per-case time
limit, its own process group, killed on timeout) and stops at the first crash or timeout. Expected
outputs never enter the sandbox: the harness writes each case's raw output to a file and the host
compares. For ``assert`` the test code must run inside, so a pass is a per-run random token the
harness writes only after ``check`` returns (a program that deliberately digs the token out of
memory could fake it; one that merely exits early cannot).
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

_HARNESS = r'''
import io, json, os, signal, sys, traceback
job = json.load(open("job.json"))
token = sys.stdin.readline().strip()
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

def child(i):
    os.setpgid(0, 0)
    style = job["style"]
    fin = os.open(f"in_{i}.txt" if style == "stdio" else os.devnull, os.O_RDONLY)
    os.dup2(fin, 0)
    fout = os.open(f"out_{i}.txt" if style == "stdio" else f"log_{i}.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(fout, 1)
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8", errors="replace")
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", errors="replace")
    rc = 0
    try:
        if style == "stdio":
            exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
        elif style == "call":
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
        else:
            ns = {"__name__": "__solution__", "__builtins__": __builtins__}
            exec(code, ns)
            exec(compile(job["test_code"], "test.py", "exec"), ns)
            ns["check"](ns[job["entry_point"]])
            with open(f"pass_{i}.txt", "w") as f:
                f.write(token)
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

signal.signal(signal.SIGALRM, on_alarm)
for i in range(job["n_cases"]):
    pid = os.fork()
    if pid == 0:
        child(i)
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
        job.update(entry_point=tests["entry_point"], test_code=tests["code"])
    files["job.json"] = json.dumps(job)
    files["harness.py"] = _HARNESS
    token = secrets.token_hex(16)
    if limits is None:
        limits = Limits(wall_s=case_timeout_s * n + 10, cpu_s=int(case_timeout_s * n) + 10)
    outs = {"stdio": "out_{}.txt", "call": "ret_{}.json", "assert": "pass_{}.txt"}[style]
    collect = ["status.json", *[outs.format(i) for i in range(n)]]
    res = run_python(files, "harness.py", stdin=(token + "\n").encode(), limits=limits, collect=collect)
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
