"""Bad input is quarantined with where and why, the stage finishes (issue 15, item 7): a prompt
longer than the teacher's context, a 50 MB prompt, a sample whose text is a number or which lacks
prompt_id, duplicate problem ids in `dasd grade`."""

from __future__ import annotations

import json

import pytest

from dasd.config import load_config
from dasd.errors import InputError
from dasd.grading.evaluate import run_grade
from dasd.jsonl import MAX_RECORD_BYTES
from dasd.prompts import load_prompts
from dasd.stages.filter import run_filter
from dasd.stages.sample import run_sample
from dasd.store import RunStore


def test_a_prompt_longer_than_the_teachers_context_is_quarantined_and_sampling_goes_on(tmp_path, tiny_lm_dir):
    rows = [{"id": f"p{i}", "prompt": f"Compute {i} + {i + 1}."} for i in range(3)]
    rows.insert(1, {"id": "long", "prompt": "Compute 3 + 4 then times 2. " * 40})
    rows.append({"id": "huge", "prompt": "x" * 200_000})  # rejected without being tokenised
    p = tmp_path / "prompts.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", f"data.prompts={p}", f"teacher.model={tiny_lm_dir}",
                             "teacher.max_model_len=96", "sample.k=1", "sample.max_tokens=4", "sample.temperatures=[1.0]"])
    counts = run_sample(cfg)
    assert counts["T1"]["prompts"] == 3 and counts["T1"]["quarantined"] == 2
    store = RunStore(cfg.run_dir)
    why = {r["where"]: r["reason"] for r in store.read("sample", "rejects")}
    assert "the teacher's context is 96" in why["prompt long"] and "characters cannot fit" in why["prompt huge"]
    assert run_sample(cfg)["T1"]["new"] == 0  # a re-run does not ask again


def test_a_50_mb_prompt_is_quarantined_by_the_record_size_cap(tmp_path):
    p = tmp_path / "prompts.jsonl"
    with p.open("w", encoding="utf-8") as fh:
        fh.write(json.dumps({"id": "a", "prompt": "small"}) + "\n")
        fh.write('{"id": "big", "prompt": "' + "z" * (50 * 1024 * 1024) + '"}\n')
        fh.write(json.dumps({"id": "c", "prompt": "after"}) + "\n")
    prompts, rejects = load_prompts(p, None)
    assert [x["id"] for x in prompts] == ["a", "c"]
    assert rejects[0]["where"] == f"{p}:2" and f"over the {MAX_RECORD_BYTES}-byte cap" in rejects[0]["reason"]


def test_malformed_samples_are_quarantined_by_filter(tmp_path, tiny_lm_dir):
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", f"student.model={tiny_lm_dir}",
                             "filter.require_structure=false"])
    store = RunStore(cfg.run_dir)
    with store.writer("sample", "prompts") as w:
        w.add({"id": "p0", "messages": [{"role": "user", "content": "1 + 1?"}]})
    good = {"id": "s1", "prompt_id": "p0", "text": "It is 2.", "finish_reason": "stop",
            "teacher": {"tokens": [], "token_ids": [], "offsets": [], "logprobs": [], "logprob_mode": "raw"}}
    with store.writer("sample", "pool-T1") as w:
        with pytest.raises(ValueError, match="record s2: field 'text' does not fit the sample schema"):
            w.add({**good, "id": "s2", "text": 42})  # the typed store refuses it at the door
        w.add(good)
        w.add({**good, "id": "s2", "text": None})  # what a hand-made shard can still hold: nulls
        w.add({k: v for k, v in {**good, "id": "s3"}.items() if k != "prompt_id"})
    counts = run_filter(cfg, store)
    assert counts["T1"]["in"] == 3 and counts["T1"]["dropped"]["malformed"] == 2
    why = {r["id"]: r["reason"] for r in store.read("filter", "rejects")}
    assert why["s2"] == "field 'text': missing" and why["s3"] == "field 'prompt_id': missing"
    where = {r["id"]: r["where"] for r in store.read("filter", "rejects")}  # the shard and row to look at
    assert where == {"s2": f"{store.root / 'sample' / 'pool-T1-00000.parquet'} row 1",
                     "s3": f"{store.root / 'sample' / 'pool-T1-00000.parquet'} row 2"}


def test_duplicate_problem_ids_in_grade_are_an_error_naming_the_line(tmp_path):
    probs = tmp_path / "problems.jsonl"
    rows = [{"id": i, "messages": [{"role": "user", "content": q}], "answer": a}
            for i, q, a in [("q1", "1 + 1?", "2"), ("q2", "2 + 2?", "4"), ("q1", "3 + 3?", "6")]]
    probs.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    resp = tmp_path / "responses.jsonl"
    resp.write_text(json.dumps({"problem_id": "q1", "text": "\\boxed{2}"}) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=rf"{probs}:3: duplicate problem id 'q1' \(first on line 1\)"):
        run_grade(probs, resp, tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()


def test_an_import_whose_every_row_is_rejected_fails_naming_the_first(tmp_path):
    """Released-layout rows read as chat JSONL: every row is quarantined, and the import fails
    (it used to finish with 0 responses, exit 0); the stage stays unfinished, so filter refuses."""
    from dasd.stages.import_ import run_import

    data = tmp_path / "released.jsonl"
    data.write_text("".join(json.dumps({"uuid": f"u{i}", "input": "q", "output": "<think>a</think>b"}) + "\n"
                            for i in range(3)), encoding="utf-8")
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", f"import.source={data}", "import.format=chat"])
    with pytest.raises(InputError, match=r"every one of its 3 row\(s\) was rejected with import.format 'chat' "
                                         r"\(the first, .*released.jsonl:1: "):
        run_import(cfg)
    store = RunStore.open(tmp_path / "run")
    assert len(list(store.read("sample", "rejects"))) == 3  # quarantined, with where and why
    with pytest.raises(Exception, match="'import' began at .* and did not finish"):
        run_filter(cfg)


def test_a_prompt_file_whose_every_record_is_rejected_fails_sampling(tmp_path, tiny_lm_dir):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "p1"}) + "\n" + json.dumps({"id": "p2", "prompt": 3}) + "\n", encoding="utf-8")
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", f"data.prompts={prompts}", f"teacher.model={tiny_lm_dir}"])
    with pytest.raises(InputError, match=r"every prompt record was rejected \(2; the first, .*prompts.jsonl:1: "):
        run_sample(cfg)
    assert len(list(RunStore.open(tmp_path / "run").read("sample", "rejects"))) == 2


def test_grading_an_empty_responses_file_is_an_error(tmp_path):
    problems = tmp_path / "problems.jsonl"
    problems.write_text(json.dumps({"id": "p1", "domain": "math", "answer": "2",
                                    "messages": [{"role": "user", "content": "1+1?"}]}) + "\n", encoding="utf-8")
    responses = tmp_path / "responses.jsonl"
    responses.write_text("", encoding="utf-8")
    with pytest.raises(InputError, match="responses.jsonl: no responses to grade"):
        run_grade(problems, responses, tmp_path / "graded.jsonl")
    assert not (tmp_path / "graded.jsonl").exists()


def test_a_missing_prompt_file_on_a_new_run_directory_leaves_no_run_folder(tmp_path, tiny_lm_dir):
    """`dasd sample` with a mistyped data.prompts on a run directory with no run yet fails in one
    line and creates nothing (it left a run folder holding only its lock and manifest)."""
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", f"data.prompts={tmp_path / 'nope.jsonl'}",
                             f"teacher.model={tiny_lm_dir}"])
    with pytest.raises(InputError, match=r"nope\.jsonl: prompt file or folder not found"):
        run_sample(cfg)
    assert not (tmp_path / "run").exists()
