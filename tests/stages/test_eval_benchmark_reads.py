"""`dasd eval` reads each benchmark file once, however many models it evaluates, and `dasd analyze`
after it in one `dasd run` (the same store) does not read them again: the opens of the files are
counted by a Python audit hook (the interpreter's own ``open`` event), not by a stand-in. A missing
or bad benchmark file is named by its ``eval.benchmarks`` entry, in `dasd eval` and `dasd analyze`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from dasd.config import load_config
from dasd.errors import InputError
from dasd.grading.loaders import load_benchmark
from dasd.runs import results_name
from dasd.stages.analyze import run_analyze
from dasd.stages.eval import run_evaluation
from dasd.store import RunStore

_WATCHED: dict[str, int] = {}  # resolved path -> opens seen; the hook counts only these


def _count_open(event: str, args: tuple) -> None:
    if event == "open" and _WATCHED and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.path.realpath(os.fsdecode(args[0]))
        if path in _WATCHED:
            _WATCHED[path] += 1


sys.addaudithook(_count_open)  # hooks cannot be removed: it is idle while nothing is watched


class Opens:
    """Counts the opens of ``paths`` while in the ``with`` block: ``counts[path]``."""

    def __init__(self, *paths: Path):
        self.paths = [os.path.realpath(p) for p in paths]
        self.counts: dict[str, int] = {}

    def __enter__(self):
        _WATCHED.update({p: 0 for p in self.paths})
        return self

    def __exit__(self, *exc):
        self.counts = {p: _WATCHED.pop(p) for p in self.paths}

    def __getitem__(self, path: Path) -> int:
        return self.counts[os.path.realpath(path)]


def test_each_benchmark_is_read_once_for_all_models(tmp_path, tiny_lm_dir):
    """Two file benchmarks (AIME-style and prompts), two models (student and teacher): each file is
    opened as often as one ``load_benchmark`` of it opens it, not once more for the check before the
    models and again for each model; both models are evaluated on every problem."""
    aime = tmp_path / "aime.jsonl"
    aime.write_text("".join(json.dumps({"id": i, "problem": f"What is {i} + {i}?", "answer": 2 * i}) + "\n"
                            for i in range(3)), encoding="utf-8")
    mine = tmp_path / "mine.jsonl"
    mine.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"{i} times 3?", "answer": str(3 * i)}) + "\n"
                            for i in range(2)), encoding="utf-8")
    cfg = load_config(None, [
        f"run_dir={tmp_path / 'run'}", f"teacher.model={tiny_lm_dir}", f"student.model={tiny_lm_dir}",
        f"eval.benchmarks=[{{name: aime, format: aime, path: {aime}}}, {{name: mine, format: prompts, path: {mine}}}]",
        "eval.protocol={name: mini, temperature: 1.0, n: 1, max_tokens: 8}", "eval.models=[student, teacher]",
        "eval.workers=0",
    ])
    with Opens(aime, mine) as one:
        for spec in cfg.eval.benchmarks:
            load_benchmark(spec)
    assert one[aime] >= 1 and one[mine] >= 1

    with Opens(aime, mine) as evaluated:
        summary = run_evaluation(cfg)
    assert (evaluated[aime], evaluated[mine]) == (one[aime], one[mine])

    store = RunStore(cfg.run_dir)
    for label in ("student", "teacher"):
        got = sorted((r["benchmark"], r["problem_id"]) for r in store.read("eval", results_name(label)))
        assert got == [("aime", f"aime/{i}") for i in range(3)] + [("mine", "q0"), ("mine", "q1")]
        assert summary[label][-1]["samples"] == 5


def _files(tmp_path: Path) -> tuple[Path, Path]:
    aime = tmp_path / "aime.jsonl"
    aime.write_text("".join(json.dumps({"id": i, "problem": f"What is {i} + {i}?", "answer": 2 * i}) + "\n"
                            for i in range(2)), encoding="utf-8")
    mine = tmp_path / "mine.jsonl"
    mine.write_text(json.dumps({"id": "q0", "prompt": "0 times 3?", "answer": "0"}) + "\n", encoding="utf-8")
    return aime, mine


def _cfg(tmp_path: Path, lm: str, benchmarks: str):
    """The student (a tiny model) evaluated once per problem and analysed, teacher the same model."""
    return load_config(None, [
        f"run_dir={tmp_path / 'run'}", f"teacher.model={lm}", f"student.model={lm}", f"eval.benchmarks={benchmarks}",
        "eval.protocol={name: mini, temperature: 1.0, n: 1, max_tokens: 8}", "eval.models=[student]",
        "eval.workers=0", "analyze.model=student"])


def test_eval_then_analyze_on_one_store_read_each_benchmark_once(tmp_path, tiny_lm_dir):
    """As `dasd run` calls them (one store): `dasd eval` and then `dasd analyze` open each benchmark
    file as often as one ``load_benchmark`` of it does; `dasd analyze` on its own (a new store) reads
    them once too; a benchmark file changed since is read again, its new problem used."""
    aime, mine = _files(tmp_path)
    cfg = _cfg(tmp_path, tiny_lm_dir, f"[{{name: aime, format: aime, path: {aime}}}, "
                                      f"{{name: mine, format: prompts, path: {mine}}}]")
    with Opens(aime, mine) as one:
        for spec in cfg.eval.benchmarks:
            load_benchmark(spec)
    store = RunStore(cfg.run_dir)
    with Opens(aime, mine) as both:
        run_evaluation(cfg, store)
        profile = run_analyze(cfg, store)
    assert (both[aime], both[mine]) == (one[aime], one[mine])
    assert profile["model"] == "student" and sum(profile["n_responses"].values()) == 3

    with Opens(aime, mine) as alone:
        assert run_analyze(cfg) == profile
    assert (alone[aime], alone[mine]) == (one[aime], one[mine])

    mine.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"{i} times 3?", "answer": str(3 * i)}) + "\n"
                            for i in range(2)), encoding="utf-8")
    with Opens(aime, mine) as changed:
        summary = run_evaluation(cfg, store)
    assert (changed[aime], changed[mine]) == (one[aime], one[mine])
    assert summary["student"][-1]["samples"] == 4  # q1 evaluated: the file was read again


def test_a_missing_or_bad_benchmark_file_is_named_by_its_entry(tmp_path, tiny_lm_dir, monkeypatch):
    """`dasd eval` names the ``eval.benchmarks`` entry (numbered from 0, as an override sets it) and its
    benchmark before what is wrong with its file, before anything is begun; so does `dasd analyze` when
    a file evaluated before is gone."""
    monkeypatch.chdir(tmp_path)
    aime, mine = _files(tmp_path)
    (tmp_path / "data").mkdir()
    specs = f"[{{name: toy, format: toy, limit: 1}}, {{name: aime, format: aime, path: {aime.name}}}, " + "{}]"

    def refused(last: str) -> str:
        with pytest.raises(InputError) as err:
            run_evaluation(_cfg(tmp_path, tiny_lm_dir, specs.replace("{}", last)))
        assert RunStore(tmp_path / "run").stage_info("eval") == {}  # nothing begun
        return str(err.value)

    assert refused("{name: aime25, format: aime, path: data/aime25.jsonl}") == (
        f"eval.benchmarks.2: benchmark 'aime25': no file at data/aime25.jsonl (relative to the working directory "
        f"{tmp_path})")
    assert refused(f"{{name: gpqa, format: gpqa, path: {tmp_path / 'gpqa.csv'}}}") == (
        f"eval.benchmarks.2: benchmark 'gpqa': no file at {tmp_path / 'gpqa.csv'}")
    assert refused("{name: lcb, format: livecodebench, path: data}") == (
        f"eval.benchmarks.2: benchmark 'lcb': data (relative to the working directory {tmp_path}) is a folder; "
        "format livecodebench reads a file")
    (tmp_path / "bad.jsonl").write_text('{"problem": "1 + 1?"}\n', encoding="utf-8")
    assert refused("{name: bad, format: aime, path: bad.jsonl}") == (
        "eval.benchmarks.2: benchmark 'bad': bad.jsonl:1: field answer: missing or not a string/number")
    (tmp_path / "ungraded.jsonl").write_text('{"id": "u", "prompt": "Hi."}\n', encoding="utf-8")
    assert refused("{name: u, format: prompts, path: ungraded.jsonl}") == (
        "eval.benchmarks.2: benchmark 'u' (ungraded.jsonl): problem 'u': nothing to grade against (no tests, "
        "choices or answer)")

    cfg = _cfg(tmp_path, tiny_lm_dir, specs.replace("{}", f"{{name: mine, format: prompts, path: {mine.name}}}"))
    run_evaluation(cfg)
    aime.unlink()
    with pytest.raises(InputError) as err:
        run_analyze(cfg)
    assert str(err.value) == (f"eval.benchmarks.1: benchmark 'aime': no file at aime.jsonl (relative to the working "
                              f"directory {tmp_path})")
    assert RunStore(tmp_path / "run").stage_info("analyze") == {}
