"""The eval stage resumes only results that belong to the same model, benchmarks and protocol."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from dasd.config import load_config
from dasd.errors import InputError
from dasd.grading.metrics import summarize
from dasd.report.models import scan_eval
from dasd.report.view import RunView
from dasd.runs import model_for, open_engine, results_name
from dasd.stages.eval import eval_key, evaluate_model, run_evaluation
from dasd.store import RunStore
from model_edits import replace_weights


def _cfg(tmp_path, model_dir, temperature=1.0):
    return load_config(None, [
        f"run_dir={tmp_path / 'run'}", f"teacher.model={model_dir}", f"student.model={model_dir}",
        "eval.benchmarks=[{name: toy, format: toy, limit: 3}]",
        f"eval.protocol={{name: mini, temperature: {temperature}, n: 2, max_tokens: 16}}",
        "eval.models=[student]", "eval.workers=0",
    ])


def _results(cfg):
    return list(RunStore(cfg.run_dir).read("eval", results_name("student")))


def test_results_are_reused_for_the_same_model_and_protocol_and_redone_otherwise(tmp_path, tiny_lm_dir):
    model = tmp_path / "model"
    shutil.copytree(tiny_lm_dir, model)
    cfg = _cfg(tmp_path, model)
    run_evaluation(cfg)
    first = _results(cfg)
    assert len(first) == 3 * 2 and {r["protocol"]["temperature"] for r in first} == {1.0}
    files = sorted(p.name for p in (Path(cfg.run_dir) / "eval").iterdir())

    summary = run_evaluation(cfg)  # same model, same protocol: nothing is generated again
    assert sorted(p.name for p in (Path(cfg.run_dir) / "eval").iterdir()) == files
    assert _results(cfg) == first
    assert summary["student"] == summarize(first)  # the summary of the stored results, read back from the run

    hot = _cfg(tmp_path, model, temperature=0.5)  # another protocol: the old results are not reported
    run_evaluation(hot)
    again = _results(hot)
    assert len(again) == 3 * 2 and {r["protocol"]["temperature"] for r in again} == {0.5}

    replace_weights(model)  # the model under the label changed (a retrained stage)
    store = RunStore(hot.run_dir)
    key_before = store.stage_info("eval")["keys"]["student"]
    run_evaluation(hot)
    assert RunStore(hot.run_dir).stage_info("eval")["keys"]["student"] != key_before
    assert len(_results(hot)) == 3 * 2


def test_a_stage_models_version_follows_its_training_record_not_its_files(tmp_path, tiny_lm_dir):
    """A run's own model is versioned by its stage's done.json: a copied run keeps the version (its
    results stay valid), a retrained stage (another done record) gets a new one; another directory
    is versioned by its files."""
    from dasd.runs import model_version

    final = tmp_path / "run" / "train" / "stage1_low" / "final"
    shutil.copytree(tiny_lm_dir, final)
    (final.parent / "done.json").write_text('{"fingerprint": "a", "steps": 4, "final_loss": 1.5}', encoding="utf-8")
    v = model_version(str(final))
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "run", copy)
    assert model_version(str(copy / "train" / "stage1_low" / "final")) == v
    (final.parent / "done.json").write_text('{"fingerprint": "a", "steps": 4, "final_loss": 1.2}', encoding="utf-8")
    assert model_version(str(final)) != v
    plain = model_version(tiny_lm_dir)
    assert plain and plain == model_version(tiny_lm_dir) and model_version("org/some-hub-model") == ""


def test_a_directory_models_version_follows_its_contents_not_its_times(tmp_path, tiny_lm_dir):
    """A copy or a re-install (new modification times, same bytes) keeps the version; new weights change it."""
    from dasd.runs import model_version

    model = tmp_path / "m"
    shutil.copytree(tiny_lm_dir, model)
    v = model_version(str(model))
    weights = model / "model.safetensors"
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert model_version(str(model)) == v == model_version(tiny_lm_dir)
    replace_weights(model)
    assert model_version(str(model)) != v


def test_file_digest_samples_large_files_from_first_to_last_byte(tmp_path):
    from dasd.runs import BLOCK, BLOCKS, file_digest

    big = tmp_path / "shard.bin"
    data = bytearray(BLOCKS * BLOCK * 3)
    big.write_bytes(data)
    d0 = file_digest(big)
    for pos in (0, len(data) - 1, (len(data) - BLOCK) * 7 // (BLOCKS - 1)):  # first, last, a sampled block
        changed = bytearray(data)
        changed[pos] = 1
        big.write_bytes(changed)
        assert file_digest(big) != d0
    big.write_bytes(data + b"x")  # the size is part of it
    assert file_digest(big) != d0


def test_the_same_model_spelled_another_way_keeps_its_results(tmp_path, tiny_lm_dir, monkeypatch):
    """A model known by its files is the same model under a relative or an absolute path: its
    results are reused, not generated again; results stored under the earlier key (which named the
    path as spelled) are recognised too."""
    model = tmp_path / "model"
    shutil.copytree(tiny_lm_dir, model)
    cfg = _cfg(tmp_path, model.absolute())
    run_evaluation(cfg)
    first = _results(cfg)
    files = sorted(p.name for p in (Path(cfg.run_dir) / "eval").iterdir())
    key = RunStore(cfg.run_dir).stage_info("eval")["keys"]["student"]

    monkeypatch.chdir(tmp_path)
    relative = _cfg(tmp_path, "model")
    run_evaluation(relative)
    assert sorted(p.name for p in (Path(cfg.run_dir) / "eval").iterdir()) == files and _results(relative) == first

    store = RunStore(cfg.run_dir)
    legacy = eval_key(store, relative.eval, model_for(relative, store, "student"), legacy=True)
    assert legacy != key
    store.manifest["stages"]["eval"]["keys"]["student"] = legacy  # as an earlier version stored it
    store.save_manifest()
    run_evaluation(relative)
    assert _results(relative) == first and RunStore(cfg.run_dir).stage_info("eval")["keys"]["student"] == key


def test_eval_of_a_stage_not_trained_yet_is_an_error_naming_it(tmp_path, tiny_lm_dir, capsys):
    """`dasd eval` with a training stage among eval.models before `dasd train` made it: exit 2 with
    one line naming the stage and `dasd train`; nothing evaluated, eval not recorded as complete."""
    from dasd.cli import main

    run = tmp_path / "run"

    def dasd_eval(models):
        return main(["eval", f"run_dir={run}", f"teacher.model={tiny_lm_dir}", f"student.model={tiny_lm_dir}",
                     "eval.benchmarks=[{name: toy, format: toy, limit: 2}]", f"eval.models=[{models}]",
                     "eval.protocol={name: mini, temperature: 1.0, n: 1, max_tokens: 8}", "eval.workers=0"])

    RunStore(run)  # a run that exists (where no run does, the CLI says so first: tests/core/test_cli_misuse.py)
    for models, named in (("student, stage1_low", "'stage1_low'"), ("stage3_mixed", "'stage3_mixed'")):
        code = dasd_eval(models)  # stage3_mixed is optional, but training has not run to skip it
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2
        assert len(err) == 1 and f"eval.models: {named} not trained" in err[0] and "`dasd train`" in err[0], err
        assert "eval" not in RunStore(run).manifest["stages"] and not (run / "eval").exists()

    # training finished: stage 1 trained, stage3_mixed (optional in the default schedule) skipped for
    # want of mixed data (as when `dasd mix` kept nothing): stage 1 is evaluated, stage 3 skipped with a
    # log line, as in `dasd run`
    final = run / "train" / "stage1_low" / "final"
    shutil.copytree(tiny_lm_dir, final)
    (final.parent / "done.json").write_text('{"name": "stage1_low", "fingerprint": "a", "steps": 1, "final_loss": 1.0}',
                                            encoding="utf-8")
    store = RunStore(run)
    store.begin_stage("train", {})
    store.end_stage("train", {"stage1_low": {"steps": 1, "final_loss": 1.0, "final": "train/stage1_low/final"}})
    code = dasd_eval("stage1_low, stage3_mixed")
    assert code == 0 and "stage3_mixed: not trained in this run, skipped" in capsys.readouterr().err
    info = RunStore(run).stage_info("eval")
    assert info["complete"] and list(info["counts"]) == ["stage1_low"] and info["counts"]["stage1_low"][-1]["samples"] == 2


def test_a_bad_benchmark_is_refused_before_anything_is_evaluated_or_dropped(tmp_path, tiny_lm_dir):
    """A second benchmark whose file is broken: an InputError naming its file and line before the
    first benchmark is evaluated, and the label's results of the earlier evaluation are kept."""
    cfg = _cfg(tmp_path, tiny_lm_dir)
    run_evaluation(cfg)
    first = _results(cfg)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"id": "q1", "prompt": "1 + 1?", "answer": "2"}\nnot json\n', encoding="utf-8")
    again = load_config(None, [
        f"run_dir={tmp_path / 'run'}", f"teacher.model={tiny_lm_dir}", f"student.model={tiny_lm_dir}",
        f"eval.benchmarks=[{{name: toy, format: toy, limit: 3}}, {{name: mine, format: prompts, path: {broken}}}]",
        "eval.protocol={name: mini, temperature: 1.0, n: 1, max_tokens: 16}", "eval.models=[student]", "eval.workers=0",
    ])
    with pytest.raises(InputError, match=r"broken\.jsonl:2"):
        run_evaluation(again)
    assert _results(cfg) == first and RunStore.open(cfg.run_dir).stage_info("eval")["complete"]
    broken.write_text('{"id": "q1", "prompt": "1 + 1?", "answer": "2"}\n{"id": "q2", "prompt": "Why?"}\n',
                      encoding="utf-8")  # q2 has nothing to grade against
    with pytest.raises(InputError, match=r"benchmark 'mine' .*problem 'q2': nothing to grade against"):
        run_evaluation(again)
    assert _results(cfg) == first and RunStore.open(cfg.run_dir).stage_info("eval")["complete"]


class Crash(Exception):
    pass


class CrashAfter:
    """A real engine that dies after ``n`` generate calls (a crash mid-evaluation)."""

    def __init__(self, engine, n):
        self.engine, self.n, self.name = engine, n, engine.name

    def generate(self, reqs):
        if self.n == 0:
            raise Crash()
        self.n -= 1
        return self.engine.generate(reqs)


def test_an_evaluation_that_stops_after_dropping_results_never_reports_their_old_summary(tmp_path, tiny_lm_dir):
    """Evaluated with n 2; then again with n 1 (the old results dropped) and the process dies after
    one batch: the report's numbers are those of the results on disk, not the manifest's summary of
    the 6 dropped ones."""
    run_evaluation(_cfg(tmp_path, tiny_lm_dir))
    again = load_config(None, [
        f"run_dir={tmp_path / 'run'}", f"teacher.model={tiny_lm_dir}", f"student.model={tiny_lm_dir}",
        "eval.benchmarks=[{name: toy, format: toy, limit: 3}]", "eval.batch_requests=2",
        "eval.protocol={name: mini, temperature: 1.0, n: 1, max_tokens: 16}", "eval.models=[student]", "eval.workers=0",
    ])
    store = RunStore(again.run_dir)
    store.begin_stage("eval", again.eval.model_dump(mode="json"))  # as run_evaluation does
    with pytest.raises(Crash):
        evaluate_model(again, store, "student", engine=CrashAfter(open_engine(again.student), 1))
    on_disk = _results(again)
    assert len(on_disk) == 2 and {r["protocol"]["n"] for r in on_disk} == {1}
    store = RunStore.open(again.run_dir)
    assert not store.stage_info("eval")["complete"] and "student" not in store.stage_info("eval")["counts"]
    scan = scan_eval(RunView(store))
    assert scan.rows["student"] == summarize(on_disk) and scan.rows["student"][-1]["samples"] == 2


def _toy_cfg(run, *extra):
    """The shipped toy student on 3 toy problems x 2 samples, capped at 60 tokens: some of its
    answers are longer (cut off), some shorter."""
    return load_config(None, [
        f"run_dir={run}", "eval.benchmarks=[{name: toy, format: toy, limit: 3}]",
        "eval.protocol={name: short, temperature: 1.0, n: 2, max_tokens: 60}", "eval.models=[student]",
        "eval.workers=0", "eval.batch_requests=2", *extra])


def test_answers_cut_off_at_max_tokens_are_counted_in_a_warning_the_table_and_the_report(tmp_path, capsys):
    """A cap shorter than some of the toy student's answers: one warning naming the model, the
    benchmark, how many of how many samples stopped at the cap, the cap and the fix; the stage's
    table and the report show the share; an evaluation that crashed after one batch and was resumed
    counts the same (the stored results included)."""
    from dasd.report.build import render_report

    cfg = _toy_cfg(tmp_path / "run")
    summary = run_evaluation(cfg)
    err = capsys.readouterr().err
    on_disk = _results(cfg)
    cut = sum(r["finish_reason"] == "length" for r in on_disk)
    assert len(on_disk) == 6 and 0 < cut < 6, [r["finish_reason"] for r in on_disk]
    warnings = [ln for ln in err.splitlines() if "stopped at the token limit" in ln]
    assert warnings == [f"[eval] warning: student: {cut} of 6 samples on toy stopped at the token limit (max_tokens 60, "
                        "or the model's context if shorter): their answers were cut off and are graded wrong; raise "
                        "eval.protocol.max_tokens, or set eval.preset: paper for the paper's protocol (102,400 tokens "
                        "math, 81,920 code and science)"]
    assert {(r["kind"], r["cut_off"]) for r in summary["student"]} == {("benchmark", cut), ("domain", cut), ("all", cut)}
    table = err[err.index("[eval] student\n"):]
    head, _, toy_row = table.splitlines()[1:4]
    assert head.split()[-2:] == ["cut", "off"] and toy_row.split()[:2] == ["benchmark", "toy"]
    assert toy_row.split()[-1] == f"{100 * cut / 6:.1f}"

    rep = render_report(cfg.run_dir)
    secs = dict(re.findall(r'<section id="([^"]+)">(.*?)</section>', rep.html, flags=re.S))
    row = re.search(r"<tr><td>student</td><td>benchmark</td><td>toy</td>(.*?)</tr>", secs["eval"]).group(1)
    assert row.endswith(f'<td class="n">{100 * cut / 6:.1f}</td>')
    note = f"student on toy: {cut} of 6 samples ({100 * cut / 6:.1f}%) stopped at max_tokens 60"
    assert note in secs["summary"] and note in secs["eval"] and "raise eval.protocol.max_tokens" in secs["summary"]

    # the same evaluation, killed after its first batch of 2 samples, then resumed
    again = _toy_cfg(tmp_path / "resumed")
    store = RunStore(again.run_dir)
    store.begin_stage("eval", again.eval.model_dump(mode="json"))  # as run_evaluation does
    with pytest.raises(Crash):
        evaluate_model(again, store, "student", engine=CrashAfter(open_engine(again.student), 1))
    assert len(_results(again)) == 2
    capsys.readouterr()
    assert run_evaluation(again)["student"] == summary["student"]
    assert [ln for ln in capsys.readouterr().err.splitlines() if "stopped at the token limit" in ln] == warnings
    key = lambda r: (r["problem_id"], r["sample_index"])  # noqa: E731
    assert [r["finish_reason"] for r in sorted(_results(again), key=key)] == [r["finish_reason"] for r in sorted(on_disk, key=key)]

    # with a cap the answers fit under, no warning, and the table says 0.0
    run_evaluation(_toy_cfg(tmp_path / "long", "eval.protocol.max_tokens=320"))
    err = capsys.readouterr().err
    assert "stopped at the token limit" not in err and re.search(r"\nall +all .* 0\.0\n", err + "\n")


def test_a_model_that_is_not_a_toy_model_is_not_evaluated_under_the_implicit_demo_protocol(tmp_path, tiny_lm_dir, capsys):
    """No eval.protocol and no eval.preset: the demo's protocol (512 tokens), fine for the toy models,
    would cut off a long-CoT model's answers. `dasd eval` refuses any other model in one line naming
    it (a training stage by its train.base_model) and the fix, before anything is evaluated; `dasd
    run` before its first stage."""
    from dasd.cli import main
    from dasd.errors import ConfigError
    from dasd.pipeline import run_pipeline

    base = ["eval.benchmarks=[{name: toy, format: toy, limit: 2}]", "eval.workers=0"]
    run = tmp_path / "run"
    code = main(["eval", f"run_dir={run}", f"student.model={tiny_lm_dir}", "eval.models=[student, teacher]", *base])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0] == (f"dasd: error: eval.protocol: not given, so the demo's protocol (T 0.6, n 4, max_tokens 512) would "
                      f"evaluate student ({tiny_lm_dir}): it is for the toy models only, and cuts a long-CoT answer off "
                      "at 512 tokens, graded wrong. Give eval.protocol (e.g. eval.protocol={temperature: 1.0, n: 4, "
                      "max_tokens: 32768}), or eval.preset: paper for the paper's protocol (T 1.0, n 64, 102,400 "
                      "tokens math, 81,920 code and science)")
    assert not (run / "eval").exists()

    # `dasd run`: refused before its first stage, which would fail on the prompts file that is not there
    stage = load_config(None, [f"run_dir={tmp_path / 'fresh'}", f"train.base_model={tiny_lm_dir}",
                               f"data.prompts={tmp_path / 'missing.jsonl'}", "eval.models=[student, stage1_low]", *base])
    with pytest.raises(ConfigError, match=rf"would evaluate stage1_low \({re.escape(tiny_lm_dir)}\): it is for"):
        run_pipeline(stage)
    assert not (tmp_path / "fresh").exists()

    from dasd.stages.eval import require_eval_protocol

    for ok in ([], [f"student.model={tiny_lm_dir}", "eval.preset=paper"],
               [f"student.model={tiny_lm_dir}", "eval.protocol.max_tokens=64"],
               [f"student.model={tiny_lm_dir}", "eval.models=[teacher]"]):
        require_eval_protocol(load_config(None, [f"run_dir={run}", *base, *ok]))  # toy models, or a protocol given
