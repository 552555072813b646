"""The run directory: one folder per stage, sharded JSONL outputs, content-hash keys, a manifest.

Layout::

    RUN/
      manifest.json              config, its hash, package versions, per-stage counts and timings
      sample/pool-T0.6-00000.jsonl
      sample/pool-T0.6-00001.jsonl
      filter/...
      <stage>/rejects-00000.jsonl quarantined records with where (file:line) and why

Guarantees:
- A shard is written whole (temp file + fsync + rename) or not at all, so every ``*.jsonl`` shard
  on disk is complete; a crash loses at most the records still buffered in memory.
- Records carry an ``id`` (a content hash); a ``ShardWriter`` loads the ids already on disk and
  skips them, so re-running a stage resumes it and never writes a record twice.
- ``manifest.json`` is rewritten atomically after each change.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import time
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from dasd.errors import DasdError
from dasd.jsonl import BadLine, atomic_open, atomic_write_json, dumps, iter_jsonl
from dasd.lock import hold_run_lock

MANIFEST = "manifest.json"
_SHARD_RE = re.compile(r"^(?P<name>.+)-(?P<num>\d{5})\.jsonl$")
_TRACKED_PACKAGES = ("dasd", "torch", "transformers", "tokenizers", "accelerate", "trl", "vllm", "deepspeed", "ray")


def config_hash(config: Any) -> str:
    blob = json.dumps(config, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _TRACKED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


class ShardWriter:
    """Buffered writer of one named output of a stage, as numbered complete shards.

    ``add(record)`` skips a record whose ``id`` is already on disk or already added. A shard is
    flushed when ``shard_size`` records are buffered or ``flush_seconds`` have passed since the
    last flush, and on ``close()``. Use as a context manager: on an exception the buffer is still
    flushed (what was finished is kept) and the exception propagates.
    """

    def __init__(self, folder: Path, name: str, shard_size: int = 256, flush_seconds: float = 30.0):
        if not re.fullmatch(r"[A-Za-z0-9_.=+\-]+", name):
            raise ValueError(f"bad output name {name!r}")
        self.folder, self.name = folder, name
        self.shard_size, self.flush_seconds = shard_size, flush_seconds
        folder.mkdir(parents=True, exist_ok=True)
        self.ids: set[str] = set()
        self._next = 0
        for path in shard_paths(folder, name):
            self._next = max(self._next, int(_SHARD_RE.match(path.name)["num"]) + 1)
            for _, rec in iter_jsonl(path):
                if isinstance(rec, dict) and "id" in rec:
                    self.ids.add(rec["id"])
        self.existing = frozenset(self.ids)  # what was on disk when opened
        self._buf: list[dict] = []
        self._last_flush = time.monotonic()
        self.written = 0

    def __contains__(self, record_id: str) -> bool:
        return record_id in self.ids

    def add(self, record: dict) -> bool:
        """Buffer ``record``; return False (and do nothing) if its id was written before."""
        rid = record.get("id")
        if rid is None:
            raise ValueError("record has no 'id'")
        if rid in self.ids:
            return False
        self.ids.add(rid)
        self._buf.append(record)
        if len(self._buf) >= self.shard_size or time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()
        return True

    def flush(self) -> None:
        if not self._buf:
            return
        path = self.folder / f"{self.name}-{self._next:05d}.jsonl"
        with atomic_open(path) as fh:
            for r in self._buf:
                fh.write(dumps(r) + "\n")
        self.written += len(self._buf)
        self._next += 1
        self._buf = []
        self._last_flush = time.monotonic()

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def shard_paths(folder: Path, name: str) -> list[Path]:
    """The complete shards of output ``name`` in ``folder``, in order (temp files are ignored)."""
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _SHARD_RE.match(p.name)
        if m and m["name"] == name:
            found.append((int(m["num"]), p))
    return [p for _, p in sorted(found)]


class RunStore:
    """A run directory. ``RunStore(path)`` opens or creates it to write, holding the run's lock
    (``dasd.lock``: one writing process per run); ``RunStore.open(path)`` requires it and only reads."""

    def __init__(self, root: str | Path, lock: bool = True):
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise DasdError(f"{self.root}: run directory path exists and is not a directory")
        self.root.mkdir(parents=True, exist_ok=True)
        if lock:
            hold_run_lock(self.root)
        if not (self.root / MANIFEST).exists():
            atomic_write_json(self.root / MANIFEST, {"created": _now(), "packages": package_versions(), "stages": {}})
        self.manifest = self._load_manifest()

    @classmethod
    def open(cls, root: str | Path) -> "RunStore":
        """Open an existing run directory; a clear error if it is not one."""
        p = Path(root)
        if not p.is_dir():
            raise DasdError(f"{p}: no such run directory")
        if not (p / MANIFEST).is_file():
            raise DasdError(f"{p}: not a dasd run directory (no {MANIFEST})")
        return cls(p, lock=False)

    def _load_manifest(self) -> dict:
        path = self.root / MANIFEST
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise DasdError(f"{path}: unreadable manifest ({e})") from e
        if not isinstance(data, dict) or not isinstance(data.get("stages"), dict):
            raise DasdError(f"{path}: not a dasd manifest (no 'stages' object)")
        return data

    def save_manifest(self) -> None:
        atomic_write_json(self.root / MANIFEST, self.manifest)

    def stage_dir(self, stage: str) -> Path:
        d = self.root / stage
        d.mkdir(parents=True, exist_ok=True)
        return d

    def writer(self, stage: str, name: str, **kw) -> ShardWriter:
        return ShardWriter(self.stage_dir(stage), name, **kw)

    def outputs(self, stage: str) -> list[str]:
        """Names of the sharded outputs a stage has on disk."""
        d = self.root / stage
        if not d.is_dir():
            return []
        return sorted({m["name"] for p in d.iterdir() if (m := _SHARD_RE.match(p.name))})

    def read(self, stage: str, name: str) -> Iterator[dict]:
        """Records of one output, in write order, each id once."""
        seen: set[str] = set()
        for path in shard_paths(self.root / stage, name):
            for _, rec in iter_jsonl(path):
                if isinstance(rec, BadLine):
                    raise DasdError(f"{rec.where()}: corrupt run file ({rec.reason})")
                rid = rec.get("id")
                if rid is not None:
                    if rid in seen:
                        continue
                    seen.add(rid)
                yield rec

    def count(self, stage: str, name: str) -> int:
        return sum(1 for _ in self.read(stage, name))

    # -- manifest ---------------------------------------------------------------------------------
    def stage_info(self, stage: str) -> dict:
        return self.manifest["stages"].get(stage, {})

    def begin_stage(self, stage: str, config: Any) -> None:
        info = self.manifest["stages"].setdefault(stage, {})
        h = config_hash(config)
        if info.get("config_hash") not in (None, h):
            info["previous_config_hashes"] = sorted(set(info.get("previous_config_hashes", [])) | {info["config_hash"]})
        info.update(config=config, config_hash=h, started=_now(), complete=False, packages=package_versions())
        self._t0 = time.monotonic()
        self.save_manifest()

    def end_stage(self, stage: str, counts: dict[str, Any], **extra: Any) -> None:
        info = self.manifest["stages"].setdefault(stage, {})
        info.update(counts=counts, finished=_now(), complete=True, **extra)
        info["seconds"] = round(time.monotonic() - getattr(self, "_t0", time.monotonic()), 3)
        self.save_manifest()

    def is_complete(self, stage: str, config: Any) -> bool:
        """True when the stage finished with exactly this config."""
        info = self.stage_info(stage)
        return bool(info.get("complete")) and info.get("config_hash") == config_hash(config)

    def write_rejects(self, stage: str, rejects: Iterable[dict]) -> int:
        """Append quarantined records (each with 'where' and 'reason') as a new rejects shard."""
        with self.writer(stage, "rejects") as w:
            for r in rejects:
                w.add({"id": r.get("id") or config_hash([r.get("where"), r.get("reason"), r.get("raw")]), **r})
        return w.written


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
