"""Evaluation: sample k responses per problem under a recorded protocol, grade them (the ``eval``
config section is here too; the run's `dasd eval` driver is ``dasd.stages.eval``).

    from dasd.engines import EngineConfig, make_engine
    from dasd.grading.evaluate import Protocol, run_eval, run_grade
    proto = Protocol.paper("math")                       # T=1.0, top_p=1.0, n=64, 102,400 tokens
    run_eval(make_engine(EngineConfig(model="runs/toy/student")), problems, proto, done=set(), write=print)
    print(run_grade("problems.jsonl", "responses.jsonl", "results.jsonl"))   # `dasd grade`

Every result carries the full protocol (and the engine's model name), so a score can always be
reproduced. Sample ``j`` of problem ``p`` is drawn with its own seed, derived from
``(protocol.seed, p, j)``: a resumed run draws exactly what an uninterrupted one would have.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from dasd.configbase import StrictModel
from dasd.engines.base import Engine, GenerateRequest
from dasd.errors import InputError
from dasd.grading.grade import grade_many, grader_of, grading_pool
from dasd.grading.loaders import BenchmarkSpec, load_problems
from dasd.grading.metrics import SUMMARY_FIELDS, format_table, summarize
from dasd.jsonl import MAX_RECORD_BYTES, BadLine, atomic_open, dumps, iter_jsonl
from dasd.log import logger
from dasd.log import progress as progress_bar
from dasd.records import EvalResult, content_id

PAPER_MAX_TOKENS = {"math": 102_400, "toy": 102_400}
PAPER_MAX_TOKENS_OTHER = 81_920


class Protocol(StrictModel):
    """How responses are sampled for evaluation; stored with every result."""

    name: str = Field("custom", description="A label for the protocol (the paper preset is 'paper').")
    temperature: float = Field(1.0, ge=0.0, description="Sampling temperature (0 = greedy).")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    max_tokens: int = Field(4096, ge=1, description="Most generated tokens per sample (thinking included).")
    n: int = Field(1, ge=1, description="Samples per problem (k of avg@k / pass@k / maj@k).")
    seed: int = Field(0, description="Base seed; sample j of problem p uses a seed derived from (seed, p, j).")
    system_prompt: str | None = Field(
        None, description="If set, replaces (or adds) the system message of every problem; None keeps the "
        "problem's own messages as they are.")
    chat_template: str = Field(
        "model default", description="Which chat template renders the messages (a note recorded with "
        "results; engines apply their tokenizer's template).")

    @model_validator(mode="after")
    def _check(self) -> Protocol:
        if self.temperature == 0 and self.n > 1:
            raise ValueError("temperature 0 (greedy) with n > 1 gives n identical samples; set n: 1")
        return self

    @classmethod
    def paper(cls, domain: str) -> Protocol:
        """The paper's protocol: T 1.0, top_p 1.0, 64 samples, 102,400 tokens for math (and toy),
        81,920 for code and science."""
        return cls(name="paper", temperature=1.0, top_p=1.0, n=64, seed=0,
                   max_tokens=PAPER_MAX_TOKENS.get(domain, PAPER_MAX_TOKENS_OTHER))


class EvalConfig(StrictModel):
    """`dasd eval` settings (YAML section ``eval``)."""

    benchmarks: list[BenchmarkSpec] = Field(
        default_factory=lambda: [BenchmarkSpec(name="toy", format="toy", limit=50)], min_length=1,
        description="what to evaluate on")
    protocol: Protocol = Field(
        default_factory=lambda: Protocol(name="demo", temperature=0.6, top_p=1.0, n=4, max_tokens=512),
        description="sampling protocol, stored with every result; left out: the demo's, for the toy models only "
        "(see `preset`)")
    preset: Literal["none", "paper"] = Field(
        "none", description="paper = the paper's protocol per benchmark domain (T 1.0, top_p 1.0, n 64, "
        "102,400 tokens math / 81,920 code and science), replacing `protocol`. With none and no `protocol` "
        "given, the demo's protocol (512 tokens), for the toy models only: evaluating any other model under it is "
        "refused before anything runs (`dasd run`: before the first stage)")
    models: list[str] = Field(
        default_factory=lambda: ["student", "stage1_low", "stage2_high", "stage3_mixed", "teacher"], min_length=1,
        description="labels: teacher, student (base), a training stage name, or a model directory; in a run "
        "config the default is student, every stage of train.stages, teacher")
    batch_requests: int = Field(64, ge=1, description="samples per engine call")
    workers: int | None = Field(None, ge=0, description="grading processes (0 = in process; None = auto)")

    @model_validator(mode="after")
    def _distinct(self):
        """Results are keyed by benchmark name and model label: each may appear once."""
        for what, names in (("benchmarks", [b.name for b in self.benchmarks]), ("models", self.models)):
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                raise ValueError(f"eval.{what}: {', '.join(map(repr, twice))} given more than once")
        return self


def sample_seed(seed: int, problem_id: str, index: int) -> int:
    """The engine seed of sample ``index`` of ``problem_id`` under base ``seed`` (stable across runs)."""
    return int(content_id("eval-sample", int(seed), problem_id, int(index)), 16) & (2**62 - 1)


def _messages(problem: dict[str, Any], system: str | None) -> list[dict[str, str]]:
    msgs = [dict(m) for m in problem["messages"]]
    if system is not None:
        msgs = [{"role": "system", "content": system}] + [m for m in msgs if m["role"] != "system"]
    return msgs


def _result(problem: dict[str, Any], index: int, graded: dict[str, Any], protocol: dict[str, Any],
            text: str, finish_reason: str | None) -> dict[str, Any]:
    rec = {
        "problem_id": problem["id"], "sample_index": index,
        "extracted": graded["extracted"], "correct": bool(graded["correct"]), "detail": graded["detail"],
        "protocol": protocol, "domain": problem.get("domain", "other"),
        "benchmark": (problem.get("meta") or {}).get("benchmark") or problem.get("domain", "other"),
        "text": text,
    }
    if finish_reason is not None:
        rec["finish_reason"] = finish_reason
    return EvalResult.model_validate(rec).model_dump()


def run_eval(engine: Engine, problems: Iterable[dict[str, Any]], protocol: Protocol,
             done: set[tuple[str, int]], write: Callable[[dict[str, Any]], None],
             batch_requests: int = 64, workers: int | None = None, progress: bool = True) -> None:
    """Sample ``protocol.n`` responses per problem with ``engine``, grade them, ``write`` each result.

    ``done``: ``(problem_id, sample_index)`` pairs already written (resume); they are neither
    generated nor written again. ``batch_requests``: samples sent to ``engine.generate`` at once
    (each is one request with n=1 and its own seed). ``workers``: grading processes (see
    ``grade.grading_pool``). Results come out batch by batch, so a crash loses at most one batch.
    ``progress``: progress (``dasd.log.progress``) and a summary log line.
    Problems that cannot be graded are refused before anything is generated.
    """
    problems = list(problems)
    for p in problems:
        try:
            grader_of(p)
        except ValueError as e:
            raise InputError(str(e)) from e
    proto = protocol.model_dump() | {"model": getattr(engine, "name", "?")}
    todo = [(p, j) for p in problems for j in range(protocol.n) if (p["id"], j) not in done]
    if not todo:
        return
    pool = grading_pool(workers)
    bar = progress_bar(len(todo), "eval", "sample", enabled=progress)
    n_correct = 0
    try:
        for s in range(0, len(todo), batch_requests):
            chunk = todo[s : s + batch_requests]
            reqs = [GenerateRequest(id=f"{p['id']}#{j}", messages=_messages(p, protocol.system_prompt), n=1,
                                    temperature=protocol.temperature, top_p=protocol.top_p,
                                    max_tokens=protocol.max_tokens, seed=sample_seed(protocol.seed, p["id"], j))
                    for p, j in chunk]
            gens = [g[0] for g in engine.generate(reqs)]
            graded = grade_many([(p, g.text) for (p, _), g in zip(chunk, gens)], workers=workers, pool=pool)
            for (p, j), g, r in zip(chunk, gens, graded):
                write(_result(p, j, r, proto, g.text, g.finish_reason))
                n_correct += bool(r["correct"])
            bar.update(len(chunk))
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown()
    if progress:
        logger("eval").info(f"{len(todo)} samples graded ({len(done)} already done), {n_correct} correct "
                            f"({100 * n_correct / len(todo):.1f}%)")


GRADE_CHUNK = 256
"""`dasd grade` grades and writes this many responses at a time (what it holds of the responses)."""


def run_grade(problems_path: str | Path, responses_path: str | Path, out_path: str | Path,
              workers: int | None = None) -> str:
    """`dasd grade`: grade given responses without a model; return the summary table.

    ``problems_path``: Prompt records (JSONL). ``responses_path``: JSONL ``{"problem_id", "text"}``
    (+ optional ``sample_index``, default: order of appearance per problem; + optional ``protocol``,
    recorded as given). Writes one EvalResult per response to ``out_path`` atomically. A bad
    response line (not JSON, missing field, unknown problem, duplicate index), a problem id given
    twice or a problem answered that cannot be graded (``grade.grader_of``) is an InputError naming
    the file (and line), before anything is graded.

    The responses are read twice, never held: a first pass checks every line (keeping its sample
    index), a second grades ``GRADE_CHUNK`` at a time and writes their results.
    """
    problems = {p["id"]: p for p in load_problems(problems_path)}  # ids are unique (checked there)
    indices: list[int] = []  # the sample index of each response, in file order
    seen: set[tuple[str, int]] = set()
    count: dict[str, int] = {}
    for lineno, obj in iter_jsonl(responses_path, MAX_RECORD_BYTES):
        where = f"{responses_path}:{lineno}"
        if isinstance(obj, BadLine):
            raise InputError(f"{obj.where()}: {obj.reason}")
        pid, text = obj.get("problem_id"), obj.get("text")
        if not isinstance(pid, str):
            raise InputError(f"{where}: field problem_id: missing or not a string")
        if not isinstance(text, str):
            raise InputError(f"{where}: field text: missing or not a string")
        if pid not in problems:
            raise InputError(f"{where}: field problem_id: {pid!r} is not in {problems_path}")
        if pid not in count:  # the first response to this problem: can it be graded?
            try:
                grader_of(problems[pid])
            except ValueError as e:
                raise InputError(f"{problems_path}: {e}") from e
        idx = obj.get("sample_index", count.get(pid, 0))
        if not isinstance(idx, int) or isinstance(idx, bool) or idx < 0:
            raise InputError(f"{where}: field sample_index: must be an integer >= 0")
        if (pid, idx) in seen:
            raise InputError(f"{where}: duplicate response for problem {pid!r} sample_index {idx}")
        seen.add((pid, idx))
        count[pid] = max(count.get(pid, 0), idx + 1)
        indices.append(idx)
    if not indices:
        raise InputError(f"{responses_path}: no responses to grade")
    del seen
    summary: list[dict[str, Any]] = []

    def grade_chunk(chunk: list[tuple[dict[str, Any], int]], fh, pool) -> None:
        pairs = [(problems[obj["problem_id"]], obj["text"]) for obj, _ in chunk]
        try:
            graded = grade_many(pairs, workers=workers, pool=pool)
        except ValueError as e:
            raise InputError(f"{problems_path}: {e}") from e
        for (obj, idx), r in zip(chunk, graded):
            proto = obj.get("protocol") if isinstance(obj.get("protocol"), dict) else {"source": str(responses_path)}
            res = _result(problems[obj["problem_id"]], idx, r, proto, obj["text"], obj.get("finish_reason"))
            fh.write(dumps(res) + "\n")
            summary.append({k: res[k] for k in SUMMARY_FIELDS if k in res})

    pool = grading_pool(workers)
    try:
        with atomic_open(out_path) as fh:
            chunk: list[tuple[dict[str, Any], int]] = []
            checked = iter(indices)
            for lineno, obj in iter_jsonl(responses_path, MAX_RECORD_BYTES):
                idx = next(checked, None)
                if idx is None or isinstance(obj, BadLine) or obj.get("problem_id") not in problems \
                        or not isinstance(obj.get("text"), str):
                    raise InputError(f"{responses_path}:{lineno}: the file changed while it was graded")
                chunk.append((obj, idx))
                if len(chunk) == GRADE_CHUNK:
                    grade_chunk(chunk, fh, pool)
                    chunk = []
            if chunk:
                grade_chunk(chunk, fh, pool)
            if next(checked, None) is not None:
                raise InputError(f"{responses_path}: the file changed while it was graded")
    finally:
        if pool is not None:
            pool.shutdown()
    return format_table(summarize(summary))
