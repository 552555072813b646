"""dasd.toy.column, the column world: its problems, responses and tokenizer are what its reading
assumes (every column line adds up, digits are tokens of their own, splits are disjoint), its corpora
have their model's style mix and slip rate, and configs/column.yaml reads it through the pipeline's
own loaders (the prompts, the benchmark, the graders agree with the world's answers)."""

from __future__ import annotations

import random
import re
from dataclasses import replace
from pathlib import Path

from dasd.toy.build import SPECS, world_specs
from dasd.toy.column import SumProblem, corpus, make_sum_problems, problem_of, response, style_of
from dasd.toy.tokenizer import build_tokenizer
from dasd.toy.world import verify

REPO = Path(__file__).resolve().parents[2]

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


def test_corpora_have_the_style_mix_and_slip_rates_of_their_model():
    specs = {n: replace(s, n_problems=2000) for n, s in world_specs("column").items()}
    assert all(s.max_chain == 8 and s.error_rate == SPECS[n].error_rate for n, s in specs.items())
    teacher, student = corpus(specs["teacher"], 0), corpus(specs["student"], 0)
    t_styles = [style_of(r) for _, r in teacher]
    assert set(t_styles) == {"column", "oneshot"} and 0.36 < t_styles.count("column") / len(teacher) < 0.44
    assert {style_of(r) for _, r in student} == {"oneshot"}
    # A response is wrong when one of its steps slipped: 1 - (1 - rate)^steps on average.
    for pairs, rate in ((teacher, 0.02), (student, 0.2)):
        wrong = sum(not verify(r, p.answer) for p, r in pairs) / len(pairs)
        expected = sum(1 - (1 - rate) ** len(p.addends) for p, _ in pairs) / len(pairs)
        assert abs(wrong - expected) < 0.04, (rate, wrong, expected)
    assert corpus(replace(specs["teacher"], n_problems=50), 0) == teacher[:50]  # deterministic


def test_the_config_reads_the_world_through_the_pipelines_loaders():
    """configs/column.yaml: the column models, 600 training prompts and 200 held-out problems of the
    world, disjoint; the graders agree with the world's answers, right and slipped."""
    from dasd.config import load_config
    from dasd.grading.grade import is_correct
    from dasd.grading.loaders import load_benchmark
    from dasd.runs import training_prompts

    cfg = load_config(str(REPO / "configs" / "column.yaml"))
    assert (cfg.teacher.model, cfg.student.model) == ("toy:column-teacher", "toy:column-student")
    prompts = training_prompts(cfg, store=None)
    assert len(prompts) == 600 and {p["meta"]["chain_length"] for p in prompts} == {2, 3, 4, 5}
    assert [problem_of(p["messages"][-1]["content"]) for p in prompts[:5]] == make_sum_problems(5, 1, "train")
    assert all(p["messages"][0] == {"role": "system", "content": "You are a helpful assistant."} for p in prompts)
    bench = load_benchmark(cfg.eval.benchmarks[0])
    held_out = make_sum_problems(200, 0, "test")
    assert [b["answer"] for b in bench] == [str(p.answer) for p in held_out]
    assert not {p["id"] for p in prompts} & {b["id"] for b in bench}
    rng, verdicts = random.Random(0), []
    for rec, p in zip(bench[:40], held_out):
        assert rec["messages"][-1]["content"] == p.question and problem_of(p.question) == p
        assert rec["meta"]["benchmark"] == "column" and rec["domain"] == "math"
        for style in ("oneshot", "column"):
            assert is_correct(rec, response(p, style, rng, 0.0)) is True
            slipped = response(p, style, rng, 1.0)  # every step slips (slips can cancel: +10 then -10)
            verdicts.append(is_correct(rec, slipped))
            assert verdicts[-1] == verify(slipped, p.answer)
    assert verdicts.count(False) > 0.7 * len(verdicts)
