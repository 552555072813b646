"""A user holding the CLI wrong: paths that are files where folders are expected (and the reverse),
configs that are not YAML text, outputs that cannot be written. Each is one line naming the path,
exit 2, no traceback, and nothing half-written."""

from __future__ import annotations

import errno
import json

import pytest

from dasd import jsonl
from dasd.errors import OutputError
from dasd.jsonl import atomic_write_json, atomic_write_jsonl
from dasd.lock import release_run_lock
from dasd.store import RunStore

from test_cli import assert_one_line_error, dasd


def _grade_inputs(tmp_path):
    problems = tmp_path / "problems.jsonl"
    problems.write_text(json.dumps({"id": "p1", "domain": "math", "answer": "2",
                                    "messages": [{"role": "user", "content": "1+1?"}]}) + "\n", encoding="utf-8")
    responses = tmp_path / "responses.jsonl"
    responses.write_text(json.dumps({"problem_id": "p1", "text": "\\boxed{2}"}) + "\n", encoding="utf-8")
    return problems, responses


def test_a_run_directory_under_a_file_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("x")
    r = dasd("sample", f"run_dir={tmp_path / 'afile' / 'run'}", "sample.k=1")
    assert_one_line_error(r, str(tmp_path / "afile" / "run"), "Not a directory")
    r = dasd("-v", "sample", f"run_dir={tmp_path / 'afile' / 'run'}", "sample.k=1")  # -v: the traceback too
    assert r.returncode == 2 and "NotADirectoryError" in r.stderr
    assert r.stderr.strip().splitlines()[-1] == f"dasd: error: {tmp_path / 'afile' / 'run'}: Not a directory"


def test_an_output_that_is_a_directory_or_under_a_file_is_one_line_and_nothing_is_written(tmp_path):
    problems, responses = _grade_inputs(tmp_path)
    (tmp_path / "outdir").mkdir()
    r = dasd("grade", "--problems", str(problems), "--responses", str(responses), "--out", str(tmp_path / "outdir"))
    assert_one_line_error(r, str(tmp_path / "outdir"), "is a directory")
    (tmp_path / "afile").write_text("x")
    r = dasd("grade", "--problems", str(problems), "--responses", str(responses),
             "--out", str(tmp_path / "afile" / "out.jsonl"))
    assert_one_line_error(r, str(tmp_path / "afile" / "out.jsonl"), "a folder on its path is a file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "outdir", "problems.jsonl", "responses.jsonl"]
    assert not list((tmp_path / "outdir").iterdir())
    r = dasd("grade", "--problems", str(problems), "--responses", str(responses), "--out", str(tmp_path / "o.jsonl"))
    assert r.returncode == 0, r.stderr  # the same inputs grade fine


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS])
def test_a_write_refused_by_the_os_names_the_file_and_leaves_the_old_one(tmp_path, monkeypatch, code):
    target = tmp_path / "out.jsonl"
    atomic_write_jsonl(target, [{"old": True}])
    real_replace = jsonl.os.replace

    def refuse(src, dst):
        raise OSError(code, "refused", str(dst))

    monkeypatch.setattr(jsonl.os, "replace", refuse)
    with pytest.raises(OutputError, match=rf"^{target}: cannot write: .*nothing was written"):
        atomic_write_jsonl(target, [{"new": True}])
    monkeypatch.setattr(jsonl.os, "replace", real_replace)
    assert json.loads(target.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_an_os_error_of_the_callers_own_code_is_not_blamed_on_the_output(tmp_path):
    with pytest.raises(FileNotFoundError):
        with jsonl.atomic_open(tmp_path / "out.json") as fh:
            fh.write("{}")
            open(tmp_path / "missing-input.txt").read()
    with pytest.raises(OutputError, match="is a directory"):
        atomic_write_json(tmp_path, {})
    assert list(tmp_path.iterdir()) == []


def test_a_config_that_is_not_utf8_text_or_a_directory_is_one_line(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_bytes(b"sample:\n  k: \xff\n")
    assert_one_line_error(dasd("config", "show", str(p)), "c.yaml: not a YAML text file: not valid UTF-8")
    assert_one_line_error(dasd("sample", str(tmp_path)), "is a directory, not a YAML config file",
                          f"run_dir={tmp_path}")
    assert_one_line_error(dasd("config", "show", "sample.k", "2"), "sample.k: config file not found",
                          "an override needs '='")


@pytest.mark.parametrize("args", [[], ["toy"], ["config"]])
def test_a_group_without_a_verb_prints_its_help_not_an_error_line(args):
    r = dasd(*args)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith(f"Usage: {' '.join(['dasd', *args])} [OPTIONS] COMMAND") and "dasd: error:" not in r.stderr


def test_a_usage_error_points_to_the_help_of_the_verb_at_fault():
    assert_one_line_error(dasd("grade"), "Missing option '--problems'", "(see dasd grade --help)")
    assert_one_line_error(dasd("export", "llamafactory", "--gpus", "x"), "'--gpus'",
                          "(see dasd export llamafactory --help)")


@pytest.mark.parametrize("verb,missing", [("filter", "sample"), ("score", "sample"), ("select", "sample")])
def test_a_stage_run_before_the_stages_it_reads_is_refused(tmp_path, verb, missing):
    """On a fresh run directory `dasd filter/score/select` used to read nothing and finish
    'complete' (exit 0); now each names the stage that has to run first, and writes no stage entry."""
    run = tmp_path / "run"
    r = dasd(verb, f"run_dir={run}")  # no run there at all: nothing is created
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "no dasd run here" in r.stderr and "run `dasd sample` (or `dasd import`) first" in r.stderr
    assert not run.exists()
    release_run_lock(RunStore(run).root)  # a run where nothing has run yet (its manifest written)
    r = dasd(verb, f"run_dir={run}")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert f"stage '{missing}' has not run" in r.stderr and f"run `dasd {missing}` first" in r.stderr
    assert verb not in json.loads((run / "manifest.json").read_text())["stages"]


def test_an_unknown_toy_world_is_one_line_naming_the_worlds(tmp_path):
    assert_one_line_error(dasd("toy", "build", "--world", "colum", "--out", str(tmp_path / "w")), "--world",
                          "'colum'", "chain, column")
    assert not (tmp_path / "w").exists()
    assert_one_line_error(dasd("demo", "--world", "colum"), "--world 'colum'", "chain, column")


def test_export_before_select_names_the_stage_to_run(tmp_path):
    """`dasd export llamafactory` on a run where `dasd select` has not run said "stage 'stage1_low':
    data 'low' is neither a named pool nor an existing file"; now it names the stage to run, as
    `dasd train` does."""
    run = tmp_path / "run"
    release_run_lock(RunStore(run).root)  # a run where nothing has run yet (its manifest written)
    r = dasd("export", "llamafactory", f"run_dir={run}")
    assert_one_line_error(r, f"{run}: stage 'select' has not run in this run directory",
                          "`dasd export llamafactory` has nothing to read; run `dasd select` first")
    assert not (run / "export").exists()


@pytest.mark.parametrize("args,first", [(["sample.k=2", "c.yaml"], "an override"),
                                        (["c.yaml", "other.yml"], "the config c.yaml"),
                                        (["c.yaml", "sample.k=2", "other.yml"], "the config c.yaml")])
def test_a_config_file_given_after_an_override_or_a_second_config_is_one_line_saying_so(tmp_path, args, first):
    # was "override 'c.yaml': expected KEY=VALUE, e.g. sample.k=2"
    (tmp_path / "c.yaml").write_text("run_dir: r\n", encoding="utf-8")
    (tmp_path / "other.yml").write_text("run_dir: r\n", encoding="utf-8")
    r = dasd("config", "show", *args, cwd=tmp_path)
    assert_one_line_error(r, f"dasd: error: {args[-1]}: a config file after {first}; give one config, first, "
                             "then the KEY=VALUE overrides")


@pytest.mark.parametrize("verb", [s.name for s in __import__("dasd.registry").registry.STAGES
                                  if s.name not in ("sample", "import")])
def test_every_stage_verb_that_reads_a_run_refuses_a_missing_one_and_creates_nothing(tmp_path, verb):
    """A mistyped ``run_dir`` given to any stage verb but `dasd sample` and `dasd import` (which start
    runs): one line naming the path (and, for a stage, the stage to run first), exit 2, and no folder
    left behind. `dasd train` (its stages read the named pools) and `dasd eval` (its models include
    the training stages) used to make the run directory and its manifest before refusing."""
    run = tmp_path / "nowhere" / "run"
    r = dasd(verb, f"run_dir={run}")
    if verb == "report":
        assert_one_line_error(r, f"{run}: no such run directory")
    else:
        assert_one_line_error(r, f"{run}: no dasd run here, so `dasd {verb}` has ",
                              "run `dasd sample` (or `dasd import`) first, or `dasd run` for the whole pipeline")
    assert not (tmp_path / "nowhere").exists()
    run.mkdir(parents=True)  # an empty directory made beforehand stays empty
    r = dasd(verb, f"run_dir={run}")
    assert_one_line_error(r, str(run))
    assert not any(run.iterdir())


def test_eval_without_a_run_names_the_training_stages_it_would_evaluate(tmp_path):
    run = tmp_path / "run"
    r = dasd("eval", f"run_dir={run}", "eval.models=[student,stage2_high]")
    assert_one_line_error(r, f"{run}: no dasd run here, so `dasd eval` has no trained model of eval.models "
                             "'stage2_high'; run `dasd sample`", "(or leave them out of eval.models)")
    assert not run.exists()


def _toy_files(src, dst, names):
    dst.mkdir()
    for n in names:
        (dst / n).write_bytes((src / n).read_bytes())
    return dst


def test_an_engine_that_cannot_load_its_tokenizer_names_the_key_the_user_set(tmp_path):
    """The error named `engine.tokenizer`, a key no config has: it names `teacher.tokenizer` or
    `student.tokenizer` when that is set, else `teacher.model` / `student.model` (the tokenizer is the
    model's), with the path, in one line (transformers' message spans several)."""
    from dasd.toy.build import default_toy_dir

    toy = default_toy_dir() / "teacher"
    no_tokenizer = _toy_files(toy, tmp_path / "weights", ["config.json", "generation_config.json", "model.safetensors"])
    broken = _toy_files(toy, tmp_path / "tok", ["tokenizer_config.json"])
    (broken / "tokenizer.json").write_text('{"broken":', encoding="utf-8")
    small = ["data.toy.n_train=2", "sample.k=1"]
    r = dasd("sample", f"run_dir={tmp_path / 'r1'}", f"teacher.model={no_tokenizer}", *small)
    assert_one_line_error(r, f"dasd: error: teacher.model: cannot load a tokenizer from '{no_tokenizer}': ")
    r = dasd("sample", f"run_dir={tmp_path / 'r2'}", f"teacher.tokenizer={broken}", *small)
    assert_one_line_error(r, f"dasd: error: teacher.tokenizer: cannot load a tokenizer from '{broken}': ")
    r = dasd("eval", f"run_dir={tmp_path / 'r3'}", "eval.models=[student]", f"student.tokenizer={broken}")
    assert_one_line_error(r, f"dasd: error: student.tokenizer: cannot load a tokenizer from '{broken}': ")
    r = dasd("eval", f"run_dir={tmp_path / 'r4'}", "eval.models=[student]", f"student.model={tmp_path / 'none'}",
             "eval.protocol={temperature: 1.0, n: 1, max_tokens: 32}")
    assert_one_line_error(r, f"dasd: error: student.model: '{tmp_path / 'none'}' does not exist or is not a directory")
