"""Where the final answer lives in a model's output, and how to cut it out.

Rules shared by every grader:

- ``final_part(text)``: the text after the **last** ``</think>``; a text that opens ``<think>`` and
  never closes it has no final part (the reasoning was cut off: ``None``); a text with no think tags
  is all final part. Answers inside the reasoning never count.
- ``last_boxed(text)``: the content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces nested;
  an unclosed box (output cut off inside it) is no answer.
- ``last_code_block(text)``: the body of the last fenced block labelled python (python/py/python3);
  when there is none, the last unlabelled block; then the last block of any label. (So a python
  solution followed by an unlabelled block of sample output is graded on the solution.) An unclosed
  fence is ignored.
"""

from __future__ import annotations

import re

_OPENER = re.compile(r"\\boxed ?\{|\\fbox\{")
_BRACE = re.compile(r"[{}]")


def final_part(text: str) -> str | None:
    """The answer part of a response (after the last ``</think>``), or None if reasoning never ended."""
    if "</think>" in text:
        return text[text.rfind("</think>") + len("</think>"):]
    if "<think>" in text:
        return None
    return text


def _box_spans(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` of each closed box's content, in the order the boxes open. Each ``{`` is
    matched to its ``}`` in one pass over the braces, so a long output with many unclosed boxes (a
    model looping on ``\\boxed{``) costs one pass, not one scan to the end per box."""
    close: dict[int, int] = {}
    stack: list[int] = []
    for m in _BRACE.finditer(text):
        if m.group() == "{":
            stack.append(m.start())
        elif stack:
            close[stack.pop()] = m.start()
    spans = []
    for m in _OPENER.finditer(text):
        k = close.get(m.end() - 1)
        if k is not None:
            spans.append((m.end(), k))
    return spans


def last_boxed(text: str) -> str | None:
    """Content of the last closed ``\\boxed{...}``/``\\fbox{...}``, stripped; None if there is none."""
    spans = _box_spans(text)
    if not spans:
        return None
    j, k = spans[-1]
    return text[j:k].strip()


_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+#.-]*)[^\n]*\n(.*?)```", re.DOTALL)
_PY = {"python", "py", "python3", "py3"}


def last_code_block(text: str) -> str | None:
    """Body of the last fenced code block (python, else unlabelled, else any); None if there is none."""
    blocks = [(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(text)]
    if not blocks:
        return None
    py = [b for lang, b in blocks if lang in _PY]
    bare = [b for lang, b in blocks if not lang]
    return (py or bare or [b for _, b in blocks])[-1]
