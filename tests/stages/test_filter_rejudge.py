"""`dasd filter` with ``filter.require_correct`` after `dasd sample` corrected reference answers
(the run's prompt records replaced under the same ids): the samples of those prompts are judged
again, and their verdicts on disk are the new ones. A sample rejected before and rejected again
has its reject made against the new answer (its ``input_digest``), not the old one kept because
the rejects writer skips ids on disk; a sample rejected before and kept now has no reject left.
What protects this is ``runs.drop_if_inputs_rewritten``: the prompts output lost its old shard, so
the rejects whose input changed are dropped before filter writes new ones. The toy teacher and
student, graded (tests/stages/graded_runs.py)."""

from __future__ import annotations

import json

import dasd.stages.filter as filter_stage
from dasd.grading.grade import grade_one
from dasd.prompts import toy_prompts
from dasd.runs import load_run_prompts, open_engine
from dasd.stages.filter import judged_input, run_filter
from dasd.stages.sample import run_sample
from dasd.store import RunStore
from graded_runs import graded_toy_run


def _rejects(root) -> dict[str, tuple]:
    """Each reject of the run at ``root`` by id: rule, reason, where (relative to the run), digest."""
    store = RunStore.open(root)
    return {r["id"]: (r["rule"], r["reason"], r["where"].replace(str(store.root), "RUN"), r["input_digest"])
            for r in store.read("filter", "rejects")}


def _sampled_and_filtered(tmp_path):
    """A graded toy run ``run`` of 8 prompts (k 3, T=1.0) sampled and filtered: ``(write, cfg, the
    prompts, the teacher engine)`` (``graded_toy_run``'s ``write`` and ``cfg``)."""
    write, cfg = graded_toy_run(tmp_path, "sample.k=3", "sample.temperatures=[1.0]")
    rows = toy_prompts(8, 0, "train", None)
    write(rows)
    engine = open_engine(cfg("run").teacher)
    run_sample(cfg("run"), engine=engine)
    run_filter(cfg("run"))
    return write, cfg, rows, engine


def test_samples_judged_again_under_a_corrected_answer_replace_their_rejects(tmp_path, monkeypatch):
    """Two answers corrected: one to another wrong answer (its rejected samples are rejected again,
    its kept ones now fail), one to what a rejected sample answers (that sample is kept now). The
    rejects on disk, field by field, the kept samples and the funnel are those of a fresh run on the
    corrected prompts; a later `dasd sample` that rewrites the prompts without changing any
    reference leaves filter nothing to judge (the verdicts on disk carry their digests as they are
    now)."""
    calls = []
    rules = filter_stage.apply_filters
    monkeypatch.setattr(filter_stage, "apply_filters", lambda s, *a: calls.append(s["id"]) or rules(s, *a))
    write, cfg, rows, engine = _sampled_and_filtered(tmp_path)

    store = RunStore.open(tmp_path / "run")
    samples = list(store.read("sample", "pool-T1"))
    before = _rejects(tmp_path / "run")
    by_id = {p["id"]: p for p in rows}
    graded = [(s, by_id[s["prompt_id"]]) for s in samples
              if before.get(s["id"], ("",))[0] == "correctness" and grade_one(by_id[s["prompt_id"]], s["text"])["extracted"]]
    again = graded[0][1]  # rejected samples, rejected again under the new answer
    now_kept, passes = next((p, s) for s, p in graded if p["id"] != again["id"])  # ``passes`` passes the new answer
    fixed = {again["id"]: {"answer": str(int(again["answer"]) + 1000)},
             now_kept["id"]: {"answer": grade_one(now_kept, passes["text"])["extracted"]}}
    write([{**p, **fixed.get(p["id"], {})} for p in rows])
    rejected_again = {s["id"] for s in samples if s["prompt_id"] == again["id"] and s["id"] in before}
    assert rejected_again

    run_sample(cfg("run"), engine=engine)
    funnel = run_filter(cfg("run"))
    got = _rejects(tmp_path / "run")
    prompts = load_run_prompts(RunStore.open(tmp_path / "run"))
    for s in samples:  # every reject is the verdict on its sample as it is now, the corrected answer included
        if s["id"] in got:
            assert got[s["id"]][3] == judged_input(s, prompts[s["prompt_id"]])
    assert {k: got[k][3] for k in rejected_again} != {k: before[k][3] for k in rejected_again}
    assert passes["id"] in before and passes["id"] not in got
    assert passes["id"] in RunStore.open(tmp_path / "run").ids("filter", "kept-T1")

    run_sample(cfg("fresh"), engine=engine)  # the corrected prompts from the start
    fresh_funnel = run_filter(cfg("fresh"))
    assert got == _rejects(tmp_path / "fresh")
    assert funnel == fresh_funnel == RunStore.open(tmp_path / "run").stage_info("filter")["counts"]
    assert RunStore.open(tmp_path / "run").ids("filter", "kept-T1") == \
        RunStore.open(tmp_path / "fresh").ids("filter", "kept-T1")

    # the prompts rewritten again (a field no rule reads): filter begins again, and judges nothing
    other = next(p for p in rows if p["id"] not in fixed)
    write([{**p, **fixed.get(p["id"], {}), **({"meta": {"checked": True}} if p is other else {})} for p in rows])
    run_sample(cfg("run"), engine=engine)
    calls.clear()
    assert run_filter(cfg("run")) == fresh_funnel
    assert calls == [] and RunStore.open(tmp_path / "run").stage_info("filter")["judged"] == {"T1": 0}
    assert _rejects(tmp_path / "run") == got


def test_a_filter_that_recorded_no_shards_makes_a_kept_output_again_under_a_corrected_answer(tmp_path, caplog):
    """A filter of an earlier dasd recorded no shards it read, so a corrected answer does not re-link
    its kept outputs before it begins (``also_made_from``): a kept sample the new answer fails would
    stay kept beside its new reject. Its pool's kept output is made again instead (one warning): the
    kept samples, the funnel and which samples are rejected by which rule are a fresh run's (a sample
    rejected again keeps its reject as it was written, with the digest of then)."""
    write, cfg, rows, engine = _sampled_and_filtered(tmp_path)
    store = RunStore.open(tmp_path / "run")
    kept = store.ids("filter", "kept-T1")
    right = next(s["prompt_id"] for s in store.read("sample", "pool-T1") if s["id"] in kept)
    write([{**p, **({"answer": str(int(p["answer"]) + 1000)} if p["id"] == right else {})} for p in rows])
    run_sample(cfg("run"), engine=engine)
    manifest = tmp_path / "run" / "manifest.json"
    data = json.loads(manifest.read_text(encoding="utf-8"))
    del data["stages"]["filter"]["read"]  # as an earlier dasd wrote it
    manifest.write_text(json.dumps(data), encoding="utf-8")

    caplog.clear()
    funnel = run_filter(cfg("run"))
    assert "sample(s) kept by an earlier run are dropped by the rules now" in caplog.text
    run_sample(cfg("fresh"), engine=engine)
    assert funnel == run_filter(cfg("fresh"))
    got, fresh = RunStore.open(tmp_path / "run"), RunStore.open(tmp_path / "fresh")
    assert got.ids("filter", "kept-T1") == fresh.ids("filter", "kept-T1")
    assert {k: v[:3] for k, v in _rejects(tmp_path / "run").items()} == \
        {k: v[:3] for k, v in _rejects(tmp_path / "fresh").items()}
