"""A stage's data: resolve it (named pool or JSONL path), validate each example, tokenise, pack.

Examples are streamed, never held (``Examples``): one pass computes the cache key, a second
tokenises this process's share; only the token arrays, their offsets and the packing plan stay.

Validation errors name the file, line and field. Examples longer than the context are dropped and
counted (the paper drops responses over its 64K training context).

Tokens live in numpy arrays, not Python lists (a 5B-token stage would not fit otherwise): flat
``int32`` arrays of ids and of shifted labels, and example start offsets. In a training run of N
processes the cache ``<stage>/tokens/`` is built once, **in parallel**: process r tokenises the r-th
contiguous N-th of the examples into ``part-<r>/`` (``ids.bin``, ``labels.bin``, ``starts.npy``,
``n_loss.npy``); after one barrier the main process writes ``meta.json`` (content key, part count)
and renames the directory into place. Every process memory-maps all parts, so N processes on a node
share one copy through the page cache, and a resumed run (on any process count) does not tokenise
again. The key covers the tokenizer, the examples, ``mask_prefix`` and ``context``.
"""

from __future__ import annotations

import hashlib
from array import array
import json
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import NamedTuple

import numpy as np
from pydantic import ValidationError

from dasd.errors import ConfigError, InputError
from dasd.jsonl import MAX_RECORD_BYTES, BadLine, atomic_write_json, dumps, iter_jsonl
from dasd.records import TrainingExample
from dasd.train.encode import IGNORE, encode_batch
from dasd.train.packing import Packed, pack
from dasd.train.ranks import FirstTrue, fail_together

BATCH = 256  # examples per tokenizer call


class Piece(NamedTuple):
    """One example's tokens as views into the stage arrays."""

    input_ids: np.ndarray
    labels: np.ndarray


@dataclass
class StageData:
    """Tokenised examples of one stage and the sequences (example indices) they pack into.

    Tokens are in one or more parts (one per process that tokenised): ``ids[p]`` / ``labels[p]`` hold
    the tokens of examples ``first[p]`` .. ``first[p + 1] - 1``; ``starts`` are global token offsets.
    """

    ids: list[np.ndarray]
    labels: list[np.ndarray]
    starts: np.ndarray  # int64, n_examples + 1
    n_loss: np.ndarray  # int64, loss-carrying tokens per example
    sequences: Packed | list[list[int]]  # example indices of each packed sequence
    key: str
    dropped: dict[str, int] = field(default_factory=dict)
    first: np.ndarray | None = None  # int64, parts + 1 (None: one part)

    @property
    def n_examples(self) -> int:
        return len(self.starts) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.starts)

    @property
    def n_tokens(self) -> int:
        return int(self.starts[-1])

    def piece(self, i: int) -> Piece:
        p = 0 if self.first is None else int(np.searchsorted(self.first, i, side="right")) - 1
        base = 0 if p == 0 else int(self.starts[self.first[p]])
        a, b = int(self.starts[i]) - base, int(self.starts[i + 1]) - base
        return Piece(self.ids[p][a:b], self.labels[p][a:b])


def _check_example(obj: dict, where: str) -> dict:
    try:
        ex = TrainingExample.model_validate({"id": obj.get("id", where), **{k: v for k, v in obj.items() if k != "id"}})
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        raise InputError(f"{where}: field {loc!r}: {err['msg']}") from None
    if not ex.messages or ex.messages[-1].role != "assistant":
        raise InputError(f"{where}: field 'messages': the last message must be the assistant's")
    if ex.prefix_chars < 0:
        raise InputError(f"{where}: field 'prefix_chars' must be >= 0, got {ex.prefix_chars}")
    return {"messages": [m.model_dump() for m in ex.messages], "prefix_chars": ex.prefix_chars}


class Examples:
    """A stage's training examples as ``(where, example)`` pairs, validated as they are read.

    Nothing is held: every pass reads the rows again from ``rows()`` (a named pool's records from the
    run store, or a JSONL file), so 448K examples of 10K+ tokens (tens of GB of text) never sit in
    memory. ``prepare`` reads them twice (the cache key, then the tokenisation of this process's
    share). ``len()`` costs one pass the first time (any full pass counts them).
    """

    def __init__(self, rows: Callable[[], Iterable[tuple[str, dict]]]):
        self._rows = rows
        self._n: int | None = None

    def __iter__(self) -> Iterator[tuple[str, dict]]:
        n = 0
        for where, obj in self._rows():
            yield where, _check_example(obj, where)
            n += 1
        self._n = n

    def __len__(self) -> int:
        if self._n is None:
            for _ in self:
                pass
        return self._n


def _jsonl_rows(path: Path) -> Iterator[tuple[str, dict]]:
    for lineno, obj in iter_jsonl(path, MAX_RECORD_BYTES):
        if isinstance(obj, BadLine):
            raise InputError(f"{obj.where()}: {obj.reason}")
        yield f"{path}:{lineno}", obj


def load_examples(source: str, data: dict[str, Iterable[dict]] | None) -> Examples | None:
    """The examples of a named pool (``data[source]``: a list, or anything iterable again on every
    pass, e.g. ``dasd.runs.named_pools``' stored outputs) or of a JSONL file, read lazily
    (``Examples``); None when the source does not exist."""
    if data is not None and source in data:
        pool = data[source]
        return Examples(lambda: ((f"{source}[{i}]", dict(r)) for i, r in enumerate(pool)))
    p = Path(source)
    if not p.exists():
        return None
    if p.is_dir():
        raise ConfigError(f"stage data {source!r} is a directory; give a JSONL file or a named pool")
    return Examples(lambda: _jsonl_rows(p))


def batches(items: Iterable[tuple[str, dict]], n: int = BATCH) -> Iterator[list[tuple[str, dict]]]:
    """``items`` in lists of ``n`` (the last may be shorter), read as they are needed."""
    it = iter(items)
    while chunk := list(islice(it, n)):
        yield chunk


def data_key(tokenizer, items: Iterable[tuple[str, dict]], context: int, mask_prefix: bool) -> str:
    """Content key of a stage's tokens: tokenizer (vocab, merges, template), examples and options
    (one pass over ``items``, which it does not keep)."""
    h = hashlib.sha256()
    h.update(tokenizer.backend_tokenizer.to_str().encode())
    h.update(str(tokenizer.chat_template).encode())
    h.update(json.dumps([context, mask_prefix]).encode())
    for _, ex in items:
        h.update(dumps(ex).encode())
        h.update(b"\n")
    return h.hexdigest()[:24]


def _build(tokenizer, items: Iterable[tuple[str, dict]], context: int, mask_prefix: bool, out: Path | None):
    """Tokenise in batches as ``items`` are read; stream arrays to ``out`` (or keep them in memory when None)."""
    starts, n_loss, dropped = array("q", [0]), array("q"), {"over_context": 0}
    ids_parts, lab_parts = [], []
    fh_ids = fh_lab = None
    if out is not None:
        out.mkdir(parents=True)
        fh_ids, fh_lab = (out / "ids.bin").open("wb"), (out / "labels.bin").open("wb")
    try:
        for chunk in batches(items):
            encoded = encode_batch(tokenizer, [ex for _, ex in chunk], mask_prefix, [w for w, _ in chunk])
            for ids, labels, _, _ in encoded:
                if len(ids) > context:
                    dropped["over_context"] += 1
                    continue
                starts.append(starts[-1] + len(ids))
                n_loss.append(int((labels != IGNORE).sum()))
                if fh_ids is not None:
                    fh_ids.write(ids.tobytes())
                    fh_lab.write(labels.tobytes())
                else:
                    ids_parts.append(ids)
                    lab_parts.append(labels)
    finally:
        if fh_ids is not None:
            fh_ids.close()
            fh_lab.close()
    starts_a, n_loss_a = np.asarray(starts, dtype=np.int64), np.asarray(n_loss, dtype=np.int64)
    if out is not None:
        np.save(out / "starts.npy", starts_a)
        np.save(out / "n_loss.npy", n_loss_a)
        return None
    empty = np.zeros(0, dtype=np.int32)
    ids_a = np.concatenate(ids_parts) if ids_parts else empty
    lab_a = np.concatenate(lab_parts) if lab_parts else empty
    return ids_a, lab_a, starts_a, n_loss_a, dropped


def _part(cache: Path, rank: int) -> Path:
    return cache / f"part-{rank:05d}"


def _load(cache: Path):
    """Memory-map every part of a cache: (ids parts, labels parts, global starts, n_loss, first, meta)."""
    meta = json.loads((cache / "meta.json").read_text(encoding="utf-8"))
    ids, labels, starts, n_loss, first = [], [], [np.zeros(1, np.int64)], [], [0]
    for r in range(meta["parts"]):
        part = _part(cache, r)
        s = np.load(part / "starts.npy")
        n = int(s[-1])
        ids.append(np.memmap(part / "ids.bin", dtype=np.int32, mode="r", shape=(n,)) if n else np.zeros(0, np.int32))
        labels.append(np.memmap(part / "labels.bin", dtype=np.int32, mode="r", shape=(n,)) if n else np.zeros(0, np.int32))
        starts.append(s[1:] + starts[-1][-1])
        n_loss.append(np.load(part / "n_loss.npy"))
        first.append(first[-1] + len(s) - 1)
    return ids, labels, np.concatenate(starts), np.concatenate(n_loss), np.asarray(first, np.int64), meta


def _cache_ok(cache: Path, key: str) -> bool:
    try:
        return json.loads((cache / "meta.json").read_text(encoding="utf-8")).get("key") == key
    except (OSError, json.JSONDecodeError):
        return False


def why_no_example(over: int, context: int) -> str:
    """Why a stage's data leaves no example: all ``over`` of them longer than ``context``, or none at all."""
    return f"all {over} examples are longer than the context ({context} tokens)" if over else "it has no examples"


def prepare(tokenizer, items: Iterable[tuple[str, dict]], context: int, mask_prefix: bool, packing: bool,
            cache_dir: Path | None = None, rank: int = 0, world: int = 1, first_true: FirstTrue | None = None,
            source: str = "stage data") -> StageData:
    """Tokenise ``items``, drop those over ``context`` tokens, and pack (or not) into sequences.

    With ``cache_dir``: unless a cache with the same key is there (``first_true(missing)``, an
    all-reduce of the ``world`` processes, ``ranks.first_true``, makes every process agree), process
    ``rank`` of ``world`` tokenises its contiguous share into ``<tmp>/part-<rank>``, all wait for all
    shares, rank 0 writes ``meta.json``, renames the directory into place and removes what
    interrupted builds of other data left, all wait again; then every process memory-maps all parts.
    No process waits longer than the slowest share. Each wait is a ``ranks.fail_together``: a share
    or the main process's write that fails stops every process at once. Without ``cache_dir``,
    everything stays in memory.

    ``items`` (an ``Examples`` or a list) is read twice and never held: once for the key (and the
    count), once to tokenise this process's share. No example left to train on is an ``InputError``
    naming ``source`` and why (no examples, or all over ``context``).
    """
    key = data_key(tokenizer, items, context, mask_prefix)
    n_items = len(items)  # counted by the key's pass
    if cache_dir is None:
        ids, labels, starts, n_loss, dropped = _build(tokenizer, items, context, mask_prefix, None)
        ids, labels, first = [ids], [labels], None
    else:
        cache_dir = Path(cache_dir)
        if world > 1 and first_true is None:
            raise ValueError("prepare: several processes need first_true to meet")
        missing = not _cache_ok(cache_dir, key)
        if first_true is not None:
            missing = first_true(missing) is not None
        if missing:
            tmp = cache_dir.with_name(f".{cache_dir.name}.tmp-{key}")
            share = islice(items, rank * n_items // world, (rank + 1) * n_items // world)
            with fail_together(first_true, f"tokenise its share of {source}"):
                shutil.rmtree(_part(tmp, rank), ignore_errors=True)
                _build(tokenizer, share, context, mask_prefix, _part(tmp, rank))
            with fail_together(first_true, f"write the token cache of {source} ({cache_dir})"):
                if rank == 0:
                    for stale in tmp.glob("part-*"):  # left by an interrupted build on more processes
                        if int(stale.name[5:]) >= world:
                            shutil.rmtree(stale)
                    examples = sum(len(np.load(_part(tmp, r) / "starts.npy")) - 1 for r in range(world))
                    atomic_write_json(tmp / "meta.json", {"key": key, "parts": world, "examples": examples,
                                                          "dropped": {"over_context": n_items - examples}})
                    shutil.rmtree(cache_dir, ignore_errors=True)
                    tmp.rename(cache_dir)
                    for stale in cache_dir.parent.glob(f".{cache_dir.name}.tmp-*"):  # interrupted builds of other data
                        shutil.rmtree(stale, ignore_errors=True)
        ids, labels, starts, n_loss, first, meta = _load(cache_dir)
        dropped = meta["dropped"]
    if len(starts) == 1:
        over = int(dropped.get("over_context", 0))
        raise InputError(f"{source}: no training example to train on: {why_no_example(over, context)}"
                         f"{' and were dropped' if over else ''}")
    lengths = np.diff(starts)
    sequences = pack(lengths, context) if packing else Packed.singletons(len(lengths))
    return StageData(ids, labels, starts, n_loss, sequences, key, dropped, first)
