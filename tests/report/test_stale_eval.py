"""The report shows a training stage's evaluation results only while they are those of the stage's
model: while the stage is trained again, when a stage it was trained from was, and once it was
trained again or deleted and not evaluated since, they are left out with a line saying why, as
`dasd eval` refuses or drops them; evaluated again, the new model's results are shown."""

from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path

import pytest

from dasd.config import load_config
from dasd.errors import DasdError
from dasd.report.build import render_report
from dasd.runs import results_name
from dasd.stages.analyze import run_analyze
from dasd.stages.eval import run_evaluation
from dasd.stages.train import run_train
from dasd.store import RunStore


def _data(tmp_path: Path) -> Path:
    path = tmp_path / "ex.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"{i} + {i % 3}?"},
                          {"role": "assistant", "content": f"<think>{i} + {i % 3} = {i + i % 3}.</think> {i + i % 3}"}]}
            for i in range(6)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _cfg(run: Path, data: Path, lr: float):
    """Stage s from the toy student, t from s; both evaluated on 2 toy problems, 2 samples each."""
    return load_config(None, [
        f"run_dir={run}", "train.save_every=1", "eval.models=[s, t]", "eval.workers=0",
        "eval.benchmarks=[{name: toy, format: toy, limit: 2}]",
        "eval.protocol={name: mini, temperature: 1.0, n: 2, max_tokens: 24}",
        f"train.stages=[{{name: s, data: '{data}', init: base, max_steps: 3, lr: {lr}}}, "
        f"{{name: t, data: '{data}', init: previous, max_steps: 2}}]"])


def _crash_at(stage: str, step: int):
    def hook(m):
        if m["stage"] == stage and m["step"] == step:
            raise RuntimeError("simulated crash")
    return hook


def _page(run: Path) -> dict[str, str]:
    """The report's sections by id, their text unescaped."""
    return {k: html.unescape(v) for k, v in re.findall(r'<section id="([^"]+)">(.*?)</section>', render_report(run).html,
                                                         flags=re.S)}


def _rows(section: str) -> list[str]:
    """The models of the rows of a section's first table (their first cell)."""
    m = re.search(r"<table>.*?</table>", section, flags=re.S)
    return re.findall(r"<tr><td>([^<]*)</td>", m.group(0)) if m else []


def _texts(run: Path, label: str) -> list[str]:
    return [r["text"] for r in sorted(RunStore(run).read("eval", results_name(label)),
                                      key=lambda r: (r["problem_id"], r["sample_index"]))]


def _left_out(section: str) -> list[str]:
    """The items of the section's note of left-out results."""
    m = re.search(r"<p>Evaluation results stored for a training stage.*?</p><ul>(.*?)</ul>", section, flags=re.S)
    return re.findall(r"<li>(.*?)</li>", m.group(1)) if m else []


def test_results_of_a_stage_being_trained_again_are_left_out_of_the_report_until_it_is_evaluated_again(tmp_path):
    data, run = _data(tmp_path), tmp_path / "run"
    cfg = _cfg(run, data, 2e-3)
    run_train(cfg, RunStore(run))
    old = run_evaluation(cfg)
    page = _page(run)
    assert _rows(page["summary"]) == ["s", "t"] and _rows(page["eval"]) == ["s", "t"]
    assert _left_out(page["summary"]) == [] and _left_out(page["eval"]) == []
    versions = RunStore(run).stage_info("eval")["versions"]
    assert set(versions) == {"s", "t"}
    old_texts = {label: _texts(run, label) for label in ("s", "t")}
    assert run_analyze(cfg)["model"] == "t"  # the last stage's evaluation responses, typed
    assert "The profile of" not in _page(run)["analyze"] and "share in correct %" in _page(run)["analyze"]

    # s trained again (its folder deleted, another lr), killed mid-way: its results on disk and in the
    # manifest are its old model's, and t's are of a model trained from that old s
    shutil.rmtree(run / "train" / "s")
    new = _cfg(run, data, 1e-3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_train(new, RunStore(run), on_step=_crash_at("s", 2))
    store = RunStore(run)
    assert len(list(store.read("eval", results_name("s")))) == 4 and store.stage_info("eval")["counts"]["s"] == old["s"]
    with pytest.raises(DasdError) as refused:  # what `dasd eval` says of s
        run_evaluation(new, store)
    being = str(refused.value).removeprefix(f"{run}: ")
    assert being.startswith("stage 's' is being trained")
    stale_t = (f"stage 't' was trained from 's' before that stage was trained again, so its model is not the current "
               f"one: delete {run / 'train' / 't'} and run `dasd train` to train it again")
    page = _page(run)
    expected = [f"s: 4 result(s) of an earlier model left out: {being}, then `dasd eval`",
                f"t: 4 result(s) of an earlier model left out: {stale_t}, then `dasd eval`"]
    for name in ("summary", "eval"):
        assert _rows(page[name]) == [] and _left_out(page[name]) == expected
    assert "No current evaluation results (`dasd eval`)" in page["summary"]
    assert "share in correct %" not in page["analyze"] and re.sub(r"<[^>]+>", "", page["analyze"]).endswith(
        f"The profile of t is left out: it was made from the evaluation responses of an earlier model of the stage "
        f"({stale_t}, then `dasd eval`, then `dasd analyze`).")
    assert "No evaluation yet" not in page["summary"]

    # both trained to the end, not evaluated since: still another model's results
    shutil.rmtree(run / "train" / "t")
    run_train(new, RunStore(run))
    again = "was trained again since `dasd eval` evaluated it: run `dasd eval` to evaluate its new model"
    page = _page(run)
    assert _rows(page["eval"]) == [] and _left_out(page["eval"]) == [
        f"s: 4 result(s) of an earlier model left out: stage 's' {again}",
        f"t: 4 result(s) of an earlier model left out: stage 't' {again}"]

    # evaluated again: the new models' results are shown, and nothing is left out
    run_evaluation(new)
    page = _page(run)
    assert _rows(page["summary"]) == ["s", "t"] and _left_out(page["summary"]) == [] and _left_out(page["eval"]) == []
    assert all(RunStore(run).stage_info("eval")["versions"][label] != versions[label] for label in ("s", "t"))
    assert all(_texts(run, label) != old_texts[label] for label in ("s", "t"))  # the new models' samples

    # t deleted (to be trained again): its results are of a model the run no longer has
    shutil.rmtree(run / "train" / "t")
    page = _page(run)
    assert _rows(page["eval"]) == ["s"] and _left_out(page["eval"]) == [
        f"t: 4 result(s) of an earlier model left out: stage 't' has no trained model in the run now (no "
        f"{run / 'train' / 't' / 'final'} with its done.json): run `dasd train`, then `dasd eval`"]
