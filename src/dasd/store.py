"""The run directory: one folder per stage, sharded outputs, content-hash keys, a manifest.

Layout::

    RUN/
      manifest.json                  config, its hash, package versions, per-stage counts and timings
      sample/pool-T0.6-00000.parquet token-carrying outputs: Parquet shards (``dasd.columnar``)
      sample/prompts-00000.jsonl     everything else: JSONL shards
      filter/...
      <stage>/rejects-00000.jsonl    quarantined records with where and why

Guarantees:
- A shard is written whole (temp file + fsync + rename) or not at all, so every shard on disk is
  complete; a crash loses at most the records still buffered in memory (one bounded shard). The
  temp file of a write cut short is removed when its stage begins again, or when a writer of its
  output opens (``RunStore.writer``: `dasd import` writes into ``RUN/sample``).
- Records carry an ``id`` (a content hash); a ``ShardWriter`` loads the ids already on disk (only
  the id column of a Parquet shard) and skips them, so re-running a stage resumes it and never
  writes a record twice. Writers and readers hold those ids as digests (``dasd.idset.IdSet``,
  about 20 bytes an id).
- Columnar outputs have one schema each, checked on write and on read; a row passed on from an
  upstream output refers to it (shard + row) instead of copying its token arrays, and reading
  joins them back (``dasd.columnar``).
- ``manifest.json`` is rewritten atomically after each change; a stage records the fingerprint of
  its inputs, so a finished stage with the same config and inputs is not redone (``up_to_date``).
- A run written by the JSONL-only store of earlier versions fails on its first columnar output with
  one line naming ``dasd convert RUN`` (``dasd.convert``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import platform
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from dasd import columnar
from dasd.columnar import REF, Kind, Ref, kind_of
from dasd.errors import DasdError
from dasd.idset import IdSet
from dasd.jsonl import BadLine, atomic_open, atomic_write_json, dumps, iter_jsonl
from dasd.lock import hold_run_lock
from dasd.log import logger

MANIFEST = "manifest.json"
_SHARD_RE = re.compile(r"^(?P<name>.+)-(?P<num>\d{5})\.(?P<ext>jsonl|parquet)$")
_TEMP_RE = re.compile(r"^\.(?P<shard>.+\.(?:jsonl|parquet))\.[^.]+\.tmp$")  # a shard's temp file (atomic_open)
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


def legacy_error(path: Path, root: Path) -> DasdError:
    """The one-line error for a JSONL shard where a columnar output is expected."""
    return DasdError(f"{path}: written by the JSONL run store of an earlier dasd; convert the run with "
                     f"`dasd convert {root}`")


def read_jsonl_shard(path: Path) -> Iterator[dict]:
    """The records of one JSONL shard; a bad line is a ``DasdError`` naming file and line."""
    for _, rec in iter_jsonl(path):
        if isinstance(rec, BadLine):
            raise DasdError(f"{rec.where()}: corrupt run file ({rec.reason})")
        yield rec


class ShardWriter:
    """Buffered writer of one named output of a stage, as numbered complete shards.

    ``add(record)`` skips a record whose ``id`` is already on disk (unless ``resume`` is False: an
    output written again in place of its shards, ``RunStore.relink``) or already added. New shards
    are numbered after the highest on disk (and from ``first`` at least). A shard is
    flushed when ``shard_size`` records are buffered or ``flush_seconds`` have passed since the
    last flush, and on ``close()``. Use as a context manager: on an exception the buffer is still
    flushed (what was finished is kept) and the exception propagates.

    A token-carrying output (``columnar.kind_of``) is written as Parquet under its schema (a record
    that does not fit is a ``ValueError`` naming record and field); any other as JSONL.
    """

    def __init__(self, folder: Path, name: str, shard_size: int = 256, flush_seconds: float = 30.0,
                 root: Path | None = None, first: int = 0, resume: bool = True):
        if not re.fullmatch(r"[A-Za-z0-9_.=+\-]+", name):
            raise ValueError(f"bad output name {name!r}")
        self.folder, self.name = folder, name
        self.shard_size, self.flush_seconds = shard_size, flush_seconds
        self.kind: Kind | None = kind_of(folder.name, name)
        self._upstream = folder.parent / self.kind.upstream[0] if self.kind and self.kind.upstream else None
        folder.mkdir(parents=True, exist_ok=True)
        self.existing = IdSet()  # the ids on disk when opened
        self._added = IdSet()  # the ids added since
        self._next = first  # numbers below ``first`` are not used (shards removed since: a new name tells the change)
        for path in shard_paths(folder, name):
            self._next = max(self._next, int(_SHARD_RE.match(path.name)["num"]) + 1)
            if not resume:
                continue
            if self.kind is not None:
                if path.suffix != ".parquet":
                    raise legacy_error(path, root or folder.parent)
                self.existing.update(columnar.read_table(path, self.kind, ["id"])["id"].to_pylist())
                continue
            for _, rec in iter_jsonl(path):
                if isinstance(rec, dict) and "id" in rec:
                    self.existing.add(rec["id"])
        self._buf: list[dict] = []
        self._last_flush = time.monotonic()
        self.written = 0

    def __contains__(self, record_id: str) -> bool:
        """Whether ``record_id`` is on disk or was added."""
        return record_id in self.existing or record_id in self._added

    def add(self, record: dict) -> bool:
        """Buffer ``record``; return False (and do nothing) if its id was written before."""
        rid = record.get("id")
        if rid is None:
            raise ValueError("record has no 'id'")
        if rid in self:
            return False
        if self.kind is not None:  # check the schema now, so the error names the record being added
            columnar.check(self.kind, record)
        self._added.add(rid)
        self._buf.append(record)
        if len(self._buf) >= self.shard_size or time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()
        return True

    def flush(self) -> None:
        if not self._buf:
            return
        if self.kind is not None:
            table = columnar.to_table(self.kind, self._buf, self._upstream)
            columnar.write_shard(self.folder / f"{self.name}-{self._next:05d}.{columnar.EXT}", table)
        else:
            with atomic_open(self.folder / f"{self.name}-{self._next:05d}.jsonl") as fh:
                for r in self._buf:
                    fh.write(dumps(columnar.plain(r)) + "\n")
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
            found.append((int(m["num"]), p.suffix, p))
    return [p for _, _, p in sorted(found)]


class RunStore:
    """A run directory. ``RunStore(path)`` opens or creates it to write, holding the run's lock
    (``dasd.lock``: one writing process per run); ``RunStore.open(path)`` requires it and only reads."""

    def __init__(self, root: str | Path, lock: bool = True):
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise DasdError(f"{self.root}: run directory path exists and is not a directory")
        self.root.mkdir(parents=True, exist_ok=True)
        # this process holds the run lock: temp files of a killed writer may go. A rank > 0 of a
        # distributed job does not (rank 0 holds it, and may be saving the manifest meanwhile)
        self._locked = lock and hold_run_lock(self.root)
        if self._locked:
            for p in self.root.glob(f".{MANIFEST}.*.tmp"):  # left by a killed save of the manifest (lock held)
                if p.is_file():
                    p.unlink(missing_ok=True)
        if self._locked and not (self.root / MANIFEST).exists():
            atomic_write_json(self.root / MANIFEST, {"created": _now(), "packages": package_versions(), "stages": {}})
        self.manifest = self._load_manifest()
        self._tables: OrderedDict[Path, object] = OrderedDict()  # upstream shards being joined (a few)

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
        except (OSError, ValueError) as e:  # ValueError: not JSON, or not UTF-8 (a damaged byte)
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
        """A ``ShardWriter`` of output ``name``; its shards are numbered after any it had that were
        removed (``remove_shards``), so a rewritten output never reuses a shard name. The temp files
        a killed writer of the output left are removed first (when this store holds the run lock):
        a stage that writes into another's folder (`dasd import` into ``RUN/sample``) does not sweep
        that folder when it begins."""
        if self._locked:
            self._sweep_temp_files(stage, name)
        first = (self.manifest.get("next_shard") or {}).get(f"{stage}/{name}", 0)
        return ShardWriter(self.stage_dir(stage), name, root=self.root, first=first, **kw)

    def outputs(self, stage: str) -> list[str]:
        """Names of the sharded outputs a stage has on disk."""
        d = self.root / stage
        if not d.is_dir():
            return []
        return sorted({m["name"] for p in d.iterdir() if (m := _SHARD_RE.match(p.name))})

    def remove_output(self, stage: str, name: str) -> int:
        """Delete every shard of output ``name`` of ``stage`` (results that no longer hold, e.g. of a
        model that has changed since); return how many files were removed (``remove_shards``)."""
        return self.remove_shards(stage, name, shard_paths(self.root / stage, name))

    def remove_shards(self, stage: str, name: str, paths: list[Path]) -> int:
        """Delete the shards ``paths`` of output ``name`` of ``stage`` (all of them, or some: an
        import's records in a pool that also holds sampled ones); return how many.

        The number after the last of them is kept in the manifest (``next_shard``) first: the output
        written again gets new shard names, so a stage that read the old shards sees them gone
        (``runs.drop_if_inputs_rewritten`` compares names and sizes), even where a new shard has
        an old one's size, and even when the command is killed before it writes one."""
        if paths:
            last = max(int(_SHARD_RE.match(p.name)["num"]) for p in paths)
            floors = self.manifest.setdefault("next_shard", {})
            floors[f"{stage}/{name}"] = max(floors.get(f"{stage}/{name}", 0), last + 1)
            self.save_manifest()
        for p in paths:
            p.unlink()
        return len(paths)

    def remove_outputs(self, stage: str, prefixes: tuple[str, ...], which=None) -> list[str]:
        """Delete the outputs of ``stage`` whose names start with one of ``prefixes`` (and, with
        ``which``, for which ``which(name)`` is true); return their names."""
        names = [n for n in self.outputs(stage) if n.startswith(prefixes) and (which is None or which(n))]
        for name in names:
            self.remove_output(stage, name)
        return names

    def drop_records(self, stage: str, name: str, drop, add: Iterable[dict] = ()) -> int:
        """Remove the records of JSONL output ``name`` for which ``drop(record)`` is true (verdicts
        that no longer hold, e.g. made against a model that has changed since), writing the records
        of ``add`` in their place (new versions of some of them); return how many were dropped
        (none dropped: nothing is written).

        The records kept and added are written to a new shard before the old shards are deleted: a
        crash in between leaves every old record readable (``read`` gives each id once, the first)
        and doing it again finishes the job. The records are streamed, not held (the run's prompts
        are rewritten so): ``drop`` is asked twice about each, and must answer the same."""
        if kind_of(stage, name) is not None:
            raise ValueError(f"{stage}/{name}: drop_records rewrites JSONL outputs only")
        old = shard_paths(self.root / stage, name)
        dropped = sum(bool(drop(r)) for r in self.read(stage, name))
        if not dropped:
            return 0
        num = max(int(_SHARD_RE.match(p.name)["num"]) for p in old) + 1
        path = self.root / stage / f"{name}-{num:05d}.jsonl"
        written = 0
        with atomic_open(path) as fh:
            for r in itertools.chain((r for r in self.read(stage, name) if not drop(r)), add):
                fh.write(dumps(r) + "\n")
                written += 1
        for p in old:
            p.unlink()
        if not written:
            path.unlink()
        return dropped

    def relink(self, stage: str, name: str, where: Callable[[dict], tuple[str, int] | None]) -> tuple[int, int]:
        """Write columnar output ``name`` of ``stage`` again, each row referring to the row of its
        upstream output (``columnar.upstream_output``) that ``where(row)`` gives as ``(shard file
        name, row)``, for an upstream output written again under new shard names; a row for which
        it gives None is left out. ``row`` holds the row's own fields only (not joined: the rows it
        referred to may be gone), and they are what is written, so nothing is recomputed.

        Streamed: the new shards are written before the old ones are deleted (``remove_shards``).
        A crash in between leaves both, and doing it again over both finishes the job (each id is
        written once). Return how many ids were kept and how many left out."""
        kind = kind_of(stage, name)
        if kind is None or kind.upstream is None:
            raise ValueError(f"{stage}/{name}: relink rewrites the references of a columnar output only")
        upstream = self.root / kind.upstream[0]
        old = shard_paths(self.root / stage, name)
        gone = IdSet()
        with self.writer(stage, name, resume=False) as w:
            for path in old:
                if path.suffix != ".parquet":
                    raise legacy_error(path, self.root)
                for row in columnar.decode(columnar.read_table(path, kind), kind, path):
                    row.pop("ref_shard", None)
                    row.pop("ref_row", None)
                    at = where(row)
                    if at is None:
                        gone.add(row.get("id"))
                    else:
                        w.add({**row, REF: Ref(upstream, at[0], at[1], {})})
        self.remove_shards(stage, name, old)
        return w.written, len(gone)

    def read(self, stage: str, name: str) -> Iterator[dict]:
        """Records of one output, in write order, each id once.

        A columnar record comes joined with the upstream rows it refers to and carries a
        ``columnar.Ref`` under ``"_ref"`` (so passing it on to the next output writes a reference).
        """
        kind = kind_of(stage, name)
        seen = IdSet()
        for path in shard_paths(self.root / stage, name):
            if kind is None:
                recs = read_jsonl_shard(path)
            elif path.suffix != ".parquet":
                raise legacy_error(path, self.root)
            else:
                recs = self._read_columnar(stage, name, kind, path)
            for rec in recs:
                rid = rec.get("id")
                if rid is not None and not seen.add(rid):
                    continue
                yield rec

    def _read_columnar(self, stage: str, name: str, kind: Kind, path: Path) -> Iterator[dict]:
        rows = columnar.decode(columnar.read_table(path, kind), kind, path)
        for i, rec in enumerate(rows):
            if "ref_shard" in rec:
                rec = self._join(stage, name, kind, path, i, rec)
            rec[REF] = Ref(path.parent, path.name, i, dict(rec))
            yield rec

    def fetch(self, stage: str, name: str, shard: str, row: int) -> dict:
        """One record of a columnar output by position (``Ref.shard``, ``Ref.row``), joined, with its ``_ref``."""
        kind = kind_of(stage, name)
        path = self.root / stage / shard
        rec = self._row(kind, path, row, f"{stage}/{name}")
        if "ref_shard" in rec:
            rec = self._join(stage, name, kind, path, row, rec)
        rec[REF] = Ref(path.parent, shard, row, dict(rec))
        return rec

    def _row(self, kind: Kind, path: Path, row: int, who: str) -> dict:
        """Row ``row`` of shard ``path`` as a partial record (a few decoded shards are cached; their
        token arrays are views of the Arrow buffers, so a cached shard costs about its size on disk
        uncompressed)."""
        rows = self._tables.get(path)
        if rows is None:
            if not path.is_file():
                raise DasdError(f"{who}: refers to {path}, which is missing (was that output removed? re-run the stage)")
            rows = columnar.decode(columnar.read_table(path, kind), kind, path)
            self._tables[path] = rows
            while len(self._tables) > 4:
                self._tables.popitem(last=False)
        else:
            self._tables.move_to_end(path)
        if not 0 <= row < len(rows):
            raise DasdError(f"{who}: refers to row {row} of {path}, which has {len(rows)} rows")
        return dict(rows[row])

    def _join(self, stage: str, name: str, kind: Kind, path: Path, i: int, own: dict) -> dict:
        """``own`` (a row's own fields) over the upstream row it refers to (itself joined)."""
        up_stage, up_name = columnar.upstream_output(kind, name)
        shard, row = own.pop("ref_shard"), own.pop("ref_row")
        up_path = self.root / up_stage / shard
        up_kind = kind_of(up_stage, up_name)
        up = self._row(up_kind, up_path, row, f"{path}: row {i} (id {own.get('id')})")
        if "ref_shard" in up:
            up = self._join(up_stage, up_name, up_kind, up_path, row, up)
        if up.get("id") != own.get("id"):
            raise DasdError(f"{path}: row {i} (id {own.get('id')}) refers to row {row} of {up_path}, which holds "
                            f"id {up.get('id')}")
        up.pop(REF, None)
        up.update(own)
        return up

    def ids(self, stage: str, name: str) -> set[str]:
        """The ids an output holds (a columnar output reads only its id column)."""
        kind = kind_of(stage, name)
        if kind is None:
            return {r["id"] for r in self.read(stage, name) if "id" in r}
        out: set[str] = set()
        for path in shard_paths(self.root / stage, name):
            if path.suffix != ".parquet":
                raise legacy_error(path, self.root)
            out.update(columnar.read_table(path, kind, ["id"])["id"].to_pylist())
        return out

    def count(self, stage: str, name: str) -> int:
        return len(self.ids(stage, name)) if kind_of(stage, name) else sum(1 for _ in self.read(stage, name))

    # -- manifest ---------------------------------------------------------------------------------
    def stage_info(self, stage: str) -> dict:
        return self.manifest["stages"].get(stage, {})

    def begin_stage(self, stage: str, config: Any, inputs: str | None = None, read: dict | None = None) -> None:
        """Mark ``stage`` started with ``config``, the fingerprint of its ``inputs`` (``fingerprint``)
        and the shards it reads (``read``: ``runs.read_shards``); what the previous run of the stage counted
        of its engines' faults is cleared."""
        self._sweep_temp_files(stage)
        info = self.manifest["stages"].setdefault(stage, {})
        h = config_hash(config)
        if info.get("config_hash") not in (None, h):
            info["previous_config_hashes"] = sorted(set(info.get("previous_config_hashes", [])) | {info["config_hash"]})
        info.update(config=config, config_hash=h, started=_now(), complete=False, packages=package_versions())
        for key in ("inputs", "read", "faults"):  # faults count per run of the stage (``runs.record_faults``)
            info.pop(key, None)
        if inputs is not None:
            info["inputs"] = inputs
        if read is not None:
            info["read"] = read
        self._t0 = time.monotonic()
        self.save_manifest()

    def _sweep_temp_files(self, stage: str, name: str | None = None) -> None:
        """Remove the temp files (``jsonl.atomic_open``'s ``.NAME.XXXX.tmp``) a killed writer left in
        the stage's folder (with ``name``: those of that output's shards only): never read as output,
        they would only take disk. Safe where it is called: the run lock keeps other processes out, a
        stage opens its writers after it begins, and a writer's temp file lives only while it writes."""
        d = self.root / stage
        gone = [p for p in d.glob(".*.tmp") if p.is_file()] if d.is_dir() else []
        if name is not None:
            shards = [_SHARD_RE.match(m["shard"]) if (m := _TEMP_RE.match(p.name)) else None for p in gone]
            gone = [p for p, s in zip(gone, shards) if s and s["name"] == name]
        for p in gone:
            p.unlink(missing_ok=True)
        if gone:
            logger(stage).info(f"{len(gone)} temp file(s) left by an interrupted write removed from {d}")

    def mark_unfinished(self, stage: str) -> None:
        """Mark a finished ``stage`` unfinished, its config kept: called before its outputs are
        dropped for a new run of it (``runs.drop_if_settings_changed`` and the like), so that a kill
        before it begins again leaves it unfinished (later stages refuse its partial outputs:
        ``runs.require_finished``; the report says so) and its re-run compares with the config it
        last ran with, dropping again what that one made."""
        info = self.manifest["stages"].get(stage)
        if info and info.get("complete"):
            info["complete"] = False
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

    def fingerprint(self, stages: Iterable[str], extra: Any = None) -> str:
        """A hash of what ``stages`` hold now (their config hashes and shard files: names, sizes), and
        of ``extra`` (anything else a stage's output depends on, e.g. the tokenizer it counts with)."""
        parts: list = [extra]
        for st in stages:
            d = self.root / st
            files = sorted((p.name, p.stat().st_size) for p in d.iterdir() if _SHARD_RE.match(p.name)) if d.is_dir() else []
            parts.append([st, self.stage_info(st).get("config_hash"), files])
        return config_hash(parts)

    def shard_files(self, stage: str, name: str) -> list[list]:
        """``[file name, size]`` of each shard of an output, in order (what ``fingerprint`` hashes)."""
        return [[p.name, p.stat().st_size] for p in shard_paths(self.root / stage, name)]

    def up_to_date(self, stage: str, config: Any, inputs: str) -> bool:
        """True when ``stage`` finished with this config on inputs with this ``fingerprint``: nothing to redo."""
        return self.is_complete(stage, config) and self.stage_info(stage).get("inputs") == inputs

    def write_rejects(self, stage: str, rejects: Iterable[dict]) -> int:
        """Append quarantined records (each with 'where' and 'reason') as a new rejects shard."""
        with self.writer(stage, "rejects") as w:
            for r in rejects:
                w.add({"id": r.get("id") or config_hash([r.get("where"), r.get("reason"), r.get("raw")]), **r})
        return w.written


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
