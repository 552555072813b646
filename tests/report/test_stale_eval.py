"""The report shows a training stage's evaluation results only while they are those of the stage's
model: while the stage is trained again, when a stage it was trained from was, and once it was
trained again or deleted and not evaluated since, they are left out with a line saying why, as
`dasd eval` refuses or drops them; evaluated again, the new model's results are shown."""

from __future__ import annotations

import html
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


# stage s from the toy student, t from s; both evaluated on 2 toy problems, 2 samples each
EVAL = ("eval.workers=0", "eval.benchmarks=[{name: toy, format: toy, limit: 2}]",
        "eval.protocol={name: mini, temperature: 1.0, n: 2, max_tokens: 24}")


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


def _plain(section: str) -> str:
    return re.sub(r"<[^>]+>", "", section)


def _left_out(section: str) -> list[str]:
    """The items of the section's note of left-out results."""
    m = re.search(r"<p>Evaluation results stored for a training stage.*?</p><ul>(.*?)</ul>", section, flags=re.S)
    return re.findall(r"<li>(.*?)</li>", m.group(1)) if m else []


def test_results_of_a_stage_being_trained_again_are_left_out_of_the_report_until_it_is_evaluated_again(
        tmp_path, sums_chat_file, two_stage_config, crash_at):
    data, run = sums_chat_file, tmp_path / "run"
    cfg = two_stage_config(run, data, 2e-3, *EVAL)
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
    new = two_stage_config(run, data, 1e-3, *EVAL)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_train(new, RunStore(run), on_step=crash_at("s", 2))
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
    assert "share in correct %" not in page["analyze"] and _plain(page["analyze"]).endswith(
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
    # the analysis is of t's earlier responses, which `dasd eval` replaced: left out until analysed again
    assert "share in correct %" not in page["analyze"] and _plain(page["analyze"]).endswith(
        "The profile of t is left out: it was made from evaluation responses of t that `dasd eval` has replaced since "
        "(the model was trained again, or the benchmarks or protocol changed): run `dasd analyze` to analyse the "
        "current ones.")
    assert run_analyze(new)["eval_key"] == RunStore(run).stage_info("eval")["keys"]["t"]
    page = _page(run)
    assert "The profile of" not in page["analyze"] and "share in correct %" in page["analyze"]

    # t deleted (to be trained again): its results are of a model the run no longer has
    shutil.rmtree(run / "train" / "t")
    page = _page(run)
    assert _rows(page["eval"]) == ["s"] and _left_out(page["eval"]) == [
        f"t: 4 result(s) of an earlier model left out: stage 't' has no trained model in the run now (no "
        f"{run / 'train' / 't' / 'final'} with its done.json): run `dasd train`, then `dasd eval`"]


def _analysis_cfg(run: Path, lm: str, n: int):
    """The student (a tiny model, teacher too) evaluated on 2 toy problems, n samples each, and analysed."""
    return load_config(None, [
        f"run_dir={run}", f"teacher.model={lm}", f"student.model={lm}", "eval.models=[student]", "eval.workers=0",
        "eval.benchmarks=[{name: toy, format: toy, limit: 2}]", "analyze.model=student",
        f"eval.protocol={{name: mini, temperature: 1.0, n: {n}, max_tokens: 16}}"])


def test_an_analysis_of_responses_eval_has_replaced_is_left_out_until_analysed_again(tmp_path, tiny_lm_dir):
    """`dasd eval` under another protocol replaces the responses `dasd analyze` typed (the model is the
    same, not a training stage): the report leaves the profile out, saying why and what to run;
    analysed again, the profile of the new responses is shown."""
    run = tmp_path / "run"
    run_evaluation(_analysis_cfg(run, tiny_lm_dir, 1))
    assert sum(run_analyze(_analysis_cfg(run, tiny_lm_dir, 1))["n_responses"].values()) == 2
    assert "share in correct %" in _page(run)["analyze"]
    run_evaluation(_analysis_cfg(run, tiny_lm_dir, 2))
    page = _page(run)
    assert "share in correct %" not in page["analyze"] and _plain(page["analyze"]).endswith(
        "The profile of student is left out: it was made from evaluation responses of student that `dasd eval` has "
        "replaced since (the model was trained again, or the benchmarks or protocol changed): run `dasd analyze` to "
        "analyse the current ones.")
    assert _rows(page["eval"]) == ["student"]  # not a training stage: its results are its model's
    assert sum(run_analyze(_analysis_cfg(run, tiny_lm_dir, 2))["n_responses"].values()) == 4
    assert "The profile of" not in _page(run)["analyze"] and "share in correct %" in _page(run)["analyze"]


def _as_before_versions(run: Path, eval_started: str | None = None, analyze_started: str | None = None) -> None:
    """The manifest as a dasd wrote it before eval recorded model versions and analyze its eval key."""
    store = RunStore(run)
    ev, an = store.manifest["stages"]["eval"], store.manifest["stages"]["analyze"]
    ev.pop("versions", None)
    an["counts"].pop("eval_key", None)
    if eval_started:
        ev["started"] = eval_started
    if analyze_started:
        an["started"] = analyze_started
    store.save_manifest()


def test_results_and_analysis_of_a_dasd_that_did_not_record_versions(tmp_path, sums_chat_file):
    """A run evaluated and analysed by a dasd that recorded neither the model versions nor the eval
    key: the stage's results are shown (not dropped) with a line saying its version is unknown; its
    analysis is shown, under a line when `dasd eval` began after it; `dasd eval` keeps the results
    (same model), records the version and the line goes; a stage deleted since is left out."""
    data, run = sums_chat_file, tmp_path / "run"
    cfg = load_config(None, [f"run_dir={run}", "eval.models=[s]", *EVAL,
                             f"train.stages=[{{name: s, data: '{data}', init: base, max_steps: 3, lr: 2e-3}}]"])
    run_train(cfg, RunStore(run))
    run_evaluation(cfg)
    texts = _texts(run, "s")
    run_analyze(cfg)
    _as_before_versions(run, eval_started="2000-01-01T00:00:00Z", analyze_started="2000-01-01T00:00:01Z")
    unknown = ("Model version unknown for s: evaluated by an earlier dasd, which did not record it, so these results are "
               "shown as the current model's without a check that the stage was not trained again since. `dasd eval` "
               "checks it (it keeps the results if the model is the same, and records the version).")
    page = _page(run)
    for name in ("summary", "eval"):
        assert _rows(page[name]) == ["s"] and _left_out(page[name]) == [] and unknown in _plain(page[name])
    assert "share in correct %" in page["analyze"] and "earlier dasd" not in page["analyze"]

    run_evaluation(cfg)  # this dasd: the results kept (same model), its version recorded
    store = RunStore(run)
    assert _texts(run, "s") == texts and set(store.stage_info("eval")["versions"]) == {"s"}
    began = store.stage_info("eval")["started"]
    page = _page(run)
    assert _rows(page["eval"]) == ["s"] and unknown not in _plain(page["eval"])
    assert "share in correct %" in page["analyze"] and (
        f"This profile was made by an earlier dasd, which did not record which evaluation responses it analysed, and "
        f"`dasd eval` ran after it (began {began}; `dasd analyze` began 2000-01-01T00:00:01Z): if that evaluated s "
        "again, the profile is of the earlier responses. Run `dasd analyze` to be sure.") in _plain(page["analyze"])

    shutil.rmtree(run / "train" / "s")  # deleted (to be trained again), the versions unrecorded
    _as_before_versions(run)
    gone = (f"stage 's' has no trained model in the run now (no {run / 'train' / 's' / 'final'} with its done.json): "
            "run `dasd train`, then `dasd eval`")
    page = _page(run)
    assert _rows(page["eval"]) == [] and _left_out(page["eval"]) == [f"s: 4 result(s) of an earlier model left out: {gone}"]
    assert "share in correct %" not in page["analyze"] and _plain(page["analyze"]).endswith(
        f"The profile of s is left out: it was made from the evaluation responses of an earlier model of the stage "
        f"({gone}, then `dasd analyze`).")
