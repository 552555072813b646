"""The counts a stage keeps in the manifest (which the report shows) say what its outputs hold, so a
run killed mid-stage and resumed ends with the counts of an uninterrupted run: they used to count
only what the last invocation did (score's ``rejected``, sample's ``quarantined``), so a resumed
run reported 0 quarantined where an uninterrupted one reported them. ``new`` (what the invocation
that recorded the counts added) is per invocation and left out of the comparison."""

from __future__ import annotations

import json
import re

import pytest
from test_sample import Crash, CrashAfter
from test_score_faults import RELAXED, _Crash, _StudentThatDies

from dasd.config import load_config
from dasd.engines import EngineConfig, make_engine
from dasd.report.build import render_report
from dasd.runs import open_engine
from dasd.stages.filter import run_filter
from dasd.stages.sample import run_sample
from dasd.stages.score import run_score
from dasd.stages.select import run_select
from dasd.store import RunStore

STAGES = ("sample", "filter", "score", "select")
STUDENT_CONTEXT = 96  # the short prompts' responses fit, the "mid" prompt's do not


@pytest.fixture()
def prompts(tmp_path):
    """"mid" fits the teacher's context (192 tokens) but its responses not the student's (96); "long"
    fits neither, so sampling quarantines it; the short ones fit both. The two first: they are met
    (and quarantined) first."""
    rows = [{"id": "mid", "prompt": "Compute 3 + 4 then times 2. " * 6},
            {"id": "long", "prompt": "Compute 3 + 4 then times 2. " * 12}]
    rows += [{"id": f"p{i}", "prompt": f"Say {i}."} for i in range(4)]
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def config(tmp_path, name, prompts, teacher, student, *overrides):
    return load_config(None, [
        f"run_dir={tmp_path / name}", f"data.prompts={prompts}", f"teacher.model={teacher}", "teacher.max_model_len=192",
        f"student.model={student}", f"student.max_model_len={STUDENT_CONTEXT}", "student.score_batch_tokens=1",
        "sample.k=2", "sample.max_tokens=12", "sample.batch_prompts=2", "sample.temperatures=[0.6, 1.0]",
        "score.batch=2", "select.m=1", *RELAXED, *overrides])


def manifest_counts(cfg) -> dict:
    """Each stage's manifest counts, without the per-invocation ``new``."""
    store = RunStore.open(cfg.run_dir)
    out = {}
    for stage in STAGES:
        info = store.stage_info(stage)
        assert info.get("complete"), stage
        out[stage] = {pool: {k: v for k, v in c.items() if k != "new"} for pool, c in info["counts"].items()}
    return out


def funnel_rows(run) -> dict[str, list[str]]:
    """The report's data funnel table: the cells of each pool's row."""
    section = re.search(r'<section id="funnel">(.*?)</section>', render_report(run).html, flags=re.S).group(1)
    rows = re.findall(r"<tr><td>([^<]*)</td>(.*?)</tr>", section)
    return {pool: re.findall(r'<td class="n">([^<]*)</td>', cells) for pool, cells in rows}


def test_counts_after_a_kill_and_resume_equal_an_uninterrupted_runs(tmp_path, prompts, tiny_lm_dir,
                                                                   tiny_lm_dir_other_vocab):
    ref = config(tmp_path, "ref", prompts, tiny_lm_dir, tiny_lm_dir_other_vocab)
    for stage in (run_sample, run_filter, run_score, run_select):
        stage(ref)
    want = manifest_counts(ref)

    cfg = config(tmp_path, "killed", prompts, tiny_lm_dir, tiny_lm_dir_other_vocab)
    engine = open_engine(cfg.teacher)
    with pytest.raises(Crash):  # dies in the T1 pool, after the T0.6 pool quarantined "long" and was done
        run_sample(cfg, engine=CrashAfter(engine, 4))
    assert run_sample(cfg, engine=engine)["T0.6"]["new"] == 0
    run_filter(cfg)
    store = RunStore.open(cfg.run_dir)
    order = [s["id"] for s in store.read("filter", "kept-T1")]
    student = make_engine(EngineConfig(model=tiny_lm_dir_other_vocab, device="cpu", max_model_len=STUDENT_CONTEXT))
    with pytest.raises(_Crash):  # dies in the T1 pool's third batch: its two "mid" responses were quarantined
        run_score(cfg, student=_StudentThatDies(student, die_on=order[4:6]))
    again = _StudentThatDies(student)
    new = {pool: c.get("new") for pool, c in run_score(cfg, student=again).items()}
    run_select(cfg)
    assert manifest_counts(cfg) == want
    assert funnel_rows(cfg.run_dir) == funnel_rows(ref.run_dir)

    for pool in ("T0.6", "T1"):  # what the outputs hold, so that the comparison is not of empty counts
        assert (want["sample"][pool]["samples"], want["sample"][pool]["quarantined"]) == (10, 1)  # "long" in each pool
        assert want["filter"][pool]["out"] == 10
        assert want["score"][pool] == {"scored": 8, "rejected": 2, "too_long": 2}  # the two "mid" responses
        assert want["select"][pool]["selected"]["n"] == 4
    # sampled, kept, scored, quarantined (score), selected, not selected
    assert funnel_rows(cfg.run_dir) == {pool: ["10", "10", "8", "2", "4", "4"] for pool in ("T0.6", "T1")}
    assert sorted(again.asked) == sorted(order[4:])  # the resumed run judged only the rest
    assert new == {"T0.6": 0, "T1": 6}  # what it judged


def test_counts_after_filter_wrote_its_kept_output_again_equal_a_fresh_runs(tmp_path, prompts, tiny_lm_dir,
                                                                           tiny_lm_dir_other_vocab, capsys):
    """Filter run again with another setting that keeps the same samples writes its kept output again:
    score re-links its scored and quarantined records to the new kept rows and judges nothing, and
    its counts are still those of the records it holds (it used to record 0 quarantined)."""
    cfg = config(tmp_path, "run", prompts, tiny_lm_dir, tiny_lm_dir_other_vocab)
    for stage in (run_sample, run_filter, run_score, run_select):
        stage(cfg)
    want = manifest_counts(cfg)
    assert want["score"]["T1"] == {"scored": 8, "rejected": 2, "too_long": 2}
    again = config(tmp_path, "run", prompts, tiny_lm_dir, tiny_lm_dir_other_vocab, "filter.max_student_tokens=100000")
    capsys.readouterr()
    for stage in (run_filter, run_score, run_select):
        stage(again)
    assert "made from them keep the 20 record(s) whose input is there unchanged; 0 dropped" in capsys.readouterr().err
    assert manifest_counts(again) == want
    assert {pool: c["new"] for pool, c in RunStore.open(cfg.run_dir).stage_info("score")["counts"].items()} == \
        {"T0.6": 0, "T1": 0}  # nothing judged again
