"""JSONL reading with file:line errors, and atomic writing (temp file + fsync + rename).

Everything dasd writes goes through ``atomic_write_*`` or ``store.ShardWriter``: a crash leaves
either the previous complete file or nothing, never a half-written file read as complete.
"""

from __future__ import annotations

import errno
import json
import math
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dasd.errors import DiskFullError, InputError, OutputError

# errno values of a full disk or an exceeded quota
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
# errno values of a path that cannot be written for a reason the user can fix
UNWRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG,
              errno.ELOOP)  # EEXIST: mkdir of a parent that is a file


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


def reject_constant(name: str) -> float:
    """``json.loads``' ``parse_constant``: NaN and Infinity are not JSON, so such a line is a bad one."""
    raise ValueError(f"non-finite number {name} is not valid JSON")


# The largest record (line) read from an input file, in bytes: a longer line is quarantined as a
# BadLine without being held in memory, so a hostile or broken input cannot exhaust memory.
MAX_RECORD_BYTES = 16 * 1024 * 1024


PARQUET_MAGIC = b"PAR1"  # the first (and last) bytes of a Parquet file

# The first bytes of files that are not JSON Lines text, and what they are.
MAGIC = {
    b"\x1f\x8b": "gzip-compressed: decompress it first (gunzip -k FILE)",
    b"\x28\xb5\x2f\xfd": "zstd-compressed: decompress it first (zstd -d FILE)",
    b"BZh": "bzip2-compressed: decompress it first (bunzip2 -k FILE)",
    b"\xfd7zXZ\x00": "xz-compressed: decompress it first (unxz -k FILE)",
    b"PK\x03\x04": "a zip archive: extract it first (unzip FILE)",
    PARQUET_MAGIC: "a Parquet file: give it a .parquet name to read it as one",
    b"\xff\xfe": "UTF-16 text (as Windows PowerShell writes): convert it to UTF-8 (iconv -f UTF-16 -t UTF-8 FILE)",
    b"\xfe\xff": "UTF-16 text: convert it to UTF-8 (iconv -f UTF-16 -t UTF-8 FILE)",
}


def file_kind(head: bytes) -> str | None:
    """What a file starting with ``head`` is when it is not JSON Lines text (``MAGIC``), else None."""
    return next((what for magic, what in MAGIC.items() if head.startswith(magic)), None)


def _json_array(first: bytes) -> bool:
    """True when a file's first line opens a JSON array of objects (``[`` alone or ``[{``): a JSON
    file, not JSON Lines. Such a line is never a good record, so nothing readable is refused."""
    text = first.lstrip(b"\xef\xbb\xbf \t\r\n")
    return text.startswith(b"[") and text[1:].lstrip()[:1] in (b"{", b"")


def open_jsonl(path: str | os.PathLike, parquet: bool = False):
    """A JSON Lines file opened for binary reading; ``InputError`` when it is missing, a directory,
    unreadable, or compressed or Parquet (``MAGIC``): one line saying what it is instead. With
    ``parquet``, a Parquet file is opened too (``dasd.sources`` reads it as one from this handle)."""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{p}: is a directory, expected a JSON Lines file")
    if not p.is_file():
        raise InputError(f"{p}: no such file")
    try:
        fh = p.open("rb")
    except OSError as e:
        raise InputError(f"{p}: cannot open ({e.strerror})") from e
    head = fh.read(8)
    kind = file_kind(head)
    if kind and not (parquet and head.startswith(PARQUET_MAGIC)):
        fh.close()
        raise InputError(f"{p}: not JSON Lines text: {kind.replace('FILE', str(p))}")
    fh.seek(0)
    return fh


def iter_jsonl(path: str | os.PathLike, max_bytes: int | None = None, fh=None
               ) -> Iterator[tuple[int, dict[str, Any] | BadLine]]:
    """Yield ``(line_number, object)`` for each non-blank line; a bad line yields a ``BadLine``.

    Bad lines (not UTF-8, not JSON, NaN/Infinity, not an object, longer than ``max_bytes``) do not
    stop the read: the caller decides to quarantine them; line numbers stay exact. A UTF-8 byte
    order mark at the start of the file is skipped. Input readers pass ``max_bytes=MAX_RECORD_BYTES``;
    the run's own files are read whole. A file that cannot be JSON Lines at all raises
    ``InputError`` saying what it is instead: missing, a directory, unreadable, compressed, Parquet
    (``MAGIC``), or one JSON array (``[{...}, {...}]``) rather than one object a line. ``fh``: ``path``
    already opened by ``open_jsonl`` (at its start), read and closed here rather than opened again.
    """
    p = Path(path)
    with (open_jsonl(p) if fh is None else fh) as fh:
        lineno = 0
        first = True  # the first non-blank line is not read yet
        while True:
            raw = fh.readline(max_bytes + 1) if max_bytes else fh.readline()
            if not raw:
                break
            lineno += 1
            if first and raw.strip() and _json_array(raw):
                out = p.with_suffix(".jsonl") if p.suffix != ".jsonl" else p.with_name(f"{p.stem}-lines.jsonl")
                raise InputError(f"{p}:{lineno}: a JSON array, not JSON Lines (one object per line); convert it "
                                 f"with: jq -c '.[]' {p} > {out}")
            first = first and not raw.strip()
            if max_bytes and len(raw) > max_bytes and not raw.endswith(b"\n"):
                size = len(raw)
                while raw and not raw.endswith(b"\n"):  # skip the rest of the line, a chunk at a time
                    raw = fh.readline(1 << 20)
                    size += len(raw)
                yield lineno, BadLine(str(p), lineno, f"record of {size} bytes is over the {max_bytes}-byte cap "
                                      "(dasd.jsonl.MAX_RECORD_BYTES)", "")
                continue
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            obj = parse_line(raw, str(p), lineno)
            if obj is not None:
                yield lineno, obj


def parse_line(raw: bytes, path: str, lineno: int) -> dict[str, Any] | BadLine | None:
    """One line of a JSONL file (``raw``, with its newline if it has one): the object, a ``BadLine``
    saying why it is none (not UTF-8, not JSON, NaN/Infinity, not an object), or None for a blank line."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return BadLine(path, lineno, f"not valid UTF-8 (byte {e.start}: {e.reason})", raw.decode("utf-8", "replace").rstrip("\n"))
    if not line.strip():
        return None
    try:
        obj = json.loads(line, parse_constant=reject_constant)
    except (json.JSONDecodeError, ValueError) as e:
        cut = "" if raw.endswith(b"\n") else " (the file ends inside this line: cut off while written?)"
        return BadLine(path, lineno, f"not valid JSON: {e}{cut}", line.rstrip("\n"))
    if not isinstance(obj, dict):
        return BadLine(path, lineno, f"expected a JSON object, got {type(obj).__name__}", line.rstrip("\n"))
    return obj


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


def current_umask() -> int:
    """The process's umask (read without changing it where Linux allows)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


_UMASK_LOCK = threading.Lock()


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w"):
    """Open a temp file beside ``path``; on success fsync and rename it over ``path``.

    The file gets the mode a plain ``open`` would give it (0666 less the umask). On an exception the
    temp file is removed and ``path`` is left as it was; a full disk (or quota) is a ``DiskFullError``
    naming ``path``, and a path that cannot be written (a directory, a parent that is a file, no
    permission, a read-only filesystem) an ``OutputError`` naming it.
    """
    p = Path(path)
    if p.is_dir():
        raise OutputError(f"{p}: is a directory; give the path of a file to write")
    tmp = None
    in_body = False  # an error of the caller's own code inside the block is not about this path
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as fh:
            in_body = True
            yield fh
            in_body = False
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException as err:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        if isinstance(err, OSError) and err.errno in DISK_FULL:
            raise DiskFullError(f"{p}: no space left on device ({err.strerror}); nothing was half-written: "
                                "free some space and re-run the same command to resume") from err
        # before the temp file exists, any OSError is the folder's refusal (e.g. /proc: ENOENT)
        if isinstance(err, OSError) and (err.errno in UNWRITABLE or tmp is None) and not in_body:
            where = err.filename
            if tmp is None and where and Path(where).name.startswith(f".{p.name}."):  # our temp file was refused
                where = p.parent
            why = (f"a folder on its path is a file ({where})" if err.errno in (errno.EEXIST, errno.ENOTDIR)
                   else f"{err.strerror}: {where}")
            raise OutputError(f"{p}: cannot write: {why}; nothing was written") from err
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
