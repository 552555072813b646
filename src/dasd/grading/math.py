"""Math answers: extract the final answer, check it against the reference with math-verify.

Extraction, from the final part of the response (``answer.final_part``: after ``</think>``):

1. the last ``\\boxed{...}`` / ``\\fbox{...}``;
2. fallback: the last "final answer is X" / "answer is X" / "Answer: X" / "**Answer:** X" /
   "**Final Answer**: X" phrase. X runs to the end of that sentence (``text.sentences``: "The final
   answer is 12. I hope it is correct." gives 12), a trailing period and ``**``/``__`` emphasis
   stripped, and a leading hedge word ("approximately", "therefore" ...) dropped; when X holds
   math in ``$...$``, ``$$...$$`` or ``\\(...\\)``, the first such span ("The answer is $5$
   dollars." gives 5);
3. fallback: a last line that is one equation of a variable, ``x = 3 meters``, ``$n = 5$`` or
   "So, x = 3." (a leading connective dropped as in rule 2);
4. otherwise no answer (graded wrong, ``extracted`` None).

Then, on an answer from a phrase or an equation line (plain text): trailing unit words go ("5
dollars", "12 apples", "3/4 of the pie", "12 m/s", "16 cm^2": the number), unless a math or
quantity word ends it ("2 pi", "2 million", "5 factorial" stay whole, and so are wrong against 2 or
5) or no number is left before them. A box's LaTeX keeps its words (``\\boxed{6 xy}`` may be a
product; math-verify drops the units it knows, ``\\text{ cm}`` included). On every answer,
thousands groups written with ``\\,``, ``\\ ``, ``~`` or a (thin) space are joined (``1\\,000``),
in the reference answer too; ``°`` is ``^\\circ``. An answer that names several values
("12 and 13", "5 or 7", "not 12", "12, not 13") is kept whole and matches no single number.

Checking: math-verify's ``verify(parse("$gold$"), parse("\\boxed{pred}"))``, which accepts equivalent
forms: fractions/decimals (1/2 = 0.5), sets in any order, intervals (open/closed ends matter),
units in ``\\text{}``/``\\mathrm{}`` dropped, ``x = 3`` against ``3``, leading zeros.

Where we differ from math-verify on a whole response (its ``parse`` falls back to the last number
anywhere in the text, and after "answer" reads only the first number): we take no answer from a
sentence without an answer phrase ("she has 15 apples left"), and none from an answer that names
several values or adds a remark ("12 (since 3*4)"); we do read ``−5`` (a Unicode minus), ``(2, 5]`` and ``x/y`` written without ``$``.

Pitfall: math-verify enforces its timeouts with ``signal.alarm``, which only works in a process's
main thread; call this from a process (``grade.grade_many`` uses a process pool), never from threads.
"""

from __future__ import annotations

import re
import threading
from typing import Any

from dasd.grading.answer import final_part, last_boxed
from dasd.text.sentences import segment

_ANSWER = re.compile(r"answer(?:\*\*|__)?[ \t]*(?:is(?![\w'\u2019])|:|=)", re.IGNORECASE)
_LEAD = re.compile(r"^(?:[*_:\s]|(?:approximately|approx\.|about|around|roughly|exactly|precisely|just"
                   r"|simply|therefore|thus|hence|so|then),?\s)+", re.IGNORECASE)
_MATH_SPAN = re.compile(r"(?<!\\)\$\$?(.+?)(?<!\\)\$|\\\((.+?)\\\)")
_EQUATION = re.compile(r"(?:[A-Za-z](?:_\{?\w+\}?)?|\\[A-Za-z]+)\s*=\s*[^=]+")
_DELIMS = re.compile(r"^\s*(?:\*\*|__|\$\$?|\\\(|\\\[)+|(?:\*\*|__|\$\$?|\\\)|\\\]|[.\s])+$")
# A trailing unit word: letters (2+), or a short unit ratio (m/s, km/h), maybe squared/cubed.
_UNIT = re.compile(r"(?:[A-Za-z]{2,}|[A-Za-z]{1,3}/[A-Za-z]{1,3})(?:\^\{?\d\}?|[\u00b2\u00b3])?[.,;]?")
_KEEP = re.compile(r"(?:pi|infinity|infty|inf|sqrt|root|factorial|squared|cubed|percent|percentage|pct"
                   r"|hundred|thousand|million|billion|trillion|dozen)s?[.,;]?", re.IGNORECASE)
_NUMBER_END = re.compile(r"(?:[\d})\]%]|\\[A-Za-z]+)$")
_GROUPED = re.compile(r"(?<![\d.])\d{1,3}(?:(?:\\[,;: ]|~|[ \u2009\u202f])\d{3})+(?![\d.])")
_GROUP_SEP = re.compile(r"\\[,;: ]|~|[ \u2009\u202f]")


def _ungroup(ans: str) -> str:
    """``1\\,000`` / ``1 000`` -> ``1000`` (thousands groups; math-verify reads only ``1,000``)."""
    return _GROUPED.sub(lambda m: _GROUP_SEP.sub("", m.group()), ans)


def _tidy(ans: str, words_are_units: bool) -> str:
    """Thousands groups joined, ``°`` as ``^\\circ``; with ``words_are_units``, trailing unit words
    dropped (module doc)."""
    ans = _ungroup(ans).replace("\u00b0", "^{\\circ}")
    if not words_are_units:
        return ans
    words = ans.split()
    n = len(words)
    while n > 1 and _UNIT.fullmatch(words[n - 1]) and not _KEEP.fullmatch(words[n - 1]):
        n -= 1
    if n < len(words) and _NUMBER_END.search(words[n - 1]):
        return " ".join(words[:n])
    return ans


def _phrase_answer(part: str) -> str | None:
    """X of the last answer phrase in ``part``, to the end of its sentence (module doc, rule 2)."""
    last = None
    for last in _ANSWER.finditer(part):
        pass
    if last is None:
        return None
    line_start = part.rfind("\n", 0, last.start()) + 1
    rest = part[line_start:]
    at = last.end() - line_start
    spans = segment(rest)
    end = next((e for s, e in spans if s <= at < e), len(rest))
    ans = rest[at:end]
    if not ans.strip() and end < len(rest):  # "Answer:" ends its line: X is the next sentence
        end = next((e for s, e in spans if s <= end < e), len(rest))
        ans = rest[at:end]
    ans = _LEAD.sub("", ans)
    span = _MATH_SPAN.search(ans)
    if span:
        return (span.group(1) or span.group(2)).strip("$ ")
    return _DELIMS.sub("", ans).strip() or None


def _equation_answer(part: str) -> str | None:
    """A last line that is one equation of a variable (``x = 3 meters``), delimiters stripped."""
    lines = part.strip().splitlines()
    if not lines:
        return None
    line = _DELIMS.sub("", _LEAD.sub("", lines[-1])).strip()
    return line if _EQUATION.fullmatch(line) else None


def extract_math(text: str) -> tuple[str | None, str | None]:
    """``(answer, method)`` with method "boxed", "phrase" or "equation"; ``(None, None)`` when
    there is none."""
    part = final_part(text)
    if part is None:
        return None, None
    for method, find in (("boxed", last_boxed), ("phrase", _phrase_answer), ("equation", _equation_answer)):
        ans = find(part)
        if ans:
            return _tidy(ans, words_are_units=method != "boxed"), method
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
        g = parse(f"${_ungroup(gold)}$", extraction_config=configs, parsing_timeout=timeout_s)
        p = parse(f"\\boxed{{{pred}}}", extraction_config=configs, parsing_timeout=timeout_s)
        ok = bool(g) and bool(p) and verify(g, p, timeout_seconds=timeout_s)
        detail.update(gold_parsed=[str(x) for x in g], pred_parsed=[str(x) for x in p])
    except Exception as e:  # math-verify raises on timeouts and on odd inputs; a wrong answer, not a crash
        ok = False
        detail["error"] = f"{type(e).__name__}: {e}"[:500]
    return {"extracted": pred, "correct": bool(ok), "detail": detail}
