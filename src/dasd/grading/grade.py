"""Grade responses: pick the grader a problem needs, and grade many in a process pool.

Which grader (first rule that applies to the Prompt record):

- ``tests`` set -> code (``grading.code``): the last code block run against the tests in the sandbox;
- ``choices`` set -> multiple choice (``grading.choice``): ``answer`` is the correct letter (or the
  correct choice's text, mapped to its letter);
- ``answer`` set -> math (``grading.math``), also for domain ``toy`` (an integer in ``\\boxed{}``);
- otherwise the problem cannot be graded: ``ValueError`` naming the problem.

``grade_many`` runs in worker **processes** (math-verify times out with ``signal.alarm``, which
only works in a main thread; code runs are subprocesses anyway), and returns results in input order.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from dasd.errors import DasdError
from dasd.grading.choice import LETTERS, grade_choice
from dasd.grading.code import DEFAULT_CASE_TIMEOUT_S, check_tests, grade_code
from dasd.grading.math import grade_math
from dasd.signals import exit_with_parent, held


def grader_of(problem: dict[str, Any]) -> str:
    """"code", "choice" or "math": the grader ``grade_one`` uses for ``problem`` (see module doc);
    ``ValueError`` naming the problem when it cannot be graded (nothing to grade against, or a
    multiple-choice answer that is neither a choice letter nor a choice, invalid tests)."""
    if problem.get("tests"):
        tests = problem["tests"]
        bad = check_tests(tests) if isinstance(tests, dict) else "tests: must be an object"
        if bad:
            raise ValueError(f"problem {problem.get('id')!r}: {bad}")
        return "code"
    if problem.get("choices"):
        _choice_gold(problem)
        return "choice"
    if problem.get("answer") is not None:
        return "math"
    raise ValueError(f"problem {problem.get('id')!r}: nothing to grade against (no tests, choices or answer)")


def grade_one(problem: dict[str, Any], text: str) -> dict[str, Any]:
    """Grade one response ``text`` to ``problem`` (a Prompt record dict).

    Returns ``{"extracted": str | None, "correct": bool, "detail": dict}`` (EvalResult fields minus
    ids and protocol); ``detail["grader"]`` names the grader. Code problems may set
    ``tests["case_timeout_s"]`` (default 6 s per case). Call from a main thread (math-verify).
    """
    kind = grader_of(problem)
    if kind == "code":
        tests = problem["tests"]
        return grade_code(text, tests, case_timeout_s=float(tests.get("case_timeout_s", DEFAULT_CASE_TIMEOUT_S)))
    if kind == "choice":
        return grade_choice(text, _choice_gold(problem), list(problem["choices"]))
    return grade_math(text, str(problem["answer"]))


def _choice_gold(problem: dict[str, Any]) -> str:
    """The correct letter of a multiple-choice problem (its ``answer``: a letter, or a choice's text)."""
    choices = list(problem["choices"])
    gold = str(problem.get("answer") or "").strip()
    if gold in LETTERS[: len(choices)]:
        return gold
    if gold in choices:
        return LETTERS[choices.index(gold)]
    raise ValueError(f"problem {problem.get('id')!r}: answer {gold!r} is neither a choice letter nor a choice")


def is_correct(problem: dict[str, Any], text: str) -> bool:
    """Whether ``text`` answers ``problem`` correctly (``grade_one``'s verdict alone)."""
    return bool(grade_one(problem, text)["correct"])

def _grade_pair(pair: tuple[dict[str, Any], str]) -> dict[str, Any]:
    problem, text = pair
    return grade_one(problem, text)


def grading_pool(workers: int | None = None) -> ProcessPoolExecutor | None:
    """A process pool for ``grade_many(..., pool=)`` (None when ``workers == 0``: grade inline).

    ``workers`` defaults to ``min(8, cpu count)``. Processes start with ``forkserver`` (safe when the
    caller has threads, e.g. torch); they end when the process that made the pool dies
    (``dasd.signals.exit_with_parent``). Use as a context manager, or shut it down yourself.
    """
    if workers is None:
        workers = min(8, os.cpu_count() or 1)
    if workers == 0:
        return None
    return ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("forkserver"),
                               initializer=exit_with_parent)


def grade_many(pairs: Iterable[tuple[dict[str, Any], str]], workers: int | None = None,
               chunksize: int = 4, pool: ProcessPoolExecutor | None = None) -> list[dict[str, Any]]:
    """Grade ``(problem, text)`` pairs in worker processes; results in input order.

    ``workers``: pool size when no ``pool`` is given (default ``min(8, cpu count)``); ``0`` grades
    in this process (only from its main thread). A bad problem (nothing to grade against, invalid
    tests) raises ``ValueError``. Expected per-response failures (unparsable math, crashing code)
    are wrong answers with the reason in ``detail``; anything else is a bug and propagates.
    """
    pairs = list(pairs)
    if pool is not None:
        return _map(pool, pairs, chunksize)
    if workers == 0 or len(pairs) <= 1:
        return [_grade_pair(p) for p in pairs]
    size = min(8, os.cpu_count() or 1) if workers is None else workers
    with grading_pool(min(size, len(pairs))) as ex:
        return _map(ex, pairs, chunksize)


def _map(pool: ProcessPoolExecutor, pairs: list, chunksize: int) -> list[dict[str, Any]]:
    # map submits every chunk at once, starting workers as it goes: stop signals wait until they
    # are started (dasd.signals.held), then the pool's shutdown waits for them
    try:
        with held():
            results = pool.map(_grade_pair, pairs, chunksize=chunksize)
        return list(results)
    except BrokenProcessPool as e:  # a worker killed from outside (the OOM killer, a signal): not a bug here
        raise DasdError("grading: a grading worker process died abruptly (killed by a signal, e.g. the "
                        "out-of-memory killer); nothing of this batch was written: re-run the command "
                        "(`dasd eval` resumes from the results written)") from e
