"""Math answers: extract the final answer, check it against the reference with math-verify.

Extraction, from the final part of the response (``answer.final_part``: after ``</think>``):

1. the last ``\\boxed{...}`` / ``\\fbox{...}``;
2. fallback: the last "final answer is X" / "answer is X" / "Answer: X" phrase (X = rest of that
   line, a trailing period stripped; when X holds math in ``$...$``, ``$$...$$`` or ``\\(...\\)``,
   the first such span: "The answer is $5$ dollars." gives 5);
3. otherwise no answer (graded wrong, ``extracted`` None).

Checking: math-verify's ``verify(parse("$gold$"), parse("\\boxed{pred}"))``, which accepts equivalent
forms: fractions/decimals (1/2 = 0.5), sets in any order, intervals (open/closed ends matter),
units in ``\\text{}``/``\\mathrm{}`` dropped, ``x = 3`` against ``3``, leading zeros.

Pitfall: math-verify enforces its timeouts with ``signal.alarm``, which only works in a process's
main thread; call this from a process (``grade.grade_many`` uses a process pool), never from threads.
"""

from __future__ import annotations

import re
import threading
from typing import Any

from dasd.grading.answer import final_part, last_boxed

_PHRASE = re.compile(r"(?:final answer|answer)\s*(?:is|:|=)\s*:?\s*(.+)", re.IGNORECASE)
_MATH_SPAN = re.compile(r"(?<!\\)\$\$?(.+?)(?<!\\)\$|\\\((.+?)\\\)")


def extract_math(text: str) -> tuple[str | None, str | None]:
    """``(answer, method)`` with method "boxed" or "phrase"; ``(None, None)`` when there is none."""
    part = final_part(text)
    if part is None:
        return None, None
    boxed = last_boxed(part)
    if boxed:
        return boxed, "boxed"
    hits = _PHRASE.findall(part)
    if hits:
        ans = hits[-1].strip()
        ans = re.sub(r"[.\s]+$", "", ans).strip()
        span = _MATH_SPAN.search(ans)
        if span:
            ans = (span.group(1) or span.group(2)).strip("$ ")
        if ans:
            return ans, "phrase"
    return None, None


def grade_math(text: str, gold: str, timeout_s: int = 5) -> dict[str, Any]:
    """Grade one response against the reference answer ``gold`` (a LaTeX or plain string).

    Returns ``{"extracted", "correct", "detail"}``; ``detail`` has the extraction ``method`` and the
    parsed forms (or the math-verify ``error``). Must run in a main thread (see module docstring).
    """
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    if threading.current_thread() is not threading.main_thread():
        # math-verify would raise for every answer and we would grade them all wrong: refuse loudly.
        raise RuntimeError("grade_math must run in a process's main thread (math-verify uses signal.alarm); "
                           "use grading.grade.grade_many, which grades in worker processes")
    pred, method = extract_math(text)
    detail: dict[str, Any] = {"grader": "math", "method": method}
    if pred is None:
        return {"extracted": None, "correct": False, "detail": detail}
    configs = [LatexExtractionConfig(), ExprExtractionConfig()]
    try:
        g = parse(f"${gold}$", extraction_config=configs, parsing_timeout=timeout_s)
        p = parse(f"\\boxed{{{pred}}}", extraction_config=configs, parsing_timeout=timeout_s)
        ok = bool(g) and bool(p) and verify(g, p, timeout_seconds=timeout_s)
        detail.update(gold_parsed=[str(x) for x in g], pred_parsed=[str(x) for x in p])
    except Exception as e:  # math-verify raises on timeouts and on odd inputs; a wrong answer, not a crash
        ok = False
        detail["error"] = f"{type(e).__name__}: {e}"[:500]
    return {"extracted": pred, "correct": bool(ok), "detail": detail}
