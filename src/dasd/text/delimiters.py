"""Normalise a teacher's reasoning delimiters to ``<think>...</think>`` + final answer.

The student is trained on one format: ``<think>\\n{reasoning}\\n</think>\\n\\n{answer}``. Teachers
emit others; ``normalize_response(record)`` converts these shapes (first match wins):

1. ``reasoning_content`` (or ``reasoning``) field, as OpenAI-compatible servers return it, and no
   think tag in ``text``: the reasoning becomes the think block, ``text`` the answer.
2. gpt-oss "harmony" channels: ``<|channel|>analysis<|message|>...<|end|>`` then
   ``<|start|>assistant<|channel|>final<|message|>...<|return|>``. Every ``analysis`` message goes
   into the think block (joined by a newline), every ``final`` message into the answer;
   ``commentary`` messages (tool calls, preambles) are dropped here - the filters reject tool
   calls before normalising. Also the same text decoded with ``skip_special_tokens=True``:
   ``analysis...assistantfinal...``.
3. Other tag names: ``<thinking>``/``<reasoning>`` (and their closing tags) become ``<think>``.
4. A missing opening tag (Qwen3 puts ``<think>`` in the prompt, so the response starts inside the
   think block and only ``</think>`` appears): ``<think>\\n`` is prepended.
5. Leading whitespace before ``<think>`` is removed.

Text that is already canonical, or that has no recognisable shape, is returned unchanged (the
structure filter then decides).

**Offsets.** The conversion deletes delimiters and inserts tags, so teacher token offsets into the
old text would be wrong. They are *remapped*, never silently kept: a conversion is a list of
pieces, each either inserted text or a copied range of the old text; a token lying wholly inside a
copied range is shifted to its new position (its log-prob is still the teacher's log-prob of those
characters in the original context), and a token touching anything else (a delimiter token such as
``<|channel|>``) is removed from every per-token list of ``record["teacher"]``. The record gets
``normalization = {"shape": ..., "dropped_teacher_tokens": k}``. Inserted tags therefore have no
teacher tokens; sentences made only of them are "unscored". With ``reasoning_content``, offsets
(if any) are taken to index ``text`` (the answer), as the engines return them.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from typing import Any

import numpy as np

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

Piece = str | tuple[int, int]

_HARMONY_MSG = re.compile(
    r"<\|channel\|>(?P<channel>[A-Za-z_]+)(?P<header>[^<]*(?:<\|constrain\|>[^<]*)?)<\|message\|>"
    r"(?P<body>.*?)(?=<\|end\|>|<\|return\|>|<\|call\|>|<\|start\|>|<\|channel\|>|\Z)",
    re.DOTALL,
)
_HARMONY_PLAIN = re.compile(r"\A\s*analysis(?P<analysis>.*?)assistantfinal(?P<final>.*)\Z", re.DOTALL)
_OTHER_TAGS = re.compile(r"<(/?)(?:thinking|reasoning)>")


def _trim(text: str, a: int, b: int) -> tuple[int, int]:
    """``(a, b)`` shrunk to exclude surrounding whitespace."""
    while a < b and text[a].isspace():
        a += 1
    while b > a and text[b - 1].isspace():
        b -= 1
    return a, b


def _think_pieces(text: str, thinking: list[tuple[int, int]], final: list[tuple[int, int]]) -> list[Piece]:
    pieces: list[Piece] = []
    if thinking:
        pieces.append(THINK_OPEN + "\n")
        for i, r in enumerate(thinking):
            if i:
                pieces.append("\n")
            pieces.append(r)
        pieces.append("\n" + THINK_CLOSE + "\n\n")
    for i, r in enumerate(final):
        if i:
            pieces.append("\n")
        pieces.append(r)
    return pieces


def _harmony(text: str) -> list[Piece] | None:
    if "<|channel|>" in text and "<|message|>" in text:
        thinking, final = [], []
        for m in _HARMONY_MSG.finditer(text):
            channel = m.group("channel")
            rng = _trim(text, m.start("body"), m.end("body"))
            if rng[0] == rng[1]:
                continue
            if channel == "analysis":
                thinking.append(rng)
            elif channel == "final":
                final.append(rng)
        return _think_pieces(text, thinking, final)
    m = _HARMONY_PLAIN.match(text)
    if m is not None:
        return _think_pieces(text, [_trim(text, *m.span("analysis"))], [_trim(text, *m.span("final"))])
    return None


def convert(text: str, reasoning: str | None = None) -> tuple[str, list[Piece], str]:
    """``(new_text, pieces, shape)`` for ``text`` (see the module doc); ``shape == "none"`` if unchanged.

    ``pieces`` rebuild ``new_text`` from inserted strings and ranges of ``text``; ``reasoning`` is
    the separate reasoning field, inserted as literal text.
    """
    n = len(text)
    pieces: list[Piece] | None = None
    shape = "none"
    has_tags = THINK_OPEN in text or THINK_CLOSE in text
    if reasoning and reasoning.strip() and not has_tags:
        pieces = [THINK_OPEN + "\n" + reasoning.strip() + "\n" + THINK_CLOSE + "\n\n", _trim(text, 0, n)]
        shape = "reasoning_content"
    if pieces is None and not has_tags:
        pieces = _harmony(text)
        shape = "harmony" if pieces is not None else shape
    if pieces is None and _OTHER_TAGS.search(text) and not has_tags:
        pieces, last = [], 0
        for m in _OTHER_TAGS.finditer(text):
            pieces += [(last, m.start()), THINK_CLOSE if m.group(1) else THINK_OPEN]
            last = m.end()
        pieces.append((last, n))
        shape = "tag_names"
    if pieces is None and THINK_CLOSE in text and THINK_OPEN not in text:
        a, _ = _trim(text, 0, n)
        pieces = [THINK_OPEN + "\n", (a, n)]
        shape = "missing_open_tag"
    if pieces is None and text.lstrip().startswith(THINK_OPEN) and text[:1].isspace():
        pieces = [(n - len(text.lstrip()), n)]
        shape = "leading_whitespace"
    if pieces is None:
        return text, [(0, n)], "none"
    pieces = [p for p in pieces if isinstance(p, str) and p or isinstance(p, tuple) and p[1] > p[0]]
    out = "".join(p if isinstance(p, str) else text[p[0] : p[1]] for p in pieces)
    return out, pieces, shape


def remap_offsets(pieces: list[Piece], offsets: list) -> tuple[list[tuple[int, int]], list[int]]:
    """New offsets of the tokens that lie wholly inside a copied range, and the indices kept."""
    ranges = []  # (old_start, old_end, new_start)
    pos = 0
    for p in pieces:
        if isinstance(p, str):
            pos += len(p)
        else:
            ranges.append((p[0], p[1], pos))
            pos += p[1] - p[0]
    ranges.sort()
    starts = [r[0] for r in ranges]
    new, keep = [], []
    for i, (s, e) in enumerate(offsets):
        k = bisect_right(starts, s) - 1
        # an empty token at a range's end may also sit at the next range's start: try both
        for j in (k, k - 1):
            if 0 <= j < len(ranges):
                a, b, d = ranges[j]
                if a <= s and e <= b and (s < b or s == e):
                    new.append((s - a + d, e - a + d))
                    keep.append(i)
                    break
    return new, keep


def normalize_response(record: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``record`` with ``text`` in canonical think format and teacher offsets remapped.

    Reads ``text`` and, if present, ``reasoning_content``/``reasoning`` (removed after merging)
    and ``teacher`` (``offsets`` + per-token lists). Unchanged records are returned as a shallow
    copy without a ``normalization`` key.
    """
    text = record.get("text") or ""
    reasoning = record.get("reasoning_content") or record.get("reasoning")
    new_text, pieces, shape = convert(text, reasoning if isinstance(reasoning, str) else None)
    out = dict(record)
    if shape == "none":
        return out
    out["text"] = new_text
    out.pop("reasoning_content", None)
    out.pop("reasoning", None)
    dropped = 0
    teacher = record.get("teacher")
    if isinstance(teacher, dict) and teacher.get("offsets") is not None:
        offsets = teacher["offsets"]
        new_offsets, keep = remap_offsets(pieces, offsets)
        n_tok = len(offsets)
        t = {}
        for key, val in teacher.items():
            if key == "offsets":
                t[key] = [list(o) for o in new_offsets]
            elif isinstance(val, np.ndarray) and len(val) == n_tok:  # a columnar record's arrays
                t[key] = val[np.asarray(keep, dtype=np.int64)]
            elif isinstance(val, list) and len(val) == n_tok:
                t[key] = [val[i] for i in keep]
            else:
                t[key] = val
        dropped = n_tok - len(keep)
        out["teacher"] = t
    out["normalization"] = {"shape": shape, "dropped_teacher_tokens": dropped}
    return out
