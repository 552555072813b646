"""Changed settings reach what filter, select and analyze make: a filter run again with other rules
does not keep samples the new rules drop (or rejects they keep); select ranks by the current `das`
settings, not by the summary the score stage stored under others; analyze types the responses it
resumes under the current thresholds."""

from __future__ import annotations

import pytest

from dasd.config import load_config
from dasd.errors import DasdError
from dasd.rules.das import score_sample
from dasd.stages.filter import run_filter
from dasd.stages.select import run_select
from dasd.store import RunStore

THINK = "<think>\nAdd 2 and 3. That is 5.\n</think>\n\nThe answer is 5."


def _sample(sid: str, text: str, finish: str = "stop") -> dict:
    return {"id": sid, "prompt_id": "p0", "text": text, "finish_reason": finish,
            "teacher": {"tokens": [], "token_ids": [], "offsets": [], "logprobs": [], "logprob_mode": "raw"}}


def _sampled_run(tmp_path, *samples: dict) -> tuple[list[str], RunStore]:
    """A run holding one prompt and ``samples`` in pool T1, and the overrides that filter it."""
    store = RunStore(tmp_path / "run")
    with store.writer("sample", "prompts") as w:
        w.add({"id": "p0", "messages": [{"role": "user", "content": "2 + 3?"}]})
    with store.writer("sample", "pool-T1") as w:
        for s in samples:
            w.add(s)
    return [f"run_dir={tmp_path / 'run'}", "filter.max_student_tokens=null"], store


def test_filter_run_again_with_other_rules_keeps_exactly_what_they_keep(tmp_path):
    base, store = _sampled_run(tmp_path, _sample("ok", THINK), _sample("cut", THINK, finish="length"),
                               _sample("bare", "Add 2 and 3. The answer is 5."))

    def outcome(*overrides):
        counts = run_filter(load_config(None, [*base, *overrides]), store)
        kept = sorted(s["id"] for s in store.read("filter", "kept-T1"))
        rejects = {r["id"]: r["rule"] for r in store.read("filter", "rejects")}
        assert counts["T1"]["out"] == len(kept) and sum(counts["T1"]["dropped"].values()) == len(rejects)
        return kept, rejects

    assert outcome() == (["ok"], {"cut": "cutoff", "bare": "structure"})
    assert outcome("filter.drop_cutoff=false") == (["cut", "ok"], {"bare": "structure"})
    assert outcome("filter.require_structure=false") == (["bare", "ok"], {"cut": "cutoff"})
    assert outcome() == (["ok"], {"cut": "cutoff", "bare": "structure"})


def test_select_ranks_by_the_current_das_settings_not_the_stored_summary(tmp_path):
    """Two candidates of one prompt, scored under tau = ln 2: "a" has one Teacher sentence (delta 1.0)
    and one Shared (0.0), "b" two Shared ones (0.5 each). DAS keeps "a"; with das.tau=0.3 both of
    b's sentences are Teacher sentences and it must keep "b", though the stored summaries say tau ln 2."""
    text = "One. Two."
    offsets = [(0, 4), (4, 9)]  # one token per sentence ("One. " and "Two.") on both sides
    signals = {"a": ([-0.5, -1.0], [-1.5, -1.0]), "b": ([-1.0, -1.0], [-1.5, -1.5])}
    store = RunStore(tmp_path / "run")
    with store.writer("sample", "prompts") as w:
        w.add({"id": "p0", "messages": [{"role": "user", "content": "Count."}]})
    with store.writer("score", "pool-T1") as w:
        for sid, (t_lp, s_lp) in signals.items():
            sample = {"id": sid, "prompt_id": "p0", "temperature": 1.0, "text": text, "finish_reason": "stop",
                      "teacher": {"offsets": offsets, "logprobs": t_lp, "logprob_mode": "raw"}}
            w.add(score_sample(sample, offsets, s_lp))  # under the default das settings
    base = [f"run_dir={tmp_path / 'run'}"]

    def kept(*overrides):
        summary = run_select(load_config(None, [*base, *overrides]), store, grade=None)
        return [s["id"] for s in store.read("select", "selected-T1")], summary["T1"]["selected"]["das_score"]

    assert kept() == (["a"], 0.5)
    assert kept("das.tau=0.3") == (["b"], 1.0)
    # the report shows the sentence types and DAS scores select ranked by, not the stored ones
    from dasd.report.data import scan_data
    from dasd.report.view import RunView

    ps = scan_data(RunView(store))[0]["T1"]
    assert dict(ps.sentence_types) == {"teacher": 3, "shared": 1}  # a: 1.0 and 0.0, b: 0.5 and 0.5 against 0.3
    assert ps.tau == 0.3 and list(ps.das["selected"]) == [1.0] and list(ps.das["rejected"]) == [0.5]
    assert ps.example["id"] == "b" and [r["type"] for r in ps.example["sentences"]] == ["teacher", "teacher"]
    # per character: a delta of 0.29 bits/char against b's 0.14 and 0.18
    assert kept("das.tau=0.3", "das.penalty=0", "das.unit=char", "das.tau_char=0.2") == (["a"], 0.5)
    # a row without the per-character log-probs: one line naming shard, sample and field, no traceback
    rows = [dict(r, lpc_teacher=None) for r in next(store.read("score", "pool-T1"))["sentences"]]
    with store.writer("score", "pool-T1") as w:
        w.add({**next(store.read("score", "pool-T1")), "id": "a2", "sentences": rows})
    with pytest.raises(DasdError, match=r"pool-T1-00001.parquet: sample a2: sentences\[0\]: no 'lpc_teacher'"):
        kept("das.unit=char")


def test_analyze_types_resumed_responses_under_the_current_thresholds(tmp_path, tiny_lm_dir, tiny_lm_dir_other_vocab):
    """The profile after changing analyze.tau / boosted on a run whose responses are already scored
    (resumed by id, nothing scored again) equals the profile of a fresh run with those settings."""
    import json
    import shutil

    from dasd.stages.analyze import run_analyze
    from dasd.stages.eval import run_evaluation

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "p0", "prompt": "Say 0."}) + "\n", encoding="utf-8")

    def cfg(run, *extra):
        return load_config(None, [
            f"run_dir={run}", f"data.prompts={prompts}", f"teacher.model={tiny_lm_dir_other_vocab}",
            f"student.model={tiny_lm_dir}", f"analyze.model={tiny_lm_dir}", f"eval.models=[{tiny_lm_dir}]",
            "eval.benchmarks=[{name: toy, format: toy, limit: 2}]", "eval.workers=0",
            "eval.protocol={name: mini, temperature: 1.0, n: 2, max_tokens: 24}", *extra])

    run_evaluation(cfg(tmp_path / "run"))
    shutil.copytree(tmp_path / "run", tmp_path / "fresh")
    default = run_analyze(cfg(tmp_path / "run"))
    responses = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run" / "analyze").glob("responses-*")}
    other = ("analyze.tau=0.05", "analyze.tau_boost=0.05", "analyze.boosted=higher")
    resumed = run_analyze(cfg(tmp_path / "run", *other))
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run" / "analyze").glob("responses-*")} == responses
    assert resumed == run_analyze(cfg(tmp_path / "fresh", *other))
    assert resumed["types"] != default["types"] and resumed["tau"] == 0.05 and resumed["boosted"] == "higher"


def test_analyze_of_responses_to_problems_no_longer_configured_is_one_line(tmp_path, tiny_lm_dir, tiny_lm_dir_other_vocab):
    """Evaluated on 2 toy problems, analysed with eval.benchmarks limited to 1 (without `dasd eval`
    again): one line naming the problem and what to run, not a KeyError; nothing begun."""
    from dasd.stages.analyze import run_analyze
    from dasd.stages.eval import run_evaluation

    def cfg(limit):
        return load_config(None, [
            f"run_dir={tmp_path / 'run'}", f"teacher.model={tiny_lm_dir_other_vocab}", f"student.model={tiny_lm_dir}",
            f"analyze.model={tiny_lm_dir}", f"eval.models=[{tiny_lm_dir}]", "eval.workers=0",
            f"eval.benchmarks=[{{name: toy, format: toy, limit: {limit}}}]",
            "eval.protocol={name: mini, temperature: 1.0, n: 1, max_tokens: 8}"])

    run_evaluation(cfg(2))
    with pytest.raises(DasdError, match=r"answer problem 'toy-\w+' of benchmark 'toy', which the configured "
                                        r"eval.benchmarks do not hold .*run `dasd eval` with this config first"):
        run_analyze(cfg(1))
    assert RunStore.open(tmp_path / "run").stage_info("analyze") == {}
    assert sum(run_analyze(cfg(2))["n_responses"].values()) == 2  # the settings the responses were made with


def test_filter_killed_while_dropping_for_new_rules_drops_them_on_the_next_run(tmp_path, monkeypatch):
    """The outputs made under the old rules are dropped before the stage begins with the new ones: a
    run killed in between (here, in the drop) still sees the old settings recorded and drops again."""
    base, store = _sampled_run(tmp_path, _sample("ok", THINK), _sample("cut", THINK, finish="length"))
    run_filter(load_config(None, base), store)
    assert sorted(s["id"] for s in store.read("filter", "kept-T1")) == ["ok"]

    def killed(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(RunStore, "remove_outputs", killed)
    with pytest.raises(KeyboardInterrupt):
        run_filter(load_config(None, [*base, "filter.drop_cutoff=false"]), store)
    monkeypatch.undo()
    run_filter(load_config(None, [*base, "filter.drop_cutoff=false"]), store)
    assert sorted(s["id"] for s in store.read("filter", "kept-T1")) == ["cut", "ok"]
    assert {r["id"] for r in store.read("filter", "rejects")} == set()


def test_a_stage_killed_after_dropping_for_new_settings_is_unfinished_and_later_stages_wait(tmp_path, monkeypatch):
    """Filter run again with other rules drops its outputs before it begins with the new settings.
    Killed in between, it was still recorded as finished (with its old counts) while its outputs were
    gone, so `dasd select` (through score) would read nothing as if it were the data. Now it is
    unfinished from the first drop: a later stage refuses it in one line, and its re-run makes what
    the new rules keep."""
    from dasd.runs import require_finished

    base, store = _sampled_run(tmp_path, _sample("ok", THINK), _sample("cut", THINK, finish="length"))
    run_filter(load_config(None, base), store)
    assert store.stage_info("filter")["complete"]

    def killed(self, stage, *args, **kwargs):  # the drops are done: killed as the stage begins again
        raise KeyboardInterrupt
    monkeypatch.setattr(RunStore, "begin_stage", killed)
    with pytest.raises(KeyboardInterrupt):
        run_filter(load_config(None, [*base, "filter.drop_cutoff=false"]), store)
    monkeypatch.undo()
    assert list(store.read("filter", "kept-T1")) == []  # dropped
    reopened = RunStore.open(tmp_path / "run")
    assert not reopened.stage_info("filter")["complete"]
    with pytest.raises(DasdError, match="stage 'filter' began at .* and did not finish"):
        require_finished(reopened, "filter", "score")
    run_filter(load_config(None, [*base, "filter.drop_cutoff=false"]), reopened)
    assert sorted(s["id"] for s in reopened.read("filter", "kept-T1")) == ["cut", "ok"]
    assert reopened.stage_info("filter")["complete"]
