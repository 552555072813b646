"""Detect degenerate repetition in long chain-of-thought (a teacher stuck in a loop).

Four detectors, each returning a human-readable detail when it fires, else ``None``:

- ``repeated_paragraph``: a paragraph (text between blank lines, compared after stripping and
  collapsing whitespace) of at least ``paragraph_min_chars`` characters occurs more than
  ``paragraph_max_repeats`` times.
- ``repeated_sentence``: a sentence (``text.sentences.segment``, normalised the same way) of at
  least ``sentence_min_chars`` characters occurs more than ``sentence_max_repeats`` times.
- ``repeated_ngrams``: among the word ``ngram_n``-grams of the text (words = runs of non-space),
  the share that repeat an earlier one exceeds ``ngram_max_dup_fraction`` (only for texts of at
  least ``2 * ngram_n`` words).
- ``repeated_chars``: a unit of 1-``char_unit_max`` characters repeated back to back at least
  ``char_min_repeats`` times over at least ``char_min_chars`` characters (``"!!!!..."``,
  ``"ababab..."``, ``"0 0 0 0 ..."``).

Pitfall: legitimate CoT repeats short lines ("Wait.", "Let me double-check.") and restates
equations; the minimum lengths and counts are set so that those pass (docs/filters.md).
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
from pydantic import Field

from dasd.configbase import StrictModel
from dasd.text.sentences import segment

_PARA_SPLIT = re.compile(r"\n[ \t]*\n\s*")
_WS = re.compile(r"\s+")
_WORDS = re.compile(r"\S+")


class RepetitionConfig(StrictModel):
    """Thresholds of the repetition filter (each detector can be disabled by its own switch)."""

    enabled: bool = Field(True, description="Run the repetition filter at all.")
    paragraph_min_chars: int = Field(40, ge=1, description="Shorter paragraphs are not counted.")
    paragraph_max_repeats: int = Field(
        2, ge=1, description="Drop when one paragraph occurs more often than this (0 = off via enabled)."
    )
    sentence_min_chars: int = Field(30, ge=1, description="Shorter sentences are not counted.")
    sentence_max_repeats: int = Field(4, ge=1, description="Drop when one sentence occurs more often than this.")
    ngram_n: int = Field(16, ge=2, description="Word n-gram length for the n-gram detector.")
    ngram_max_dup_fraction: float = Field(
        0.3, gt=0, le=1, description="Drop when more than this share of word n-grams repeat an earlier one."
    )
    char_unit_max: int = Field(20, ge=1, le=100, description="Longest repeated character unit looked for.")
    char_min_repeats: int = Field(10, ge=2, description="Back-to-back repeats of a unit needed to count.")
    char_min_chars: int = Field(100, ge=1, description="...and the total length of the repeated run.")


def _norm(s: str) -> str:
    return _WS.sub(" ", s.strip())


def repeated_paragraph(text: str, cfg: RepetitionConfig) -> str | None:
    counts = Counter(p for p in map(_norm, _PARA_SPLIT.split(text)) if len(p) >= cfg.paragraph_min_chars)
    if counts:
        para, k = counts.most_common(1)[0]
        if k > cfg.paragraph_max_repeats:
            return f"paragraph repeated {k} times (> {cfg.paragraph_max_repeats}): {para[:60]!r}"
    return None


def repeated_sentence(text: str, cfg: RepetitionConfig) -> str | None:
    sents = (_norm(text[s:e]) for s, e in segment(text))
    counts = Counter(s for s in sents if len(s) >= cfg.sentence_min_chars)
    if counts:
        sent, k = counts.most_common(1)[0]
        if k > cfg.sentence_max_repeats:
            return f"sentence repeated {k} times (> {cfg.sentence_max_repeats}): {sent[:60]!r}"
    return None


def repeated_ngrams(text: str, cfg: RepetitionConfig) -> str | None:
    """Share of word n-grams that repeat an earlier one (vectorised: words -> ids -> 64-bit n-gram hashes)."""
    words = _WORDS.findall(text)
    n = cfg.ngram_n
    total = len(words) - n + 1
    if len(words) < 2 * n:
        return None
    ids = np.unique(np.asarray(words), return_inverse=True)[1].astype(np.uint64).reshape(-1)
    h = np.zeros(total, dtype=np.uint64)
    for j in range(n):  # polynomial hash of each window, mod 2**64
        h = h * np.uint64(0x100000001B3) + ids[j : j + total] + np.uint64(1)
    dup = total - len(np.unique(h))
    frac = dup / total
    if frac > cfg.ngram_max_dup_fraction:
        return f"{frac:.0%} of word {n}-grams repeat (> {cfg.ngram_max_dup_fraction:.0%})"
    return None


def repeated_chars(text: str, cfg: RepetitionConfig) -> str | None:
    # A stretch of period p is a run where text[i] == text[i + p]; found per p with numpy, so the
    # cost is char_unit_max vectorised passes instead of a backtracking regex.
    if len(text) < cfg.char_min_chars:
        return None
    arr = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    for p in range(1, min(cfg.char_unit_max, len(text) - 1) + 1):
        eq = (arr[p:] == arr[:-p]).view(np.int8)
        edges = np.diff(np.concatenate(([0], eq, [0])))
        starts = np.flatnonzero(edges == 1)
        lengths = np.flatnonzero(edges == -1) - starts + p  # characters in the periodic stretch
        hit = np.flatnonzero((lengths >= cfg.char_min_chars) & (lengths // p >= cfg.char_min_repeats))
        if hit.size:
            i, n = int(starts[hit[0]]), int(lengths[hit[0]])
            return f"{text[i : i + p]!r} repeated {n // p} times at char {i}"
    return None


def check_repetition(text: str, cfg: RepetitionConfig) -> str | None:
    """The first detector that fires (cheapest first), as ``"<detector>: <detail>"``, or ``None``."""
    if not cfg.enabled:
        return None
    for name, fn in (
        ("chars", repeated_chars),
        ("paragraph", repeated_paragraph),
        ("sentence", repeated_sentence),
        ("ngrams", repeated_ngrams),
    ):
        detail = fn(text, cfg)
        if detail is not None:
            return f"{name}: {detail}"
    return None
