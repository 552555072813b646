"""Changed settings reach what filter and select write: a filter run again with other rules does not
keep samples the new rules drop (or rejects they keep), and select ranks by the current `das`
settings, not by the summary the score stage stored under others."""

from __future__ import annotations

from dasd.config import load_config
from dasd.stages.filter import run_filter
from dasd.store import RunStore

THINK = "<think>\nAdd 2 and 3. That is 5.\n</think>\n\nThe answer is 5."


def _sample(sid: str, text: str, finish: str = "stop") -> dict:
    return {"id": sid, "prompt_id": "p0", "text": text, "finish_reason": finish,
            "teacher": {"tokens": [], "token_ids": [], "offsets": [], "logprobs": [], "logprob_mode": "raw"}}


def test_filter_run_again_with_other_rules_keeps_exactly_what_they_keep(tmp_path):
    base = [f"run_dir={tmp_path / 'run'}", "filter.max_student_tokens=null"]
    store = RunStore(tmp_path / "run")
    with store.writer("sample", "prompts") as w:
        w.add({"id": "p0", "messages": [{"role": "user", "content": "2 + 3?"}]})
    with store.writer("sample", "pool-T1") as w:
        w.add(_sample("ok", THINK))
        w.add(_sample("cut", THINK, finish="length"))
        w.add(_sample("bare", "Add 2 and 3. The answer is 5."))

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
