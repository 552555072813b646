"""The vectorised sentence rules of ``dasd.text.align`` against the plain-Python loops they replaced:
same values, bit for bit, and same types (a float32 sum stays a float32 scalar, which decides the
type of the per-character delta after it)."""

from __future__ import annotations

import bisect
import math
import random
import sys

import numpy as np
import pytest

from dasd.text.align import score_sentences, sentence_bits_per_char, token_anchor, token_anchors
from dasd.text.sentences import segment

# whitespace of several kinds, multi-byte characters, a lone surrogate (a JSON string can hold one)
ALPHABET = ["a", "b", "X", "1", " ", " ", ".", "!", "?", "\n", "\t", "\u00e9", "\U0001f642", "\u65e5", "\u3000",
            "\u2028", "\ud800"]


def reference_assign(text, spans, offsets):
    """The sentence of each token, one token at a time (``token_anchor``, then the last sentence
    starting at or before it; the first sentence for an anchor before every start)."""
    starts = [s for s, _ in spans]
    return [min(max(bisect.bisect_right(starts, token_anchor(text, int(s), int(e))) - 1, 0), len(spans) - 1)
            for s, e in offsets]


def reference_bits_per_char(text, spans, offsets, logprobs):
    """``sentence_bits_per_char`` as it was: a per-token Python loop."""
    sums = [0.0] * len(spans)
    counts = [0] * len(spans)
    for i, lp in zip(reference_assign(text, spans, offsets), logprobs):
        sums[i] += lp
        counts[i] += 1
    return [sums[i] / (e - s) / math.log(2) if counts[i] and e > s else None for i, (s, e) in enumerate(spans)]


def same(a, b) -> bool:
    """Both ``None``, or the same type and the same bits (``-0.0`` is not ``0.0``, NaN is NaN)."""
    if a is None or b is None:
        return a is b
    return type(a) is type(b) and np.asarray(a).tobytes() == np.asarray(b).tobytes()


LOGPROB_FORMS = {
    "list of floats": lambda v: v,
    "list of ints": lambda v: [int(x) for x in v],
    "float64 array": lambda v: np.asarray(v, dtype=np.float64),
    "float32 array": lambda v: np.asarray(v, dtype=np.float32),  # a columnar record's teacher log-probs
    "float16 array": lambda v: np.asarray(v, dtype=np.float16),
    "int32 array": lambda v: np.asarray([int(x) for x in v], dtype=np.int32),
    "list of float32 scalars": lambda v: [np.float32(x) for x in v],
    "list of float64 scalars": lambda v: [np.float64(x) for x in v],
}


def random_case(rng: random.Random):
    """A text, sentence spans covering it, token offsets and raw log-prob values."""
    text = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 70)))
    n = len(text)
    if rng.random() < 0.5 or not n:
        spans = segment(text)
    else:  # arbitrary cuts: empty sentences where two cuts meet
        cuts = sorted(rng.choices(range(n + 1), k=rng.randint(0, 8)))
        bounds = [0, *cuts, n]
        spans = list(zip(bounds[:-1], bounds[1:]))
    offsets = []
    for _ in range(rng.randint(0, 45) if spans else 0):
        s = rng.choice([n, rng.randint(0, n)])  # tokens at len(text): an end-of-sequence token
        e = min(n, s + rng.choice([0, 0, 1, 2, 4, 9]))  # zero-width spans too
        offsets.append((s, e))
    if rng.random() < 0.5:
        offsets.sort()
    values = [rng.choice([-rng.expovariate(0.7), -rng.expovariate(0.7), -0.0, 0.0, -1e-30, -3.0, -1e4])
              for _ in offsets]
    return text, spans, offsets, values


def test_sentence_bits_per_char_is_the_per_token_loop_bit_for_bit():
    rng = random.Random(20240611)
    seen = {"empty sentence": 0, "token at len(text)": 0, "zero-width token": 0, "unscored sentence": 0,
            "lone surrogate": 0, "fewer log-probs than tokens": 0}
    for case in range(4000):
        text, spans, offsets, values = random_case(rng)
        form = list(LOGPROB_FORMS)[case % len(LOGPROB_FORMS)]
        logprobs = LOGPROB_FORMS[form](values)
        if case % 97 == 0 and len(values):
            logprobs = logprobs[:-1]  # a loop over zip() stops at the shorter
            seen["fewer log-probs than tokens"] += 1
        given = np.asarray(offsets, dtype=np.int32).reshape(-1, 2) if case % 3 == 0 else offsets
        with np.errstate(over="ignore"):  # a float16 sum may overflow, the same way in both
            want = reference_bits_per_char(text, spans, offsets, logprobs)
            got = sentence_bits_per_char(text, spans, given, logprobs)
        assert len(got) == len(want) == len(spans)
        bad = [k for k, (a, b) in enumerate(zip(got, want)) if not same(a, b)]
        assert not bad, (form, text, spans, offsets, values, [(got[k], want[k]) for k in bad])
        counts = np.bincount(reference_assign(text, spans, offsets), minlength=len(spans)) if spans else []
        seen["empty sentence"] += any(s == e for s, e in spans)
        seen["token at len(text)"] += any(s == len(text) for s, _ in offsets)
        seen["zero-width token"] += any(s == e for s, e in offsets)
        seen["unscored sentence"] += any(c == 0 for c in counts)
        seen["lone surrogate"] += "\ud800" in text
    assert min(seen.values()) >= 30, seen


def test_float32_sums_stay_float32_as_the_loop_had_them():
    """Hand-checked: float32 log-probs are summed and divided in float32 (NumPy's ``0.0 + float32``
    is float32), so the value is a float32 scalar, not the float64 sum of the same numbers."""
    text = "abcd"
    lps = np.asarray([-0.1, -0.2, -0.3], dtype=np.float32)
    got = sentence_bits_per_char(text, [(0, 4)], [(0, 1), (1, 2), (2, 4)], lps)[0]
    total = np.float32(0.0)
    for x in lps:
        total = np.float32(total + x)
    assert type(got) is np.float32
    assert got == np.float32(np.float32(total / np.float32(4)) / np.float32(math.log(2)))
    as_float64 = sum(float(x) for x in lps) / 4 / math.log(2)
    assert float(got) != as_float64 and float(got) == pytest.approx(as_float64, rel=1e-6)
    python = sentence_bits_per_char(text, [(0, 4)], [(0, 1), (1, 2), (2, 4)], lps.tolist())[0]
    assert type(python) is float and python == as_float64


@pytest.mark.parametrize("forms", [("float32 array", "list of floats"), ("float32 array", "float64 array"),
                                   ("list of floats", "list of floats"), ("float64 array", "float32 array")])
def test_score_sentences_rows_keep_the_loop_values_and_types(forms):
    """The per-character values and the per-character delta (teacher minus student, whose type
    follows the two values': a float32 teacher minus a Python float is float32) as before, with the
    teacher log-probs as a columnar record holds them (float32) and the student's as an engine gives
    them (a list) or as a re-scored signal holds them (float64)."""
    rng = random.Random(7)
    n_scored = 0
    for _ in range(600):
        text, spans, t_off, t_values = random_case(rng)
        if not text.strip():
            continue
        spans = segment(text)  # sentence_table's spans
        s_off = sorted((s, min(len(text), s + rng.randint(0, 5))) for s in rng.choices(range(len(text) + 1), k=30))
        s_values = [-rng.expovariate(1.0) for _ in s_off]
        t_lp, s_lp = LOGPROB_FORMS[forms[0]](t_values), LOGPROB_FORMS[forms[1]](s_values)
        rows = score_sentences(text, spans, t_off, t_lp, s_off, s_lp, tau=0.25, unit="char")
        want_t = reference_bits_per_char(text, spans, t_off, t_lp)
        want_s = reference_bits_per_char(text, spans, s_off, s_lp)
        for row, wt, ws in zip(rows, want_t, want_s):
            assert same(row["lpc_teacher"], wt) and same(row["lpc_student"], ws)
            if row["delta"] is not None:
                assert same(row["delta"], wt - ws)
                n_scored += 1
    assert n_scored > 500


def test_token_anchors_is_token_anchor_on_texts_with_a_lone_surrogate():
    """A lone surrogate (which a JSON string can hold) is one character that is not whitespace, as
    ``str`` has it; the array version once failed to encode such a text."""
    text = "Done.\ud800 \n Then \udfff."
    offsets = [(0, 5), (5, 6), (5, 9), (6, 9), (6, 10), (9, 14), (13, 15), (14, 16), (16, 16)]
    assert token_anchors(text, offsets).tolist() == [token_anchor(text, s, e) for s, e in offsets] \
        == [0, 5, 5, 6, 9, 9, 14, 14, 16]


def test_the_whitespace_table_is_str_isspace_on_every_code_point():
    """The one whitespace lookup (``train.encode`` aligns responses with it too), over all of Unicode."""
    from dasd.text.align import codepoints, is_space

    every = "".join(map(chr, range(sys.maxunicode + 1)))
    assert codepoints(every).tolist() == list(range(sys.maxunicode + 1))
    flags = is_space(codepoints(every))
    assert len(flags) == sys.maxunicode + 1
    assert np.flatnonzero(flags).tolist() == [c for c in range(sys.maxunicode + 1) if chr(c).isspace()]


def test_float32_sums_are_far_too_close_to_float64_to_move_a_decision_at_tau():
    """Measured, not changed: a 32K-token response of ~2,600 sentences whose teacher log-probs are
    float32 (a columnar record's, summed in float32) against the same numbers summed in float64,
    per character: the values differ by under 2e-7 bits/char (under 1e-6 of ``das.tau_char``'s 0.25),
    and no sentence changes type; one sentence of 32K tokens (the longest sum) stays under 1e-6."""
    rng = np.random.default_rng(0)
    words = ["step", "so", "we", "keep", "add", "3", "+", "4", "=", "7", "mod", "1000", "check", "even", "odd"]
    sentences = [" ".join(rng.choice(words, size=rng.integers(3, 25))).capitalize() + "." for _ in range(2700)]
    text = " ".join(sentences)[:128_000]
    spans = segment(text)

    def tokens(mean):
        cuts = np.cumsum(np.maximum(1, rng.exponential(mean, len(text)).astype(np.int64)))
        cuts = np.concatenate([[0], cuts[cuts < len(text)], [len(text)]])
        return np.stack([cuts[:-1], cuts[1:]], axis=1)

    t_off, s_off = tokens(4.0), tokens(3.5)
    t32 = (-rng.exponential(0.5, len(t_off))).astype(np.float32)
    s_lp = (-rng.exponential(0.5, len(s_off))).tolist()
    assert len(t_off) > 30_000 and len(spans) > 2000
    as32 = score_sentences(text, spans, t_off, t32, s_off, s_lp, tau=0.25, unit="char")
    as64 = score_sentences(text, spans, t_off, t32.astype(np.float64), s_off, s_lp, tau=0.25, unit="char")
    scored = [(a, b) for a, b in zip(as32, as64) if a["delta"] is not None]
    assert len(scored) > 2000 and all(type(a["lpc_teacher"]) is np.float32 for a, _ in scored)
    worst = max(abs(float(a["lpc_teacher"]) - b["lpc_teacher"]) for a, b in scored)
    assert 0 < worst < 2e-7
    assert [a["type"] for a in as32] == [b["type"] for b in as64]

    one = [(0, len(text))]  # every token in one sentence: the longest float32 sum
    lp32 = sentence_bits_per_char(text, one, t_off, t32)[0]
    lp64 = sentence_bits_per_char(text, one, t_off, t32.astype(np.float64))[0]
    assert 0 < abs(float(lp32) - lp64) < 1e-6
