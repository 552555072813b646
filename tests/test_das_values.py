"""DAS rules checked on whole outputs and at their edges: the mutants of rules/das.py that survived
tests/test_das.py (docs/testing.md, "Mutation testing") are killed here."""

from __future__ import annotations

import hashlib

import pytest

from dasd.rules.das import DASConfig, das_summary, score_sample, select_das, select_grouped, select_random, sentence_table

TEXT = "Aa bb. Cc dd. Ee ff."  # three sentences: (0, 7), (7, 14), (14, 20)


def _row(kind, n_s, n_t=1, lp_t=-1.0, lp_s=-1.0, start=0, end=1, delta="auto"):
    row = {"start": start, "end": end, "n_teacher_tokens": n_t, "n_student_tokens": n_s, "type": kind,
           "lp_teacher": lp_t, "lp_student": lp_s}
    if delta == "auto":
        row["delta"] = None if kind == "unscored" else lp_t - lp_s
    return row


def test_das_summary_is_exactly_this_dict():
    rows = [_row("teacher", 2, lp_t=-0.5, lp_s=-2.0), _row("student", 1, lp_t=-3.0, lp_s=-1.0),
            _row("shared", 1), _row("unscored", 4, lp_s=None)]
    cfg = DASConfig(tau=0.5, penalty=0.5)
    # weights 2, 1, 1, 4 (student tokens): total 8, scored 4
    assert das_summary(rows, cfg) == {
        "n_sentences": 4, "n_teacher": 1, "n_student": 1, "n_shared": 1, "n_unscored": 1,
        "frac_teacher": 2 / 8, "frac_student": 1 / 8, "frac_shared": 1 / 8, "frac_unscored": 4 / 8,
        "mean_delta": (2 * 1.5 + 1 * -2.0 + 1 * 0.0) / 4, "score": 2 / 8 - 0.5 * 1 / 8,
        "weight": "student_tokens", "tau": 0.5, "unit": "token", "penalty": 0.5,
    }


def test_one_token_response_and_empty_response():
    (row,) = sentence_table("Hi.", [(0, 3)], [-0.1], [(0, 3)], [-2.0])
    summary = das_summary([row])
    assert (summary["frac_teacher"], summary["score"]) == (1.0, 1.0)  # total weight 1 is a whole response
    empty = das_summary([])
    assert (empty["frac_teacher"], empty["frac_student"], empty["frac_shared"], empty["frac_unscored"]) == (0.0,) * 4
    assert empty["score"] is None and empty["mean_delta"] is None and empty["n_sentences"] == 0


def test_rows_without_delta_use_their_log_probs():
    with_delta = [_row("teacher", 2, lp_t=-0.5, lp_s=-2.0), _row("student", 3, lp_t=-3.0, lp_s=-1.0)]
    without = [{k: v for k, v in r.items() if k != "delta"} for r in with_delta]
    assert das_summary(without)["mean_delta"] == das_summary(with_delta)["mean_delta"] == (2 * 1.5 + 3 * -2.0) / 5


def test_errors_say_what_is_wrong():
    with pytest.raises(ValueError, match=r"sentence type 'boosted' cannot be used for DAS"):
        das_summary([_row("boosted", 1)])
    with pytest.raises(ValueError, match="sample \\?: no teacher offsets/logprobs"):
        score_sample({"text": "x"}, [(0, 1)], [-1.0])
    with pytest.raises(ValueError, match="sample s: no teacher offsets/logprobs"):
        score_sample({"id": "s", "text": "x", "teacher": {"offsets": [[0, 1]]}}, [(0, 1)], [-1.0])
    with pytest.raises(ValueError, match=r"candidate \?: no 'das' summary"):
        select_das([{"prompt_id": "p"}], 1)
    for select in (select_das, lambda c, m: select_random(c, m, 0)):
        with pytest.raises(ValueError, match="m must be >= 0, got -1"):
            select([], -1)
    with pytest.raises(ValueError, match="method must be one of das, random, global_naturalness, local_naturalness, got 'best'"):
        select_grouped([{"id": "a", "das": {"score": 0.0}}], 1, "best")


def test_score_sample_output_is_the_sample_plus_the_rules_results():
    t_off, t_lp = [(0, 3), (3, 7), (7, 10), (10, 14), (14, 17), (17, 20)], [-0.1, -0.2, -1.0, -1.1, -0.3, -0.3]
    s_off, s_lp = [(0, 7), (7, 14), (14, 20)], [-0.65, -0.2, -0.4]  # deltas 0.5, -0.85, 0.1
    sample = {"id": "s1", "prompt_id": "p", "text": TEXT, "teacher": {"offsets": t_off, "logprobs": t_lp}}
    cfg = DASConfig(tau=0.2, penalty=2.0, weight="chars")
    out = score_sample(sample, s_off, s_lp, cfg)
    rows = sentence_table(TEXT, t_off, t_lp, s_off, s_lp, cfg)
    assert [r["type"] for r in rows] == ["teacher", "student", "shared"]
    assert [r["type"] for r in sentence_table(TEXT, t_off, t_lp, s_off, s_lp)][0] == "shared"  # default tau
    student = out.pop("student")  # numpy arrays: offsets (n, 2), log-probs
    assert student["offsets"].tolist() == [list(o) for o in s_off] and student["logprobs"].tolist() == s_lp
    assert out == {**sample, "sentences": rows, "das": das_summary(rows, cfg),
                   "naturalness": {"global": pytest.approx(sum(s_lp) / len(s_lp))}}
    assert out["das"]["score"] == pytest.approx(7 / 20 - 2.0 * 7 / 20)


def test_a_budget_of_zero_keeps_nothing():
    cands = [{"id": f"c{i}", "das": {"score": float(i)}} for i in range(3)]
    assert select_das(cands, 0) == ([], [cands[2], cands[1], cands[0]])
    assert select_random(cands, 0, 5)[0] == [] and len(select_random(cands, 0, 5)[1]) == 3


def test_random_selection_is_the_sha256_draw_per_group():
    """An independent computation of the documented draw: rank by sha256("seed:id"), per (prompt, pool)."""
    cands = [{"id": f"id{i}", "prompt_id": f"p{i % 3}", "temperature": 0.6, "das": {"score": 0.0}} for i in range(30)]

    def draw(seed):
        out = []
        for p in ("p0", "p1", "p2"):
            group = [c for c in cands if c["prompt_id"] == p]
            out += sorted(group, key=lambda c: hashlib.sha256(f"{seed}:{c['id']}".encode()).hexdigest())[:4]
        return out

    assert select_grouped(cands, 4, "random", seed=3)[0] == draw(3)
    assert select_grouped(cands, 4, "random")[0] == draw(0)  # the default seed is 0
    assert draw(3) != draw(0)
