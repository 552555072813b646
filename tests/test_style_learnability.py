"""benchmarks/style_learnability.py reads back what each check in a response did; the reading is
checked against the generating process (which knows every slip) and on hand-written student lines."""

from __future__ import annotations

import random
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from style_learnability import diff_check_text, read_steps, read_tracking  # noqa: E402

from dasd.toy import world  # noqa: E402


def test_teacher_checks_read_back_as_confirmed_or_caught():
    rng = random.Random(3)
    kinds, slips = Counter(), 0
    for p in world.make_problems(200, 0, "train"):
        rows = read_steps(world.solution_text(p, "check", rng, error_rate=0.05, redo_rate=0.2))
        assert len(rows) == len(p.steps)
        kinds.update(r["check"] for r in rows)
        slips += sum(r["slip"] for r in rows)
        assert not any(r["check_arith_wrong"] for r in rows)
    assert set(kinds) == {"confirmed", "caught"}
    assert kinds["caught"] == slips > 50  # the teacher's check catches every slip it made


def test_the_diff_candidate_reads_back_like_the_worlds_check():
    rng = random.Random(5)
    kinds, slips = Counter(), 0
    for p in world.make_problems(200, 0, "train"):
        text = diff_check_text(p, rng, error_rate=0.05, redo_rate=0.2)
        assert world.verify(text, p.answer) and world.detect_style(text) == "check"
        rows = read_steps(text)
        assert len(rows) == len(p.steps) and not any(r["check_arith_wrong"] for r in rows)
        assert read_tracking(p, text) == (0, 0)
        kinds.update(r["check"] for r in rows)
        slips += sum(r["slip"] for r in rows)
    assert set(kinds) == {"confirmed", "caught"} and kinds["caught"] == slips > 50


def test_generated_responses_copy_and_carry_right_even_when_they_slip():
    rng = random.Random(6)
    for p in world.make_problems(100, 0, "train"):
        for style in ("steps", "check"):
            text = world.solution_text(p, style, rng, error_rate=0.3, redo_rate=0.2, stamp_rate=0.5)
            assert read_tracking(p, text) == (0, 0)


def test_copy_and_carry_mistakes_are_counted():
    p = world.ToyProblem(start=3, steps=(("add", 4), ("multiply", 2), ("subtract", 5)))
    text = "\n".join([
        "<think>", "Start at 3.",
        "Step 1: add 4. 3 + 4 = 8. Check: 8 - 4 = 4, not 3, so 3 + 4 = 7.",  # redone: carries 7
        "Step 2: multiply by 3. 7 * 3 = 21, which is 1 modulo 10.",             # copied 3, not 2
        "Step 3: subtract 5. 2 - 5 = -3, which is 7 modulo 10.",                # starts from 2, not 1
        "The final value is 7.", "</think>",
    ])
    assert read_tracking(p, text) == (1, 1)


def test_steps_lines_and_stamps_carry_no_check():
    rng = random.Random(4)
    for p in world.make_problems(50, 0, "train"):
        rows = read_steps(world.solution_text(p, "steps", rng, error_rate=0.3, stamp_rate=1.0))
        assert [r["check"] for r in rows] == [None] * len(p.steps)


def test_student_mistakes_are_told_apart():
    text = "\n".join([
        "<think>",
        "Start at 3.",
        "Step 1: add 4. 3 + 4 = 8. Check: 8 - 4 = 4, ok.",                      # slip, check says ok
        "Step 2: add 1. 8 + 1 = 9. Check: 9 - 1 = 8, not 3, so 8 + 1 = 9.",     # right step, says not
        "Step 3: multiply by 2. 9 * 2 = 17, which is 7 modulo 10. Check: 2 * 9 = 18, not 17, so 9 * 2 = 16, which is 6 modulo 10.",
        "Step 4: subtract 2. 6 - 2 = 4. Check: 4 + 2 = 5, ok.",                 # right step, check arithmetic wrong
        "Step 5: add 1. 4 + 1 = 5. Check: five",
        "The final value is 5.",
        "</think>",
    ])
    rows = read_steps(text)
    assert [r["check"] for r in rows] == ["missed", "false alarm", "bad redo", "confirmed", "unreadable"]
    assert [r["slip"] for r in rows] == [True, False, True, False, False]
    assert rows[3]["check_arith_wrong"] and not rows[0]["check_arith_wrong"]
