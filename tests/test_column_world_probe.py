"""benchmarks/column_world_probe.py: its problems, responses and tokenizer are what the probe's
reading assumes (every column line adds up, digits are tokens of their own, splits are disjoint)."""

from __future__ import annotations

import random
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from column_world_probe import SumProblem, make_sum_problems, response, style_of  # noqa: E402

from dasd.toy.tokenizer import build_tokenizer  # noqa: E402
from dasd.toy.world import verify  # noqa: E402

COLUMN = re.compile(r"^Step (\d+): add (\d+)\. (\d) \+ (\d) = (\d+), (\d) \+ (\d) \+ (\d) = (\d+), so (\d+) \+ (\d+) = (\d+)[.,]")


def test_clean_responses_verify_and_every_column_adds_up():
    rng = random.Random(0)
    for p in make_sum_problems(200, 0, "train"):
        one, col = response(p, "oneshot", rng, 0.0), response(p, "column", rng, 0.0)
        assert verify(one, p.answer) and verify(col, p.answer)
        assert style_of(one) == "oneshot" and style_of(col) == "column"
        lines = [ln for ln in col.split("\n") if ln.startswith("Step ")]
        assert len(lines) == len(p.addends)
        for ln in lines:
            m = COLUMN.match(ln)
            x, a = int(m[10]), int(m[11])
            assert (int(m[3]), int(m[4])) == (x % 10, a % 10) and int(m[5]) == x % 10 + a % 10
            assert (int(m[6]), int(m[7]), int(m[8])) == (x // 10, a // 10, int(m[5]) // 10)
            assert int(m[12]) == x + a == int(m[9]) * 10 + int(m[5]) % 10  # the sum is the tens, then the units digit


def test_a_slip_is_carried_to_the_answer():
    rng = random.Random(1)
    for style in ("oneshot", "column"):
        for start, a in [(38, 47), (99, 99), (10, 10), (55, 45)]:
            p = SumProblem(start, (a,))
            assert not any(verify(response(p, style, rng, 1.0), p.answer) for _ in range(20))


def test_splits_are_disjoint_and_deterministic():
    train = make_sum_problems(2000, 0, "train")
    test = make_sum_problems(300, 0, "test")
    assert not set(train) & set(test)
    assert make_sum_problems(300, 0, "test") == test and len(set(test)) == 300
    assert SumProblem(38, (47,)).question == "Start at 38. Step 1: add 47. All arithmetic is modulo 100."
    assert SumProblem(38, (47, 30)).answer == 15


def test_digits_are_tokens_of_their_own():
    rng = random.Random(2)
    texts = [response(p, "oneshot", rng, 0.2) for p in make_sum_problems(300, 0, "train")]
    tok = build_tokenizer(texts, 300, split_digits=True)
    pieces = [tok.decode([i]) for i in tok("38 + 47 = 85, which is 185 modulo 100.")["input_ids"]]
    assert all(len(x.strip()) <= 1 for x in pieces if any(c.isdigit() for c in x))
    assert "".join(pieces) == "38 + 47 = 85, which is 185 modulo 100."


def test_one_digit_problems_for_the_base_corpus():
    ps = make_sum_problems(500, 0, "train", 2, 8, digits=1)
    assert len(set(ps)) == 500 and not set(ps) & set(make_sum_problems(100, 0, "test", 2, 8, digits=1))
    assert all(0 <= p.start <= 9 and all(1 <= a <= 9 for a in p.addends) for p in ps)
    assert make_sum_problems(50, 0, "train") == make_sum_problems(50, 0, "train", digits=2)  # two digits unchanged
