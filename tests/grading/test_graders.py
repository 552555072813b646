"""Graders on hand-made tricky answers, and math grading against math-verify used directly."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

from dasd.grading.answer import final_part, last_boxed, last_code_block
from dasd.grading.choice import extract_choice, grade_choice, shuffle_choices
from dasd.grading.code import grade_code, outputs_match
from dasd.grading.grade import grade_many, grade_one, grader_of
from dasd.grading.math import extract_math, grade_math


# ---------------------------------------------------------------- answer extraction
def test_final_part_and_boxes():
    assert final_part("<think>\\boxed{1}</think>So \\boxed{2}.") == "So \\boxed{2}."
    assert final_part("<think>still thinking \\boxed{1}") is None
    assert final_part("no tags \\boxed{3}") == "no tags \\boxed{3}"
    assert last_boxed("\\boxed{\\frac{1}{2}} then \\boxed{ {1,2} }") == "{1,2}"
    assert last_boxed("\\fbox{7}") == "7"
    assert last_boxed("cut off \\boxed{\\frac{1}{2") is None



def _last_boxed_by_scanning(text: str) -> str | None:
    """The rule written the plain way (each box scanned to its closing brace): the reference."""
    spans = []
    for opener in ("\\boxed{", "\\fbox{", "\\boxed {"):
        start = 0
        while (i := text.find(opener, start)) >= 0:
            depth = 1
            for k in range(i + len(opener), len(text)):
                depth += {"{": 1, "}": -1}.get(text[k], 0)
                if depth == 0:
                    spans.append((i, i + len(opener), k))
                    break
            start = i + 1
    return text[max(spans)[1]:max(spans)[2]].strip() if spans else None


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(["\\boxed{", "\\boxed {", "\\fbox{", "{", "}", "1", "x", " ", "\\frac", "\\"]), max_size=30))
def test_last_boxed_equals_scanning_each_box(pieces):
    """One pass over the braces finds the same box as scanning each box to its close (it used to
    scan, which is quadratic on an output looping on unclosed boxes)."""
    text = "".join(pieces)
    assert last_boxed(text) == _last_boxed_by_scanning(text)


def test_last_boxed_after_many_unclosed_boxes():
    """A model looping on unclosed boxes: 20K of them before (or after) the answer is one pass (the
    scan of each box to the end took 17 s for 3K boxes, hours for 20K)."""
    assert last_boxed("\\boxed{" * 20000 + "\\boxed{7}") == "7"
    assert last_boxed("\\boxed{7} " + "\\boxed{" * 20000) == "7"


# ---------------------------------------------------------------- math
MATH_CASES = [  # (gold, boxed prediction, correct?)
    ("\\frac{1}{2}", "0.5", True),
    ("\\frac12", "\\dfrac{2}{4}", True),
    ("0.75", "\\frac{3}{4}", True),
    ("\\{1,2,3\\}", "\\{3,1,2\\}", True),
    ("\\{1,2\\}", "\\{1,3\\}", False),
    ("(0,1]", "(0,1]", True),
    ("(0,1]", "[0,1]", False),
    ("[2, \\infty)", "[2,\\infty)", True),
    ("10", "10\\text{ cm}", True),
    ("10", "10 \\mathrm{cm}", True),
    ("3", "x = 3", True),
    ("33", "033", True),
    ("\\sqrt{2}/2", "\\frac{\\sqrt{2}}{2}", True),
    ("2", "2.0", True),
    ("\\pi", "3.14159", False),
    ("12", "13", False),
]


@pytest.mark.parametrize("gold,pred,ok", MATH_CASES)
def test_math_tricky_answers(gold, pred, ok):
    text = f"<think>maybe \\boxed{{{gold if not ok else '999'}}}</think>\nSo the answer is $\\boxed{{{pred}}}$."
    r = grade_math(text, gold)
    assert r["extracted"] == pred.strip()
    assert r["correct"] is ok, r


def test_math_fallbacks_and_cutoffs():
    assert extract_math("The final answer is $\\frac{3}{4}$.") == ("\\frac{3}{4}", "phrase")
    assert extract_math("blah\nAnswer: 42") == ("42", "phrase")
    assert grade_math("Answer: 0.75", "\\frac34")["correct"]
    r = grade_math("<think>the answer is \\boxed{5} ... and then the output was cut", "5")
    assert r["extracted"] is None and r["correct"] is False
    assert grade_math("I have no idea.", "5")["extracted"] is None


@pytest.mark.parametrize("text,gold,extracted", [
    ("The answer is $5$ dollars.", "5", "5"),  # the math of the phrase, not the words after it
    ("So the final answer is $\\frac{1}{2}$, as shown above.", "0.5", "\\frac{1}{2}"),
    ("Answer: $$12$$", "12", "12"),
    ("The answer is \\(\\frac{3}{4}\\) exactly.", "3/4", "\\frac{3}{4}"),
    ("It costs \\$5 and \\$6. Answer: 11", "11", "11"),  # escaped dollars are not delimiters
])
def test_math_phrase_answer_in_math_delimiters(text, gold, extracted):
    """A phrase whose answer sits in $...$ (or \\(...\\)) with words after it: graded on that math,
    as math-verify grades the whole response."""
    r = grade_math(text, gold)
    assert r["extracted"] == extracted and r["correct"], r
    assert verify(parse(f"${gold}$"), parse(text))


def test_math_agrees_with_math_verify_directly():
    """Our grade == math-verify's own parse+verify on the final answer text, for every pair."""
    cfg = [LatexExtractionConfig(), ExprExtractionConfig()]
    responses = []
    for gold, pred, _ in MATH_CASES:
        responses.append((gold, f"<think>x</think>Therefore $\\boxed{{{pred}}}$."))
        responses.append((gold, f"Work... final: \\boxed{{{pred}}}"))
    for gold, text in responses:
        ours = grade_math(text, gold)["correct"]
        theirs = verify(parse(f"${gold}$", extraction_config=cfg), parse(final_part(text), extraction_config=cfg))
        assert ours == theirs, (gold, text)


def _math_verify_on_final_part(text, gold):
    """The reference grader: math-verify's own parse of the whole final part."""
    cfg = [LatexExtractionConfig(), ExprExtractionConfig()]
    g, p = parse(f"${gold}$", extraction_config=cfg), parse(final_part(text), extraction_config=cfg)
    return bool(g) and bool(p) and verify(g, p)


@pytest.mark.parametrize("text,gold,extracted", [
    ("The answer is 5 dollars.", "5", "5"),
    ("x = 3 meters", "3", "x = 3"),
    ("Therefore, x = 3 meters.", "3", "x = 3"),
    ("**Answer:** 12 apples", "12", "12"),
    ("**Final Answer**: 12", "12", "12"),
    ("The answer is: **12 apples**.", "12", "12"),
    ("Final Answer: The final answer is 12. I hope it is correct.", "12", "12"),
    ("Answer: 12 m/s", "12", "12"),
    ("Answer: 16 cm^2", "16", "16"),
    ("The answer is 3/4 of the pie.", "\\frac{3}{4}", "3/4"),
    ("The answer is approximately 3.14.", "3.14", "3.14"),
    ("The answer is 45 degrees.", "45", "45"),
    ("The answer is 1 234.", "1234", "1234"),
    ("Answer:\n42 marbles", "42", "42"),
])
def test_math_phrase_answers_without_dollars_agree_with_math_verify(text, gold, extracted):
    """Answers written as words after the number (units, objects) are read as math-verify reads
    them: the number, not ``5*d*o*l*l*a*r*s``."""
    r = grade_math(text, gold)
    assert (r["extracted"], r["correct"]) == (extracted, True), r
    assert _math_verify_on_final_part(text, gold)


@pytest.mark.parametrize("text,gold", [
    ("The answer is 5 dollars.", "6"),
    ("**Answer:** 12 apples", "13"),
    ("Final Answer: The final answer is 12. I hope it is correct.", "13"),
    ("x = 3 meters", "4"),
    # several values, a negation, a word that changes the number: no single number is the answer
    ("The answer is 12 and 13.", "12"),
    ("The answer is 5 or 7.", "5"),
    ("The answer is not 12.", "12"),
    ("The answer is 2 pi.", "2"),
    ("The answer is 2 million.", "2"),
    ("The answer is 5 factorial.", "5"),
    ("Answer: 5 dollars and 50 cents", "5"),
    # no answer phrase: the last number of a sentence is not taken
    ("Therefore, she has 15 apples left.", "15"),
    ("Final check: 2 + 3 = 5", "5"),
    # a box's words are LaTeX, not units: 6 xy is a product
    ("\\boxed{6 xy}", "6"),
])
def test_math_phrase_answers_are_not_accepted_when_wrong_or_ambiguous(text, gold):
    assert grade_math(text, gold)["correct"] is False


@pytest.mark.parametrize("text,gold,extracted", [
    ("So \\boxed{1\\,000}.", "1000", "1000"),  # thin-space thousands groups
    ("So \\boxed{1\\ 000}.", "1000", "1000"),
    ("So \\boxed{1000}.", "1\\,000", "1000"),  # ... in the reference answer too
    ("So \\boxed{45°}.", "45", "45^{\\circ}"),  # a degree sign
])
def test_math_forms_that_math_verify_alone_misreads(text, gold, extracted):
    """Right answers that math-verify alone grades wrong (``1\\,000`` parses as 1*0)."""
    r = grade_math(text, gold)
    assert (r["extracted"], r["correct"]) == (extracted, True), r
    assert not _math_verify_on_final_part(text, gold)


# Realistic final parts: (text, gold, our grade, math-verify's own grade of the final part).
REALISTIC = [
    ("</think>\nThe answer is $\\boxed{\\dfrac{3}{4}}$.", "0.75", True, True),
    ("</think>\nSo the probability is \\boxed{\\frac{1}{2}}.", "\\frac{2}{4}", True, True),
    ("</think>\n**Final Answer**\n\\[\n\\boxed{50\\%}\n\\]", "50", True, True),
    ("</think>\n**Final Answer**\n\\[\n\\boxed{50\\%}\n\\]", "0.5", True, True),
    ("</think>\nThe answer is 50%.", "50", True, True),
    ("</think>\nThe answer is 5 percent.", "5\\%", True, True),
    ("</think>\nThe area is \\boxed{12 \\text{ cm}^2}.", "12", True, True),
    ("</think>\nThe speed is \\boxed{16\\,\\mathrm{m/s}}.", "16", True, True),
    ("</think>\nThe answer is $\\boxed{\\$1,000}$.", "1000", True, True),
    ("</think>\nThe answer is 1,000,000.", "1000000", True, True),
    ("</think>\nThe answer is \\boxed{1{,}234{,}567}.", "1234567", True, True),
    ("</think>\nThus \\boxed{-5}.", "-5", True, True),
    ("</think>\nThus \\boxed{-5}.", "5", False, False),
    ("</think>\nThe answer is -3/4.", "-\\frac{3}{4}", True, True),
    ("</think>\nSo $x \\in \\boxed{(-\\infty, 2)}$.", "(-\\infty,2)", True, True),
    ("</think>\nSo $x \\in \\boxed{(-\\infty, 2]}$.", "(-\\infty,2)", False, False),
    ("</think>\nThe solution set is \\boxed{[1,2] \\cup [3,4]}.", "[1,2]\\cup[3,4]", True, True),
    ("</think>\nThe roots are \\boxed{2, 3}.", "3,2", True, True),
    ("</think>\nThe angle is \\boxed{30^\\circ}.", "30", True, True),
    ("</think>\nThe answer is $12$ apples.", "12", True, True),
    ("</think>\nThe answer is 12.", "13", False, False),
    # where we differ on purpose (see grading.math's module doc)
    ("</think>\nThe answer is \u22125.", "-5", True, False),  # a Unicode minus
    ("</think>\nThe answer is (2, 5].", "(2,5]", True, False),  # an interval without $
    ("</think>\nThe answer is not 12.", "12", False, True),  # math-verify reads the number
    ("</think>\nThe answer is 5 or 7.", "5", False, True),
    ("</think>\nShe has 15 apples left.", "15", False, True),  # no answer phrase
]


@pytest.mark.parametrize("text,gold,ours,theirs", REALISTIC)
def test_math_against_math_verify_on_realistic_outputs(text, gold, ours, theirs):
    """Our grade on realistic final answers, next to math-verify's own parse of the final part:
    equal except in the listed cases, where ours is the right one."""
    assert grade_math(text, gold)["correct"] is ours
    assert _math_verify_on_final_part(text, gold) is theirs


def test_toy_domain_grades_like_math():
    prob = {"id": "t1", "domain": "toy", "messages": [{"role": "user", "content": "q"}], "answer": "7"}
    assert grader_of(prob) == "math"
    assert grade_one(prob, "<think>\n3 + 4 = 7.\n</think>\nThe answer is \\boxed{07}.")["correct"]
    assert not grade_one(prob, "<think>\n3 + 4 = 8.\n</think>\nThe answer is \\boxed{8}.")["correct"]


# ---------------------------------------------------------------- multiple choice
CHOICES = ["4 m/s", "8 m/s", "16 m/s", "2 m/s"]


@pytest.mark.parametrize("text,letter", [
    ("A is wrong because the units differ, and B ignores friction. The answer is (C).", "C"),
    ("<think>Maybe A? No, B.</think>\nAnswer: B", "B"),
    ("Considering option A and D, I conclude \\boxed{D}", "D"),
    ("\\boxed{\\text{(A)}}", "A"),
    ("So the correct choice is\n**C**", "C"),
    ("The speed doubles, so \\boxed{16 m/s}", "C"),
    ("A thoughtful analysis shows a clear trend.", None),  # 'A' as an article is no answer
    ("<think>Answer: A", None),  # reasoning cut off
    ("The answer is E.", None),  # not a valid letter for 4 choices
    ("\\boxed{C. 16 m/s}", "C"),  # the letter with its choice's text
    ("\\boxed{(C) 16 m/s}", "C"),
    ("\\boxed{\\mathrm{C}}", "C"),
    ("\\boxed{B. 16 m/s}", None),  # letter and text disagree: no answer
])
def test_choice_letters_in_prose(text, letter):
    assert extract_choice(text, CHOICES)[0] == letter
    assert grade_choice(text, "C", CHOICES)["correct"] is (letter == "C")


@pytest.mark.parametrize("text,letter", [
    ("**Answer**: C", "C"),  # markdown emphasis between "Answer" and the colon
    ("__Answer__: C", "C"),
    ("Therefore, the correct option is C.", "C"),
    ("The best choice is (C).", "C"),
    ("So the final line gives the choice.\nC. 16 m/s", "C"),  # a letter with its choice's text
    ("**(C) 16 m/s**", "C"),
    ("C) 16 m/s.", "C"),
    ("C. 8 m/s", None),  # the text is another choice's: no answer
    ("The correct option is not B, it is unclear.", None),
    ("The best choice is probably A.", None),  # a hedge word before the letter is prose
])
def test_choice_realistic_answer_endings(text, letter):
    """Realistic GPQA endings: markdown emphasis, "correct option is", a letter with its choice text;
    and endings that must give no letter."""
    assert extract_choice(text, CHOICES)[0] == letter


def test_choice_text_ending_in_a_period():
    choices = ["It increases.", "It decreases.", "It stays the same.", "It oscillates."]
    assert extract_choice("B. It decreases.", choices)[0] == "B"
    assert extract_choice("\\boxed{B. It decreases}", choices)[0] == "B"
    assert extract_choice("\\boxed{It decreases}", choices)[0] == "B"
    assert extract_choice("\\boxed{It decreases sharply}", choices)[0] is None


def test_choice_shuffle_is_seeded_and_spread():
    c1 = shuffle_choices("right", ["w1", "w2", "w3"], seed=0, key="q1")
    assert c1 == shuffle_choices("right", ["w1", "w2", "w3"], seed=0, key="q1")
    choices, letter = c1
    assert sorted(choices) == ["right", "w1", "w2", "w3"] and choices["ABCD".index(letter)] == "right"
    letters = {shuffle_choices("right", ["w1", "w2", "w3"], seed=0, key=f"q{i}")[1] for i in range(40)}
    assert letters == set("ABCD")
    assert [shuffle_choices("r", ["a", "b", "c"], s, "q")[0] for s in range(20)].count(["r", "a", "b", "c"]) < 20


# ---------------------------------------------------------------- code
STDIO = {"style": "stdio", "cases": [{"input": "3\n1 2 3\n", "output": "6\n"}, {"input": "2\n5 5\n", "output": "10"}]}


def test_code_block_choice():
    text = "```text\nsample\n```\n```python\nprint(1)\n```\nand the output:\n```\n1\n```"
    assert last_code_block(text) == "print(1)\n"  # python-labelled wins over a later output block
    assert last_code_block("```\nprint(2)\n```\n```text\n2\n```") == "print(2)\n"
    assert last_code_block("```cpp\nint main(){}\n```") == "int main(){}\n"
    assert last_code_block("```python\nprint(1)") is None  # cut off inside the block


def test_code_with_prints_and_no_main_guard():
    text = ("<think>```python\nprint('draft')\n```</think>\nHere:\n```python\n"
            "n = int(input())\nprint(sum(map(int, input().split())))\n```")
    assert grade_code(text, STDIO)["correct"]


def test_code_with_main_guard_and_debug_print_to_stderr():
    code = ("import sys\ndef main():\n    n = int(input())\n    xs = list(map(int, input().split()))\n"
            "    print('debug', xs, file=sys.stderr)\n    print(sum(xs))\n\nif __name__ == '__main__':\n    main()\n")
    assert grade_code(f"```python\n{code}```", STDIO)["correct"]


def test_code_main_defined_but_never_called_is_wrong():
    code = "def main():\n    n = int(input())\n    print(sum(map(int, input().split())))\n"
    r = grade_code(f"```python\n{code}```", STDIO)
    assert not r["correct"] and r["detail"]["failure"]["reason"] == "wrong_answer"


def test_code_stray_prints_break_stdio():
    code = "print('Enter numbers:')\nn = int(input())\nprint(sum(map(int, input().split())))\n"
    assert not grade_code(f"```python\n{code}```", STDIO)["correct"]


def test_code_call_style_solution_class_and_function():
    tests = {"style": "call", "fn_name": "twoSum",
             "cases": [{"input": [[2, 7, 11, 15], 9], "output": [0, 1]}, {"input": [[3, 3], 6], "output": [0, 1]}]}
    cls = ("```python\nclass Solution:\n    def twoSum(self, nums, target):\n        print('debugging', nums)\n"
           "        seen = {}\n        for i, x in enumerate(nums):\n            if target - x in seen:\n"
           "                return (seen[target - x], i)\n            seen[x] = i\n\n"
           "if __name__ == '__main__':\n    print(Solution().twoSum(list(map(int, input().split())), 9))\n```")
    assert grade_code(cls, tests)["correct"]  # tuple == list, prints ignored, guarded main not run
    fn = "```python\ndef twoSum(nums, target):\n    return [0, 1]\n```"
    assert grade_code(fn, tests)["correct"]
    wrong = "```python\ndef twoSum(nums, target):\n    return [1, 0]\n```"
    assert not grade_code(wrong, tests)["correct"]


def test_code_assert_style():
    tests = {"style": "assert", "entry_point": "add",
             "code": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"}
    assert grade_code("```python\ndef add(a, b):\n    return a + b\n```", tests)["correct"]
    assert not grade_code("```python\ndef add(a, b):\n    return a * b\n```", tests)["correct"]
    early_exit = "```python\nimport os\nos._exit(0)\ndef add(a, b):\n    return 0\n```"
    assert not grade_code(early_exit, tests)["correct"]


def test_outputs_match_like_livecodebench():
    assert outputs_match("1 2 3  \n\n", "1 2 3")
    assert outputs_match("0.50\n1.0", "0.5\n1")
    assert not outputs_match("1 2", "1 2 3")
    assert not outputs_match("yes", "YES")


def test_grade_many_in_processes_matches_inline():
    prob_m = {"id": "m", "domain": "math", "messages": [{"role": "user", "content": "q"}], "answer": "\\frac{1}{2}"}
    prob_c = {"id": "c", "domain": "code", "messages": [{"role": "user", "content": "q"}], "tests": STDIO}
    prob_g = {"id": "g", "domain": "science", "messages": [{"role": "user", "content": "q"}],
              "choices": CHOICES, "answer": "C"}
    pairs = [(prob_m, "\\boxed{0.5}"), (prob_m, "\\boxed{0.6}"), (prob_g, "Answer: C"), (prob_g, "Answer: A"),
             (prob_c, "```python\nn=int(input())\nprint(sum(map(int,input().split())))\n```"), (prob_c, "no code")]
    pooled = grade_many(pairs, workers=2)
    inline = grade_many(pairs, workers=0)
    assert [r["correct"] for r in pooled] == [True, False, True, False, True, False]
    assert [(r["correct"], r["extracted"]) for r in pooled] == [(r["correct"], r["extracted"]) for r in inline]


def test_a_grading_worker_killed_from_outside_is_a_one_line_error():
    """A pool worker killed by a signal (the OOM killer, an admin): a DasdError (one line from the
    CLI) that says what happened and to re-run, not BrokenProcessPool's traceback."""
    import os
    import signal

    from dasd.errors import DasdError
    from dasd.grading.grade import grading_pool

    prob = {"id": "m", "domain": "math", "messages": [{"role": "user", "content": "q"}], "answer": "1"}
    with grading_pool(1) as pool:
        assert [r["correct"] for r in grade_many([(prob, "\\boxed{1}")] * 2, pool=pool)] == [True, True]
        (pid,) = list(pool._processes)  # the one worker, started by the first batch
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(DasdError, match="grading worker process died abruptly.*re-run"):
            grade_many([(prob, "\\boxed{1}")] * 4, pool=pool)


def test_problem_without_reference_is_refused():
    with pytest.raises(ValueError, match="nothing to grade"):
        grade_one({"id": "x", "messages": [{"role": "user", "content": "q"}]}, "text")


def test_math_grading_refuses_threads_instead_of_grading_everything_wrong():
    import threading

    errors = []

    def work():
        try:
            grade_math("\\boxed{1}", "1")
        except RuntimeError as e:
            errors.append(str(e))

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert errors and "main thread" in errors[0]
