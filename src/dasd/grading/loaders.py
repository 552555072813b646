"""Benchmark loaders from local files, each returning Prompt record dicts (``records.Prompt``).

- ``load_aime(path)``: JSONL, one problem a line with ``problem`` (or ``question``) and ``answer``
  (any case of the keys; ``id``/``ID`` kept if present). Domain math.
- ``load_gpqa(path, seed)``: the GPQA CSV (``Question``, ``Correct Answer``, ``Incorrect Answer 1..3``;
  ``Record ID`` as id when present). Choices are shuffled with a RNG seeded by (seed, question id),
  so a prompt set is reproducible from its seed. Domain science.
- ``load_livecodebench(path)``: LiveCodeBench ``code_generation_lite`` JSONL (``question_content``,
  ``starter_code``, ``public_test_cases`` and ``private_test_cases`` as JSON strings, the private
  ones possibly base64 + zlib + pickle encoded, ``metadata`` with ``func_name``). Problems with a
  ``func_name`` become call-style tests (each input line is one JSON argument), others stdio.
- ``load_toy(n, seed, world=...)``: a built-in toy benchmark (``dasd.toy.world``, domain toy, or ``dasd.toy.column``).
- ``load_problems(path)``: Prompt records as they are (`dasd grade --problems`);
  ``load_benchmark(spec)`` loads one ``BenchmarkSpec`` (an ``eval.benchmarks`` entry) of any format.

Bad input is an ``InputError`` naming file, line (or CSV row) and field: the whole benchmark is
refused rather than silently shrunk, since a score over a partial benchmark is not comparable. So
is a problem id given twice (both lines named) and a benchmark file without problems.
Every problem gets ``meta["benchmark"]`` (default: the file's stem), used by ``metrics.summarize``.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import pickle
import zlib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from dasd.configbase import StrictModel
from dasd.errors import InputError
from dasd.grading.choice import format_choices, shuffle_choices
from dasd.grading.code import check_tests
from dasd.jsonl import MAX_RECORD_BYTES, BadLine, iter_jsonl
from dasd.records import Prompt, content_id
from dasd.toy import ToyWorld

MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
DEFAULT_SYSTEM = "You are a helpful assistant."


def _messages(user: str, system: str | None) -> list[dict[str, str]]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]


def _validated(rec: dict[str, Any], where: str) -> dict[str, Any]:
    try:
        return Prompt.model_validate(rec).model_dump(exclude_none=False)
    except ValidationError as e:
        err = e.errors()[0]
        raise InputError(f"{where}: field {'.'.join(map(str, err['loc']))}: {err['msg']}") from e


def _get(obj: dict[str, Any], *names: str) -> Any:
    low = {k.lower(): v for k, v in obj.items()}
    for n in names:
        if n in low:
            return low[n]
    return None


class _Ids:
    """The line of each problem id seen so far: an id given twice refuses the benchmark (two problems
    with one id would share, and overwrite, each other's results)."""

    def __init__(self, path: Path):
        self.path, self.first = path, {}

    def add(self, pid: str, line: int) -> None:
        if pid in self.first:
            raise InputError(f"{self.path}:{line}: duplicate problem id {pid!r} (first on line {self.first[pid]}); "
                             "ids must be unique, or responses would be graded against the wrong problem")
        self.first[pid] = line


def _jsonl_objects(path: str | Path):
    for lineno, obj in iter_jsonl(path, MAX_RECORD_BYTES):
        if isinstance(obj, BadLine):
            raise InputError(f"{obj.where()}: {obj.reason}")
        yield lineno, obj


def load_aime(path: str | Path, benchmark: str | None = None, system: str | None = DEFAULT_SYSTEM) -> list[dict[str, Any]]:
    """AIME-style JSONL (problem + answer) -> math Prompt dicts (see module docstring)."""
    path = Path(path)
    bench = benchmark or path.stem
    out = []
    ids = _Ids(path)
    for lineno, obj in _jsonl_objects(path):
        where = f"{path}:{lineno}"
        problem = _get(obj, "problem", "question")
        answer = _get(obj, "answer", "solution_answer")
        if not isinstance(problem, str) or not problem.strip():
            raise InputError(f"{where}: field problem: missing or not a non-empty string")
        if answer is None or (isinstance(answer, str) and not answer.strip()) or isinstance(answer, (dict, list, bool)):
            raise InputError(f"{where}: field answer: missing or not a string/number")
        pid = _get(obj, "id")
        pid = str(pid) if pid is not None else content_id(bench, problem)
        ids.add(f"{bench}/{pid}", lineno)
        out.append(_validated({
            "id": f"{bench}/{pid}", "domain": "math",
            "messages": _messages(f"{problem.strip()}\n\n{MATH_INSTRUCTION}", system),
            "answer": str(answer).strip(), "meta": {"benchmark": bench, "source_id": pid},
        }, where))
    return out


def load_gpqa(path: str | Path, seed: int = 0, benchmark: str | None = None,
              system: str | None = DEFAULT_SYSTEM) -> list[dict[str, Any]]:
    """GPQA CSV -> science multiple-choice Prompt dicts with seeded choice shuffling."""
    path = Path(path)
    bench = benchmark or path.stem
    if not path.is_file():
        raise InputError(f"{path}: " + ("is a directory, expected a GPQA CSV file" if path.is_dir() else "no such file"))
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not valid UTF-8 ({e.reason})") from e
    reader = csv.DictReader(io.StringIO(text))
    need = ["Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3"]
    missing = [c for c in need if c not in (reader.fieldnames or [])]
    if missing:
        raise InputError(f"{path}:1: missing CSV column(s) {missing}; found {reader.fieldnames}")
    out = []
    ids = _Ids(path)
    for row in reader:
        where = f"{path}:{reader.line_num}"
        vals = {c: (row.get(c) or "").strip() for c in need}
        empty = [c for c, v in vals.items() if not v]
        if empty:
            raise InputError(f"{where}: field {empty[0]!r} is empty")
        qid = (row.get("Record ID") or "").strip() or content_id(bench, vals["Question"])
        ids.add(f"{bench}/{qid}", reader.line_num)
        choices, letter = shuffle_choices(vals["Correct Answer"], [vals[f"Incorrect Answer {i}"] for i in (1, 2, 3)],
                                          seed, qid)
        out.append(_validated({
            "id": f"{bench}/{qid}", "domain": "science",
            "messages": _messages(format_choices(vals["Question"], choices), system),
            "answer": letter, "choices": choices,
            "meta": {"benchmark": bench, "source_id": qid, "shuffle_seed": seed},
        }, where))
    return out


class _NoGlobals(pickle.Unpickler):
    """Unpickles plain data only: any class or function reference is refused (no code runs)."""

    def find_class(self, module: str, name: str):  # noqa: D401
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _decode_cases(raw: Any, where: str, field: str) -> list[dict[str, Any]]:
    if isinstance(raw, list):
        return raw
    if not isinstance(raw, str):
        raise InputError(f"{where}: field {field}: expected a JSON string or list")
    try:
        val = json.loads(raw)
    except ValueError:
        try:
            val = _NoGlobals(io.BytesIO(zlib.decompress(base64.b64decode(raw.encode("ascii"))))).load()
            val = json.loads(val) if isinstance(val, (str, bytes)) else val
        except Exception as e:
            raise InputError(f"{where}: field {field}: neither JSON nor base64/zlib/pickle data ({e})") from e
    if not isinstance(val, list):
        raise InputError(f"{where}: field {field}: expected a list of test cases")
    for i, case in enumerate(val):
        if not isinstance(case, dict):
            raise InputError(f"{where}: field {field}: test case {i} is not an object (got {type(case).__name__})")
    return val


LCB_STDIN = ("Read the inputs from stdin, solve the problem and write the answer to stdout (do not directly test "
             "on the sample inputs). Enclose your code within delimiters as follows.\n```python\n# YOUR CODE HERE\n```")
LCB_CALL = "Use the following starter code to write the solution and enclose your code within delimiters.\n```python\n{starter}\n```"


def load_livecodebench(path: str | Path, benchmark: str | None = None,
                       system: str | None = DEFAULT_SYSTEM) -> list[dict[str, Any]]:
    """LiveCodeBench code_generation_lite JSONL -> code Prompt dicts with stdio or call tests."""
    path = Path(path)
    bench = benchmark or path.stem
    out = []
    ids = _Ids(path)
    for lineno, obj in _jsonl_objects(path):
        where = f"{path}:{lineno}"
        content = obj.get("question_content")
        if not isinstance(content, str) or not content.strip():
            raise InputError(f"{where}: field question_content: missing or empty")
        qid = str(obj.get("question_id") or content_id(bench, content))
        ids.add(f"{bench}/{qid}", lineno)
        cases = _decode_cases(obj.get("public_test_cases", "[]"), where, "public_test_cases")
        cases += _decode_cases(obj.get("private_test_cases", "[]"), where, "private_test_cases")
        meta_raw = obj.get("metadata") or "{}"
        try:
            meta = json.loads(meta_raw) if isinstance(meta_raw, str) else dict(meta_raw)
        except (ValueError, TypeError) as e:
            raise InputError(f"{where}: field metadata: not a JSON object ({e})") from e
        if not isinstance(meta, dict):
            raise InputError(f"{where}: field metadata: not a JSON object (got a {type(meta).__name__})")
        fn_name = meta.get("func_name")
        starter = obj.get("starter_code") or ""
        if fn_name:
            try:
                tcases = [{"input": [json.loads(a) for a in c["input"].split("\n") if a.strip()],
                           "output": json.loads(c["output"])} for c in cases]
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise InputError(f"{where}: field test cases: functional input/output not JSON ({e})") from e
            tests = {"style": "call", "fn_name": fn_name, "cases": tcases}
            instr = LCB_CALL.format(starter=starter.strip())
        else:
            tests = {"style": "stdio", "cases": [{"input": c.get("input"), "output": c.get("output")} for c in cases]}
            instr = LCB_STDIN
        bad = check_tests(tests)
        if bad:
            raise InputError(f"{where}: {bad}")
        user = ("You will be given a question (problem specification) and will generate a correct Python program "
                f"that matches the specification and passes all tests.\n\nQuestion: {content.strip()}\n\n{instr}")
        out.append(_validated({
            "id": f"{bench}/{qid}", "domain": "code", "messages": _messages(user, system), "tests": tests,
            "meta": {"benchmark": bench, "source_id": qid, "platform": obj.get("platform"),
                     "difficulty": obj.get("difficulty"), "contest_date": obj.get("contest_date")},
        }, where))
    return out


def load_toy(n: int = 100, seed: int = 0, split: str = "test", benchmark: str = "toy",
             world: str = "chain") -> list[dict[str, Any]]:
    """A built-in toy benchmark: ``n`` problems of a toy world's ``split``: ``chain``
    (``dasd.toy.world``, domain toy, graded like math) or ``column`` (``dasd.toy.column``, domain math)."""
    if world == "column":
        from dasd.prompts import toy_prompts

        out = toy_prompts(n, seed, split, system_prompt=None, world="column")
        for rec in out:
            rec.setdefault("meta", {})["benchmark"] = benchmark
        return out
    from dasd.toy.world import make_problems, problem_to_prompt

    out = []
    for p in make_problems(n, seed, split):
        rec = problem_to_prompt(p)
        rec.setdefault("meta", {})["benchmark"] = benchmark
        out.append(rec)
    return out


def load_problems(path: str | Path) -> list[dict[str, Any]]:
    """Prompt records from a JSONL file, each validated; the first bad one (or an id given twice) is
    an InputError (file:line)."""
    path = Path(path)
    out = []
    ids = _Ids(path)
    for lineno, obj in _jsonl_objects(path):
        rec = _validated(obj, f"{path}:{lineno}")
        ids.add(rec["id"], lineno)
        if rec.get("tests") is not None:
            bad = check_tests(rec["tests"])
            if bad:
                raise InputError(f"{path}:{lineno}: {bad}")
        out.append(rec)
    return out


class BenchmarkSpec(StrictModel):
    """One benchmark: the toy world's test split or a local file in a usual format."""

    name: str = Field(description="label in tables")
    format: Literal["toy", "aime", "gpqa", "livecodebench", "prompts"] = Field(
        "toy", description="toy (built in), aime (jsonl problem/answer), gpqa (csv), livecodebench (jsonl), "
        "prompts (JSONL with `messages` or `prompt`, plus `answer`, `choices` or `tests`)")
    path: str | None = Field(None, description="the file (not for toy)")
    limit: int | None = Field(None, ge=1, description="use the first N problems (toy: how many to generate)")
    seed: int = Field(0, description="toy problem seed / GPQA choice-shuffle seed")
    world: ToyWorld = Field("chain", description="format toy: which toy world's test split")

    @model_validator(mode="after")
    def _path(self) -> "BenchmarkSpec":
        if self.format != "toy" and not self.path:
            raise ValueError(f"benchmark {self.name!r}: format {self.format} needs a path")
        return self


def load_benchmark(spec: BenchmarkSpec) -> list[dict]:
    """The problems of one benchmark (first ``spec.limit``); a bad record refuses the whole benchmark."""
    if spec.format == "toy":
        probs = load_toy(n=spec.limit or 100, seed=spec.seed, split="test", benchmark=spec.name, world=spec.world)
    elif spec.format == "aime":
        probs = load_aime(spec.path, benchmark=spec.name)
    elif spec.format == "gpqa":
        probs = load_gpqa(spec.path, seed=spec.seed, benchmark=spec.name)
    elif spec.format == "livecodebench":
        probs = load_livecodebench(spec.path, benchmark=spec.name)
    else:
        from dasd.prompts import load_prompts

        probs, rejects = load_prompts(spec.path, system_prompt=None)
        if rejects:  # a score over part of a benchmark is not comparable: refuse, naming the line
            raise InputError(f"{rejects[0]['where']}: {rejects[0]['reason']} (benchmark {spec.name!r})")
        for p in probs:
            p.setdefault("meta", {}).setdefault("benchmark", spec.name)
    if not probs:  # an empty file, or a header only: a score over nothing is not a result
        raise InputError(f"{spec.path}: no problems (benchmark {spec.name!r}, format {spec.format})")
    return probs[: spec.limit] if spec.limit else probs


