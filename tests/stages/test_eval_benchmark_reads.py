"""`dasd eval` reads each benchmark file once, however many models it evaluates: the opens of the
files are counted by a Python audit hook (the interpreter's own ``open`` event), not by a stand-in."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from dasd.config import load_config
from dasd.grading.loaders import load_benchmark
from dasd.runs import results_name
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
