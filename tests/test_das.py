"""DAS arithmetic: hand-computed sentence scores, types and scores; real cross-tokenizer alignment;
deterministic budgeted selection."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dasd.rules.das import (DASConfig, das_score, das_summary, retype, score_sample, select_das, select_grouped, select_random,
                            sentence_table)
from dasd.records import Sentence
from dasd.text.align import assign_tokens, token_anchor
from dasd.text.sentences import segment

# "Add 2. " | "Then 3.\n" | "Done."
TEXT = "Add 2. Then 3.\nDone."
T_OFF = [(0, 3), (3, 5), (5, 7), (7, 11), (11, 13), (13, 15), (15, 19), (19, 20)]
T_LP = [-0.1, -0.3, -0.2, -1.0, -1.0, -1.0, -0.5, -0.5]
# The student splits differently: " Then" starts in sentence 0's trailing space but belongs to sentence 1.
S_OFF = [(0, 5), (5, 6), (6, 11), (11, 15), (15, 20)]
S_LP = [-1.0, -0.4, -0.2, -0.2, -0.6]


def test_hand_computed_sentence_scores_and_types():
    assert segment(TEXT) == [(0, 7), (7, 15), (15, 20)]
    rows = sentence_table(TEXT, T_OFF, T_LP, S_OFF, S_LP, DASConfig(tau=0.4))
    for r in rows:
        Sentence.model_validate(r)
    assert [r["n_teacher_tokens"] for r in rows] == [3, 3, 2]
    assert [r["n_student_tokens"] for r in rows] == [2, 2, 1]
    assert [r["lp_teacher"] for r in rows] == pytest.approx([-0.2, -1.0, -0.5])
    assert [r["lp_student"] for r in rows] == pytest.approx([-0.7, -0.2, -0.6])
    assert [r["delta"] for r in rows] == pytest.approx([0.5, -0.8, 0.1])
    assert [r["type"] for r in rows] == ["teacher", "student", "shared"]
    # default tau = ln 2 = 0.693: delta 0.5 is no longer a Teacher sentence
    assert [r["type"] for r in sentence_table(TEXT, T_OFF, T_LP, S_OFF, S_LP)] == ["shared", "student", "shared"]


@pytest.mark.parametrize(
    "weight, penalty, frac_t, frac_s, score, mean_delta",
    [
        ("student_tokens", 1.0, 2 / 5, 2 / 5, 0.0, (2 * 0.5 - 2 * 0.8 + 0.1) / 5),
        ("student_tokens", 0.5, 2 / 5, 2 / 5, 0.2, (2 * 0.5 - 2 * 0.8 + 0.1) / 5),
        ("teacher_tokens", 1.0, 3 / 8, 3 / 8, 0.0, (3 * 0.5 - 3 * 0.8 + 2 * 0.1) / 8),
        ("chars", 1.0, 7 / 20, 8 / 20, -0.05, (7 * 0.5 - 8 * 0.8 + 5 * 0.1) / 20),
    ],
)
def test_hand_computed_das_score(weight, penalty, frac_t, frac_s, score, mean_delta):
    cfg = DASConfig(tau=0.4, weight=weight, penalty=penalty)
    rows = sentence_table(TEXT, T_OFF, T_LP, S_OFF, S_LP, cfg)
    summ = das_summary(rows, cfg)
    assert summ["frac_teacher"] == pytest.approx(frac_t)
    assert summ["frac_student"] == pytest.approx(frac_s)
    assert summ["frac_teacher"] + summ["frac_student"] + summ["frac_shared"] + summ["frac_unscored"] == pytest.approx(1)
    assert summ["score"] == pytest.approx(score)
    assert das_score(rows, cfg) == pytest.approx(score)
    assert summ["mean_delta"] == pytest.approx(mean_delta)
    assert (summ["n_teacher"], summ["n_student"], summ["n_shared"]) == (1, 1, 1)


def test_unscored_sentence_counts_in_denominator_not_in_score():
    # The student has one token over the whole text: sentences 1 and 2 have no student token.
    rows = sentence_table(TEXT, T_OFF, T_LP, [(0, 20)], [-3.0], DASConfig(weight="teacher_tokens"))
    assert [r["type"] for r in rows] == ["teacher", "unscored", "unscored"]
    assert rows[1]["lp_student"] is None and rows[1]["delta"] is None
    summ = das_summary(rows, DASConfig(weight="teacher_tokens"))
    assert summ["frac_teacher"] == pytest.approx(3 / 8)
    assert summ["frac_unscored"] == pytest.approx(5 / 8)
    assert summ["mean_delta"] == pytest.approx(-0.2 + 3.0)
    nothing = sentence_table(TEXT, T_OFF, T_LP, [], [])
    assert das_summary(nothing)["score"] is None


def test_min_tokens_makes_short_sentences_unscored():
    rows = sentence_table(TEXT, T_OFF, T_LP, S_OFF, S_LP, DASConfig(tau=0.4, min_tokens=2))
    assert [r["type"] for r in rows] == ["teacher", "student", "unscored"]


def test_token_anchor_rules():
    text = "A. \n\n B"
    assert token_anchor(text, 2, 7) == 6  # whitespace then "B": its first non-space char
    assert token_anchor(text, 2, 5) == 2  # only whitespace: its start
    assert token_anchor(text, 6, 6) == 6  # empty span: its start
    spans = segment(text)
    assert spans == [(0, 6), (6, 7)]
    assert assign_tokens(text, spans, [(0, 2), (2, 7), (2, 5), (7, 7)]) == [0, 1, 0, 1]  # (7,7): EOS -> last


@pytest.mark.parametrize(
    "t_off, t_lp, message",
    [
        ([(0, 3)], [-0.1, -0.2], "1 offsets but 2 logprobs"),
        ([(0, 21)], [-0.1], "teacher.offsets[0]"),
        ([(3, 2)], [-0.1], "teacher.offsets[0]"),
        ([(0, 3)], [float("nan")], "teacher.logprobs[0]"),
        ([(0, 3)], [float("-inf")], "teacher.logprobs[0]"),
    ],
)
def test_bad_token_signal_is_a_clear_error(t_off, t_lp, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        sentence_table(TEXT, t_off, t_lp, S_OFF, S_LP)


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=80), st.data())
def test_log_prob_mass_is_conserved(text, data):
    """Any tokenisation (ordered, gaps allowed, empty pieces allowed): every token lands in exactly
    one sentence, so sum over sentences of n * mean == sum of all token log-probs."""
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=30)))
    offsets = [(a, b) for a, b in zip([0] + cuts, cuts + [len(text)])]
    lps = [-float(i % 7) / 3 for i in range(len(offsets))]
    rows = sentence_table(text, offsets, lps, offsets, lps)
    assert sum(r["n_teacher_tokens"] for r in rows) == len(offsets)
    total = sum(r["lp_teacher"] * r["n_teacher_tokens"] for r in rows if r["n_teacher_tokens"])
    assert total == pytest.approx(sum(lps))
    assert all(r["type"] in ("shared", "unscored") for r in rows)  # same model on both sides


# ----- real tokenizers --------------------------------------------------------------------------

RESPONSE = (
    "<think>\nLet me compute 3.5 + 4. That is $7.5$, i.e. seven and a half.\n\n"
    "Wait... check: \\[ 7.5 \\times 2 = 15. \\] Caf\u00e9 na\u00efve \U0001f600 ok! "
    "\u65e5\u672c\u8a9e\u306e\u6587\u3002\u6b21\u3002\n1. First item.\n2. Second \U0001f389 item.\n</think>\n"
    "The answer is \\boxed{15}."
)


CORPUS = [
    "Let me compute 3 + 4. That is 7, i.e. seven. Wait, check: 7 * 2 = 14.",
    "Caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u65e5\u672c\u8a9e\u306e\u6587\u3002 emoji \U0001f600\U0001f389 ok!",
    "<think>\n1. First item.\n2. Second item.\n</think>\nThe answer is \\boxed{15}.",
    "So \\[ x^2 = 4 \\] and $\\frac{1}{2}$ then the total is 15.",
]


@pytest.fixture(scope="module")
def two_tokenizers():
    from dasd.toy.tokenizer import build_tokenizer

    a = build_tokenizer(CORPUS * 20, vocab_size=300)
    b = build_tokenizer(list(reversed(CORPUS)) * 30, vocab_size=420)
    return a, b


def _offsets(tok, text):
    enc = tok(text, return_offsets_mapping=True, add_special_tokens=False)
    assert tok.decode(enc["input_ids"]) == text
    return [tuple(o) for o in enc["offset_mapping"]]


def test_cross_tokenizer_alignment(two_tokenizers):
    tok_a, tok_b = two_tokenizers
    off_a, off_b = _offsets(tok_a, RESPONSE), _offsets(tok_b, RESPONSE)
    assert off_a != off_b, "the two tokenizers must tokenise differently"
    assert len({o for o in off_a if off_a.count(o) > 1}) > 0, "byte-level pieces of multi-byte chars"
    spans = segment(RESPONSE)
    for offsets in (off_a, off_b):
        owner = assign_tokens(RESPONSE, spans, offsets)
        # Independent check: each sentence's non-space characters are exactly those covered by its tokens.
        for k, (s, e) in enumerate(spans):
            covered = set()
            for (ts, te), o in zip(offsets, owner):
                if o == k:
                    covered.update(range(ts, te))
            want = {i for i in range(s, e) if not RESPONSE[i].isspace()}
            got = {i for i in covered if not RESPONSE[i].isspace()}
            assert got == want, (RESPONSE[s:e], sorted(got ^ want))
        # pieces of one multi-byte character (same span) are never split across sentences
        by_span = {}
        for off, o in zip(offsets, owner):
            by_span.setdefault(off, set()).add(o)
        assert all(len(v) == 1 for v in by_span.values())

    rng = random.Random(0)
    lp_a = [-rng.random() * 3 for _ in off_a]
    lp_b = [-rng.random() * 3 for _ in off_b]
    # Teacher = tokenizer A. Its sentence scores do not depend on how the student tokenised.
    with_b = sentence_table(RESPONSE, off_a, lp_a, off_b, lp_b)
    with_a = sentence_table(RESPONSE, off_a, lp_a, off_a, lp_a)
    assert [(r["lp_teacher"], r["n_teacher_tokens"]) for r in with_b] == [
        (r["lp_teacher"], r["n_teacher_tokens"]) for r in with_a
    ]
    # Swapping roles swaps the columns and negates delta.
    swapped = sentence_table(RESPONSE, off_b, lp_b, off_a, lp_a)
    for r, q in zip(with_b, swapped):
        assert (r["lp_teacher"], r["lp_student"]) == (q["lp_student"], q["lp_teacher"])
        if r["delta"] is not None:
            assert r["delta"] == pytest.approx(-q["delta"])
            assert {r["type"], q["type"]} in ({"shared"}, {"teacher", "student"})


def test_score_sample_builds_a_scored_sample(two_tokenizers):
    tok_a, tok_b = two_tokenizers
    off_a, off_b = _offsets(tok_a, RESPONSE), _offsets(tok_b, RESPONSE)
    sample = {"id": "s1", "prompt_id": "p", "text": RESPONSE, "teacher": {"offsets": off_a, "logprobs": [-0.2] * len(off_a)}}
    scored = score_sample(sample, off_b, [-1.5] * len(off_b))
    assert "sentences" not in sample  # input untouched
    assert scored["das"]["frac_teacher"] > 0.9  # delta = 1.3 > ln 2 wherever both sides have tokens
    assert scored["das"]["score"] == pytest.approx(scored["das"]["frac_teacher"] - scored["das"]["frac_student"])
    with pytest.raises(ValueError, match="sample s1: student.logprobs"):
        score_sample(sample, off_b, [math.nan] * len(off_b))
    with pytest.raises(ValueError, match="sample s2: no teacher"):
        score_sample({"id": "s2", "text": "x"}, [(0, 1)], [-1.0])


# ----- selection --------------------------------------------------------------------------------


def _cand(i, score, prompt="p", temp=0.6):
    return {"id": f"id{i:02d}", "prompt_id": prompt, "temperature": temp, "das": {"score": score}}


def test_select_das_ranks_by_score_then_id():
    cands = [_cand(3, 0.2), _cand(1, 0.5), _cand(2, 0.2), _cand(4, None), _cand(0, -0.1)]
    sel, rej = select_das(cands, 3)
    assert [c["id"] for c in sel] == ["id01", "id02", "id03"]
    assert [c["id"] for c in rej] == ["id00", "id04"]
    assert select_das(list(reversed(cands)), 3) == (sel, rej)  # order-independent
    assert select_das(cands, 10)[0] == sel + rej
    with pytest.raises(ValueError, match="candidate x: no 'das'"):
        select_das([{"id": "x"}], 1)


def test_select_random_is_seeded_order_independent_same_budget():
    cands = [_cand(i, float(i)) for i in range(20)]
    sel, rej = select_random(cands, 5, seed=7)
    assert len(sel) == 5 and len(rej) == 15
    assert {c["id"] for c in sel} | {c["id"] for c in rej} == {c["id"] for c in cands}
    assert select_random(list(reversed(cands)), 5, seed=7) == (sel, rej)
    assert select_random(cands, 5, seed=8)[0] != sel
    # adding unrelated candidates does not change the relative draw of the existing ones
    more = cands + [_cand(i, 0.0) for i in range(20, 40)]
    ranked = [c["id"] for c in select_random(more, 40, seed=7)[0] if int(c["id"][2:]) < 20]
    assert ranked[:5] == [c["id"] for c in sel]


def test_select_grouped_applies_budget_per_prompt_and_pool():
    cands = [_cand(i, float(i % 5), prompt=f"p{i % 2}", temp=0.6 if i < 10 else 1.0) for i in range(20)]
    for method in ("das", "random"):
        sel, rej = select_grouped(cands, 2, method=method, seed=1)
        assert len(sel) == 8 and len(rej) == 12
        groups = {}
        for c in sel:
            groups.setdefault((c["prompt_id"], c["temperature"]), []).append(c)
        assert sorted(len(v) for v in groups.values()) == [2, 2, 2, 2]
    sel, _ = select_grouped(cands, 1, method="das")
    for c in sel:
        peers = [d["das"]["score"] for d in cands if (d["prompt_id"], d["temperature"]) == (c["prompt_id"], c["temperature"])]
        assert c["das"]["score"] == max(peers)


def test_alignment_agrees_for_byte_offsets_and_tokenizer_offsets(two_tokenizers):
    """Equivalence: offsets computed from token bytes (engines.offsets, as for sampled tokens) and the
    tokenizer's own offset_mapping put every token in the same sentence."""
    from dasd.engines.offsets import token_offsets

    spans = segment(RESPONSE)
    for tok in two_tokenizers:
        ids = tok(RESPONSE, add_special_tokens=False)["input_ids"]
        from_bytes = token_offsets(tok, ids, RESPONSE)
        from_tokenizer = _offsets(tok, RESPONSE)
        assert len(from_bytes) == len(from_tokenizer)
        assert assign_tokens(RESPONSE, spans, from_bytes) == assign_tokens(RESPONSE, spans, from_tokenizer)


# -- the tokenizer-neutral unit (das.unit = char) ----------------------------------------------------

# The same total log-prob per sentence under both models (the same text, equally likely), but the
# teacher's tokenizer is character-level and the student's has one token per sentence.
CHAR_OFF = [(i, i + 1) for i in range(len(TEXT))]
CHAR_LP = [-0.2] * len(TEXT)  # sums: sentence 0 (7 chars) -1.4, sentence 1 (8) -1.6, sentence 2 (5) -1.0
WORD_OFF = [(0, 7), (7, 15), (15, 20)]
WORD_LP = [-1.4, -1.6, -3.0]  # equal to the teacher's sums on sentences 0 and 1, much lower on 2


def test_per_token_means_type_a_granularity_difference_per_character_does_not():
    per_token = sentence_table(TEXT, CHAR_OFF, CHAR_LP, WORD_OFF, WORD_LP)
    # nats/token: teacher -0.2 on every sentence; student -1.4, -1.6, -3.0 -> delta 1.2, 1.4, 2.8 > ln 2
    assert [r["delta"] for r in per_token] == pytest.approx([1.2, 1.4, 2.8])
    assert [r["type"] for r in per_token] == ["teacher", "teacher", "teacher"]
    per_char = sentence_table(TEXT, CHAR_OFF, CHAR_LP, WORD_OFF, WORD_LP, DASConfig(unit="char"))
    ln2 = math.log(2)
    assert [r["lpc_teacher"] for r in per_char] == pytest.approx([-1.4 / 7 / ln2, -1.6 / 8 / ln2, -1.0 / 5 / ln2])
    assert [r["lpc_student"] for r in per_char] == pytest.approx([-1.4 / 7 / ln2, -1.6 / 8 / ln2, -3.0 / 5 / ln2])
    # bits/char: 0, 0, (−1.0 + 3.0) / 5 / ln 2 = 0.577 > tau_char 0.25
    assert [r["delta"] for r in per_char] == pytest.approx([0.0, 0.0, 2.0 / 5 / ln2])
    assert [r["type"] for r in per_char] == ["shared", "shared", "teacher"]
    # the per-token rows carry the per-character columns too, and the summary says which unit it used
    assert [r["lpc_teacher"] for r in per_token] == [r["lpc_teacher"] for r in per_char]
    summ = das_summary(per_char, DASConfig(unit="char"))
    assert summ["unit"] == "char" and summ["tau"] == 0.25
    assert summ["frac_teacher"] == pytest.approx(1 / 3)  # one of three sentences, one student token each


def test_tau_char_is_the_per_character_threshold():
    # sentence 2's delta is 2.0 / 5 / ln 2 = 0.577 bits/char: Teacher under tau_char 0.5, Shared under 0.6;
    # the per-token tau is not used in this unit
    high = DASConfig(unit="char", tau_char=0.6, tau=0.01)
    assert [r["type"] for r in sentence_table(TEXT, CHAR_OFF, CHAR_LP, WORD_OFF, WORD_LP, high)][2] == "shared"
    low = DASConfig(unit="char", tau_char=0.5)
    assert [r["type"] for r in sentence_table(TEXT, CHAR_OFF, CHAR_LP, WORD_OFF, WORD_LP, low)][2] == "teacher"
    assert das_summary([], DASConfig(unit="char", tau_char=0.5))["tau"] == 0.5


def test_per_character_unit_is_tokenizer_neutral_on_real_tokenizers(two_tokenizers):
    """Two real tokenizers of different granularity, both models giving every character the same
    log-prob (-1 nat, spread over the tokens that cover it): per token the side with the longer
    tokens looks less likely and sentences get typed; per character no sentence does (what is left
    of delta comes only from tokens that straddle a sentence boundary)."""
    sides = []
    for tok in two_tokenizers:
        offs = _offsets(tok, RESPONSE)
        share = {}
        for o in offs:
            share[o] = share.get(o, 0) + 1  # byte pieces of one character share its span
        sides.append((offs, [-1.0 * (e - s) / share[(s, e)] for s, e in offs]))
    (o_a, l_a), (o_b, l_b) = sides
    assert len(o_a) != len(o_b)
    per_token = sentence_table(RESPONSE, o_a, l_a, o_b, l_b)
    per_char = sentence_table(RESPONSE, o_a, l_a, o_b, l_b, DASConfig(unit="char"))
    typed = [r["type"] for r in per_token if r["type"] in ("teacher", "student")]
    assert typed, [r["delta"] for r in per_token]
    assert all(r["type"] in ("shared", "unscored") for r in per_char)
    assert max(abs(r["delta"]) for r in per_char if r["delta"] is not None) < 0.25


def test_retype_of_stored_rows_equals_scoring_under_the_new_settings(two_tokenizers):
    """A sentence table scored under one `das` config and typed again under another (what `select`
    ranks by) is exactly the table scored under the other: deltas, types and the summary."""
    (o_a, o_b) = (_offsets(tok, RESPONSE) for tok in two_tokenizers)
    rng = random.Random(1)
    l_a, l_b = [-rng.random() * 2 for _ in o_a], [-rng.random() * 2 for _ in o_b]
    stored = sentence_table(RESPONSE, o_a, l_a, o_b, l_b)
    configs = [DASConfig(), DASConfig(tau=0.1), DASConfig(tau=0.3, min_tokens=3, penalty=0.5, weight="chars"),
               DASConfig(unit="char", tau_char=0.1), DASConfig(unit="char", tau_char=0.05, min_tokens=2)]
    for cfg in configs:
        want = sentence_table(RESPONSE, o_a, l_a, o_b, l_b, cfg)
        got = retype(stored, cfg)
        assert got == want, cfg
        assert das_summary(got, cfg) == das_summary(want, cfg)
    assert len({tuple(r["type"] for r in retype(stored, c)) for c in configs}) >= 3  # the settings matter here
    assert stored == sentence_table(RESPONSE, o_a, l_a, o_b, l_b)  # the input is not modified


# -- naturalness baselines ---------------------------------------------------------------------------


def test_global_and_local_naturalness_hand_computed():
    from dasd.rules.das import global_naturalness, local_naturalness, local_sentence_lp, local_windows

    assert global_naturalness(S_LP) == pytest.approx(-2.4 / 5)
    assert global_naturalness([]) is None
    # an array (a stored record's float32, a re-scored float64) is summed exactly, as its values are
    for dtype in (np.float32, np.float64):
        lps = np.asarray([0.1, -1e16, 0.2, 1e16, -0.3], dtype=dtype)
        want = math.fsum(float(x) for x in lps) / 5
        assert global_naturalness(lps) == want and type(global_naturalness(lps)) is float
    assert global_naturalness(np.zeros(0, dtype=np.float32)) is None
    # TEXT's sentences (0, 7), (7, 15), (15, 20); each sees the one sentence before it
    assert local_windows(TEXT, 1) == [(0, 0, 7), (0, 7, 15), (7, 15, 20)]
    assert local_windows(TEXT, 0) == [(0, 0, 7), (7, 7, 15), (15, 15, 20)]
    assert local_windows(TEXT, 5) == [(0, 0, 7), (0, 7, 15), (0, 15, 20)]
    # window "Add 2. Then 3.\n", sentence from 7: " Then" (6, 11) anchors at 7 -> the sentence's
    cont = TEXT[0:15]
    assert local_sentence_lp(cont, 7, [(0, 3), (3, 6), (6, 11), (11, 15)], [-5.0, -5.0, -0.5, -1.5]) == pytest.approx(-1.0)
    assert local_sentence_lp("Done.", 0, [(0, 4), (4, 5)], [-0.2, -0.4]) == pytest.approx(-0.3)
    assert local_sentence_lp(cont, 7, [(0, 3)], [-1.0]) is None
    # each sentence counts once, whatever its length; sentences without a token are left out
    assert local_naturalness([-1.0, None, -0.3]) == pytest.approx(-0.65)
    assert local_naturalness([None]) is None


def _nat(i, g=None, loc=None, prompt="p"):
    return {"id": f"id{i:02d}", "prompt_id": prompt, "temperature": 0.6, "naturalness": {"global": g, "local": loc}}


def test_select_naturalness_ranks_highest_then_id_and_needs_the_score():
    from dasd.rules.das import select_naturalness

    cands = [_nat(0, -0.5, -2.0), _nat(1, -0.1, -3.0), _nat(2, -0.5, -1.0), _nat(3, None, None)]
    sel, rej = select_naturalness(cands, 2, "global_naturalness")
    assert [c["id"] for c in sel] == ["id01", "id00"] and [c["id"] for c in rej] == ["id02", "id03"]
    sel, rej = select_naturalness(list(reversed(cands)), 2, "local_naturalness")
    assert [c["id"] for c in sel] == ["id02", "id00"] and [c["id"] for c in rej] == ["id01", "id03"]
    # global naturalness falls back to the student's log-probs of an older scored record
    old = {"id": "x", "prompt_id": "p", "temperature": 0.6, "student": {"logprobs": [-1.0, -3.0]}}
    assert select_naturalness([old, _nat(5, -2.5)], 1, "global_naturalness")[0][0]["id"] == "x"
    with pytest.raises(ValueError, match="candidate x: no local naturalness.*score.local_naturalness"):
        select_naturalness([old], 1, "local_naturalness")
    sel, _ = select_grouped([_nat(i, -i / 10, prompt=f"p{i % 2}") for i in range(6)], 1, "global_naturalness")
    assert [c["id"] for c in sel] == ["id00", "id01"]


def test_score_sample_records_global_naturalness():
    sample = {"id": "s", "text": TEXT, "teacher": {"offsets": T_OFF, "logprobs": T_LP}}
    out = score_sample(sample, S_OFF, S_LP)
    assert out["naturalness"] == {"global": pytest.approx(-0.48)}
