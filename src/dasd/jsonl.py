"""JSONL reading with file:line errors, and atomic writing (temp file + fsync + rename).

Everything dasd writes goes through ``atomic_write_*`` or ``store.ShardWriter``: a crash leaves
either the previous complete file or nothing, never a half-written file read as complete.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dasd.errors import InputError


@dataclass
class BadLine:
    """A line that could not be used: where it is and why. Goes to a rejects file, never dropped silently."""

    path: str
    line: int
    reason: str
    raw: str

    def where(self) -> str:
        return f"{self.path}:{self.line}"

    def to_record(self) -> dict[str, Any]:
        return {"where": self.where(), "reason": self.reason, "raw": self.raw[:2000]}


def _reject_constant(name: str) -> float:
    raise ValueError(f"non-finite number {name} is not valid JSON")


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any] | BadLine]]:
    """Yield ``(line_number, object)`` for each non-blank line; a bad line yields a ``BadLine``.

    Bad lines (not JSON, NaN/Infinity, not an object) do not stop the read: the caller decides to
    quarantine them. A missing or unreadable file raises ``InputError``.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file")
    try:
        fh = p.open("r", encoding="utf-8", errors="strict")
    except OSError as e:
        raise InputError(f"{p}: cannot open ({e.strerror})") from e
    with fh:
        lineno = 0
        while True:
            try:
                line = fh.readline()
            except UnicodeDecodeError as e:
                raise InputError(f"{p}:{lineno + 1}: not valid UTF-8 ({e.reason})") from e
            if not line:
                break
            lineno += 1
            if not line.strip():
                continue
            try:
                obj = json.loads(line, parse_constant=_reject_constant)
            except (json.JSONDecodeError, ValueError) as e:
                yield lineno, BadLine(str(p), lineno, f"not valid JSON: {e}", line.rstrip("\n"))
                continue
            if not isinstance(obj, dict):
                yield lineno, BadLine(str(p), lineno, f"expected a JSON object, got {type(obj).__name__}", line.rstrip("\n"))
                continue
            yield lineno, obj


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a whole JSONL file; the first bad line is an ``InputError`` naming file and line."""
    out = []
    for _, obj in iter_jsonl(path):
        if isinstance(obj, BadLine):
            raise InputError(f"{obj.where()}: {obj.reason}")
        out.append(obj)
    return out


def dumps(obj: Any) -> str:
    """One JSON line: compact, UTF-8 kept as is, NaN refused (it is not JSON)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w"):
    """Open a temp file beside ``path``; on success fsync and rename it over ``path``.

    On an exception the temp file is removed and ``path`` is left as it was.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> int:
    """Write ``records`` as JSONL atomically; return how many were written."""
    n = 0
    with atomic_open(path) as fh:
        for r in records:
            fh.write(dumps(r) + "\n")
            n += 1
    return n


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_open(path) as fh:
        json.dump(obj, fh, ensure_ascii=False, indent=2, allow_nan=False)
        fh.write("\n")


def finite(values: Iterable[float]) -> bool:
    """True when every value is a finite float (log-probs must be; NaN/inf get a record rejected)."""
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
