"""sample, filter, score and analyze never reuse what a model made once that model has changed under
the same path (weights replaced, the toy models rebuilt): each keeps its models' versions
(``runs.model_versions``) in its manifest config and, when one changed, drops its stored outputs and
makes them again; an unchanged rerun does nothing."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from dasd.config import load_config
from dasd.runs import open_engine
from dasd.stages.analyze import run_analyze
from dasd.stages.eval import run_evaluation
from dasd.stages.filter import run_filter
from dasd.stages.sample import run_sample
from dasd.stages.score import run_score
from dasd.store import RunStore
from model_edits import replace_weights

RELAXED = ["filter.require_structure=false", "filter.drop_cutoff=false", "filter.repetition.enabled=false"]


def touch(model_dir: Path) -> None:
    """The model under ``model_dir`` is replaced: every weight moves a little (as after retraining)."""
    replace_weights(model_dir)


def shards(run: Path, stage: str, prefix: str) -> dict[str, int]:
    """The stage's shard files whose names start with ``prefix``, with their modification times."""
    return {p.name: p.stat().st_mtime_ns for p in (run / stage).iterdir() if p.name.startswith(prefix)}


def _run_cfg(tmp_path, teacher, student, *extra):
    prompts = tmp_path / "prompts.jsonl"
    if not prompts.exists():
        prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Say {i}."}) + "\n" for i in range(3)),
                           encoding="utf-8")
    return load_config(None, [
        f"run_dir={tmp_path / 'run'}", f"data.prompts={prompts}", f"teacher.model={teacher}", f"student.model={student}",
        "sample.k=2", "sample.max_tokens=12", "sample.temperatures=[1.0]", *RELAXED, *extra,
    ])


def _copy(src, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_sample_pools_are_sampled_again_when_the_teacher_changed(tmp_path, tiny_lm_dir):
    teacher = _copy(tiny_lm_dir, tmp_path / "teacher")
    cfg = _run_cfg(tmp_path, teacher, tiny_lm_dir)
    run = Path(cfg.run_dir)
    assert run_sample(cfg)["T1"]["new"] == 6
    before = shards(run, "sample", "pool-")
    assert run_sample(cfg)["T1"]["new"] == 0  # same teacher: resumed, nothing sampled
    assert shards(run, "sample", "pool-") == before
    version = RunStore.open(run).stage_info("sample")["config"]["models"]["teacher"]

    touch(teacher)
    counts = run_sample(cfg)
    assert counts["T1"]["new"] == 6 and counts["T1"]["samples"] == 6  # all sampled again, none kept from before
    assert shards(run, "sample", "pool-") != before
    assert RunStore.open(run).stage_info("sample")["config"]["models"]["teacher"] != version


def test_filter_counts_again_when_the_student_tokenizer_changed(tmp_path, tiny_lm_dir, tiny_lm_dir_other_vocab):
    from transformers import AutoTokenizer

    from dasd.text.delimiters import normalize_response

    student = _copy(tiny_lm_dir_other_vocab, tmp_path / "student")
    run_sample(_run_cfg(tmp_path, tiny_lm_dir, student))
    tok = AutoTokenizer.from_pretrained(str(student))
    lengths = sorted(len(tok.encode(normalize_response(r)["text"], add_special_tokens=False))
                     for r in RunStore.open(tmp_path / "run").read("sample", "pool-T1"))
    cfg = _run_cfg(tmp_path, tiny_lm_dir, student, f"filter.max_student_tokens={lengths[-1] - 1}")  # the longest is dropped
    run = Path(cfg.run_dir)
    funnel = run_filter(cfg)
    assert funnel["T1"]["dropped"].get("length")  # the student's tokenizer is used
    kept = shards(run, "filter", "kept-")
    assert run_filter(cfg) == funnel and shards(run, "filter", "kept-") == kept  # up to date: nothing redone

    touch(student)
    assert run_filter(cfg) == funnel  # the same tokenizer files, counted again: the same verdicts
    again = shards(run, "filter", "kept-")  # written again, under new shard names (RunStore.remove_output)
    assert len(again) == len(kept) and again.keys().isdisjoint(kept.keys())
    assert run_filter(cfg) == funnel and shards(run, "filter", "kept-") != kept


def test_score_scores_again_when_the_student_changed(tmp_path, tiny_lm_dir, tiny_lm_dir_other_vocab, counting_scorer):
    student = _copy(tiny_lm_dir_other_vocab, tmp_path / "student")
    cfg = _run_cfg(tmp_path, tiny_lm_dir, student)
    run_sample(cfg)
    kept = run_filter(cfg)["T1"]["out"]
    assert kept
    engine = counting_scorer(open_engine(cfg.student))
    counts = run_score(cfg, student=engine)
    assert engine.requests == kept and counts["T1"]["scored"] + counts["T1"]["rejected"] == kept
    assert run_score(cfg, student=engine) == counts and engine.requests == kept  # up to date: no request

    touch(student)
    engine.requests = 0
    assert run_score(cfg, student=engine) == counts
    assert engine.requests == kept  # every kept sample scored again, none resumed from the old student
    assert RunStore.open(cfg.run_dir).count("score", "pool-T1") == counts["T1"]["scored"]


def test_analyze_scores_again_when_the_teacher_changed(tmp_path, tiny_lm_dir, tiny_lm_dir_other_vocab):
    teacher = _copy(tiny_lm_dir_other_vocab, tmp_path / "teacher")
    distilled = _copy(tiny_lm_dir, tmp_path / "distilled")
    cfg = _run_cfg(tmp_path, teacher, tiny_lm_dir, f"analyze.model={distilled}", f"eval.models=[{distilled}]",
                   "eval.benchmarks=[{name: toy, format: toy, limit: 2}]", "eval.workers=0",
                   "eval.protocol={name: mini, temperature: 1.0, n: 2, max_tokens: 16}")
    run = Path(cfg.run_dir)
    run_evaluation(cfg)
    profile = run_analyze(cfg)
    responses = shards(run, "analyze", "responses")
    assert profile["n_responses"]["correct"] + profile["n_responses"]["incorrect"] == 4
    assert run_analyze(cfg) == profile and shards(run, "analyze", "responses") == responses  # nothing scored again

    touch(teacher)
    assert run_analyze(cfg)["n_responses"] == profile["n_responses"]
    assert shards(run, "analyze", "responses") != responses  # every response scored again under the changed teacher
    assert RunStore.open(run).count("analyze", "responses") == 4


def test_too_long_prompts_are_judged_again_when_the_teachers_context_changed(tmp_path, tiny_lm_dir):
    """A prompt quarantined as too long is not asked again while the teacher is the same; a teacher
    with a longer context (its config.json changed) gets it, and the other rejects stay."""
    teacher = _copy(tiny_lm_dir, tmp_path / "teacher")
    config = teacher / "config.json"

    def context(n: int) -> None:
        config.write_text(json.dumps({**json.loads(config.read_text(encoding="utf-8")), "max_position_embeddings": n}),
                          encoding="utf-8")

    prompts = tmp_path / "prompts.jsonl"
    rows = [{"id": "p0", "prompt": "Say 0."}, {"id": "long", "prompt": "Compute 3 + 4 then times 2. " * 12}, "not json"]
    prompts.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    context(96)
    cfg = _run_cfg(tmp_path, teacher, tiny_lm_dir, "sample.k=1")
    counts = run_sample(cfg)["T1"]
    assert counts["prompts"] == 1 and counts["quarantined"] == 1
    again = run_sample(cfg)["T1"]
    assert again["new"] == 0 and again["quarantined"] == 1  # same teacher: the long prompt is not asked again

    context(1024)  # another teacher, with a longer context
    counts = run_sample(cfg)["T1"]
    assert counts["prompts"] == 2 and counts["quarantined"] == 0
    store = RunStore.open(cfg.run_dir)
    reasons = [r["reason"] for r in store.read("sample", "rejects")]
    assert len(reasons) == 1 and "not valid JSON" in reasons[0]  # the bad prompt record's reject is kept


def test_the_same_teacher_spelled_another_way_resumes_its_pools(tmp_path, tiny_lm_dir, monkeypatch):
    """Ids hash the teacher's name: an absolute path first, then the same directory spelled relative
    to the working directory, must resume the pools, not sample k more per prompt beside them."""
    teacher = _copy(tiny_lm_dir, tmp_path / "teacher")
    assert run_sample(_run_cfg(tmp_path, teacher.absolute(), tiny_lm_dir))["T1"]["new"] == 6
    monkeypatch.chdir(tmp_path)
    counts = run_sample(_run_cfg(tmp_path, "teacher", tiny_lm_dir))
    assert counts["T1"]["new"] == 0 and counts["T1"]["samples"] == 6
    assert RunStore.open(tmp_path / "run").stage_info("sample")["config"]["teacher"]["model"] == str(teacher.absolute())

    touch(teacher)  # another model under the new spelling: sampled again and named as now spelled
    counts = run_sample(_run_cfg(tmp_path, "teacher", tiny_lm_dir))
    assert counts["T1"]["new"] == 6 and counts["T1"]["samples"] == 6
    assert RunStore.open(tmp_path / "run").stage_info("sample")["config"]["teacher"]["model"] == "teacher"


def test_a_run_recorded_before_model_versions_resumes_its_teacher_spelled_another_way(tmp_path, tiny_lm_dir,
                                                                                      monkeypatch):
    """A run whose sample stage recorded no model versions (an earlier dasd) refused the same teacher
    directory spelled another way (relative instead of absolute) as another teacher; it resumes its
    pools now. A copy of the directory is still refused: with no version recorded, dasd cannot tell
    it is the same model."""
    from dasd.errors import ConfigError

    teacher = _copy(tiny_lm_dir, tmp_path / "teacher")
    assert run_sample(_run_cfg(tmp_path, teacher.absolute(), tiny_lm_dir))["T1"]["new"] == 6
    manifest = tmp_path / "run" / "manifest.json"
    data = json.loads(manifest.read_text(encoding="utf-8"))
    del data["stages"]["sample"]["config"]["models"]  # as an earlier dasd recorded it
    manifest.write_text(json.dumps(data), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    counts = run_sample(_run_cfg(tmp_path, "teacher", tiny_lm_dir))
    assert counts["T1"]["new"] == 0 and counts["T1"]["samples"] == 6
    assert RunStore.open(tmp_path / "run").stage_info("sample")["config"]["teacher"]["model"] == str(teacher.absolute())

    data = json.loads(manifest.read_text(encoding="utf-8"))
    del data["stages"]["sample"]["config"]["models"]
    manifest.write_text(json.dumps(data), encoding="utf-8")
    _copy(teacher, tmp_path / "copy")
    with pytest.raises(ConfigError, match=re.escape(f"teacher.model {str(teacher.absolute())!r} -> 'copy'")):
        run_sample(_run_cfg(tmp_path, "copy", tiny_lm_dir))


def test_name_as_before_keeps_a_name_only_for_the_same_known_model():
    from dasd.runs import name_as_before

    assert name_as_before("b/m", "v1", "/a/m", "v1") == "/a/m"      # same files, other spelling
    assert name_as_before("b/m", "v2", "/a/m", "v1") == "b/m"       # another model
    assert name_as_before("org/m", "", "org/m2", "") == "org/m"     # a hub id has no version: its name is all
    assert name_as_before("run:x@v1", "v1", "", "") == "run:x@v1"   # first run
