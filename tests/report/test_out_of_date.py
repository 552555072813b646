"""The report of a run whose stages, run one at a time, are out of date with each other: the pools
grew after `dasd filter`, `dasd filter` ran again with other settings after `dasd score`, a pool was
imported again from an edited file after `dasd select`. Each out-of-date stage is marked, like an
interrupted one, in the sections that show its numbers, the summary and the stages table, with the
stage to run (``runs.changed_since``); a section whose records refer to rows that are gone says so
in one line instead of its numbers (they could not be read), and the other sections show theirs.
Real stages on the toy teacher and student."""

from __future__ import annotations

import html
import json
import re

from dasd.config import load_config
from dasd.prompts import toy_prompts
from dasd.report.build import render_report
from dasd.stages.filter import run_filter
from dasd.stages.import_ import run_import
from dasd.stages.mix import run_mix_stage
from dasd.stages.sample import run_sample
from dasd.stages.score import run_score
from dasd.stages.select import run_select

AGAIN = " and the stages after it (or `dasd run`)"


def sections(page: str) -> dict[str, str]:
    """Each section of the page by its anchor, as plain text (tags dropped, entities unescaped)."""
    return {k: html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", v)))
            for k, v in re.findall(r'<section id="([^"]+)">(.*?)</section>', page, flags=re.S)}


def table_rows(page: str, anchor: str) -> dict[str, list[str]]:
    """The table rows of section ``anchor`` by their first cell: the other cells' text."""
    sec = dict(re.findall(r'<section id="([^"]+)">(.*?)</section>', page, flags=re.S))[anchor]
    return {m[0]: re.findall(r"<td[^>]*>([^<]*)</td>", m[1])
            for m in re.findall(r"<tr(?: class=\"total\")?><td>([^<]*)</td>(.*?)</tr>", sec)}


def report(run):
    rep = render_report(run)
    assert rep.problems == []
    return rep.html, sections(rep.html)


def graded_run(tmp_path):
    """``(write(n), cfg(*overrides))``: ``write`` puts the first ``n`` of 6 toy prompts (with reference
    answers) in the prompts file; ``cfg`` is the config of the run ``tmp_path/run`` on it: the toy
    teacher and student, 2 samples a prompt at T 1, graded by filter, then ``overrides``."""
    src = tmp_path / "prompts.jsonl"
    rows = toy_prompts(6, 0, "train", None)

    def write(n):
        src.write_text("".join(json.dumps(r) + "\n" for r in rows[:n]), encoding="utf-8")

    def cfg(*more):
        return load_config(None, [f"run_dir={tmp_path / 'run'}", f"data.prompts={src}", "student.model=toy:student",
                                  "teacher.model=toy:teacher", "sample.max_tokens=320", "filter.require_correct=true",
                                  "sample.k=2", "sample.temperatures=[1.0]", *more])

    return write, cfg


def test_stages_out_of_date_after_the_pools_grew_and_after_filter_ran_again(tmp_path):
    write, cfg = graded_run(tmp_path)
    run = tmp_path / "run"
    write(4)
    for stage in (run_sample, run_filter, run_score, run_select):
        stage(cfg())
    page, secs = report(run)
    assert "out of date" not in page
    # sampled, − correctness, kept, scored, quarantined, selected, not selected
    assert table_rows(page, "funnel")["T1"] == ["8", "2", "6", "6", "0", "4", "2"]

    # two more prompts sampled: filter, score and select read the pools (and prompts) as they were
    write(6)
    run_sample(cfg())
    page, secs = report(run)
    grew = "(sample/pool-T1 grew; sample/prompts grew since it ran): run `dasd filter`" + AGAIN
    marks = {s: f"{s}: out of date {grew}" for s in ("filter", "score", "select")}
    assert all(m in secs["funnel"] and m in secs["summary"] for m in marks.values())
    for stage, anchor in (("filter", "filter"), ("score", "sentences"), ("select", "select")):
        assert marks[stage] in secs[anchor]
        assert all(marks[s] not in secs[anchor] for s in marks if s != stage)
    # the numbers are still those the stages hold: 12 sampled now, the rest as they ran
    assert table_rows(page, "funnel")["T1"] == ["12", "2", "6", "6", "0", "4", "2"]
    assert table_rows(page, "sentences")["T1"][0] == "6"
    assert table_rows(page, "filter")["T1"] == ["8", "2", "6", "75.0"]
    assert "pool T1 12 responses, 6 kept by filters, 6 scored, 4 selected" in secs["summary"]
    assert "filter complete (out of date)" in secs["run"] and "sample complete 2" in secs["run"]

    for stage in (run_filter, run_score, run_select):
        stage(cfg())
    page, secs = report(run)
    assert "out of date" not in page
    assert table_rows(page, "funnel")["T1"] == ["12", "4", "8", "8", "0", "6", "2"]

    # filter again, grading off: its kept output is written again and score's rows refer to rows gone
    run_filter(cfg("filter.require_correct=false"))
    page, secs = report(run)
    mark = "score: out of date (filter/kept-T1 written again since it ran): run `dasd score`" + AGAIN
    assert "Unreadable" not in page and "which is missing" not in page
    assert secs["sentences"].strip() == f"Sentence types (DAS scoring) Not shown: the records of score refer to rows that are gone. {mark}."
    assert secs["select"].strip() == f"Selection (DAS vs rejected) Not shown: the records of select refer to rows that are gone. {mark}."
    assert mark in secs["funnel"] and mark in secs["summary"] and "filter: out of date" not in page
    # the other sections show their numbers: filter's new ones, score's and select's counts as they ran
    assert table_rows(page, "funnel")["T1"] == ["12", "12", "8", "0", "6", "2"]
    assert table_rows(page, "filter")["T1"] == ["12", "12", "100.0"]
    assert table_rows(page, "sample")["T1"][:3] == ["1", "12", "6"]  # temperature, responses, prompts
    assert "pool T1 12 responses, 12 kept by filters, 6 selected" in secs["summary"]

    run_score(cfg("filter.require_correct=false"))
    run_select(cfg("filter.require_correct=false"))
    page, secs = report(run)
    assert "out of date" not in page and "Not shown" not in page
    assert table_rows(page, "sentences")["T1"][0] == "12"


def test_stages_out_of_date_after_a_pool_was_imported_again(tmp_path):
    src = tmp_path / "chat.jsonl"

    def write(edited: bool):
        src.write_text("".join(json.dumps({
            "id": f"q{i}", "answer": str(i + 4), "messages": [
                {"role": "user", "content": f"What is {i} + 4?"},
                {"role": "assistant", "content": f"<think>\nWe need {i} + 4. {i} + 4 = {i + 4}."
                                                 f"{' Check: 4 + {i} too.' if edited and i < 2 else ''}\n</think>\n\n\\boxed{{{i + 4}}}"}]})
            + "\n" for i in range(5)), encoding="utf-8")

    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", f"import.source={src}", "import.format=chat",
                             "teacher.model=toy:teacher", "student.model=toy:student",
                             "filter.require_structure=false", "filter.repetition.enabled=false"])
    run = tmp_path / "run"
    write(False)
    for stage in (run_import, run_filter, run_score, run_select):
        stage(cfg)
    page, secs = report(run)
    assert "out of date" not in page and table_rows(page, "sentences")["T1"][0] == "5"

    write(True)  # the source edited: `dasd import` removes the pool's shards and imports it again
    run_import(cfg)
    page, secs = report(run)
    again = "(sample/pool-T1 written again since it ran): run `dasd filter`" + AGAIN
    assert "Unreadable" not in page and "which is missing" not in page
    for stage in ("filter", "score", "select"):
        assert f"{stage}: out of date {again}" in secs["summary"] and f"{stage}: out of date {again}" in secs["funnel"]
    assert f"filter: out of date {again}" in secs["filter"]
    assert secs["sentences"].strip() == ("Sentence types (DAS scoring) Not shown: the records of score refer to rows "
                                         f"that are gone. score: out of date {again}.")
    assert secs["select"].strip() == ("Selection (DAS vs rejected) Not shown: the records of select refer to rows "
                                      f"that are gone. select: out of date {again}.")
    # sampled (the new import), kept, scored, quarantined, selected, not selected (as the stages ran)
    assert table_rows(page, "funnel")["T1"] == ["5", "5", "5", "0", "5", "0"]
    assert table_rows(page, "filter")["T1"] == ["5", "5", "100.0"]
    assert table_rows(page, "sample")["T1"][:3] == ["1", "5", "5"]

    for stage in (run_filter, run_score, run_select):
        stage(cfg)
    page, secs = report(run)
    assert "out of date" not in page and table_rows(page, "sentences")["T1"][0] == "5"


def test_mix_out_of_date_after_select_ran_again(tmp_path):
    """`dasd select` again (2 per prompt) after `dasd mix`: mix is marked, its numbers still shown."""
    write, cfg = graded_run(tmp_path)
    run = tmp_path / "run"
    write(4)
    for stage in (run_sample, run_filter, run_score, run_select, run_mix_stage):
        stage(cfg())
    page, secs = report(run)
    assert "out of date" not in page
    run_select(cfg("select.m=2"))
    page, secs = report(run)
    mark = ("mix: out of date (select/rejected-T1 written again; select/selected-T1 written again; select/train-T1 "
            "written again since it ran): run `dasd mix`" + AGAIN)
    assert mark in secs["mix"] and mark in secs["summary"] and "mix complete (out of date)" in secs["run"]
    assert page.count("out of date (") == 2  # no other stage is
    assert table_rows(page, "mix")["questions"] == ["4", ""]
    assert "pool T1 8 responses, 6 kept by filters, 6 scored, 6 selected" in secs["summary"]
