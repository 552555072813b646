"""Post-training diagnosis: four-way typing and correct-vs-incorrect position profiles, by hand."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from dasd.rules.analysis import AnalysisConfig, classify4, position_profile, retype, score_response
from dasd.records import Sentence

LN2 = math.log(2)


@pytest.mark.parametrize(
    "lp_t, lp_s, lp_d, expected",
    [
        (-0.1, -1.0, -0.1, "teacher"),  # delta 0.9 > ln 2
        (-1.0, -0.1, -2.0, "student"),
        (-1.0, -1.2, -0.2, "boosted"),  # |delta| 0.2, lp_D - max = 0.8 > ln 2
        (-1.0, -1.2, -0.4, "shared"),  # lp_D - max = 0.6 < ln 2
        (-1.0, -1.2, -5.0, "boosted"),  # two-sided: min(lp_T, lp_S) - lp_D = 3.8 > ln 2
        (-1.0, -1.2, -1.8, "shared"),  # min - lp_D = 0.6 < ln 2
        (-0.1, -1.0, 0.0, "teacher"),  # Teacher/Student take precedence over Boosted
        (-1.0, -0.1, -9.0, "student"),
    ],
)
def test_classify4(lp_t, lp_s, lp_d, expected):
    assert classify4(lp_t, lp_s, lp_d, LN2, LN2) == expected
    assert AnalysisConfig().boosted == "two_sided"


@pytest.mark.parametrize(
    "lp_d, two_sided, higher",
    [
        (-0.2, "boosted", "boosted"),  # 0.8 above max(-1.0, -1.2)
        (-2.0, "boosted", "shared"),  # 0.8 below min(-1.0, -1.2)
        (-1.1, "shared", "shared"),  # between the two
        (-1.85, "shared", "shared"),  # 0.65 below min: under ln 2
    ],
)
def test_boosted_two_sided_or_only_higher(lp_d, two_sided, higher):
    assert classify4(-1.0, -1.2, lp_d, LN2, LN2, "two_sided") == two_sided
    assert classify4(-1.0, -1.2, lp_d, LN2, LN2, "higher") == higher
    with pytest.raises(ValueError, match="boosted"):
        classify4(-1.0, -1.2, lp_d, LN2, LN2, "lower")


def test_score_response_three_models_by_hand():
    text = "Add 2. Then 3.\nDone."  # sentences (0,7) (7,15) (15,20)
    teacher = ([(0, 3), (3, 7), (7, 15), (15, 20)], [-0.1, -0.3, -0.5, -1.0])
    student = ([(0, 7), (6, 15), (15, 20)], [-1.0, -0.4, -1.2])  # (6,15) = " Then 3.\n" -> sentence 1
    distilled = ([(0, 7), (7, 11), (11, 15)], [-0.5, -0.1, -0.1])  # nothing in sentence 2
    rows = score_response(text, teacher, student, distilled)
    for r in rows:
        Sentence.model_validate(r)
    assert [r["lp_teacher"] for r in rows] == pytest.approx([-0.2, -0.5, -1.0])
    assert [r["lp_student"] for r in rows] == pytest.approx([-1.0, -0.4, -1.2])
    assert [r["lp_distilled"] for r in rows[:2]] == pytest.approx([-0.5, -0.1])
    assert rows[2]["lp_distilled"] is None and rows[2]["n_distilled_tokens"] == 0
    # s0: delta 0.8 -> teacher; s1: delta -0.1, lp_D - max = 0.3 -> shared; s2: unscored
    assert [r["type"] for r in rows] == ["teacher", "shared", "unscored"]
    # with a lower boost threshold s1 becomes Boosted (lp_D 0.3 above max)
    assert [r["type"] for r in retype(rows, AnalysisConfig(tau_boost=0.2))] == ["teacher", "boosted", "unscored"]
    # a distilled model that finds s1 much less likely than both: Boosted two-sided, Shared if only higher counts
    lower = [dict(r, lp_distilled=-1.5) if i == 1 else r for i, r in enumerate(rows)]  # min(-0.5, -0.4) - (-1.5) = 1.0
    assert retype(lower, AnalysisConfig())[1]["type"] == "boosted"
    assert retype(lower, AnalysisConfig(boosted="higher"))[1]["type"] == "shared"
    with pytest.raises(ValueError, match=r"distilled.logprobs\[0\]"):
        score_response(text, teacher, student, ([(0, 7)], [math.nan]))


def _row(s, e, t):
    return {"start": s, "end": e, "type": t}


RESPONSES = [
    {"id": "a", "correct": True, "text": "x" * 20,
     "sentences": [_row(0, 4, "teacher"), _row(4, 10, "boosted"), _row(10, 20, "teacher")]},
    {"id": "b", "correct": False, "text": "y" * 10,
     "sentences": [_row(0, 5, "boosted"), _row(5, 10, "student"), _row(5, 5, "unscored")]},
]


def test_position_profile_by_hand():
    prof = position_profile(RESPONSES, AnalysisConfig(bins=2))
    assert prof["edges"] == [0.0, 0.5, 1.0]
    assert prof["n_responses"] == {"correct": 1, "incorrect": 1}
    t = prof["types"]
    assert t["teacher"]["correct"] == [0.5, 1.0] and t["teacher"]["incorrect"] == [0.0, 0.0]
    assert t["boosted"]["correct"] == [0.5, 0.0] and t["boosted"]["incorrect"] == [1.0, 0.0]
    assert t["teacher"]["area"] == pytest.approx(0.75)
    assert t["boosted"]["area"] == pytest.approx(-0.25)
    assert t["student"]["area"] == pytest.approx(-0.5)
    assert t["shared"]["area"] == 0.0
    assert t["boosted"]["abs_area"] == pytest.approx(0.25)
    assert t["teacher"]["overall"] == {"correct": pytest.approx(2 / 3), "incorrect": 0.0}
    # the shares of the four types in any non-empty bucket sum to 1
    for g in ("correct", "incorrect"):
        for b in range(2):
            assert sum(t[k][g][b] for k in t) == pytest.approx(1.0)


def test_position_profile_char_weights_and_empty_buckets():
    prof = position_profile(RESPONSES, AnalysisConfig(bins=2, weight="chars"))
    assert prof["types"]["teacher"]["correct"] == [0.4, 1.0]
    assert prof["types"]["teacher"]["area"] == pytest.approx(0.7)
    prof = position_profile(RESPONSES, AnalysisConfig(bins=4))
    # correct: mids 0.1, 0.35, 0.75 -> buckets 0, 1, 3; incorrect: mids 0.25, 0.75 -> buckets 1, 3
    assert prof["types"]["teacher"]["correct"] == [1.0, 0.0, None, 1.0]
    assert prof["types"]["teacher"]["incorrect"] == [None, 0.0, None, 0.0]
    assert prof["types"]["teacher"]["n_bins_used"] == 2
    assert prof["types"]["teacher"]["area"] == pytest.approx(0.5)


def test_position_profile_errors_and_config():
    with pytest.raises(ValueError, match="response z: needs"):
        position_profile([{"id": "z", "sentences": []}])
    with pytest.raises(ValueError, match="unknown sentence type"):
        position_profile([{"correct": True, "sentences": [_row(0, 1, "weird")]}])
    with pytest.raises(ValidationError):
        AnalysisConfig(bins=0)
    empty = position_profile([])
    assert empty["types"]["teacher"]["area"] is None


def test_profile_by_sentence_index_by_hand():
    """The paper's Fig. 6: bucket k = the k-th sentence of each response (unscored ones keep their index)."""
    prof = position_profile(RESPONSES, AnalysisConfig(index_bins=2))
    ix = prof["by_index"]
    assert ix["index_bins"] == 2
    # a's third sentence (index 2) is beyond the two indices; b's index 2 is unscored (not counted)
    assert ix["n_beyond"] == {"correct": 1, "incorrect": 0}
    t = ix["types"]
    # correct: index 0 teacher, index 1 boosted; incorrect: index 0 boosted, index 1 student
    assert t["teacher"]["correct"] == [1.0, 0.0] and t["teacher"]["incorrect"] == [0.0, 0.0]
    assert t["boosted"]["correct"] == [0.0, 1.0] and t["boosted"]["incorrect"] == [1.0, 0.0]
    assert t["teacher"]["area"] == pytest.approx(0.5)  # ((1 - 0) + (0 - 0)) / 2
    assert t["boosted"]["area"] == pytest.approx(0.0)  # ((0 - 1) + (1 - 0)) / 2
    assert t["boosted"]["abs_area"] == pytest.approx(1.0)
    assert t["student"]["area"] == pytest.approx(-0.5)
    assert t["teacher"]["overall"] == {"correct": 0.5, "incorrect": 0.0}
    # with three indices: index 2 holds only a correct response's sentence, so it is not compared
    t3 = position_profile(RESPONSES, AnalysisConfig(index_bins=3))["by_index"]["types"]
    assert t3["teacher"]["correct"] == [1.0, 0.0, 1.0] and t3["teacher"]["incorrect"] == [0.0, 0.0, None]
    assert t3["teacher"]["n_bins_used"] == 2 and t3["teacher"]["area"] == pytest.approx(0.5)
    # the relative profile beside it does not depend on the index buckets
    assert prof["types"] == position_profile(RESPONSES, AnalysisConfig(index_bins=7))["types"]
