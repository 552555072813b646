"""Quality filters for teacher samples, with a funnel that counts what each rule dropped.

``apply_filters(sample, cfg, count_tokens, is_correct)`` returns ``(sample, None)`` for a kept
sample (delimiters normalised, teacher offsets remapped; see ``text.delimiters``) or
``(None, drop)`` where ``drop`` is a ``Drop``: a ``str`` ``"<rule>: <detail>"`` that also carries
``.rule`` and ``.detail``. Rules run in this order (cheap first), each switchable in
``FilterConfig``:

==============  ===========================================================================
rule            drops a sample when
==============  ===========================================================================
``empty``       its text is empty or only whitespace
``logprobs``    its teacher signal is unusable: offsets/log-prob lengths differ, an offset is
                outside the text, or a log-prob is NaN/inf
``tool_call``   it calls a tool: a non-empty ``tool_calls`` field, ``<tool_call>``, or a
                harmony message to a recipient (``to=functions.x``) / ``<|call|>``
``cutoff``      ``finish_reason == "length"`` (the teacher was cut off)
``structure``   after normalisation it lacks exactly one non-empty ``<think>...</think>``
                block followed by a non-empty final answer
``repetition``  a repetition detector fires (``text.repetition``)
``length``      ``count_tokens(text)`` (the **student's** tokenizer) > ``max_student_tokens``
``correctness`` ``is_correct(sample)`` is false (only if ``require_correct``)
==============  ===========================================================================

Pitfalls: ``length`` counts the response text only; a caller that wants prompt + response within
the training context passes a ``count_tokens`` that adds the prompt's length. Normalisation runs
before ``structure``, so a harmony response with both channels passes, and one with no ``final``
message is dropped by ``structure`` ("no final answer").
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
from pydantic import Field

from dasd.configbase import StrictModel
from dasd.errors import ConfigError
from dasd.text.delimiters import THINK_CLOSE, THINK_OPEN, normalize_response
from dasd.text.repetition import RepetitionConfig, check_repetition

RULES = ("empty", "logprobs", "tool_call", "cutoff", "structure", "repetition", "length", "correctness")

_TOOL_MARKERS = re.compile(r"<tool_call>|<\|call\|>|<function_call>|<\|channel\|>commentary\s+to=|\bto=functions\.")


class FilterConfig(StrictModel):
    """Which filters run and their thresholds (docs/filters.md gives the reasons for each default)."""

    check_logprobs: bool = Field(True, description="Drop samples whose teacher offsets/log-probs are unusable.")
    drop_tool_calls: bool = Field(True, description="Drop samples that call tools or functions.")
    drop_cutoff: bool = Field(True, description="Drop samples with finish_reason 'length'.")
    normalize_delimiters: bool = Field(
        True, description="Convert harmony channels, reasoning_content, other think shapes to <think>...</think>."
    )
    require_structure: bool = Field(
        True, description="Require one non-empty <think>...</think> block followed by a non-empty final answer."
    )
    repetition: RepetitionConfig = Field(default_factory=RepetitionConfig, description="Repetition thresholds.")
    max_student_tokens: int | None = Field(
        65536,
        ge=1,
        description="Drop responses longer than this in student tokens (the training context); null = off.",
    )
    require_correct: bool = Field(
        False, description="Drop responses that is_correct() rejects (needs a grader; off by default)."
    )


class Drop(str):
    """Why a sample was dropped: ``"<rule>: <detail>"``, with ``.rule`` and ``.detail``."""

    rule: str
    detail: str

    def __new__(cls, rule: str, detail: str = "") -> "Drop":
        obj = super().__new__(cls, f"{rule}: {detail}" if detail else rule)
        obj.rule = rule
        obj.detail = detail
        return obj


def has_tool_call(sample: dict[str, Any]) -> bool:
    """Whether the raw sample calls a tool (``tool_calls`` field or tool markers in the text)."""
    if sample.get("tool_calls") or sample.get("function_call"):
        return True
    return _TOOL_MARKERS.search(sample.get("text") or "") is not None


def check_structure(text: str) -> str | None:
    """``None`` if ``text`` is ``<think>`` + non-empty reasoning + ``</think>`` + non-empty answer."""
    if text.count(THINK_OPEN) != 1 or text.count(THINK_CLOSE) != 1:
        if THINK_OPEN not in text and THINK_CLOSE not in text:
            return "no <think> block"
        return f"{text.count(THINK_OPEN)} <think> and {text.count(THINK_CLOSE)} </think> tags (need one each)"
    head, rest = text.split(THINK_OPEN, 1)
    if head.strip():
        return "text before <think>"
    thinking, final = rest.split(THINK_CLOSE, 1)
    if not thinking.strip():
        return "empty thinking part"
    if not final.strip():
        return "no final answer after </think>"
    return None


def is_repetitive(text: str, cfg: RepetitionConfig | None = None) -> str | None:
    """The repetition filter alone (default thresholds): its detail if ``text`` is repetitive, else ``None``."""
    return check_repetition(text, cfg or RepetitionConfig())


def check_teacher_signal(sample: dict[str, Any]) -> str | None:
    """``None`` if the sample has no teacher signal or a usable one; else what is wrong (vectorised)."""
    teacher = sample.get("teacher")
    if not isinstance(teacher, dict) or teacher.get("offsets") is None:
        return None
    offsets = teacher.get("offsets")
    logprobs = teacher.get("logprobs")
    offsets = [] if offsets is None else offsets
    logprobs = [] if logprobs is None else logprobs
    if len(offsets) != len(logprobs):
        return f"{len(offsets)} offsets but {len(logprobs)} logprobs"
    n = len(sample.get("text") or "")
    try:
        lp = np.asarray(logprobs, dtype=np.float64)
    except (TypeError, ValueError):
        lp = None
    if lp is None or lp.ndim != 1 or not np.isfinite(lp).all():
        for i, v in enumerate(logprobs):  # the slow path only finds the bad one
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or not math.isfinite(v):
                return f"teacher.logprobs[{i}] = {v!r} is not finite"
    off = np.asarray(offsets) if len(offsets) else np.zeros((0, 2), dtype=np.int64)
    if off.dtype == object or off.ndim != 2 or off.shape[1] != 2:
        for i, o in enumerate(offsets):
            if len(o) != 2:
                return f"teacher.offsets[{i}] = {o!r} is outside the text (length {n})"
        return "teacher.offsets are not [start, end] pairs"
    bad = ~((off[:, 0] >= 0) & (off[:, 0] <= off[:, 1]) & (off[:, 1] <= n))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        return f"teacher.offsets[{i}] = {off[i].tolist()!r} is outside the text (length {n})"
    return None


def apply_filters(
    sample: dict[str, Any],
    cfg: FilterConfig,
    count_tokens: Callable[[str], int] | None = None,
    is_correct: Callable[[dict], bool] | None = None,
) -> tuple[dict[str, Any] | None, Drop | None]:
    """Run the filters on one sample: ``(normalised sample, None)`` or ``(None, Drop)``.

    ``count_tokens`` (student tokenizer) is needed when ``max_student_tokens`` is set;
    ``is_correct`` when ``require_correct`` is set: a missing one is a ``ConfigError``.
    The input is not modified.
    """
    if cfg.max_student_tokens is not None and count_tokens is None:
        raise ConfigError("filter: max_student_tokens is set but no student tokenizer (count_tokens) was given")
    if cfg.require_correct and is_correct is None:
        raise ConfigError("filter: require_correct is set but no grader (is_correct) was given")
    text = sample.get("text") or ""
    if not text.strip() and not (sample.get("reasoning_content") or sample.get("reasoning")):
        return None, Drop("empty", "empty response")
    if cfg.check_logprobs:
        bad = check_teacher_signal(sample)
        if bad:
            return None, Drop("logprobs", bad)
    if cfg.drop_tool_calls and has_tool_call(sample):
        return None, Drop("tool_call", "response calls a tool")
    if cfg.drop_cutoff and sample.get("finish_reason") == "length":
        return None, Drop("cutoff", "finish_reason is 'length'")
    out = normalize_response(sample) if cfg.normalize_delimiters else dict(sample)
    text = out.get("text") or ""
    if cfg.require_structure:
        bad = check_structure(text)
        if bad:
            return None, Drop("structure", bad)
    bad = check_repetition(text, cfg.repetition)
    if bad:
        return None, Drop("repetition", bad)
    if cfg.max_student_tokens is not None:
        n = count_tokens(text)  # type: ignore[misc]
        if n > cfg.max_student_tokens:
            return None, Drop("length", f"{n} student tokens > {cfg.max_student_tokens}")
    if cfg.require_correct and not is_correct(out):  # type: ignore[misc]
        return None, Drop("correctness", "answer graded incorrect")
    return out, None


class Funnel:
    """Counts per pool (e.g. temperature): samples in, dropped per rule, kept.

    ``add(pool, drop)`` after each ``apply_filters``; ``format()`` gives a fixed-width table,
    ``to_dict()`` a JSON-ready summary for the run manifest.
    """

    def __init__(self) -> None:
        self._in: Counter[str] = Counter()
        self._out: Counter[str] = Counter()
        self._dropped: dict[str, Counter[str]] = {}

    def add(self, pool: Any, drop: str | None) -> None:
        key = str(pool)
        self._in[key] += 1
        self._dropped.setdefault(key, Counter())
        if drop is None:
            self._out[key] += 1
        else:
            rule = drop.rule if isinstance(drop, Drop) else str(drop).split(":", 1)[0]
            self._dropped[key][rule] += 1

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {
            pool: {"in": self._in[pool], "dropped": dict(self._dropped[pool]), "out": self._out[pool]}
            for pool in self._in
        }

    def format(self) -> str:
        """A table: one row per pool and a total row; one column per rule that dropped something."""
        pools = list(self._in)
        seen = {r for c in self._dropped.values() for r in c}
        rules = [r for r in RULES if r in seen] + sorted(seen - set(RULES))
        header = ["pool", "in"] + rules + ["out", "kept"]
        rows = []
        for key in pools + ["total"]:
            if key == "total":
                n_in, n_out = sum(self._in.values()), sum(self._out.values())
                drops = [sum(self._dropped[p][r] for p in pools) for r in rules]
            else:
                n_in, n_out = self._in[key], self._out[key]
                drops = [self._dropped[key][r] for r in rules]
            kept = f"{n_out / n_in:.1%}" if n_in else "-"
            rows.append([key, str(n_in)] + [str(d) for d in drops] + [str(n_out), kept])
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
        lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths)))]
        for r in rows:
            lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        return "\n".join(lines)
