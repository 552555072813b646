"""The evaluation stage: `dasd grade` end to end, and `dasd eval` with a real tiny hf engine."""

from __future__ import annotations

import json

import pytest

from dasd.errors import InputError
from dasd.jsonl import read_jsonl
from dasd.grading.evaluate import Protocol, run_eval, run_grade

MATH = {"id": "m1", "domain": "math", "messages": [{"role": "user", "content": "Half of one?"}],
        "answer": "\\frac{1}{2}", "meta": {"benchmark": "mini-math"}}
CODE = {"id": "c1", "domain": "code", "messages": [{"role": "user", "content": "Add two ints."}],
        "tests": {"style": "stdio", "cases": [{"input": "2 3\n", "output": "5\n"}, {"input": "1 1\n", "output": "2\n"}]},
        "meta": {"benchmark": "mini-code"}}
SCI = {"id": "s1", "domain": "science", "messages": [{"role": "user", "content": "Pick."}],
       "choices": ["red", "green", "blue", "gray"], "answer": "B", "meta": {"benchmark": "mini-gpqa"}}


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_run_grade_end_to_end(tmp_path):
    probs = write_jsonl(tmp_path / "problems.jsonl", [MATH, CODE, SCI])
    resp = write_jsonl(tmp_path / "responses.jsonl", [
        {"problem_id": "m1", "text": "<think>1/2 = 0.5</think>\n\\boxed{0.5}"},
        {"problem_id": "m1", "text": "<think>hmm</think>\n\\boxed{2}"},
        {"problem_id": "c1", "text": "<think>easy</think>\n```python\nprint(sum(map(int, input().split())))\n```"},
        {"problem_id": "c1", "text": "```python\nprint(5)\n```"},
        {"problem_id": "s1", "text": "Red is wrong. The answer is (B)."},
        {"problem_id": "s1", "text": "<think>B?", "sample_index": 1},
    ])
    out = tmp_path / "results.jsonl"
    table = run_grade(probs, resp, out, workers=2)
    results = read_jsonl(out)
    assert [(r["problem_id"], r["sample_index"], r["correct"]) for r in results] == [
        ("m1", 0, True), ("m1", 1, False), ("c1", 0, True), ("c1", 1, False), ("s1", 0, True), ("s1", 1, False)]
    assert results[0]["protocol"] == {"source": str(resp)} and results[0]["benchmark"] == "mini-math"
    assert results[5]["extracted"] is None
    lines = table.splitlines()
    assert any(ln.startswith("benchmark  mini-code") for ln in lines)
    all_row = [ln for ln in lines if ln.startswith("all")][0]
    assert " 50.0 [" in all_row  # avg@2 = 3 of 6


@pytest.mark.parametrize("line,msg", [
    ('{"problem_id": "nope", "text": "x"}', "responses.jsonl:2: field problem_id: 'nope' is not in"),
    ('{"problem_id": "m1"}', "responses.jsonl:2: field text"),
    ('{"problem_id": "m1", "text": "a", "sample_index": 0}', "responses.jsonl:2: duplicate response"),
    ("[1, 2]", "responses.jsonl:2: expected a JSON object"),
])
def test_run_grade_bad_lines_name_file_and_line(tmp_path, line, msg):
    probs = write_jsonl(tmp_path / "problems.jsonl", [MATH])
    resp = write_jsonl(tmp_path / "responses.jsonl", ['{"problem_id": "m1", "text": "\\\\boxed{1}"}', line])
    out = tmp_path / "results.jsonl"
    with pytest.raises(InputError, match=msg):
        run_grade(probs, resp, out)
    assert not out.exists()


def test_protocol_paper_preset_and_validation():
    assert Protocol.paper("math").model_dump() == {
        "name": "paper", "temperature": 1.0, "top_p": 1.0, "max_tokens": 102_400, "n": 64, "seed": 0,
        "system_prompt": None, "chat_template": "model default"}
    assert Protocol.paper("code").max_tokens == 81_920 and Protocol.paper("science").max_tokens == 81_920
    with pytest.raises(ValueError):
        Protocol(temperature=0.0, n=4)
    with pytest.raises(ValueError):
        Protocol(top_p=0.0)
    with pytest.raises(ValueError):
        Protocol(bogus=1)


def test_run_eval_with_tiny_hf_engine_resumes_exactly(tiny_lm_dir):
    from dasd.engines import EngineConfig, make_engine

    engine = make_engine(EngineConfig(kind="hf", model=tiny_lm_dir, device="cpu"))
    problems = [
        {"id": "t1", "domain": "toy", "messages": [{"role": "user", "content": "Start at 3. Add 4."}], "answer": "7"},
        {"id": "t2", "domain": "math", "messages": [{"role": "user", "content": "12 / 4 = ?"}], "answer": "3",
         "meta": {"benchmark": "tiny"}},
    ]
    proto = Protocol(name="test", temperature=1.0, top_p=0.9, max_tokens=12, n=3, seed=5,
                     system_prompt="You are a helpful assistant.")
    full: list[dict] = []
    run_eval(engine, problems, proto, done=set(), write=full.append, batch_requests=4, workers=0)
    assert sorted((r["problem_id"], r["sample_index"]) for r in full) == [(p, j) for p in ("t1", "t2") for j in range(3)]
    for r in full:
        assert r["protocol"] == proto.model_dump() | {"model": engine.name}
        assert r["correct"] is False or r["extracted"] is not None
        assert r["domain"] in ("toy", "math") and isinstance(r["text"], str)

    # resume: the first half is done; the rest is generated and equals the uninterrupted run
    done = {(r["problem_id"], r["sample_index"]) for r in full[:3]}
    rest: list[dict] = []
    run_eval(engine, problems, proto, done=done, write=rest.append, batch_requests=2, workers=0)
    assert {(r["problem_id"], r["sample_index"]) for r in rest} == {(r["problem_id"], r["sample_index"]) for r in full[3:]}
    key = lambda r: (r["problem_id"], r["sample_index"])  # noqa: E731
    assert sorted(rest, key=key) == sorted(full[3:], key=key)
    assert len({r["text"] for r in full}) > 1  # samples differ from one another (seeded per sample)

    nothing: list[dict] = []
    run_eval(engine, problems, proto, done={key(r) for r in full}, write=nothing.append, workers=0)
    assert nothing == []


def test_run_eval_refuses_ungradable_problems(tiny_lm_dir):
    from dasd.engines import EngineConfig, make_engine

    engine = make_engine(EngineConfig(kind="hf", model=tiny_lm_dir, device="cpu"))
    bad = [{"id": "x", "domain": "other", "messages": [{"role": "user", "content": "q"}]}]
    with pytest.raises(InputError, match="nothing to grade"):
        run_eval(engine, bad, Protocol(), done=set(), write=lambda r: None)
    # a choice answer that is neither a letter nor a choice: refused before generating, not a
    # ValueError traceback from the grading pool after it
    written: list[dict] = []
    bad_choice = [SCI, {**SCI, "id": "s2", "answer": "purple"}]
    with pytest.raises(InputError, match="problem 's2': answer 'purple' is neither a choice letter nor a choice"):
        run_eval(engine, bad_choice, Protocol(max_tokens=4), done=set(), write=written.append, workers=0)
    bad_tests = [{**CODE, "tests": {"style": "stdio", "cases": []}}]
    with pytest.raises(InputError, match="problem 'c1': tests.cases: needs a non-empty list"):
        run_eval(engine, bad_tests, Protocol(max_tokens=4), done=set(), write=written.append, workers=0)
    assert written == []


def test_run_grade_holds_a_chunk_of_responses_not_the_file(tmp_path, monkeypatch):
    """`dasd grade` over responses far larger than a chunk: its peak memory stays a fraction of the
    responses' size (it used to hold every response, then every result, at once); the results and
    the table are those of the responses."""
    import tracemalloc

    from dasd.grading import evaluate
    from dasd.grading.metrics import format_table, summarize

    monkeypatch.setattr(evaluate, "GRADE_CHUNK", 32, raising=False)
    n = 20 * 32 + 5
    filler = "Let me think about this step by step. " * 500  # ~19 KB a response
    probs = write_jsonl(tmp_path / "problems.jsonl", [MATH])
    resp = write_jsonl(tmp_path / "responses.jsonl", [
        {"problem_id": "m1", "text": f"<think>{filler}</think>\n\\boxed{{{'0.5' if i % 3 else '2'}}}"} for i in range(n)])
    size = resp.stat().st_size
    out = tmp_path / "results.jsonl"
    run_grade(probs, write_jsonl(tmp_path / "one.jsonl", [{"problem_id": "m1", "text": "\\boxed{1}"}]),
              tmp_path / "one-out.jsonl", workers=0)  # math-verify and sympy imported before measuring
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        table = run_grade(probs, resp, out, workers=0)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    results = read_jsonl(out)
    assert [r["sample_index"] for r in results] == list(range(n))
    assert [r["correct"] for r in results] == [bool(i % 3) for i in range(n)]
    assert table == format_table(summarize(results))
    assert peak < size / 3, (peak, size)


def test_run_grade_refuses_an_ungradable_problem_before_grading_and_leaves_no_output(tmp_path, monkeypatch):
    """A problem answered in a later chunk cannot be graded: an InputError naming the problems file
    and the problem, before any chunk is graded, and no results file."""
    from dasd.grading import evaluate

    monkeypatch.setattr(evaluate, "GRADE_CHUNK", 2, raising=False)
    bad = {**SCI, "id": "s2", "answer": "purple"}  # neither a letter nor a choice
    probs = write_jsonl(tmp_path / "problems.jsonl", [MATH, bad])
    resp = write_jsonl(tmp_path / "responses.jsonl", [{"problem_id": "m1", "text": "\\boxed{0.5}"}] * 3
                       + [{"problem_id": "s2", "text": "The answer is (B)."}])
    out = tmp_path / "results.jsonl"
    graded, real = [], evaluate.grade_many
    monkeypatch.setattr(evaluate, "grade_many", lambda pairs, **kw: graded.append(len(pairs)) or real(pairs, **kw))
    with pytest.raises(InputError, match=r"problems\.jsonl: problem 's2': answer 'purple'"):
        run_grade(probs, resp, out, workers=0)
    assert graded == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["problems.jsonl", "responses.jsonl"]  # no temp file either


def test_run_grade_counts_responses_cut_off_at_the_token_limit(tmp_path):
    """Responses that say they stopped at the token limit (finish_reason "length") are counted per
    row and shown in the table's last column as a percent of the samples; without any finish_reason
    the column says "-" (not known), not 0."""
    from dasd.grading.metrics import summarize

    probs = write_jsonl(tmp_path / "problems.jsonl", [MATH, SCI])
    resp = write_jsonl(tmp_path / "responses.jsonl", [
        {"problem_id": "m1", "text": "<think>1/2 is", "finish_reason": "length"},
        {"problem_id": "m1", "text": "<think>so</think>\\boxed{0.5}", "finish_reason": "stop"},
        {"problem_id": "m1", "text": "<think>half of", "finish_reason": "length"},
        {"problem_id": "s1", "text": "<think>B or", "finish_reason": "length"},
    ])
    table = run_grade(probs, resp, tmp_path / "results.jsonl", workers=0)
    results = read_jsonl(tmp_path / "results.jsonl")
    assert [r["finish_reason"] for r in results] == ["length", "stop", "length", "length"]
    rows = {(r["kind"], r["name"]): r for r in summarize(results, n_boot=10)}
    assert rows[("benchmark", "mini-math")]["cut_off"] == 2 and rows[("benchmark", "mini-gpqa")]["cut_off"] == 1
    assert rows[("all", "all")]["cut_off"] == 3 and rows[("all", "all")]["samples"] == 4
    lines = table.splitlines()
    assert lines[0].endswith("no answer  cut off")
    last = {tuple(ln.split()[:2]): ln.split()[-1] for ln in lines[2:]}
    assert last[("benchmark", "mini-math")] == "66.7" and last[("benchmark", "mini-gpqa")] == "100.0"
    assert last[("all", "all")] == "75.0"

    unknown = write_jsonl(tmp_path / "plain.jsonl", [{"problem_id": "m1", "text": "\\boxed{0.5}"}])
    table = run_grade(probs, unknown, tmp_path / "plain-results.jsonl", workers=0)
    assert [ln.split()[-1] for ln in table.splitlines()[2:]] == ["-", "-", "-"]
    assert summarize(read_jsonl(tmp_path / "plain-results.jsonl"), n_boot=10)[-1]["cut_off"] is None
