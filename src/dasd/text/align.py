"""Map any tokenizer's tokens to sentences through character offsets, and score sentences.

Teacher and student tokenise the same response text with different vocabularies. Sentences are
character spans (``dasd.text.sentences.segment``), so each model's tokens are mapped to sentences
on their own, and the two sides never need to agree on token boundaries.

**Assignment rule.** A token with character span ``(s, e)`` belongs to the sentence holding its
*anchor*:
- its first non-whitespace character, if it has one (``" Then"`` after ``"Done."`` belongs to the
  sentence that starts with ``Then``, although its leading space is the previous sentence's
  trailing whitespace);
- otherwise (a token of only whitespace, e.g. ``"\\n\\n"``) its start ``s``;
- an empty span ``(s, s)`` anchors at ``s``. Byte-level BPE pieces of one multi-byte character
  either share that character's span (HF ``tokenizers``) or are empty spans at it; both rules put
  every piece in the sentence holding the character. A token whose anchor is ``len(text)`` (an
  end-of-sequence token at ``(n, n)``) belongs to the last sentence.

A token that straddles a sentence boundary therefore counts once, for the sentence holding its
anchor; the next sentence may then hold no token of that model and is "unscored".

**Sentence score.** For each model: the mean log-prob (nats/token) of that model's tokens in the
sentence (the log of the geometric mean token probability, docs/method.md#sentence-level-divergence) and the token count.
``delta = lp_teacher - lp_student``; the type is ``"teacher"`` if ``delta > tau``, ``"student"``
if ``delta < -tau``, otherwise ``"shared"``; ``"unscored"`` if either model has fewer than
``min_tokens`` tokens in the sentence (those sentences are left out of the DAS score).

**Per character** (``unit="char"``, the tokenizer-neutral option): each model's *sum* of log-probs
over its tokens in the sentence, divided by the sentence's characters and by ln 2, is
``lpc_<model>`` in bits per character (log2-prob per character, <= 0); ``delta`` is then
``lpc_teacher - lpc_student`` and ``tau`` is in bits/character. Every row carries ``lpc_teacher``
and ``lpc_student`` whatever the unit.
"""

from __future__ import annotations

import math
import numbers
from bisect import bisect_right
from collections.abc import Sequence

Span = tuple[int, int]


def check_token_signal(text: str, offsets: Sequence[Sequence[int]], logprobs: Sequence[float], side: str) -> None:
    """Raise ``ValueError`` naming ``side`` and the token index if offsets/log-probs are unusable.

    Checked: same length, integer spans with ``0 <= s <= e <= len(text)``, finite log-probs.
    """
    if len(offsets) != len(logprobs):
        raise ValueError(f"{side}: {len(offsets)} offsets but {len(logprobs)} logprobs")
    n = len(text)
    for i, (off, lp) in enumerate(zip(offsets, logprobs)):
        if len(off) != 2:
            raise ValueError(f"{side}.offsets[{i}] = {off!r}: expected [start, end]")
        s, e = off
        if not (isinstance(s, numbers.Integral) and isinstance(e, numbers.Integral) and 0 <= s <= e <= n):
            raise ValueError(f"{side}.offsets[{i}] = {list(off)!r}: not a span inside the text (length {n})")
        if not isinstance(lp, numbers.Real) or isinstance(lp, bool) or not math.isfinite(lp):
            raise ValueError(f"{side}.logprobs[{i}] = {lp!r}: not a finite number")


def token_anchor(text: str, start: int, end: int) -> int:
    """The character index that decides a token's sentence (see the module doc)."""
    if end > start and text[start].isspace():
        piece = text[start:end]
        rest = piece.lstrip()
        if rest:
            return end - len(rest)
    return start


def assign_tokens(text: str, spans: Sequence[Span], offsets: Sequence[Sequence[int]]) -> list[int]:
    """Index of the sentence (in ``spans``) each token belongs to; ``spans`` must cover ``text``."""
    if not spans:
        if offsets:
            raise ValueError("tokens given for an empty text")
        return []
    starts = [s for s, _ in spans]
    last = len(spans) - 1
    out = []
    for s, e in offsets:
        a = token_anchor(text, s, e)
        i = bisect_right(starts, a) - 1
        out.append(min(max(i, 0), last))
    return out


def sentence_means(
    text: str, spans: Sequence[Span], offsets: Sequence[Sequence[int]], logprobs: Sequence[float]
) -> tuple[list[float | None], list[int]]:
    """Per sentence: mean token log-prob (``None`` if no token) and token count, for one model."""
    sums = [0.0] * len(spans)
    counts = [0] * len(spans)
    for i, lp in zip(assign_tokens(text, spans, offsets), logprobs):
        sums[i] += lp
        counts[i] += 1
    means = [sums[i] / counts[i] if counts[i] else None for i in range(len(spans))]
    return means, counts


def sentence_bits_per_char(
    text: str, spans: Sequence[Span], offsets: Sequence[Sequence[int]], logprobs: Sequence[float]
) -> list[float | None]:
    """Per sentence: sum of the model's token log-probs in it / its characters / ln 2 (bits per
    character, ``None`` if no token or an empty span)."""
    sums = [0.0] * len(spans)
    counts = [0] * len(spans)
    for i, lp in zip(assign_tokens(text, spans, offsets), logprobs):
        sums[i] += lp
        counts[i] += 1
    return [sums[i] / (e - s) / math.log(2) if counts[i] and e > s else None for i, (s, e) in enumerate(spans)]


def classify(delta: float, tau: float) -> str:
    """``"teacher"`` if ``delta > tau``, ``"student"`` if ``delta < -tau``, else ``"shared"``."""
    if delta > tau:
        return "teacher"
    if delta < -tau:
        return "student"
    return "shared"


def score_sentences(
    text: str,
    spans: Sequence[Span],
    teacher_offsets: Sequence[Sequence[int]],
    teacher_logprobs: Sequence[float],
    student_offsets: Sequence[Sequence[int]],
    student_logprobs: Sequence[float],
    tau: float,
    min_tokens: int = 1,
    unit: str = "token",
) -> list[dict]:
    """One ``records.Sentence``-shaped dict per span (plus ``delta``, ``lpc_teacher``,
    ``lpc_student``), both models aligned; ``unit`` ("token" or "char") says which one ``delta``
    and the type use (see the module doc).

    Validates both sides first (``ValueError`` names the side, the token and the problem).
    """
    if unit not in ("token", "char"):
        raise ValueError(f"unit must be 'token' or 'char', got {unit!r}")
    check_token_signal(text, teacher_offsets, teacher_logprobs, "teacher")
    check_token_signal(text, student_offsets, student_logprobs, "student")
    lp_t, n_t = sentence_means(text, spans, teacher_offsets, teacher_logprobs)
    lp_s, n_s = sentence_means(text, spans, student_offsets, student_logprobs)
    lpc_t = sentence_bits_per_char(text, spans, teacher_offsets, teacher_logprobs)
    lpc_s = sentence_bits_per_char(text, spans, student_offsets, student_logprobs)
    rows = []
    for k, (s, e) in enumerate(spans):
        scored = n_t[k] >= min_tokens and n_s[k] >= min_tokens and (unit == "token" or e > s)
        if not scored:
            delta = None
        elif unit == "token":
            delta = lp_t[k] - lp_s[k]
        else:
            delta = lpc_t[k] - lpc_s[k]
        rows.append(
            {
                "start": s,
                "end": e,
                "lp_teacher": lp_t[k],
                "lp_student": lp_s[k],
                "n_teacher_tokens": n_t[k],
                "n_student_tokens": n_s[k],
                "lpc_teacher": lpc_t[k],
                "lpc_student": lpc_s[k],
                "delta": delta,
                "type": classify(delta, tau) if delta is not None else "unscored",
            }
        )
    return rows
