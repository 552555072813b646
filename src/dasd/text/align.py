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
from collections.abc import Sequence
from functools import lru_cache
from itertools import chain

import numpy as np

Span = tuple[int, int]


@lru_cache(maxsize=1)
def _whitespace_codepoints() -> np.ndarray:
    """Every code point ``str.isspace`` calls whitespace (all are below U+3001)."""
    return np.array([c for c in range(0x3001) if chr(c).isspace()], dtype=np.uint32)


@lru_cache(maxsize=1)
def _is_space_table() -> np.ndarray:
    """``table[min(c, 0x3001)]``: whether code point ``c`` is whitespace (``str.isspace``), by lookup."""
    table = np.zeros(0x3002, dtype=bool)
    table[_whitespace_codepoints()] = True
    return table


def codepoints(text: str) -> np.ndarray:
    """The code points of ``text``, one per character (a uint32 array; a lone surrogate, which a JSON
    string can hold, is kept as one)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def is_space(codes: np.ndarray) -> np.ndarray:
    """Per code point of ``codes`` (``codepoints``), whether it is whitespace (``str.isspace``; a lone
    surrogate is not)."""
    return _is_space_table()[np.minimum(codes, 0x3001)]


def _offsets_array(offsets, side: str, n: int) -> np.ndarray:
    """``offsets`` as an ``(k, 2)`` int64 array; ``ValueError`` names the first bad token."""
    if isinstance(offsets, np.ndarray) and offsets.dtype.kind in "iu" and offsets.ndim == 2 and offsets.shape[1] == 2:
        arr = offsets.astype(np.int64, copy=False)
    else:
        for i, off in enumerate(offsets):  # lists from JSON or an engine: check shape and types
            if len(off) != 2:
                raise ValueError(f"{side}.offsets[{i}] = {off!r}: expected [start, end]")
        arr = np.asarray(offsets) if len(offsets) else np.zeros((0, 2), dtype=np.int64)
        if arr.dtype.kind not in "iu":
            for i, (s, e) in enumerate(offsets):
                if not (isinstance(s, (int, np.integer)) and isinstance(e, (int, np.integer))):
                    raise ValueError(f"{side}.offsets[{i}] = {list(offsets[i])!r}: not a span inside the text (length {n})")
        arr = arr.astype(np.int64, copy=False).reshape(-1, 2)
    bad = ~((arr[:, 0] >= 0) & (arr[:, 0] <= arr[:, 1]) & (arr[:, 1] <= n))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{side}.offsets[{i}] = {arr[i].tolist()!r}: not a span inside the text (length {n})")
    return arr


def _logprobs_array(logprobs, side: str) -> np.ndarray:
    """``logprobs`` as a float64 array; ``ValueError`` names the first that is not a finite number."""
    ok = (isinstance(logprobs, np.ndarray) and logprobs.dtype.kind == "f") or set(map(type, logprobs)) <= {float, int}
    if not ok:  # other than a float array or a list of Python numbers (an engine's): look at each one
        for i, lp in enumerate(logprobs):
            if isinstance(lp, bool) or not isinstance(lp, (int, float, np.integer, np.floating)):
                raise ValueError(f"{side}.logprobs[{i}] = {lp!r}: not a finite number")
    arr = np.asarray(logprobs, dtype=np.float64).reshape(-1)
    fin = np.isfinite(arr)
    if not fin.all():
        i = int(np.flatnonzero(~fin)[0])
        raise ValueError(f"{side}.logprobs[{i}] = {logprobs[i]!r}: not a finite number")
    return arr


def check_token_signal(text: str, offsets: Sequence[Sequence[int]], logprobs: Sequence[float], side: str) -> None:
    """Raise ``ValueError`` naming ``side`` and the token index if offsets/log-probs are unusable.

    Checked: same length, integer spans with ``0 <= s <= e <= len(text)``, finite log-probs.
    Vectorised for numpy arrays (a columnar record's); lists of offsets, and lists of log-probs
    that are not all Python numbers (an engine's are), are checked element by element.
    """
    _signal_arrays(text, offsets, logprobs, side)


def _signal_arrays(text: str, offsets, logprobs, side: str) -> tuple[np.ndarray, np.ndarray]:
    """``check_token_signal``, returning the offsets as an ``(k, 2)`` int64 array and the log-probs as
    a float64 array."""
    if len(offsets) != len(logprobs):
        raise ValueError(f"{side}: {len(offsets)} offsets but {len(logprobs)} logprobs")
    return _offsets_array(offsets, side, len(text)), _logprobs_array(logprobs, side)


def token_anchor(text: str, start: int, end: int) -> int:
    """The character index that decides a token's sentence (see the module doc)."""
    if end > start and text[start].isspace():
        piece = text[start:end]
        rest = piece.lstrip()
        if rest:
            return end - len(rest)
    return start


def token_anchors(text: str, offsets) -> np.ndarray:
    """``token_anchor`` of every token at once (an int64 array)."""
    arr = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    if not len(arr):
        return np.zeros(0, dtype=np.int64)
    n = len(text)
    space = is_space(codepoints(text))
    # next_solid[i]: the first index >= i whose character is not whitespace (n if none)
    idx = np.where(space, n, np.arange(n, dtype=np.int64))
    next_solid = np.append(np.minimum.accumulate(idx[::-1])[::-1], n)
    s, e = arr[:, 0], arr[:, 1]
    lead_space = (e > s) & np.append(space, False)[np.minimum(s, n)]
    solid = next_solid[np.minimum(s, n)]
    return np.where(lead_space & (solid < e), solid, s)


def assign_tokens(text: str, spans: Sequence[Span], offsets: Sequence[Sequence[int]]) -> list[int]:
    """Index of the sentence (in ``spans``) each token belongs to; ``spans`` must cover ``text``."""
    return _assign(text, _span_array(spans), offsets).tolist()


def _span_array(spans: Sequence[Span]) -> np.ndarray:
    """``spans`` as an ``(n, 2)`` int64 array."""
    return np.fromiter(chain.from_iterable(spans), dtype=np.int64, count=2 * len(spans)).reshape(-1, 2)


def _assign(text: str, spans: np.ndarray, offsets) -> np.ndarray:
    """``assign_tokens`` as an int64 array, the spans given as ``_span_array``'s."""
    if not len(spans):
        if len(offsets):
            raise ValueError("tokens given for an empty text")
        return np.zeros(0, dtype=np.int64)
    i = np.searchsorted(spans[:, 0], token_anchors(text, offsets), side="right") - 1
    return np.clip(i, 0, len(spans) - 1)


def sentence_means(
    text: str, spans: Sequence[Span], offsets: Sequence[Sequence[int]], logprobs: Sequence[float]
) -> tuple[list[float | None], list[int]]:
    """Per sentence: mean token log-prob (``None`` if no token) and token count, for one model.

    Sums run in token order in float64 (``np.bincount``), as a plain loop would add them.
    """
    return _means(_assign(text, _span_array(spans), offsets), logprobs, len(spans))


def _means(which: np.ndarray, logprobs, n: int) -> tuple[list[float | None], list[int]]:
    """``sentence_means`` of tokens already assigned to the ``n`` sentences (``which``)."""
    lp = np.asarray(logprobs, dtype=np.float64).reshape(-1)
    sums = np.bincount(which, weights=lp, minlength=n).tolist()
    counts = np.bincount(which, minlength=n).tolist()
    means = [sums[i] / counts[i] if counts[i] else None for i in range(n)]
    return means, counts


def sentence_bits_per_char(
    text: str, spans: Sequence[Span], offsets: Sequence[Sequence[int]], logprobs: Sequence[float]
) -> list[float | None]:
    """Per sentence: sum of the model's token log-probs in it / its characters / ln 2 (bits per
    character, ``None`` if no token or an empty span).

    Vectorised, with the values and types of the per-token loop it replaced (``sums[i] += lp``
    from ``0.0`` in token order, then ``sums[i] / (e - s) / math.log(2)``; tests/text/test_align.py
    keeps it): the arithmetic is done in the type NumPy gives ``0.0 + lp`` (``_as_summed``). A list
    of Python numbers, or a float64 or integer array, is summed in float64; a float32 array (a
    columnar record's teacher log-probs) in float32, quotients included. A value is a Python float
    for a list of Python numbers, else a numpy scalar of that type (so a float32 value minus a
    Python float is float32, as it was). Only a list mixing Python floats with numpy float32
    scalars, which nothing in dasd makes, is summed otherwise (in float64 throughout, where the loop
    went over to float32 at its first numpy number). Float32 sums are left as they are: against
    float64 they differ by under 2e-7 bits/char on a 32K-token response and under 1e-6 for one
    32K-token sentence (tests/text/test_align.py measures it), about a millionth of
    ``das.tau_char`` (0.25), so they can move only a delta already that close to +-tau.
    """
    sp = _span_array(spans)
    return _bits_per_char(_assign(text, sp, offsets), sp, logprobs)


def _as_summed(logprobs) -> tuple[np.ndarray, bool]:
    """``logprobs`` as a flat array of the type a running Python sum of them has (``0.0 + lp``, by
    NumPy's promotion: float32 for float32 numbers, float64 for Python and integer ones), and whether
    that sum is a numpy scalar (an array, or a list of numpy numbers) rather than a Python float (a
    list of Python numbers)."""
    if not isinstance(logprobs, np.ndarray) or logprobs.dtype.kind not in "biuf":
        values = logprobs.tolist() if isinstance(logprobs, np.ndarray) else logprobs
        if set(map(type, values)) <= {float, int, bool}:
            return np.asarray(values, dtype=np.float64).reshape(-1), False
        logprobs = np.asarray(values)
        if logprobs.dtype.kind not in "biuf":
            raise TypeError(f"log-probs must be numbers, got {logprobs.dtype} values")
    arr = logprobs.reshape(-1)
    return arr.astype(type(0.0 + arr.dtype.type(0)), copy=False), True


def _bits_per_char(which: np.ndarray, spans: np.ndarray, logprobs) -> list[float | None]:
    """``sentence_bits_per_char`` of tokens already assigned to the sentences ``spans`` (``which``)."""
    lp, scalars = _as_summed(logprobs)
    n = len(spans)
    k = min(len(which), len(lp))  # a loop over zip(which, logprobs) stops at the shorter
    which, lp = which[:k], lp[:k]
    counts = np.bincount(which, minlength=n)
    if lp.dtype == np.float64:
        sums = np.bincount(which, weights=lp, minlength=n)  # adds in token order, in float64
    else:
        sums = np.zeros(n, dtype=lp.dtype)
        np.add.at(sums, which, lp)  # in token order, in the log-probs' own type
    chars = spans[:, 1] - spans[:, 0]
    ok = (counts > 0) & (chars > 0)
    bits = sums / np.where(ok, chars, 1).astype(lp.dtype) / lp.dtype.type(math.log(2))
    return [v if good else None for v, good in zip(list(bits) if scalars else bits.tolist(), ok.tolist())]


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
    off_t, lp64_t = _signal_arrays(text, teacher_offsets, teacher_logprobs, "teacher")
    off_s, lp64_s = _signal_arrays(text, student_offsets, student_logprobs, "student")
    sp = _span_array(spans)
    which_t, which_s = _assign(text, sp, off_t), _assign(text, sp, off_s)  # once a side
    lp_t, n_t = _means(which_t, lp64_t, len(spans))
    lp_s, n_s = _means(which_s, lp64_s, len(spans))
    lpc_t = _bits_per_char(which_t, sp, teacher_logprobs)  # summed as given (float32 stays float32)
    lpc_s = _bits_per_char(which_s, sp, student_logprobs)
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
