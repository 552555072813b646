"""A stage never consumes another stage's unfinished output (issue 15, item 1): a stage that began
and did not finish blocks the stages that read it, with one clear line; finishing it unblocks them."""

from __future__ import annotations

import pytest

from dasd.config import load_config
from dasd.errors import DasdError
from dasd.runs import named_pools
from dasd.stages.filter import run_filter
from dasd.stages.score import run_score
from dasd.stages.select import run_select
from dasd.store import RunStore


@pytest.mark.parametrize("stage, runner, needs", [
    ("sample", run_filter, "filter"), ("filter", run_score, "score"), ("score", run_select, "select"),
    ("select", lambda cfg, store: named_pools(cfg, store), "train"),
])
def test_a_reader_of_an_unfinished_stage_is_refused(tmp_path, stage, runner, needs):
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}"])
    store = RunStore(cfg.run_dir)
    with store.writer("sample", "prompts") as w:
        w.add({"id": "p0", "messages": [{"role": "user", "content": "hi"}]})
    store.begin_stage(stage, {"x": 1})  # began, never ended: an interrupted stage
    with pytest.raises(DasdError, match=rf"stage '{stage}' began at .* did not finish.*`dasd {stage}`.*`dasd {needs}`"):
        runner(cfg, store)
    store.end_stage(stage, {})
    runner(cfg, store)  # finished (nothing in it here): the reader runs


def test_models_inside_a_run_are_named_relative_to_it(tmp_path):
    """Issue 15, item 3: mix ids name the run's own student relative to the run, so they survive a move."""
    from dasd.runs import model_key

    a, b = RunStore(tmp_path / "a"), RunStore(tmp_path / "b")
    assert model_key(a, str(a.root / "train" / "stage2_high" / "final")) == "run:train/stage2_high/final"
    assert model_key(a, str(b.root / "train" / "stage2_high" / "final")) == str(b.root / "train" / "stage2_high" / "final")
    assert model_key(a, "/models/Qwen3-4B") == "/models/Qwen3-4B"


def test_train_before_select_says_to_run_select(tmp_path):
    # `dasd train` on a run where select never ran said "data 'low' is neither a named pool nor an
    # existing file" (and left train marked as begun); a stage whose data is a file needs no select
    from dasd.stages.train import run_train

    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}"])
    store = RunStore(cfg.run_dir)
    with pytest.raises(DasdError, match=r"stage 'select' has not run in this run directory, so `dasd train` has "
                                        r"nothing to read; run `dasd select` first"):
        run_train(cfg, store)
    assert not store.stage_info("train")
    data = tmp_path / "ex.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "1 + 1?"}, {"role": "assistant", "content": "2"}]}\n')
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", f"train.stages=[{{name: s, data: '{data}', init: base, "
                             "max_steps: 1}]", "train.save_every=0"])
    (res,) = run_train(cfg, store)
    assert res["name"] == "s" and res["steps"] == 1 and res["examples"] == 1
