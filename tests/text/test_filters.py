"""Filters, delimiter normalisation with offset remapping, repetition detectors, the funnel."""

from __future__ import annotations

import copy
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from dasd.errors import ConfigError
from dasd.text.delimiters import convert, normalize_response
from dasd.text.filters import Drop, FilterConfig, Funnel, apply_filters, check_structure
from dasd.text.repetition import RepetitionConfig, check_repetition

CORPUS = [
    "<|channel|>analysis<|message|>We need 2 + 2. It is 4.<|end|><|start|>assistant<|channel|>final<|message|>4<|return|>",
    "<think>\nLet me think. 3 * 5 = 15.\n</think>\n\nThe answer is \\boxed{15}.",
    "Caf\u00e9 \u65e5\u672c\u8a9e\u306e\u6587\u3002 emoji \U0001f600\U0001f389 ok! Wait. Check again.",
]


@pytest.fixture(scope="module")
def tok():
    from dasd.toy.tokenizer import build_tokenizer

    return build_tokenizer(CORPUS * 10, vocab_size=330)


def _sample(text, tok=None, **kw):
    s = {"id": "s", "prompt_id": "p", "model": "t", "temperature": 0.6, "text": text, "finish_reason": "stop"}
    if tok is not None:
        enc = tok(text, return_offsets_mapping=True, add_special_tokens=False)
        offs = [list(o) for o in enc["offset_mapping"]]
        s["teacher"] = {
            "tokens": tok.convert_ids_to_tokens(enc["input_ids"]),
            "offsets": offs,
            "logprobs": [-0.01 * (i + 1) for i in range(len(offs))],
            "logprob_mode": "raw",
        }
    s.update(kw)
    return s


def _count(tok):
    return lambda text: len(tok(text, add_special_tokens=False)["input_ids"])


GOOD = "<think>\nLet me think. 3 * 5 = 15.\n</think>\n\nThe answer is \\boxed{15}."
HARMONY = (
    "<|channel|>analysis<|message|>We need 2 + 2. Caf\u00e9 \U0001f600 says \u65e5\u672c\u3002 It is 4.<|end|>"
    "<|start|>assistant<|channel|>final<|message|>The answer is \\boxed{4}. \U0001f389<|return|>"
)


def _assert_remap_exact(before, after):
    """Every kept teacher token covers exactly the same characters as before, with its own log-prob."""
    old = {(lp): tuple(o) for o, lp in zip(before["teacher"]["offsets"], before["teacher"]["logprobs"])}
    assert len(after["teacher"]["offsets"]) == len(after["teacher"]["logprobs"]) == len(after["teacher"]["tokens"])
    for (ns, ne), lp in zip(after["teacher"]["offsets"], after["teacher"]["logprobs"]):
        os_, oe = old[lp]
        assert after["text"][ns:ne] == before["text"][os_:oe]
    kept = len(after["teacher"]["offsets"])
    assert after["normalization"]["dropped_teacher_tokens"] == len(before["teacher"]["offsets"]) - kept


def test_good_sample_passes_unchanged(tok):
    s = _sample(GOOD, tok)
    out, drop = apply_filters(s, FilterConfig(), _count(tok))
    assert drop is None and out == s


def test_harmony_both_channels_is_converted_and_offsets_remapped(tok):
    s = _sample(HARMONY, tok)
    before = copy.deepcopy(s)
    out, drop = apply_filters(s, FilterConfig(), _count(tok))
    assert drop is None
    assert s == before, "input must not be modified"
    assert out["text"] == (
        "<think>\nWe need 2 + 2. Caf\u00e9 \U0001f600 says \u65e5\u672c\u3002 It is 4.\n</think>\n\n"
        "The answer is \\boxed{4}. \U0001f389"
    )
    assert out["normalization"]["shape"] == "harmony"
    _assert_remap_exact(before, out)
    # the content tokens survive: only delimiter tokens were dropped
    kept_text = "".join(out["text"][a:b] for a, b in out["teacher"]["offsets"])
    assert "We need 2 + 2." in kept_text and "\\boxed{4}" in kept_text
    assert "<|" not in kept_text
    # and the result scores end to end
    from dasd.rules.das import sentence_table

    rows = sentence_table(out["text"], out["teacher"]["offsets"], out["teacher"]["logprobs"], out["teacher"]["offsets"], out["teacher"]["logprobs"])
    assert rows and all(r["type"] in ("shared", "unscored") for r in rows)


def test_harmony_without_final_is_dropped_for_structure():
    text = "<|channel|>analysis<|message|>We need 2 + 2. It is 4.<|end|>"
    out, drop = apply_filters(_sample(text), FilterConfig(max_student_tokens=None))
    assert out is None and drop.rule == "structure" and "no final answer" in drop.detail
    assert drop == "structure: no final answer after </think>"


def test_harmony_decoded_without_special_tokens():
    out, drop = apply_filters(_sample("analysisWe need 4.assistantfinalIt is 4."), FilterConfig(max_student_tokens=None))
    assert drop is None and out["text"] == "<think>\nWe need 4.\n</think>\n\nIt is 4."


def test_harmony_tool_call_is_dropped():
    text = (
        "<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant<|channel|>commentary "
        "to=functions.get_weather <|constrain|>json<|message|>{\"city\": \"Paris\"}<|call|>"
    )
    _, drop = apply_filters(_sample(text), FilterConfig(max_student_tokens=None))
    assert drop.rule == "tool_call"
    _, drop = apply_filters(_sample(GOOD, tool_calls=[{"name": "f"}]), FilterConfig(max_student_tokens=None))
    assert drop.rule == "tool_call"
    out, drop = apply_filters(_sample(GOOD, tool_calls=[{"name": "f"}]), FilterConfig(max_student_tokens=None, drop_tool_calls=False))
    assert drop is None


def test_qwen_missing_open_tag(tok):
    text = "Let me think. 3 * 5 = 15.\n</think>\n\nThe answer is 15."
    s = _sample(text, tok)
    out, drop = apply_filters(s, FilterConfig(), _count(tok))
    assert drop is None and out["text"] == "<think>\n" + text
    assert out["normalization"] == {"shape": "missing_open_tag", "dropped_teacher_tokens": 0}
    assert [tuple(o) for o in out["teacher"]["offsets"]] == [(a + 8, b + 8) for a, b in s["teacher"]["offsets"]]
    _assert_remap_exact(s, out)


def test_reasoning_content_field_and_other_tag_names():
    out, drop = apply_filters(_sample("It is 4.", reasoning_content="2 + 2 = 4."), FilterConfig(max_student_tokens=None))
    assert drop is None and out["text"] == "<think>\n2 + 2 = 4.\n</think>\n\nIt is 4." and "reasoning_content" not in out
    out, drop = apply_filters(_sample("<thinking>2 + 2 = 4.</thinking>\nIt is 4."), FilterConfig(max_student_tokens=None))
    assert drop is None and out["text"] == "<think>2 + 2 = 4.</think>\nIt is 4."


def test_offsets_of_leading_whitespace_and_other_tags_remap_exactly(tok):
    for text in ("\n\n  " + GOOD, "<thinking>Caf\u00e9 \U0001f600.</thinking>\nIt is 4.", "It is 4."):
        s = _sample(text, tok, reasoning_content="Why? \u65e5\u672c." if text == "It is 4." else None)
        out = normalize_response(s)
        assert out["text"] != text
        _assert_remap_exact(s, out)


def test_convert_leaves_canonical_text_alone():
    assert convert(GOOD) == (GOOD, [(0, len(GOOD))], "none")


@pytest.mark.parametrize(
    "text, detail",
    [
        ("Just an answer.", "no <think> block"),
        ("<think>\n\n</think>\n\nAnswer.", "empty thinking part"),
        ("<think>\nReason.\n</think>\n\n  ", "no final answer after </think>"),
        ("<think>a</think><think>b</think>c", "2 <think> and 2 </think> tags (need one each)"),
        ("Preamble <think>a</think>c", "text before <think>"),
    ],
)
def test_structure(text, detail):
    assert check_structure(text) == detail
    _, drop = apply_filters(_sample(text), FilterConfig(max_student_tokens=None, normalize_delimiters=False))
    assert drop == Drop("structure", detail)


def test_empty_response():
    for text in ("", "   \n"):
        _, drop = apply_filters(_sample(text), FilterConfig(max_student_tokens=None))
        assert drop.rule == "empty"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_logprobs_are_rejected_with_a_reason(tok, bad):
    s = _sample(GOOD, tok)
    s["teacher"]["logprobs"][3] = bad
    _, drop = apply_filters(s, FilterConfig(), _count(tok))
    assert drop.rule == "logprobs" and "teacher.logprobs[3]" in drop.detail


def test_bad_offsets_are_rejected(tok):
    s = _sample(GOOD, tok)
    s["teacher"]["offsets"][-1] = [0, len(GOOD) + 5]
    assert apply_filters(s, FilterConfig(), _count(tok))[1].rule == "logprobs"
    s = _sample(GOOD, tok)
    s["teacher"]["logprobs"].pop()
    assert "offsets but" in apply_filters(s, FilterConfig(), _count(tok))[1].detail


def test_cutoff():
    _, drop = apply_filters(_sample(GOOD, finish_reason="length"), FilterConfig(max_student_tokens=None))
    assert drop.rule == "cutoff"
    out, drop = apply_filters(_sample(GOOD, finish_reason="length"), FilterConfig(max_student_tokens=None, drop_cutoff=False))
    assert drop is None


def test_length_in_student_tokens(tok):
    n = _count(tok)(GOOD)
    assert apply_filters(_sample(GOOD), FilterConfig(max_student_tokens=n), _count(tok))[1] is None
    _, drop = apply_filters(_sample(GOOD), FilterConfig(max_student_tokens=n - 1), _count(tok))
    assert drop == f"length: {n} student tokens > {n - 1}"
    # multi-byte text costs more byte-level tokens than characters
    emoji = "<think>\n" + "\U0001f600" * 10 + "\n</think>\n\nok"
    assert _count(tok)(emoji) > len(emoji) - 10


def test_correctness_and_missing_callables():
    def boxed_15(sample):
        return "\\boxed{15}" in sample["text"]

    cfg = FilterConfig(max_student_tokens=None, require_correct=True)
    assert apply_filters(_sample(GOOD), cfg, is_correct=boxed_15)[1] is None
    wrong = GOOD.replace("15}", "16}")
    assert apply_filters(_sample(wrong), cfg, is_correct=boxed_15)[1].rule == "correctness"
    with pytest.raises(ConfigError, match="is_correct"):
        apply_filters(_sample(GOOD), cfg)
    with pytest.raises(ConfigError, match="count_tokens"):
        apply_filters(_sample(GOOD), FilterConfig())


# ----- repetition -------------------------------------------------------------------------------

PARA = "Let me recompute the sum of the first ten squares carefully, term by term."


def _wrap(body):
    return f"<think>\n{body}\n</think>\n\nThe answer is 385."


def test_paragraph_repeated_five_times_is_dropped():
    body = "Start.\n\n" + "\n\n".join([PARA] * 5) + "\n\nDone."
    _, drop = apply_filters(_sample(_wrap(body)), FilterConfig(max_student_tokens=None))
    assert drop.rule == "repetition" and drop.detail.startswith("paragraph: paragraph repeated 5 times")


def test_sentence_repeated_is_dropped_but_short_lines_pass():
    body = " ".join(f"Step {i} adds {i}. Hold on, I should double check this value." for i in range(6))
    assert check_repetition(body, RepetitionConfig()).startswith("sentence: sentence repeated 6 times")
    natural = "\n".join(f"Wait.\nLet me check.\nTerm {i}: {i} squared is {i * i}." for i in range(1, 30))
    assert check_repetition(natural, RepetitionConfig()) is None


def test_repeated_ngrams_without_repeated_sentences():
    chunk = " ".join(f"w{i}" for i in range(60))
    body = "intro words here " + " and ".join([chunk] * 3)  # one long sentence, one paragraph
    assert check_repetition(body, RepetitionConfig()).startswith("ngrams:")
    assert check_repetition(body, RepetitionConfig(ngram_max_dup_fraction=0.9)) is None


@pytest.mark.parametrize(
    "body, fires",
    [
        ("x" + "!" * 150, True),
        ("ab" * 60, True),
        ("\u65e5\u672c " * 40, True),
        ("-" * 60 + " a table rule", False),
        ("The value is 0.0000000001 and 1000000.", False),
    ],
)
def test_repeated_chars(body, fires):
    assert (check_repetition(body, RepetitionConfig()) or "").startswith("chars:") == fires


def test_is_repetitive_uses_the_default_thresholds():
    from dasd.text.filters import is_repetitive

    assert is_repetitive("\n\n".join([PARA] * 5)).startswith("paragraph:")
    assert is_repetitive(GOOD) is None
    assert is_repetitive("\n\n".join([PARA] * 5), RepetitionConfig(paragraph_max_repeats=5, sentence_max_repeats=5, ngram_max_dup_fraction=0.9)) is None


def test_repetition_can_be_disabled():
    body = "\n\n".join([PARA] * 5)
    assert check_repetition(body, RepetitionConfig(enabled=False)) is None


# ----- config and funnel ------------------------------------------------------------------------


def test_filter_config_is_strict():
    with pytest.raises(ValidationError):
        FilterConfig(max_student_token=10)
    with pytest.raises(ValidationError):
        FilterConfig(max_student_tokens=0)
    with pytest.raises(ValidationError):
        FilterConfig(repetition={"ngram_n": 1})
    assert FilterConfig.model_validate({"repetition": {"paragraph_max_repeats": 3}}).repetition.paragraph_max_repeats == 3


def test_funnel_counts_and_table(tok):
    funnel = Funnel()
    cfg = FilterConfig(max_student_tokens=None)
    inputs = [
        (0.6, _sample(GOOD)),
        (0.6, _sample("")),
        (0.6, _sample(GOOD, finish_reason="length")),
        (1.0, _sample(HARMONY)),
        (1.0, _sample(_wrap("\n\n".join([PARA] * 5)))),
    ]
    for pool, s in inputs:
        funnel.add(pool, apply_filters(s, cfg)[1])
    assert funnel.to_dict() == {
        "0.6": {"in": 3, "dropped": {"empty": 1, "cutoff": 1}, "out": 1},
        "1.0": {"in": 2, "dropped": {"repetition": 1}, "out": 1},
    }
    table = funnel.format().splitlines()
    assert table[0].split() == ["pool", "in", "empty", "cutoff", "repetition", "out", "kept"]
    assert table[1].split() == ["0.6", "3", "1", "1", "0", "1", "33.3%"]
    assert table[3].split() == ["total", "5", "1", "1", "1", "2", "40.0%"]


# ----- property: remapped offsets always cover the same characters ------------------------------

_SHAPES = [
    "<|channel|>analysis<|message|>{a}<|end|><|start|>assistant<|channel|>final<|message|>{b}<|return|>",
    "analysis{a}assistantfinal{b}",
    "{a}\n</think>\n\n{b}",
    "<reasoning>{a}</reasoning>{b}",
    "  \n<think>{a}</think>{b}",
]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(_SHAPES), st.text(max_size=30), st.text(max_size=30), st.data())
def test_remapped_offsets_cover_the_same_characters(shape, a, b, data):
    text = shape.format(a=a, b=b)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=40)))
    offsets = [[x, y] for x, y in zip([0] + cuts, cuts + [len(text)])]
    s = {"id": "s", "text": text, "teacher": {"offsets": offsets, "logprobs": [-float(i) for i in range(len(offsets))]}}
    out = normalize_response(s)
    new_offsets, lps = out["teacher"]["offsets"], out["teacher"]["logprobs"]
    assert len(new_offsets) == len(lps) <= len(offsets)
    for (ns, ne), lp in zip(new_offsets, lps):
        os_, oe = offsets[int(-lp)]
        assert out["text"][ns:ne] == text[os_:oe]
        assert 0 <= ns <= ne <= len(out["text"])
    assert [o[0] for o in new_offsets] == sorted(o[0] for o in new_offsets)
