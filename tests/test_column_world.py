"""benchmarks/column_world.py: the world's corpora are what its reading assumes, and its files are
what the pipeline reads (the config loads, the prompts and the benchmark load, the graders agree
with the world's answers)."""

from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from column_world import STUDENT_ERROR_RATE, TEACHER_ERROR_RATE, corpus, write_data  # noqa: E402
from column_world_probe import response, style_of  # noqa: E402

from dasd.toy.world import verify  # noqa: E402


def test_corpora_have_the_style_mix_and_slip_rates_of_their_model():
    teacher, student = corpus("teacher", 0, 2000, 0.4), corpus("student", 0, 2000, 0.4)
    t_styles = [style_of(r) for _, r in teacher]
    assert set(t_styles) == {"column", "oneshot"} and 0.36 < t_styles.count("column") / len(teacher) < 0.44
    assert {style_of(r) for _, r in student} == {"oneshot"}
    # A response is wrong when one of its steps slipped: 1 - (1 - rate)^steps on average.
    for pairs, rate in ((teacher, TEACHER_ERROR_RATE), (student, STUDENT_ERROR_RATE)):
        wrong = sum(not verify(r, p.answer) for p, r in pairs) / len(pairs)
        expected = sum(1 - (1 - rate) ** len(p.addends) for p, _ in pairs) / len(pairs)
        assert abs(wrong - expected) < 0.04, (rate, wrong, expected)
    assert corpus("teacher", 0, 50, 0.4) == teacher[:50]  # deterministic


def test_written_files_are_what_the_pipeline_reads(tmp_path):
    from dasd.config import load_config
    from dasd.grading.grade import is_correct
    from dasd.grading.loaders import load_benchmark
    from dasd.prompts import load_prompts

    held_out = write_data(tmp_path, 0, 40, 30)
    cfg = load_config(str(tmp_path / "column.yaml"))
    assert cfg.teacher.model == str(tmp_path.resolve() / "teacher") and str(cfg.run_dir) == str(tmp_path.resolve() / "run")
    assert cfg.data.limit == 40 and cfg.sample.k == 6 and cfg.eval.benchmarks[0].format == "prompts"
    prompts, rejects = load_prompts(cfg.data.prompts, system_prompt=cfg.data.system_prompt)
    assert len(prompts) == 40 and not rejects
    bench = load_benchmark(cfg.eval.benchmarks[0])
    assert [b["answer"] for b in bench] == [str(p.answer) for p in held_out]
    assert not {p["id"] for p in prompts} & {b["id"] for b in bench}
    rng, verdicts = random.Random(0), []
    for rec, p in zip(bench, held_out):
        assert rec["messages"][-1]["content"] == p.question
        for style in ("oneshot", "column"):
            assert is_correct(rec, response(p, style, rng, 0.0)) is True
            slipped = response(p, style, rng, 1.0)  # every step slips (slips can cancel: +10 then -10)
            verdicts.append(is_correct(rec, slipped))
            assert verdicts[-1] == verify(slipped, p.answer)
    assert verdicts.count(False) > 0.7 * len(verdicts)
