"""The benchmarks of a run's ``eval.benchmarks``, read and checked once for the stages that use them.

``load_benchmarks(ecfg, store)`` gives the problems of each entry, in order. An entry whose file is
not there, that cannot be read, or that has a problem that cannot be graded is an ``InputError``
that names the entry as the config does (``eval.benchmarks.2``, the list numbered from 0, as an
override sets it) and its benchmark before what is wrong (file and line, or problem). Given the
run's ``store``, what an earlier call with that same store loaded is given again while the entries
and their files (path, size, modification time) are the same: in `dasd run`, `dasd eval` and then
`dasd analyze` read each benchmark once between them (a new ``RunStore``, as each CLI verb opens,
reads them again).
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dasd.errors import InputError
from dasd.grading.grade import grader_of
from dasd.grading.loaders import load_benchmark

if TYPE_CHECKING:
    from dasd.store import RunStore

# per run store: (what the benchmarks were loaded from, their problems)
_LOADED: "weakref.WeakKeyDictionary[RunStore, tuple[Any, list[list[dict]]]]" = weakref.WeakKeyDictionary()


def entry(i: int, spec) -> str:
    """How messages name ``eval.benchmarks`` entry ``i``: ``eval.benchmarks.2: benchmark 'aime25'``."""
    return f"eval.benchmarks.{i}: benchmark {spec.name!r}"


def _missing(spec) -> str | None:
    """What is wrong with where entry ``spec`` points (no file there, or a folder where a file is
    read), or None (a toy benchmark has no file)."""
    if spec.format == "toy" or spec.path is None:
        return None
    p = Path(spec.path)
    where = spec.path if p.is_absolute() else f"{spec.path} (relative to the working directory {Path.cwd()})"
    if not p.exists():
        return f"no file at {where}"
    if p.is_dir() and spec.format != "prompts":  # prompts: a file or a folder of them (as data.prompts)
        return f"{where} is a folder; format {spec.format} reads a file"
    return None


def _state(spec) -> Any:
    """What ``spec``'s problems are read from: the entry and each file's path, size and modification time."""
    files = []
    if spec.format != "toy" and spec.path:
        p = Path(spec.path)
        paths = sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p]
        for x in paths:
            st = x.stat()
            files.append((os.path.realpath(x), st.st_size, st.st_mtime_ns, st.st_ino))
    return [spec.model_dump(mode="json"), files]


def load_benchmarks(ecfg, store: RunStore | None = None) -> list[list[dict]]:
    """The problems of each ``eval.benchmarks`` entry of ``ecfg``, in order, each benchmark read once,
    checked before any is used (see the module docstring); with ``store``, those an earlier call
    with it loaded from the same entries and files."""
    for i, spec in enumerate(ecfg.benchmarks):  # a missing file is named before any benchmark is read
        bad = _missing(spec)
        if bad:
            raise InputError(f"{entry(i, spec)}: {bad}")
    state = [_state(spec) for spec in ecfg.benchmarks]
    if store is not None and store in _LOADED and _LOADED[store][0] == state:
        return _LOADED[store][1]
    out = []
    for i, spec in enumerate(ecfg.benchmarks):
        try:
            problems = load_benchmark(spec)
        except InputError as e:
            raise InputError(f"{entry(i, spec)}: {e}") from e
        for p in problems:
            try:
                grader_of(p)
            except ValueError as e:
                raise InputError(f"{entry(i, spec)} ({spec.path or spec.format}): {e}") from e
        out.append(problems)
    if store is not None:
        _LOADED[store] = (state, out)
    return out
