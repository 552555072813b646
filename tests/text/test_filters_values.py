"""The filters' exact verdicts, details and funnel: the mutants of text/filters.py that survived
tests/text/test_filters.py (docs/testing.md, "Mutation testing") are killed here."""

from __future__ import annotations

import pytest

from dasd.errors import ConfigError
from dasd.text.filters import Drop, FilterConfig, Funnel, apply_filters, check_structure, check_teacher_signal, has_tool_call

CFG = FilterConfig(max_student_tokens=None, repetition={"enabled": False})
GOOD = "<think>Add 3 and 4.</think> 7"


def verdict(sample, cfg=CFG, **kw):
    return apply_filters({"id": "s", "finish_reason": "stop", **sample}, cfg, **kw)[1]


def test_each_rule_says_exactly_why():
    assert verdict({"text": "  "}) == "empty: empty response"
    assert verdict({"text": GOOD, "tool_calls": [{"name": "f"}]}) == "tool_call: response calls a tool"
    assert verdict({"text": GOOD, "finish_reason": "length"}) == "cutoff: finish_reason is 'length'"
    wrong = verdict({"text": GOOD}, CFG.model_copy(update={"require_correct": True}), is_correct=lambda s: False)
    assert wrong == "correctness: answer graded incorrect" and (wrong.rule, wrong.detail) == ("correctness", "answer graded incorrect")
    with pytest.raises(ConfigError, match=r"^filter: max_student_tokens is set but no student tokenizer \(count_tokens\) was given$"):
        apply_filters({"text": GOOD}, FilterConfig())
    with pytest.raises(ConfigError, match=r"^filter: require_correct is set but no grader \(is_correct\) was given$"):
        apply_filters({"text": GOOD}, CFG.model_copy(update={"require_correct": True}))


def test_a_function_call_field_is_a_tool_call():
    assert has_tool_call({"text": GOOD, "function_call": {"name": "f"}})
    assert not has_tool_call({"text": GOOD}) and not has_tool_call({"text": None})
    assert verdict({"text": GOOD, "function_call": {"name": "f"}}) == "tool_call: response calls a tool"


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_reasoning_alone_is_not_an_empty_response(field):
    """The reasoning field becomes the think block; with no answer the structure rule drops it."""
    assert verdict({"text": "", field: "Let me add."}) == "structure: no final answer after </think>"


def test_normalisation_can_be_switched_off():
    harmony = ("<|channel|>analysis<|message|>Think a bit.<|end|><|start|>assistant<|channel|>final<|message|>"
               "The answer.")
    kept, drop = apply_filters({"id": "h", "text": harmony, "finish_reason": "stop"}, CFG)
    assert drop is None and kept["text"] == "<think>\nThink a bit.\n</think>\n\nThe answer."
    assert verdict({"text": harmony}, CFG.model_copy(update={"normalize_delimiters": False})) == "structure: no <think> block"


def test_structure_details():
    assert check_structure("just text") == "no <think> block"
    assert check_structure("a </think> b") == "0 <think> and 1 </think> tags (need one each)"
    assert check_structure("<think> a b") == "1 <think> and 0 </think> tags (need one each)"


def test_offsets_must_run_forward_inside_the_text():
    text = "abcdef"
    ok = {"text": text, "teacher": {"offsets": [[0, 2], [2, 2], [2, 6]], "logprobs": [-1.0, -0.5, -0.1]}}
    assert check_teacher_signal(ok) is None  # a zero-width token (e.g. a special token) is allowed
    backwards = {"text": text, "teacher": {"offsets": [[0, 2], [4, 3]], "logprobs": [-1.0, -0.5]}}
    assert check_teacher_signal(backwards) == "teacher.offsets[1] = [4, 3] is outside the text (length 6)"


def test_funnel_counts_and_table():
    f = Funnel()
    for pool, drop in [("T1", None), ("T1", None), ("T1", Drop("cutoff", "x")), ("T1", "length: 9 > 8"),
                       ("T2", "length: 3 > 2"), ("T2", "structure: a: b"), ("T2", Drop("length", "4 > 2"))]:
        f.add(pool, drop)
    assert f.to_dict() == {"T1": {"in": 4, "dropped": {"cutoff": 1, "length": 1}, "out": 2},
                           "T2": {"in": 3, "dropped": {"length": 2, "structure": 1}, "out": 0}}
    assert f.format() == (
        "pool   in  cutoff  structure  length  out   kept\n"
        "T1      4       1          0       1    2  50.0%\n"
        "T2      3       0          1       2    0   0.0%\n"
        "total   7       1          1       3    2  28.6%"
    )
    assert Funnel().format() == "pool   in  out  kept\ntotal   0    0     -"
