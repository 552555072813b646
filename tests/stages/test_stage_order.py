"""A stage run out of order on a run whose earlier stage is out of date: `dasd score` after the
pools grew and before `dasd filter` judged the new samples (they were silently left unscored), and
`dasd select` after `dasd filter` made its kept output again and before `dasd score` (select read
scores of rows that are gone), training data and `dasd mix` after `dasd score` and before `dasd
select` (a selection of the old scores). Each is refused in one line naming the stage to run
(``runs.require_current``); run in order, the stages go on as before."""

from __future__ import annotations

import pytest

from dasd.errors import DasdError
from dasd.prompts import toy_prompts
from dasd.runs import changed_since, named_pools
from dasd.stages.filter import run_filter
from dasd.stages.mix import run_mix_stage
from dasd.stages.sample import run_sample
from dasd.stages.score import run_score
from dasd.stages.select import run_select
from dasd.store import RunStore
from graded_runs import graded_toy_run


def test_a_stage_whose_inputs_changed_since_it_ran_is_not_read_before_it_runs_again(tmp_path):
    write, cfg = graded_toy_run(tmp_path, "sample.k=2", "sample.temperatures=[1.0]")
    run = tmp_path / "run"
    rows = toy_prompts(6, 0, "train", None)
    write(rows[:4])
    run_sample(cfg("run"))
    run_filter(cfg("run"))
    store = RunStore.open(run)
    assert changed_since(store, "filter") == []

    write(rows)  # two more prompts: the pool grows by their samples
    assert run_sample(cfg("run"))["T1"]["new"] == 4
    assert changed_since(RunStore.open(run), "filter") == ["sample/pool-T1 grew", "sample/prompts grew"]
    with pytest.raises(DasdError) as err:
        run_score(cfg("run"))
    assert str(err.value).startswith(f"{run}: `dasd filter`'s output is older than what it read (sample/pool-T1 grew")
    assert str(err.value).endswith("so `dasd score` would read out-of-date records; run `dasd filter`, then `dasd score`")
    assert "score" not in RunStore.open(run).manifest["stages"]

    funnel = run_filter(cfg("run"))["T1"]
    scored = run_score(cfg("run"))["T1"]
    assert funnel["in"] == 12 and scored["scored"] + scored["rejected"] == funnel["out"] == 8  # the new ones too
    run_select(cfg("run"))

    # filter makes its kept output again under another setting; select before score is refused
    changed = cfg("run").model_copy(update={"filter": cfg("run").filter.model_copy(update={"require_correct": False})})
    run_filter(changed)
    assert any(c.startswith("filter/kept-T1") for c in changed_since(RunStore.open(run), "score"))
    with pytest.raises(DasdError, match=r"`dasd score`'s output is older than what it read \(filter/kept-T1 .*"
                                        r"run `dasd score`, then `dasd select`$"):
        run_select(changed)
    run_score(changed)
    assert changed_since(RunStore.open(run), "score") == []
    # score scored again; select's selection is of the old scores: training data and mix are refused
    for read in (lambda: named_pools(changed, RunStore.open(run)), lambda: run_mix_stage(changed)):
        with pytest.raises(DasdError, match=r"`dasd select`'s output is older than what it read \(score/pool-T1 written again "):
            read()
    run_select(changed)
    assert set(named_pools(changed, RunStore.open(run))) >= {"low", "high"}
