"""Loaders from local files: AIME, GPQA, LiveCodeBench, toy; bad input named by file:line."""

from __future__ import annotations

import base64
import csv
import json
import pickle
import random
import zlib

import pytest
from pydantic import ValidationError

from dasd.errors import InputError
from dasd.grading.grade import grade_many, grade_one
from dasd.grading.loaders import BenchmarkSpec, load_aime, load_benchmark, load_gpqa, load_livecodebench, load_problems, load_toy


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_load_aime(tmp_path):
    p = write_jsonl(tmp_path / "aime24.jsonl", [{"id": 1, "problem": "Find x.", "answer": "033"},
                                                 {"Problem": "Find y.", "Answer": 7}])
    probs = load_aime(p)
    assert [q["id"] for q in probs][0] == "aime24/1" and probs[1]["answer"] == "7"
    assert probs[0]["domain"] == "math" and probs[0]["meta"]["benchmark"] == "aime24"
    assert "\\boxed{}" in probs[0]["messages"][-1]["content"]
    assert grade_one(probs[0], "<think>...</think>\\boxed{33}")["correct"]


@pytest.mark.parametrize("line,msg", [
    ('{"problem": "x"}', "aime.jsonl:2: field answer"),
    ('{"answer": "3"}', "aime.jsonl:2: field problem"),
    ("{not json", "aime.jsonl:2: not valid JSON"),
])
def test_load_aime_bad_lines(tmp_path, line, msg):
    p = write_jsonl(tmp_path / "aime.jsonl", ['{"problem": "ok", "answer": "1"}', line])
    with pytest.raises(InputError, match=msg):
        load_aime(p)


def gpqa_csv(path, rows):
    cols = ["Record ID", "Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["Pre-Revision Question", *cols])
        for r in rows:
            w.writerow(["old", *r])
    return path


def test_load_gpqa_shuffles_with_seed(tmp_path):
    rows = [(f"rec{i}", f"Question {i}, with a comma\nand a newline?", f"right {i}", "w1", "w2", "w3") for i in range(12)]
    p = gpqa_csv(tmp_path / "gpqa_diamond.csv", rows)
    a, b, c = load_gpqa(p, seed=0), load_gpqa(p, seed=0), load_gpqa(p, seed=1)
    assert a == b and [x["choices"] for x in a] != [x["choices"] for x in c]
    for prob in a:
        assert prob["domain"] == "science" and len(prob["choices"]) == 4
        right = prob["choices"]["ABCD".index(prob["answer"])]
        assert right.startswith("right")
        assert f"({prob['answer']}) {right}" in prob["messages"][-1]["content"]
        assert grade_one(prob, f"The answer is ({prob['answer']}).")["correct"]
    assert len({x["answer"] for x in a}) > 1


def test_load_gpqa_errors(tmp_path):
    p = gpqa_csv(tmp_path / "g.csv", [("r1", "Q?", "a", "b", "c", "d"), ("r2", "Q2?", "", "b", "c", "d")])
    with pytest.raises(InputError, match=r"g.csv:3: field 'Correct Answer' is empty"):
        load_gpqa(p)
    (tmp_path / "h.csv").write_text("Question,Answer\nq,a\n")
    with pytest.raises(InputError, match="missing CSV column"):
        load_gpqa(tmp_path / "h.csv")


def encode_private(cases):
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(cases)))).decode()


def lcb_rows():
    stdin_cases = [{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}]
    private = [{"input": f"{i} {i * 2}\n", "output": f"{i * 3}\n", "testtype": "stdin"} for i in range(5)]
    func_cases = [{"input": "[2,7,11,15]\n9", "output": "[0, 1]", "testtype": "functional"}]
    func_private = [{"input": "[3,3]\n6", "output": "[0, 1]", "testtype": "functional"}]
    return [
        {"question_title": "sum", "question_content": "Read a and b, print a+b.", "platform": "atcoder",
         "question_id": "abc001_a", "starter_code": "", "difficulty": "easy",
         "public_test_cases": json.dumps(stdin_cases), "private_test_cases": encode_private(private),
         "metadata": "{}"},
        {"question_title": "two sum", "question_content": "Return indices.", "platform": "leetcode",
         "question_id": "1", "starter_code": "class Solution:\n    def twoSum(self, nums, target):\n        ",
         "difficulty": "easy", "public_test_cases": json.dumps(func_cases),
         "private_test_cases": json.dumps(func_private), "metadata": json.dumps({"func_name": "twoSum"})},
    ]


def test_load_livecodebench_and_grade(tmp_path):
    p = write_jsonl(tmp_path / "lcb_v6.jsonl", lcb_rows())
    stdin_p, call_p = load_livecodebench(p)
    assert stdin_p["tests"]["style"] == "stdio" and len(stdin_p["tests"]["cases"]) == 6
    assert call_p["tests"] == {"style": "call", "fn_name": "twoSum",
                               "cases": [{"input": [[2, 7, 11, 15], 9], "output": [0, 1]},
                                         {"input": [[3, 3], 6], "output": [0, 1]}]}
    assert "class Solution" in call_p["messages"][-1]["content"]
    good_stdin = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    only_public = "```python\nprint(3)\n```"
    good_call = ("```python\nclass Solution:\n    def twoSum(self, nums, target):\n        d = {}\n"
                 "        for i, x in enumerate(nums):\n            if target - x in d:\n"
                 "                return [d[target - x], i]\n            d[x] = i\n```")
    res = grade_many([(stdin_p, good_stdin), (stdin_p, only_public), (call_p, good_call)], workers=0)
    assert [r["correct"] for r in res] == [True, False, True]


def test_livecodebench_refuses_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    row = lcb_rows()[0] | {"private_test_cases": base64.b64encode(zlib.compress(pickle.dumps(Evil()))).decode()}
    p = write_jsonl(tmp_path / "lcb.jsonl", [row])
    with pytest.raises(InputError, match=r"lcb.jsonl:1: field private_test_cases: .*refusing to load builtins.print"):
        load_livecodebench(p)


def test_load_prompts_validates(tmp_path):
    p = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "messages": [{"role": "user", "content": "q"}], "answer": "1"},
                                           {"id": "b", "messages": [{"role": "system", "content": "s"}]}])
    with pytest.raises(InputError, match="p.jsonl:2: field messages"):
        load_problems(p)
    p2 = write_jsonl(tmp_path / "p2.jsonl", [{"id": "c", "messages": [{"role": "user", "content": "q"}],
                                              "tests": {"style": "stdio", "cases": []}}])
    with pytest.raises(InputError, match="p2.jsonl:1: tests.cases"):
        load_problems(p2)


def test_toy_benchmark_grading_agrees_with_the_toy_verifier():
    world = pytest.importorskip("dasd.toy.world")
    probs = load_toy(30, seed=0)
    rng = random.Random(0)
    pairs = []
    for prob, tp in zip(probs, world.make_problems(30, 0, "test")):
        for _ in range(3):
            _, text = world.teacher_response(tp, rng, error_rate=0.3)
            pairs.append((prob, text))
    ours = [r["correct"] for r in grade_many(pairs, workers=0)]
    theirs = [world.verify(text, prob["answer"]) for prob, text in pairs]
    assert ours == theirs and 0 < sum(ours) < len(ours)


def test_load_benchmark_dispatch(tmp_path):
    p = write_jsonl(tmp_path / "aime25.jsonl", [{"problem": "x?", "answer": "1"}])
    assert load_benchmark(BenchmarkSpec(name="aime25", format="aime", path=str(p))) == load_aime(p)
    with pytest.raises(ValidationError, match="format"):
        BenchmarkSpec(name="m", format="mmlu", path=str(p))
    with pytest.raises(ValidationError, match="needs a path"):
        BenchmarkSpec(name="g", format="gpqa")


def test_an_id_given_twice_refuses_the_benchmark_naming_both_lines(tmp_path):
    # two problems with one id would share (and overwrite) each other's results and grades
    p = write_jsonl(tmp_path / "aime.jsonl", [{"id": 1, "problem": "x?", "answer": "1"},
                                              {"id": 2, "problem": "y?", "answer": "2"},
                                              {"id": 1, "problem": "z?", "answer": "3"}])
    with pytest.raises(InputError, match=r"aime.jsonl:3: duplicate problem id 'aime/1' \(first on line 1\)"):
        load_aime(p)
    p = write_jsonl(tmp_path / "aime.jsonl", [{"problem": "x?", "answer": "1"}, {"problem": "x?", "answer": "1"}])
    with pytest.raises(InputError, match=r"aime.jsonl:2: duplicate problem id .* \(first on line 1\)"):
        load_aime(p)
    rows = [("rec1", "Q1?", "a", "b", "c", "d"), ("rec2", "Q2?", "a", "b", "c", "d"), ("rec1", "Q3?", "a", "b", "c", "d")]
    with pytest.raises(InputError, match=r"gpqa.csv:4: duplicate problem id 'gpqa/rec1' \(first on line 2\)"):
        load_gpqa(gpqa_csv(tmp_path / "gpqa.csv", rows))
    row = lcb_rows()[0]
    p = write_jsonl(tmp_path / "lcb.jsonl", [row, lcb_rows()[1], row])
    with pytest.raises(InputError, match=r"lcb.jsonl:3: duplicate problem id .* \(first on line 1\)"):
        load_livecodebench(p)


@pytest.mark.parametrize("field, value, msg", [
    ("public_test_cases", json.dumps([1, 2]), "field public_test_cases: test case 0 is not an object"),
    ("metadata", json.dumps([1]), "field metadata: not a JSON object"),
])
def test_livecodebench_fields_of_the_wrong_shape_are_named(tmp_path, field, value, msg):
    p = write_jsonl(tmp_path / "lcb.jsonl", [lcb_rows()[0] | {field: value}])
    with pytest.raises(InputError, match=rf"lcb.jsonl:1: {msg}"):
        load_livecodebench(p)


def test_an_answer_that_is_a_boolean_is_refused(tmp_path):
    p = write_jsonl(tmp_path / "aime.jsonl", [{"problem": "x?", "answer": True}])
    with pytest.raises(InputError, match="aime.jsonl:1: field answer"):
        load_aime(p)


@pytest.mark.parametrize("fmt", ["aime", "livecodebench", "gpqa", "prompts"])
def test_a_benchmark_without_problems_is_refused(tmp_path, fmt):
    p = tmp_path / f"bench.{'csv' if fmt == 'gpqa' else 'jsonl'}"
    if fmt == "gpqa":
        gpqa_csv(p, [])
    else:
        p.write_text("\n", encoding="utf-8")
    with pytest.raises(InputError, match=rf"{p}: .*no (problems|records)"):
        load_benchmark(BenchmarkSpec(name="b", format=fmt, path=str(p)))


@pytest.mark.parametrize("loader", [load_aime, load_gpqa, load_livecodebench, load_problems])
def test_a_directory_given_as_a_benchmark_file_is_named_as_one(tmp_path, loader):
    with pytest.raises(InputError, match=rf"^{tmp_path}: is a directory, expected a"):
        loader(tmp_path)
