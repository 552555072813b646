"""benchmarks/column_world.py: the world's corpora are what its reading assumes, and its files are
what the pipeline reads (the config loads, the prompts and the benchmark load, the graders agree
with the world's answers)."""

from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from column_world import STUDENT_ERROR_RATE, TEACHER_ERROR_RATE, corpus, problem_of, write_data  # noqa: E402
from column_world_probe import make_sum_problems, response, style_of  # noqa: E402

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
        assert rec["messages"][-1]["content"] == p.question and problem_of(p.question) == p
        for style in ("oneshot", "column"):
            assert is_correct(rec, response(p, style, rng, 0.0)) is True
            slipped = response(p, style, rng, 1.0)  # every step slips (slips can cancel: +10 then -10)
            verdicts.append(is_correct(rec, slipped))
            assert verdicts[-1] == verify(slipped, p.answer)
    assert verdicts.count(False) > 0.7 * len(verdicts)


def test_arm_styles_measures_each_arms_last_stage(tmp_path, tiny_lm_dir):
    """``styles`` finds every arm's final model (the last stage of a two-stage arm), skips an arm that
    has none, and writes one entry per arm and seed with the style shares and per-style accuracy."""
    import shutil

    from column_world import arm_styles

    write_data(tmp_path / "world", 0, 4, 3)
    arms = tmp_path / "abl" / "seed-0" / "arms"
    shutil.copytree(tiny_lm_dir, arms / "rs_low" / "train" / "single" / "final")
    shutil.copytree(tiny_lm_dir, arms / "das_low_high" / "train" / "stage2" / "final")
    (arms / "das_low_high" / "train" / "stage1").mkdir()  # no final: the later stage is the arm's model
    (arms / "das_high" / "train" / "single").mkdir(parents=True)  # unfinished arm
    lines: list[str] = []
    out = arm_styles(tmp_path / "world", tmp_path / "abl", [0], problems=3, log=lines.append)
    assert set(out) == {"rs_low", "das_low_high"} and len(lines) == 2
    for arm in out.values():
        m = arm[0]
        assert 0.0 <= m["accuracy"] <= 1.0 and 0.0 <= m["column_share"] <= 1.0
        # A random model writes no column lines: no column answer, so no column accuracy.
        assert m["column_share"] == 0.0 and m["column_accuracy"] is None


def test_column_shares_count_the_selected_styles():
    """DAS keeps the best-scored candidates, random sampling a seeded draw; the shares count the column
    answers among them, on the prompts with enough candidates in both pools only."""
    from column_world import column_shares

    rng = random.Random(0)
    pools: dict[str, list[dict]] = {"low": [], "high": []}
    problems = make_sum_problems(20, 0, "train")
    for pool in pools:
        for i, p in enumerate(problems):
            for j, style in enumerate(("column", "oneshot", "oneshot", "oneshot")):
                # The column answer scores highest, as DAS scores it when the student never saw columns.
                pools[pool].append({"id": f"{pool}-{i}-{j}", "prompt_id": f"p{i}", "text": response(p, style, rng, 0.0),
                                    "das": {"score": 1.0 if style == "column" else 0.1 * j}})
    pools["high"] = [c for c in pools["high"] if c["prompt_id"] != "p0"]  # p0: not eligible
    shares = column_shares(pools, 2, 0)
    assert shares["low"]["all"] == shares["high"]["all"] == 0.25
    assert shares["low"]["das"] == shares["high"]["das"] == 0.5  # the column answer and the best one-shot one
    from ablation_lib import select

    picked = select(pools["low"], [f"p{i}" for i in range(1, 20)], "random", 2, 0)
    assert shares["low"]["random"] == round(sum(style_of(c["text"]) == "column" for c in picked) / len(picked), 4)


def test_merge_styles_keeps_what_was_not_measured_again():
    from column_world import merge_styles

    first = merge_styles(None, {0: {"low": {"das": 0.5}}}, {"rs_low": {0: {"accuracy": 0.2}}, "das_low": {0: {"accuracy": 0.3}}})
    assert first == {"selections": {"0": {"low": {"das": 0.5}}},
                     "arms": {"rs_low": {"0": {"accuracy": 0.2}}, "das_low": {"0": {"accuracy": 0.3}}}}
    second = merge_styles(first, {1: {"low": {"das": 0.4}}}, {"rs_low": {0: {"accuracy": 0.25}, 1: {"accuracy": 0.1}}})
    assert second["selections"] == {"0": {"low": {"das": 0.5}}, "1": {"low": {"das": 0.4}}}
    assert second["arms"] == {"rs_low": {"0": {"accuracy": 0.25}, "1": {"accuracy": 0.1}}, "das_low": {"0": {"accuracy": 0.3}}}
    assert first["arms"]["rs_low"]["0"]["accuracy"] == 0.2  # the old content is not changed in place
