"""A training stage being trained again never passes for finished: while it trains (or after it was
killed), `dasd eval`, `dasd mix` (the latest student) and the report do not present its old model,
or a model trained from it, as the stage's current one; once it finishes they use the new one."""

from __future__ import annotations

import html
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dasd.errors import DasdError
from dasd.report.build import render_report
from dasd.runs import latest_student, mix_not_current, model_for, model_version
from dasd.stages.eval import run_evaluation
from dasd.stages.train import run_train
from dasd.store import RunStore
from dasd.train import checkpoint as ckpt


def _train_status(root: Path) -> dict[str, str]:
    page = render_report(root).html
    section = re.search(r'<section id="train">(.*?)</section>', page, flags=re.S).group(1)
    return {k: html.unescape(v) for k, v in re.findall(r"<tr><td>(s|t)</td><td>([^<]*)</td>", section)}


def _weights(final) -> dict:
    return load_file(str(Path(final) / "model.safetensors"))


def test_a_stage_trained_again_is_not_served_until_it_finishes_and_then_the_new_model_is(tmp_path, sums_chat_file,
                                                                                       two_stage_config, crash_at):
    data = sums_chat_file
    run = tmp_path / "run"
    cfg = two_stage_config(run, data, 2e-3)
    old_s, old_t = run_train(cfg, RunStore(run))
    store = RunStore(run)
    assert model_for(cfg, store, "s").model == old_s["final"]
    assert latest_student(cfg, store) == ("t", old_t["final"])
    old_version = model_version(old_s["final"])

    # train s again with another lr (its folder deleted, as docs/training.md says), killed mid-way
    shutil.rmtree(run / "train" / "s")
    new = two_stage_config(run, data, 1e-3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_train(new, RunStore(run), on_step=crash_at("s", 2))
    store = RunStore(run)
    assert not store.stage_info("train")["complete"]
    being = f"{run}: stage 's' is being trained (it began and has not finished: no {run / 'train' / 's' / 'done.json'}): " \
            "run `dasd train` to finish it"
    stale = (f"{run}: stage 't' was trained from 's' before that stage was trained again, so its model is not the "
             f"current one: delete {run / 'train' / 't'} and run `dasd train` to train it again")
    for label, line in (("s", being), ("t", stale)):
        with pytest.raises(DasdError) as err:
            model_for(new, store, label)
        assert str(err.value) == line
    with pytest.raises(DasdError) as err:  # `dasd mix`'s student: neither s's old model nor t's
        latest_student(new, store)
    assert str(err.value) == being
    with pytest.raises(DasdError) as err:  # `dasd eval` refuses before anything is evaluated or recorded
        run_evaluation(new, store)
    assert str(err.value) == being
    assert not RunStore(run).stage_info("eval")
    status = _train_status(run)
    assert status["s"].startswith("interrupted or running (2 steps so far)")
    assert status["t"] == "out of date: " + stale.removeprefix(f"{run}: ")

    # a finished `dasd mix` (made with the old models) is not current while s trains, and `dasd train`,
    # which asks it (``named_pools``), still runs
    store.begin_stage("mix", {"mix": new.mix.model_dump(mode="json")})
    store.end_stage("mix", {})
    assert mix_not_current(new, store) == f"the student it would use is not known ({being})"

    # t is deleted as the line says; the next `dasd train` resumes s and trains t from it
    shutil.rmtree(run / "train" / "t")
    seen = []
    s, t = run_train(new, RunStore(run), on_step=lambda m: seen.append((m["stage"], m["step"])))
    assert seen == [("s", 3), ("t", 1), ("t", 2)]  # s resumed after its step-2 checkpoint
    store = RunStore(run)
    assert model_for(new, store, "s").model == s["final"] and model_for(new, store, "t").model == t["final"]
    assert latest_student(new, store) == ("t", t["final"])
    assert model_version(s["final"]) != old_version
    assert _train_status(run) == {"s": "done", "t": "done"}

    # resumed == uninterrupted: the same retrained model as a fresh run with the new lr
    fresh = tmp_path / "fresh"
    ref_s, ref_t = run_train(two_stage_config(fresh, data, 1e-3), RunStore(fresh))
    for got, ref in ((s, ref_s), (t, ref_t)):
        a, b = _weights(got["final"]), _weights(ref["final"])
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
        assert got["final_loss"] == pytest.approx(ref["final_loss"], abs=1e-6)


def test_a_stage_killed_between_its_final_model_and_done_json_is_not_served(tmp_path, sums_chat_file, monkeypatch,
                                                                           two_stage_config):
    """``final/`` is written before ``done.json``: a kill in between leaves a final model that is not
    the stage's result yet (its model card, its Hub upload and done.json are still to come)."""
    data = sums_chat_file
    run = tmp_path / "run"
    cfg = two_stage_config(run, data, 2e-3)

    def killed(stage_dir, result):
        raise RuntimeError("simulated crash")

    with monkeypatch.context() as m:
        m.setattr(ckpt, "write_done", killed)
        with pytest.raises(RuntimeError, match="simulated crash"):
            run_train(cfg, RunStore(run))
    assert (run / "train" / "s" / "final" / "config.json").is_file()
    store = RunStore(run)
    with pytest.raises(DasdError, match=r"stage 's' is being trained .*run `dasd train` to finish it"):
        model_for(cfg, store, "s")
    with pytest.raises(DasdError, match=r"stage 's' is being trained"):
        latest_student(cfg, store)
    s, t = run_train(cfg, RunStore(run))
    store = RunStore(run)
    assert model_for(cfg, store, "s").model == s["final"]
    assert latest_student(cfg, store) == ("t", t["final"])
