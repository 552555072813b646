"""`dasd filter` interrupted on the path that keeps its verdicts after both sample pools were
imported again (some rows edited, some added, the rest the same in another order), then run again,
ends with what an uninterrupted filter has: the same kept rows (each once, each referring to its
sample's row now), the same rejects (rule, reason and ``where``), the same funnel and manifest
``judged``; no sample is judged twice that the uninterrupted run judged once (``apply_filters``
counted), and `dasd score` after it asks the student about what it asks after the uninterrupted
filter, nothing more. Interrupted by an exception injected at a real call site (a store method
raising once), and by SIGKILL of a `dasd filter` process at the same points."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import dasd.stages.filter as filter_stage
from dasd.columnar import plain
from dasd.config import load_config
from dasd.runs import open_engine
from dasd.stages.filter import run_filter
from dasd.stages.import_ import run_import
from dasd.stages.score import run_score
from dasd.store import RunStore

TEMPS = (0.6, 1.0)
ROWS = 12
SETTINGS = ["teacher.model=toy:teacher", "student.model=toy:student", "filter.max_student_tokens=60",
            "student.score_batch_tokens=1", "teacher.score_batch_tokens=1"]


def _text(i: int, edited: bool = False) -> str:
    """Row ``i``'s response: kept, but every fifth without a think block (``structure``), every fifth
    repeating itself (``repetition``) and every fifth too long for the student (``length``)."""
    k = i % 5
    if k == 2:
        return f"{i} + 4 = {i + 4}."
    if k == 3:
        return "<think>" + f"We add {i} and 4. " * 12 + f"</think> {i + 4}"
    if k == 4:
        return "<think>" + " ".join(f"s{j}={j * i + 7}" for j in range(24)) + f"</think> {i + 4}"
    return f"<think>{i} + 4 = {i + 4}{' indeed' if edited else ''}.</think> So {i + 4}."


def _write(src: Path, temp: float, rows, edited=()) -> None:
    (src / f"chat-{temp}.jsonl").write_text("".join(
        json.dumps({"id": f"q{i}", "messages": [{"role": "user", "content": f"What is {i} + 4?"},
                                                {"role": "assistant", "content": _text(i, i in edited)}]}) + "\n"
        for i in rows), encoding="utf-8")


def _cfg(run: Path, src: Path, temp: float = 1.0):
    return load_config(None, [f"run_dir={run}", f"import.source={src / f'chat-{temp}.jsonl'}", "import.format=chat",
                              f"import.temperature={temp}", *SETTINGS])


def _state(run: Path) -> dict:
    """What filter holds and recorded, with the run's folder named ``RUN``: kept rows by pool (in
    order, plain values), rejects (in order), the funnel and ``judged``; and that no id is twice on
    disk and no temp file is left."""
    store = RunStore.open(run)
    kept = {}
    for name in (n for n in store.outputs("filter") if n.startswith("kept-")):
        ids = [i for p in sorted((run / "filter").glob(f"{name}-*.parquet")) for i in pq.read_table(p, columns=["id"])["id"].to_pylist()]
        assert len(ids) == len(set(ids)), f"{name}: an id twice on disk"
        kept[name] = [plain(r) for r in store.read("filter", name)]  # joined: each refers to a sample row holding its id
    rejects = [json.loads(line) for p in sorted((run / "filter").glob("rejects-*.jsonl")) for line in p.read_text().splitlines()]
    assert len({r["id"] for r in rejects}) == len(rejects), "a reject twice on disk"
    for r in rejects:
        r["where"] = r["where"].replace(str(run), "RUN")
    assert not list(run.rglob("*.tmp"))
    info = store.stage_info("filter")
    return {"kept": kept, "rejects": rejects, "counts": info["counts"], "judged": info["judged"],
            "complete": info["complete"]}


@pytest.fixture(scope="module")
def reimported(tmp_path_factory, counting_scorer):
    """A run whose two pools were imported, filtered and scored, then imported again with one row of
    each edited, two rows added and the rows in another order (``before``); the same run filtered
    without interruption and scored (``ref``): ``(before, ref, its state, the samples it judged,
    what score asked the student about)``."""
    tmp = tmp_path_factory.mktemp("filterkill")
    src, run = tmp / "src", tmp / "before"
    src.mkdir()
    for t in TEMPS:
        _write(src, t, range(ROWS))
        run_import(_cfg(run, src, t))
    run_filter(_cfg(run, src))
    run_score(_cfg(run, src))
    for t in TEMPS:
        _write(src, t, [*reversed(range(ROWS + 2))], edited={1, 6} if t == 1.0 else {5})
        assert run_import(_cfg(run, src, t))["imported"] == ROWS + 2
    ref = tmp / "ref"
    shutil.copytree(run, ref, ignore=shutil.ignore_patterns(".lock"))
    judged = []
    rules = filter_stage.apply_filters
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(filter_stage, "apply_filters", lambda s, *a: judged.append(s["id"]) or rules(s, *a))
        run_filter(_cfg(ref, src))
    state = _state(ref)
    assert state["judged"] == {"T0.6": 3, "T1": 4}  # the rows added and edited; the others' verdicts kept
    assert sorted(judged) == sorted(set(judged)) and len(judged) == 7
    assert {n: len(v) for n, v in state["kept"].items()} == {"kept-T0.6": 6, "kept-T1": 6}
    assert sorted(r["rule"] for r in state["rejects"]) == ["length"] * 4 + ["repetition"] * 6 + ["structure"] * 6
    return src, run, ref, state, sorted(judged), _score(ref, src, counting_scorer)


def _score(run: Path, src: Path, counting) -> tuple[int, dict, dict]:
    """`dasd score` on ``run`` with the toy student wrapped in ``counting`` (the conftest fixture
    counting_scorer): how many requests it answered, the counts and what score holds (plain values)."""
    student = counting(open_engine(_cfg(run, src).student))
    counts = run_score(_cfg(run, src), student=student)
    store = RunStore.open(run)
    held = {n: {r["id"]: plain(r) for r in store.read("score", n)} for n in store.outputs("score")}
    return student.requests, counts, held


class Killed(BaseException):
    """The injected interruption (a BaseException, as KeyboardInterrupt: nothing catches it)."""


def _target(where: str):
    """``(owner, attribute)`` of ``RunStore.<method>`` or ``filter.<function>`` (of the filter stage's module)."""
    owner, name = where.split(".")
    return (RunStore if owner == "RunStore" else filter_stage), name


def _raising_once(where: str, nth: int):
    """A replacement of ``where`` (``_target``) that raises ``Killed`` on its ``nth`` call (before doing
    anything) and otherwise does what it does."""
    real, calls = getattr(*_target(where)), []

    def hook(*a, **kw):
        calls.append(where)
        if len(calls) == nth:
            raise Killed(f"{where} #{nth}")
        return real(*a, **kw)

    return hook


# The points where filter is interrupted: (a store method or a function of the filter stage, which call of it).
POINTS = {
    "first kept output re-linked, its old shards not yet removed": ("RunStore.remove_shards", 1),
    "one kept output re-linked, the other's new shards written": ("RunStore.remove_shards", 2),
    "kept outputs re-linked, rejects not yet rewritten": ("RunStore.drop_records", 1),
    "rejects being rewritten": ("filter._where", 2),
    "rejects rewritten, the stage not yet begun": ("RunStore.begin_stage", 1),
    "one pool judged, the next being judged": ("filter.apply_filters", 4),
    "every verdict written, the stage not yet recorded finished": ("RunStore.end_stage", 1),
}


def _resumed(tmp_path, reimported, interrupt, counting) -> None:
    """Copy the re-imported run, ``interrupt(run, judged)`` a filter of it, filter it again and check
    it against the uninterrupted run."""
    src, before, ref, want, want_judged, want_score = reimported
    run = tmp_path / "run"
    shutil.copytree(before, run, ignore=shutil.ignore_patterns(".lock"))
    judged: list[str] = []
    interrupt(run, judged)
    assert not RunStore.open(run).stage_info("filter")["complete"]
    rules = filter_stage.apply_filters
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(filter_stage, "apply_filters", lambda s, *a: judged.append(s["id"]) or rules(s, *a))
        counts = run_filter(_cfg(run, src))
    got = _state(run)
    assert sorted(judged) == want_judged  # each sample the uninterrupted run judged, once in all
    assert counts == want["counts"]
    assert got["kept"] == want["kept"]
    assert got["rejects"] == want["rejects"]
    assert got == want
    asked, score_counts, held = _score(run, src, counting)
    assert (asked, score_counts, held) == want_score


@pytest.mark.parametrize("point", POINTS)
def test_a_filter_interrupted_on_the_keep_path_finishes_as_an_uninterrupted_one(tmp_path, reimported, counting_scorer, point):
    src = reimported[0]

    def interrupt(run, judged):
        rules = filter_stage.apply_filters
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(filter_stage, "apply_filters", lambda s, *a: judged.append(s["id"]) or rules(s, *a))
            mp.setattr(*_target(POINTS[point][0]), _raising_once(*POINTS[point]))
            with pytest.raises(Killed):
                run_filter(_cfg(run, src))

    _resumed(tmp_path, reimported, interrupt, counting_scorer)


# A `dasd filter` process that SIGKILLs itself on the ``nth`` call of ``RunStore.<method>`` or
# ``filter.<function>`` and appends the id of each sample it judges to a file (argv: target, nth,
# file, then the CLI's arguments).
CHILD = """
import os, signal, sys
import dasd.stages.filter as filter_stage
from dasd.store import RunStore
where, nth, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rules = filter_stage.apply_filters
def counted(s, *a):
    with open(out, "a") as fh:
        fh.write(s["id"] + "\\n")
    return rules(s, *a)
filter_stage.apply_filters = counted
owner, name = where.split(".")
owner = RunStore if owner == "RunStore" else filter_stage
real, calls = getattr(owner, name), []
def hook(*a, **kw):
    calls.append(1)
    if len(calls) == nth:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*a, **kw)
setattr(owner, name, hook)
from dasd.cli import main
sys.argv = ["dasd", *sys.argv[4:]]
sys.exit(main())
"""


@pytest.mark.parametrize("point", [p for p in POINTS if POINTS[p][0] != "RunStore.begin_stage"])
def test_a_filter_process_killed_on_the_keep_path_finishes_as_an_uninterrupted_one(tmp_path, reimported, counting_scorer, point):
    src = reimported[0]

    def interrupt(run, judged):
        ids = tmp_path / "judged.txt"
        where, nth = POINTS[point]
        proc = subprocess.run([sys.executable, "-c", CHILD, where, str(nth), str(ids), "filter", f"run_dir={run}",
                               f"import.source={src / 'chat-1.0.jsonl'}", "import.format=chat", *SETTINGS],
                              capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert proc.returncode == -9, proc.stderr[-3000:]
        judged.extend(ids.read_text().split() if ids.exists() else [])

    _resumed(tmp_path, reimported, interrupt, counting_scorer)
