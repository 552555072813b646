"""The toy task: problems, prompts, the verifier and the teacher's generating process."""

from __future__ import annotations

import random
import re

import pytest

from dasd.errors import InputError
from dasd.jsonl import read_jsonl
from dasd.records import Prompt
from dasd.toy import world
from dasd.toy.world import (
    STYLES,
    ToyProblem,
    detect_style,
    extract_answer,
    make_problems,
    problem_to_prompt,
    solution_text,
    verify,
    write_prompts,
)

EXAMPLE = ToyProblem(3, (("add", 4), ("multiply", 2), ("subtract", 5)))


def test_example_problem_reads_and_solves():
    assert EXAMPLE.question == (
        "Start at 3. Step 1: add 4. Step 2: multiply by 2. Step 3: subtract 5. All arithmetic is modulo 10."
    )
    assert EXAMPLE.values() == [7, 4, 9]
    assert EXAMPLE.answer == 9


@pytest.mark.parametrize(
    "text,expected",
    [
        ("<think>\nx\n</think>\nThe answer is \\boxed{9}.", "9"),
        ("<think>\nmaybe \\boxed{3}\n</think>\nThe answer is \\boxed{9}.", "9"),  # box in reasoning ignored
        ("<think>\nso \\boxed{3}\n</think>\nThe answer is 3.", None),  # no box after </think>
        ("<think>\nstill thinking \\boxed{3}", None),  # reasoning never closed: cut off
        ("The answer is \\boxed{4} or rather \\boxed{ 5 }.", "5"),  # no think block: last box
        ("<think>a</think>b</think>\\boxed{7}", "7"),  # last </think> counts
        ("<think>\n</think>\n\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),  # nested braces
        ("<think>\n</think>\n\\boxed{7", None),  # unclosed box
        ("<think>\n</think>\n\\boxed{}", None),  # empty box
        ("", None),
        ("r\u00e9sum\u00e9 \U0001f600 </think> \\boxed{\u65e5}", "\u65e5"),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_verify_compares_integers_by_value():
    ok = "<think>\n.\n</think>\nThe answer is \\boxed{09}."
    assert verify(ok, "9") and verify(ok, 9)
    assert not verify(ok, "8")
    assert verify("<think>\n</think>\n\\boxed{$7$}", "7")
    assert not verify("<think>\n\\boxed{9}", "9")


def test_problems_deterministic_prefix_stable_distinct():
    a = make_problems(300, seed=5, split="train")
    assert a == make_problems(300, seed=5, split="train")
    assert a[:50] == make_problems(50, seed=5, split="train")
    assert a != make_problems(300, seed=6, split="train")
    assert len({p.canonical for p in a}) == 300
    lengths = {len(p.steps) for p in a}
    assert lengths == set(range(world.MIN_STEPS, world.MAX_STEPS + 1))
    short = make_problems(100, seed=5, split="train", max_steps=3)
    assert {len(p.steps) for p in short} == {2, 3}


def test_splits_disjoint_whatever_the_seed():
    seen = {}
    for split in world.SPLITS:
        for seed in (0, 1):
            for p in make_problems(400, seed=seed, split=split):
                assert seen.setdefault(p.canonical, split) == split
                assert world.split_of(p.canonical) == split
    with pytest.raises(ValueError, match="split"):
        make_problems(1, 0, "validation")


def test_prompt_record_and_writer(tmp_path):
    rec = problem_to_prompt(EXAMPLE)
    Prompt.model_validate(rec)
    assert rec["domain"] == "toy" and rec["answer"] == "9"
    assert [m["role"] for m in rec["messages"]] == ["system", "user"]
    assert rec["messages"][0]["content"] == "You are a helpful assistant."
    assert rec["meta"]["chain_length"] == 3
    assert rec["id"] == problem_to_prompt(ToyProblem(3, EXAMPLE.steps))["id"]
    path = tmp_path / "p.jsonl"
    assert write_prompts(path, 20, seed=1, split="dev") == 20
    rows = read_jsonl(path)
    assert [r["id"] for r in rows] == [problem_to_prompt(p)["id"] for p in make_problems(20, 1, "dev")]
    assert all(r["meta"]["split"] == "dev" for r in rows)
    with pytest.raises(InputError):
        read_jsonl(tmp_path / "missing.jsonl")


@pytest.mark.parametrize("style", STYLES)
def test_every_style_is_valid_and_recognised(style):
    rng = random.Random(0)
    for p in make_problems(200, seed=2, split="test"):
        text = solution_text(p, style, rng, error_rate=0.0)
        assert verify(text, str(p.answer)), text
        assert detect_style(text) == style
        assert text.startswith("<think>\n") and "\n</think>\nThe answer is \\boxed{" in text


def test_known_solutions_in_each_style():
    rng = random.Random(0)
    assert solution_text(EXAMPLE, "compact", rng) == (
        "<think>\n1: 3 + 4 = 7. 2: 7 * 2 = 4. 3: 4 - 5 = 9.\n</think>\nThe answer is \\boxed{9}."
    )
    steps = solution_text(EXAMPLE, "steps", rng)
    assert "Step 2: multiply by 2. 7 * 2 = 14, which is 4 modulo 10.\n" in steps
    assert "Step 3: subtract 5. 4 - 5 = -1, which is 9 modulo 10.\n" in steps
    assert "Check" not in steps  # no rubber stamps unless asked for
    check = solution_text(EXAMPLE, "check", rng)
    assert check == (
        "<think>\nStart at 3.\n"
        "Step 1: add 4. 3 + 4 = 7. Check: 7 - 4 = 3, ok.\n"
        "Step 2: multiply by 2. 7 * 2 = 14, which is 4 modulo 10. Check: 2 * 7 = 14, ok.\n"
        "Step 3: subtract 5. 4 - 5 = -1, which is 9 modulo 10. Check: 9 + 5 = 4, ok.\n"
        "The final value is 9.\n</think>\nThe answer is \\boxed{9}."
    )


def test_rubber_stamp_is_the_students_idiom_on_steps_lines():
    rng = random.Random(0)
    steps = solution_text(EXAMPLE, "steps", rng, stamp_rate=1.0)
    assert "3 + 4 = 7. Check: ok.\nStep 2: multiply by 2. 7 * 2 = 14, which is 4 modulo 10. Check: ok.\n" in steps
    assert detect_style(steps) == "steps" and verify(steps, "9")
    assert solution_text(EXAMPLE, "check", random.Random(0), stamp_rate=1.0) == solution_text(EXAMPLE, "check", random.Random(0))
    assert "Check" not in solution_text(EXAMPLE, "compact", rng, stamp_rate=1.0)


def test_slips_make_wrong_answers_except_when_checked():
    problems = make_problems(300, seed=3, split="train", min_steps=4)
    rng = random.Random(1)
    wrong = {s: 0 for s in STYLES}
    for p in problems:
        for s in STYLES:
            wrong[s] += not verify(solution_text(p, s, rng, error_rate=0.2), str(p.answer))
    assert wrong["check"] == 0  # the check catches every slip and redoes the step
    for s in ("steps", "compact"):
        assert wrong[s] > 0.3 * len(problems)
    redo = solution_text(problems[0], "check", random.Random(0), error_rate=1.0)
    assert ", not " in redo and verify(redo, str(problems[0].answer)) and detect_style(redo) == "check"


def test_caught_slips_in_each_operation():
    rng = random.Random(0)
    add = solution_text(ToyProblem(3, (("add", 4),)), "check", rng, redo_rate=1.0)
    assert re.search(r"3 \+ 4 = (\d+)\. Check: \d - 4 = \d, not 3, so 3 \+ 4 = 7\.\n", add), add
    mul = solution_text(ToyProblem(7, (("multiply", 2),)), "check", rng, redo_rate=1.0)
    assert re.search(r"7 \* 2 = 1[2356], which is \d modulo 10\. Check: 2 \* 7 = 14, not 1\d, so 7 \* 2 = 14, which is 4 modulo 10\.", mul), mul
    sub = solution_text(ToyProblem(4, (("subtract", 5),)), "check", rng, redo_rate=1.0)
    assert "not 4, so 4 - 5 = -1, which is 9 modulo 10." in sub, sub


def test_redo_rate_demonstrates_caught_slips_in_check_only():
    problems = make_problems(200, seed=4, split="train")
    rng = random.Random(2)
    redos = 0
    for p in problems:
        text = solution_text(p, "check", rng, redo_rate=0.3)
        assert verify(text, str(p.answer))  # every demonstrated slip is caught
        redos += text.count(", not ")
        assert solution_text(p, "steps", rng, redo_rate=1.0) == solution_text(p, "steps", rng)
    n_steps = sum(len(p.steps) for p in problems)
    assert 0.25 < redos / n_steps < 0.35


def test_style_mixture_frequencies():
    rng = random.Random(0)
    draws = [world.sample_style(rng, world.TEACHER_STYLE_MIX) for _ in range(20000)]
    for s, w in world.TEACHER_STYLE_MIX.items():
        assert abs(draws.count(s) / len(draws) - w) < 0.02
    assert "check" not in {world.sample_style(rng, world.STUDENT_STYLE_MIX) for _ in range(2000)}
    with pytest.raises(ValueError, match="style"):
        solution_text(EXAMPLE, "poem", rng)


def test_teacher_response_uses_the_given_rates():
    rng = random.Random(0)
    problems = make_problems(300, seed=6, split="train")

    def stamped(texts):
        lines = [ln for t in texts if detect_style(t) == "steps" for ln in t.split("\n") if ln.startswith("Step ")]
        return sum(ln.endswith(" Check: ok.") for ln in lines) / len(lines)

    student = [world.teacher_response(p, rng, world.STUDENT_STYLE_MIX, 0.2, 0.0, world.STUDENT_STAMP_RATE)[1] for p in problems]
    assert abs(stamped(student) - world.STUDENT_STAMP_RATE) < 0.1
    teacher = [world.teacher_response(p, rng)[1] for p in problems]
    assert stamped(teacher) < world.TEACHER_STAMP_RATE + 0.02
    assert any(", not " in t for t in teacher)


def test_detect_style_unknown():
    assert detect_style("hello") is None
    assert detect_style("<think>\nHmm.\n</think>\n\\boxed{1}") is None
