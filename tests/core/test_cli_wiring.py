"""The CLI verbs that are not stages, run as a user runs them (a subprocess), checked on what they
write: `dasd grade`, `dasd report --out`, `dasd export llamafactory` (against the library call with
the same arguments) and `dasd toy build` (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dasd.prompts import toy_prompts
from report.report_runs import build_run


def dasd(*args, cwd=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "dasd", *args], capture_output=True, text=True, cwd=cwd, env=env)


def _ok(r):
    assert r.returncode == 0, (r.returncode, r.stdout[-2000:], r.stderr[-3000:])
    return r


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_grade_writes_one_verdict_per_response(tmp_path):
    problems = toy_prompts(3, 0, "test", None)
    (tmp_path / "problems.jsonl").write_text("".join(json.dumps(p) + "\n" for p in problems), encoding="utf-8")
    rows, want = [], []
    for p in problems:
        good, bad = p["answer"], str((int(p["answer"]) + 3) % 10)
        for a in (good, bad, good):
            rows.append({"problem_id": p["id"], "text": f"<think>So.</think> The answer is \\boxed{{{a}}}."})
            want.append((p["id"], a == good, a))
    (tmp_path / "responses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    r = _ok(dasd("grade", "--problems", str(tmp_path / "problems.jsonl"), "--responses",
                 str(tmp_path / "responses.jsonl"), "--out", str(tmp_path / "graded.jsonl")))
    got = _jsonl(tmp_path / "graded.jsonl")
    assert [(g["problem_id"], g["correct"], g["extracted"]) for g in got] == want
    assert [g["sample_index"] for g in got] == [0, 1, 2] * 3  # order of appearance per problem
    assert "toy" in r.stdout  # the summary table names the domain

    # a response to an unknown problem: one line naming the file and line, nothing written
    rows[4]["problem_id"] = "nope"
    (tmp_path / "bad.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows), encoding="utf-8")
    r = dasd("grade", "--problems", str(tmp_path / "problems.jsonl"), "--responses", str(tmp_path / "bad.jsonl"),
             "--out", str(tmp_path / "bad-out.jsonl"))
    assert r.returncode == 2 and f"{tmp_path / 'bad.jsonl'}:5" in r.stderr and "problem_id" in r.stderr, r.stderr
    assert not (tmp_path / "bad-out.jsonl").exists()


def test_report_out_writes_where_asked(tmp_path):
    run = build_run(tmp_path / "run", upto="select", n_prompts=4)
    r = _ok(dasd("report", str(run), "--out", str(tmp_path / "elsewhere" / "r.html")))
    out = tmp_path / "elsewhere" / "r.html"
    assert r.stdout.strip() == f"report: {out}"
    html = out.read_text(encoding="utf-8")
    assert html.lstrip().lower().startswith("<!doctype html") and "select" in html
    assert not (run / "report.html").exists()  # --out replaces the default, it does not add to it
    # a run named by run_dir=..., and the default place
    r = _ok(dasd("report", f"run_dir={run}"))
    assert r.stdout.strip() == f"report: {run / 'report.html'}" and (run / "report.html").is_file()


def test_export_llamafactory_cli_equals_the_library_call(tmp_path, tiny_lm_dir):
    from dasd.config import load_config
    from dasd.runs import named_pools
    from dasd.store import RunStore
    from dasd.train.export_llamafactory import export

    run = build_run(tmp_path / "run", upto="mix", n_prompts=6)
    overrides = [f"run_dir={run}", f"train.base_model={tiny_lm_dir}", "train.context=512"]
    r = _ok(dasd("export", "llamafactory", *overrides, "--out", str(tmp_path / "cli"), "--template", "chatml",
                 "--gpus", "2", "--deepspeed", "zero2", "--report-to", "tensorboard"))
    cfg = load_config(None, overrides)
    lib = export(cfg.train, tmp_path / "lib", named_pools(cfg, RunStore.open(run)), template="chatml", gpus=2,
                 deepspeed="zero2", report_to="tensorboard")
    assert [s["name"] for s in lib["stages"]] == ["stage1_low", "stage2_high", "stage3_mixed"]
    for st in lib["stages"]:
        assert f"{st['name']}: {st['examples']} examples ({st['dropped_over_context']} over the context left out)" in r.stdout
        cli_yaml = yaml.safe_load((tmp_path / "cli" / f"{st['name']}.yaml").read_text(encoding="utf-8"))
        lib_yaml = yaml.safe_load(Path(st["yaml"]).read_text(encoding="utf-8"))
        assert cli_yaml["dataset_dir"] == str((tmp_path / "cli").resolve())
        ds = Path(cli_yaml["deepspeed"])
        assert ds == (tmp_path / "cli" / "deepspeed" / "ds_z2.json").resolve()
        assert json.loads(ds.read_text()) == json.loads(Path(lib_yaml["deepspeed"]).read_text())
        assert json.loads(ds.read_text())["zero_optimization"]["stage"] == 2
        for key in ("dataset_dir", "deepspeed"):
            cli_yaml.pop(key), lib_yaml.pop(key)
        assert cli_yaml == lib_yaml
        assert cli_yaml["template"] == "chatml" and cli_yaml["report_to"] == "tensorboard"
    for rel in lib["datasets"].values():
        assert (tmp_path / "cli" / rel).read_bytes() == (tmp_path / "lib" / rel).read_bytes()
    # the data are the run's own: the low pool's file holds the selected T0.6 examples, in order
    low = _jsonl(tmp_path / "cli" / lib["datasets"][lib["stages"][0]["dataset"]])
    assert low == [{"messages": ex["messages"]} for ex in RunStore.open(run).read("select", "train-T0.6")]
    assert json.loads((tmp_path / "cli" / "dataset_info.json").read_text()) == \
        json.loads((tmp_path / "lib" / "dataset_info.json").read_text())


@pytest.mark.slow
def test_toy_build_cli_writes_loadable_models(tmp_path):
    """`dasd toy build --out DIR --seed N` (the full build: ~5 minutes on 2 idle cores)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    r = _ok(dasd("toy", "build", "--out", str(tmp_path / "toy"), "--seed", "1"))
    for role in ("teacher", "student"):
        assert f"{role}: {tmp_path / 'toy' / role}" in r.stdout
        tok = AutoTokenizer.from_pretrained(tmp_path / "toy" / role)
        model = AutoModelForCausalLM.from_pretrained(tmp_path / "toy" / role)
        assert model.config.vocab_size >= len(tok)
    manifest = json.loads((tmp_path / "toy" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["seed"] == 1
