"""Multiple choice (GPQA style): build lettered prompts with seeded shuffling, read the chosen letter.

Reading the letter from the final part of the response (after ``</think>``), first rule that matches:

1. the last ``\\boxed{...}`` holding one valid letter (``C``, ``(C)``, ``\\text{C}``, ``\\mathrm{C}``,
   ``C.``), the exact text of one choice, or a letter with that choice's text (``C. 16 m/s``,
   ``(C) 16 m/s``);
2. the last "answer is (C)" / "Answer: C" / "answer: **C**" / "**Answer**: C" / "the correct
   option is C" / "the best choice is (C)" phrase (the letter must be a valid one);
3. a final line that is only a letter ("C", "(C)", "**C**", "C."), or a letter with its choice's
   text ("C. 16 m/s", "**(C) 16 m/s**").

Otherwise no answer. Letters mentioned in prose ("A is wrong because...") are never taken.
"""

from __future__ import annotations

import random
import re
import string
from typing import Any

from dasd.grading.answer import final_part, last_boxed
from dasd.records import content_id

LETTERS = string.ascii_uppercase

_BOX_LETTER = re.compile(r"^\(?\s*(?:\\(?:text|textbf|textrm|mathrm|mathbf)\{\s*)?\(?([A-Z])\)?\s*\}?\s*\)?\.?$")
_BOX_LETTER_TEXT = re.compile(r"^\(?([A-Z])[).:]\s*(.+)$", re.DOTALL)
_PHRASE = re.compile(r"(?i:answer|(?:correct|right|best)\s+(?:option|choice))(?:\*\*|__)?\s*(?i:is|:)?\s*:?\s*(?i:option\s*)?[*(\[{\s]*\\?(?:text\{|textbf\{|boxed\{)?\(?([A-Z])\b\)?")
_LINE = re.compile(r"^[*(\[\s]*([A-Z])[)\].*\s]*$")


def shuffle_choices(correct: str, incorrect: list[str], seed: int, key: str) -> tuple[list[str], str]:
    """Shuffle ``[correct, *incorrect]`` with a RNG seeded by ``(seed, key)``; return (choices, letter).

    The same seed and key always give the same order, so prompts are reproducible; different keys
    (question ids) get independent orders, so the correct letter is spread evenly.
    """
    opts = [correct, *incorrect]
    rng = random.Random(content_id("choice-shuffle", seed, key))
    order = list(range(len(opts)))
    rng.shuffle(order)
    choices = [opts[i] for i in order]
    return choices, LETTERS[order.index(0)]


def format_choices(question: str, choices: list[str]) -> str:
    """The user message: question, lettered choices, and how to answer."""
    lines = [question.strip(), ""]
    lines += [f"({LETTERS[i]}) {c.strip()}" for i, c in enumerate(choices)]
    lines += ["", "Think step by step, then give the letter of the correct choice within \\boxed{}, e.g. \\boxed{A}."]
    return "\n".join(lines)


def _norm(x: str) -> str:
    """A choice's text for comparison: spacing, case and a final period aside."""
    return " ".join(x.split()).lower().rstrip(".")


def _letter_with_text(s: str, choices: list[str], valid: str) -> str | None:
    """The letter of ``"C. 16 m/s"`` / ``"(C) 16 m/s"`` when the text is that choice's, else None."""
    m = _BOX_LETTER_TEXT.match(s.strip())
    if m and m.group(1) in valid and _norm(m.group(2)) == _norm(choices[valid.index(m.group(1))]):
        return m.group(1)
    return None


def extract_choice(text: str, choices: list[str]) -> tuple[str | None, str | None]:
    """``(letter, method)`` chosen in ``text``; method is "boxed", "phrase" or "line"."""
    valid = LETTERS[: len(choices)]
    part = final_part(text)
    if part is None:
        return None, None
    boxed = last_boxed(part)
    if boxed is not None:
        m = _BOX_LETTER.match(boxed.strip())
        if m and m.group(1) in valid:
            return m.group(1), "boxed"
        norm = _norm(boxed)
        for i, c in enumerate(choices):
            if _norm(c) == norm:
                return valid[i], "boxed"
        letter = _letter_with_text(boxed, choices, valid)
        if letter:
            return letter, "boxed"
    hits = [m.group(1) for m in _PHRASE.finditer(part) if m.group(1) in valid]
    if hits:
        return hits[-1], "phrase"
    lines = [ln.strip() for ln in part.strip().splitlines() if ln.strip()]
    if lines:
        m = _LINE.match(lines[-1])
        if m and m.group(1) in valid:
            return m.group(1), "line"
        letter = _letter_with_text(lines[-1].strip("*_ \t"), choices, valid)
        if letter:
            return letter, "line"
    return None, None


def grade_choice(text: str, gold_letter: str, choices: list[str]) -> dict[str, Any]:
    """Grade one response: correct when the chosen letter is ``gold_letter``."""
    letter, method = extract_choice(text, choices)
    return {"extracted": letter, "correct": letter is not None and letter == gold_letter.strip().upper(),
            "detail": {"grader": "choice", "method": method}}
