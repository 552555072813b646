"""The report of a run with a stage killed mid-way and not yet resumed: the stage is marked, and its
numbers are what its outputs hold on disk, never the counts its previous finished run left in the
manifest (``begin_stage`` marks the stage unfinished; only ``end_stage`` writes new counts)."""

from __future__ import annotations

import json
import re

import pytest

import dasd.stages.filter as filter_stage
import dasd.stages.select as select_stage
from dasd.config import load_config
from dasd.grading.metrics import summarize
from dasd.records import content_id
from dasd.report.build import render_report
from dasd.rules.mixing import funnel_of
from dasd.runs import open_engine
from dasd.stages.filter import run_filter
from dasd.stages.sample import run_sample
from dasd.stages.score import run_score
from dasd.stages.select import run_select
from dasd.store import RunStore
from report_runs import build_run

RELAXED = ["filter.require_structure=false", "filter.drop_cutoff=false", "filter.repetition.enabled=false"]
POOLS = ("T0.6", "T1")


class Killed(Exception):
    pass


def sections(html: str) -> dict[str, str]:
    return dict(re.findall(r'<section id="([^"]+)">(.*?)</section>', html, flags=re.S))


def rows(section: str) -> dict[str, list[str]]:
    """Each table row of a section by its first cell: the other cells' text."""
    return {m[0]: re.findall(r"<td[^>]*>([^<]*)</td>", m[1]) for m in re.findall(r"<tr(?: class=\"total\")?><td>([^<]*)</td>(.*?)</tr>", section)}


def write_prompts(path, n: int) -> None:
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Say {i}."}) + "\n" for i in range(n)), encoding="utf-8")


def dies_after(n: int, fn):
    """``fn``, which raises ``Killed`` on its call number ``n + 1`` (a stage killed there)."""
    calls = 0

    def wrapped(*args, **kw):
        nonlocal calls
        calls += 1
        if calls > n:
            raise Killed()
        return fn(*args, **kw)

    return wrapped


class StudentThatDies:
    """The real student engine, killed on its score call number ``n + 1``."""

    def __init__(self, engine, n):
        self.engine, self.score = engine, dies_after(n, engine.score)

    def __getattr__(self, name):
        return getattr(self.engine, name)


def test_a_killed_stage_is_marked_and_its_numbers_are_what_is_on_disk(tmp_path, monkeypatch, tiny_lm_dir,
                                                                     tiny_lm_dir_other_vocab):
    """A run of 3 prompts goes through sample -> select; then the prompts file grows to 6 and each stage,
    run again, is killed mid-way in turn (then resumed): filter, score, select. Each time the report
    marks the killed stage and shows what its outputs hold (more than its last counts say), and leaves
    empty what it counts only at its end."""
    prompts = tmp_path / "prompts.jsonl"
    write_prompts(prompts, 3)
    cfg = load_config(None, [
        f"run_dir={tmp_path / 'run'}", f"data.prompts={prompts}", f"teacher.model={tiny_lm_dir}",
        f"student.model={tiny_lm_dir_other_vocab}", "sample.k=2", "sample.max_tokens=12",
        "sample.temperatures=[0.6, 1.0]", "score.batch=2", "select.m=1", *RELAXED])
    for stage in (run_sample, run_filter, run_score, run_select):
        stage(cfg)
    last = {st: RunStore.open(cfg.run_dir).stage_info(st)["counts"] for st in ("filter", "score", "select")}
    assert all(last["filter"][p]["out"] == 6 and last["select"][p]["selected"]["n"] == 3 for p in POOLS)
    write_prompts(prompts, 6)
    run_sample(cfg)  # 12 samples a pool now

    # filter killed in its second pool (read in shard order: its 6 earlier samples, whose verdicts are kept
    # and not judged again, then 2 new ones), after judging the first pool's 6 new samples
    with monkeypatch.context() as m:
        m.setattr(filter_stage, "apply_filters", dies_after(6 + 2, filter_stage.apply_filters))
        with pytest.raises(Killed):
            run_filter(cfg)
    store = RunStore.open(cfg.run_dir)
    assert [store.count("filter", f"kept-{p}") for p in POOLS] == [12, 8]
    secs = sections(render_report(cfg.run_dir).html)
    # sampled, kept (filter), scored, quarantined (score), selected, not selected: no drop per rule
    # counted yet (filter counts them at its end); score and select finished, on the earlier samples
    assert {p: rows(secs["funnel"])[p] for p in POOLS} == {
        "T0.6": ["12", "12", "6", "0", "3", "3"], "T1": ["12", "8", "6", "0", "3", "3"]}
    assert rows(secs["filter"]) == {"T0.6": ["–", "12", "–"], "T1": ["–", "8", "–"], "total": ["–", "20", "–"]}
    for anchor in ("funnel", "filter"):
        assert "filter: interrupted (began " in secs[anchor] and "resume with `dasd filter` (or `dasd run`)" in secs[anchor]
    assert "score: interrupted" not in secs["funnel"] and "cover what is on disk" not in secs["funnel"]
    assert "pool T0.6</b></td><td>12 responses, 12 kept by filters, 6 scored, 3 selected" in secs["summary"]
    assert "interrupted (or running)</b></td><td>filter:" in secs["summary"]
    run_filter(cfg)

    # score killed after 2 batches of 2 (4 of the first pool's 6 new samples scored)
    student = StudentThatDies(open_engine(cfg.student), 2)
    with pytest.raises(Killed):
        run_score(cfg, student=student)
    assert RunStore.open(cfg.run_dir).count("score", "pool-T0.6") == 10
    secs = sections(render_report(cfg.run_dir).html)
    # scored: what the outputs hold; quarantined (score) is left empty: score counts it at its end
    assert {p: rows(secs["funnel"])[p] for p in POOLS} == {
        "T0.6": ["12", "12", "10", "–", "3", "3"], "T1": ["12", "12", "6", "–", "3", "3"]}
    assert "score: interrupted (began " in secs["funnel"] and "score: interrupted (began " in secs["sentences"]
    assert rows(secs["sentences"])["T0.6"][0] == "10"
    run_score(cfg)

    # select killed writing its second pool's training examples: both pools' selections are on disk
    with monkeypatch.context() as m:
        m.setattr(select_stage, "training_example", dies_after(6, select_stage.training_example))
        with pytest.raises(Killed):
            run_select(cfg)
    store = RunStore.open(cfg.run_dir)
    assert [store.count("select", f"selected-{p}") for p in POOLS] == [6, 6]
    assert "train-T1" not in store.outputs("select")
    secs = sections(render_report(cfg.run_dir).html)
    table = re.findall(r"<tr><td>(T[0-9.]+)</td><td>(selected|rejected)</td>(.*?)</tr>", secs["select"])
    # n from disk; DAS score, shares, length, log-prob and accuracy are counted at select's end
    assert [(p, kind, re.findall(r">([^<]*)</td>", cells)) for p, kind, cells in table] == [
        (p, kind, ["6", "–", "–", "–", "–", "–", "–"]) for p in POOLS for kind in ("selected", "rejected")]
    assert all(rows(secs["funnel"])[p][-2:] == ["6", "6"] for p in POOLS)
    assert "select: interrupted (began " in secs["select"] and "select: interrupted (began " in secs["funnel"]
    run_select(cfg)
    secs = sections(render_report(cfg.run_dir).html)
    assert "interrupted" not in secs["funnel"] + secs["select"] + secs["summary"]
    assert all(rows(secs["funnel"])[p][-2:] == ["6", "6"] for p in POOLS)


@pytest.mark.parametrize("stage", ["mix", "eval", "analyze"])
def test_an_interrupted_mix_eval_or_analyze_shows_what_is_on_disk(tmp_path, stage):
    """A finished run; then ``stage`` begins again (with the config it had) and is killed after
    writing some records, as the stage writes them: its section is marked and counts what is on disk
    (mix: the funnel of the rollouts there, eval: the summary of the results there), or, for what
    only its end computes (the analysis profile), shows none of the earlier run's numbers."""
    root = build_run(tmp_path / "run", n_prompts=6, k=2)
    store = RunStore(root)
    before = store.stage_info(stage)["counts"]
    store.begin_stage(stage, store.stage_info(stage)["config"])
    if stage == "mix":  # 4 more questions judged: 2 kept (with their examples), 2 finished by the student
        with store.writer("mix", "rollouts") as wr, store.writer("mix", "examples") as wx:
            for i in range(4):
                rec = {"id": content_id("mix", f"q{i}"), "prompt_id": f"q{i}", "verdict": "kept" if i < 2 else "finished",
                       "example_id": None}
                if i < 2:
                    reply = "<think>\nStudent steps. Teacher continues.\n</think>\nThe answer is 3."
                    rec["example_id"] = content_id("example", f"q{i}")
                    wx.add({"id": rec["example_id"], "messages": [{"role": "user", "content": f"q{i}"},
                                                                   {"role": "assistant", "content": reply}],
                            "prefix_chars": 24, "source": "mixed_policy"})
                wr.add(rec)
        funnel = funnel_of(store.read("mix", "rollouts"))
        assert (funnel["questions"], funnel["kept"]) == (before["questions"] + 4, before["kept"] + 2)
    elif stage == "eval":  # the student's results on a second benchmark, 2 problems x 4 samples
        proto = {"name": "demo", "temperature": 0.6, "top_p": 1.0, "max_tokens": 320, "n": 4, "seed": 0}
        with store.writer("eval", "results-student") as w:
            for pi in range(2):
                for j in range(4):
                    w.add({"id": content_id("eval", "student", "toy2", pi, j), "problem_id": f"toy2-{pi}", "sample_index": j,
                           "correct": j == 0, "extracted": str(j), "finish_reason": "stop", "protocol": proto,
                           "domain": "toy", "benchmark": "toy2", "text": "x", "model_label": "student"})
        results = list(store.read("eval", "results-student"))
        assert len(results) == 48
    secs = sections(render_report(root).html)
    sec = secs[stage]
    if stage == "mix":
        table = rows(sec)
        assert [table[k][0] for k in ("questions", "student finished (not used)", "kept (mixed-policy examples)")] == [
            str(funnel["questions"]), str(funnel["finished"]), str(funnel["kept"])]
        assert f"mixed-policy examples</b></td><td>{funnel['kept']} of {funnel['questions']} questions" in secs["summary"]
        assert f"{before['kept'] + 2} mixed-policy training examples on disk" in sec
    elif stage == "eval":
        want = {(r["kind"], r["name"]): r for r in summarize(results)}
        got = {(kind, name): re.findall(r">([^<]*)</td>", cells) for kind, name, cells in
               re.findall(r"<tr><td>student</td><td>(benchmark|domain|all)</td><td>([^<]*)</td>(.*?)</tr>", sec)}
        assert set(got) == set(want) and got[("benchmark", "toy2")][:2] == ["2", "8"]  # problems, samples
        assert all(got[key][3].startswith(f"{100 * want[key]['avg@k']:.1f} [") for key in got)  # avg@k [CI]
    else:
        assert "share in correct" not in secs["analyze"] and "<img" not in secs["analyze"]
        assert "Its profile is computed when it finishes." in secs["analyze"]
        assert not any(f"{v['area']:+.3f}" in secs["analyze"] for v in before["types"].values() if v["area"])
    assert f"{stage}: interrupted (began " in secs[stage] and f"resume with `dasd {stage}` (or `dasd run`)" in secs[stage]
    assert f"interrupted (or running)</b></td><td>{stage}:" in secs["summary"]
