"""Where input rows come from: a local file or folder, or a Hugging Face hub data set, read as a stream.

A *source spec* is a string (what config fields such as ``import.source``, ``import.logprobs``
and ``data.prompts`` hold):

- a local path: a ``.jsonl`` file (any other suffix is read as JSONL too), a Parquet file (a
  ``.parquet`` name, or Parquet's first bytes under any name), or a folder written by
  ``datasets``' ``save_to_disk`` (its ``train`` split, else its first);
- ``hf:<repo>[:<config>][@<split>][#<revision>]``: a hub data set, e.g.
  ``hf:Alibaba-Apsara/Superior-Reasoning-SFT-gpt-oss-120b:stage1@train``. ``<repo>`` may also be a
  local folder laid out like a hub repository (data files, a README with ``configs``), which is how
  it is tested offline. ``split`` defaults to ``train``; ``revision`` pins a commit or tag.

``iter_rows(spec)`` yields ``(where, row)`` one row at a time with bounded memory: JSONL line by
line, Parquet batch by batch, hub data sets through ``datasets.load_dataset(..., streaming=True)``.
``where`` is ``file:line`` (JSONL), ``file[i]`` (Parquet, a saved folder) or
``repo:config[split][i]`` (hub), 0-based row ``i``. A JSONL line that is not a JSON object comes
as a ``dasd.jsonl.BadLine`` (the caller quarantines it); a hub file that ``datasets`` cannot
decode, or a damaged Parquet row group, stops the read with an ``InputError`` saying how many rows
came before it (both decode a block of rows at a time, so they cannot skip just the bad one). A
file that is not JSON Lines at all (``dasd.jsonl.open_jsonl``) and a source without a single row
are an ``InputError`` too.

``KeyedRows(spec, key)`` gives random access by a key column (the log-prob companion looked up by
``sample_uuid``), keeping only an index in memory: byte offsets for JSONL; for Parquet, saved
folders and hub data sets, row numbers into ``datasets``' memory-mapped Arrow table (a hub data set
is downloaded and converted once into the ``datasets`` cache; nothing is held in RAM).
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dasd.errors import InputError
from dasd.jsonl import MAX_RECORD_BYTES, PARQUET_MAGIC, BadLine, iter_jsonl, open_jsonl, reject_constant
from dasd.rules.source_spec import (  # noqa: F401 (re-exported: the spec is part of this module's API)
    HUB_PREFIX,
    HubSource,
    LocalSource,
    Source,
    SourceSpec,
    check_source_spec,
    parse_source,
)


def _load_hub(src: HubSource, streaming: bool, cache_dir: str | None = None):
    import datasets

    try:
        return datasets.load_dataset(src.repo, name=src.config, split=src.split, revision=src.revision,
                                     streaming=streaming, cache_dir=cache_dir)
    except Exception as e:
        raise InputError(f"{src.spec()}: cannot open this data set ({type(e).__name__}: {e})") from e


def _load_saved(path: Path):
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:
        raise InputError(f"{path}: not a Hugging Face datasets folder saved with save_to_disk ({e})") from e
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train" if "train" in ds else next(iter(ds))]
    return ds


def _is_parquet(path: Path) -> bool:
    """A ``.parquet`` name, or a Parquet file under another name (its first bytes)."""
    if path.suffix == ".parquet":
        return True
    try:
        with path.open("rb") as fh:
            return fh.read(len(PARQUET_MAGIC)) == PARQUET_MAGIC
    except OSError:
        return False


def iter_rows(spec: str | Path | Source, batch_rows: int = 256) -> Iterator[tuple[str, dict[str, Any] | BadLine]]:
    """``(where, row)`` for each row of a source, streamed (see the module doc); ``InputError`` if
    unreadable, or if it has no rows at all (an empty file is a mistake, not an empty data set)."""
    n = 0
    for n, item in enumerate(_rows(spec, batch_rows), 1):
        yield item
    if n == 0:
        src = parse_source(spec)
        raise InputError(f"{src.spec() if isinstance(src, HubSource) else src.path}: no records (an empty file?)")


def _rows(spec: str | Path | Source, batch_rows: int) -> Iterator[tuple[str, dict[str, Any] | BadLine]]:
    src = parse_source(spec)
    if isinstance(src, HubSource):
        ds = _load_hub(src, streaming=True)
        it = iter(ds)
        i = 0
        while True:
            try:
                row = next(it)
            except StopIteration:
                return
            except Exception as e:
                raise InputError(f"{src.label()}[{src.split}]: cannot read on after its first {i} rows "
                                 f"({type(e).__name__}: {e})") from e
            yield src.where(i), dict(row)
            i += 1
    path = src.path
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir():
        for i, row in enumerate(_load_saved(path)):
            yield f"{path}[{i}]", dict(row)
    elif path.suffix == ".parquet":
        yield from _parquet_rows(path, path, batch_rows)
    else:  # opened once: its first bytes say whether it is Parquet under another name, then it is read
        with open_jsonl(path, parquet=True) as fh:
            parquet = fh.read(len(PARQUET_MAGIC)) == PARQUET_MAGIC
            fh.seek(0)
            if parquet:
                yield from _parquet_rows(path, fh, batch_rows)
            else:
                for lineno, obj in iter_jsonl(path, MAX_RECORD_BYTES, fh):
                    yield f"{path}:{lineno}", obj


def _parquet_rows(path: Path, file, batch_rows: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, row)`` of the Parquet file at ``path``, read from ``file`` (the path, or the file
    already open), ``batch_rows`` rows decoded at a time."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(file)
    except Exception as e:
        raise InputError(f"{path}: not a readable Parquet file ({e})") from e
    i = 0
    batches = pf.iter_batches(batch_size=batch_rows)
    while True:
        try:
            batch = next(batches, None)
        except Exception as e:  # a damaged row group: Parquet cannot skip just the bad rows
            raise InputError(f"{path}: cannot read on after its first {i} rows ({type(e).__name__}: {e})") from e
        if batch is None:
            return
        for row in batch.to_pylist():
            yield f"{path}[{i}]", row
            i += 1


def count_rows(spec: str | Path | Source) -> int | None:
    """How many rows ``iter_rows`` will yield, when that is known cheaply (for progress); else ``None``.

    Parquet: its metadata; a saved folder: its length; JSONL: its non-blank lines (one read of the
    file); hub: ``None`` (a card's split sizes are optional, and ``datasets`` may report those of an
    older cached copy).
    """
    src = parse_source(spec)
    if isinstance(src, HubSource):
        return None
    path = src.path
    if not path.exists():
        return None
    if path.is_dir():
        return len(_load_saved(path))
    if _is_parquet(path):
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    n = 0
    with path.open("rb") as fh:
        for line in fh:
            n += bool(line.strip())
    return n


class KeyedRows:
    """Rows of a source looked up by a key column, with only an index in memory (module doc).

    ``bad`` lists rows that cannot be indexed (no string key, a duplicate key, a line that is not a
    JSON object) as ``{"where", "reason"}``; the first row of a key wins.
    """

    def __init__(self, spec: str | Path | Source, key: str, cache_dir: str | None = None):
        self.source = parse_source(spec)
        self.key = key
        self.bad: list[dict[str, str]] = []
        self._index: dict[str, int] = {}
        self._offsets = array("q")  # JSONL: byte offset of row n
        self._lines = array("q")  # JSONL: line number of row n
        self._table = None  # otherwise: a datasets.Dataset (memory-mapped Arrow)
        if isinstance(self.source, HubSource):
            self._table = _load_hub(self.source, streaming=False, cache_dir=cache_dir)
        else:
            path = self.source.path
            if not path.exists():
                raise InputError(f"{path}: no such file or folder")
            if path.is_dir():
                self._table = _load_saved(path)
            elif _is_parquet(path):
                import datasets

                try:
                    self._table = datasets.load_dataset("parquet", data_files=str(path), split="train", cache_dir=cache_dir)
                except Exception as e:
                    raise InputError(f"{path}: not a readable Parquet file ({e})") from e
        if self._table is not None:
            self._index_table()
        else:
            self._index_jsonl(self.source.path)
        if not self._index:
            first = f"; the first bad one: {self.bad[0]['where']}: {self.bad[0]['reason']}" if self.bad else ""
            raise InputError(f"{self.source.spec()}: no rows with a string {self.key!r} to look up "
                             f"({len(self.bad)} bad rows{first})")

    def _add(self, where: str, value: Any, n: int) -> bool:
        if not isinstance(value, str) or not value:
            self.bad.append({"where": where, "reason": f"no string {self.key!r}"})
        elif value in self._index:
            self.bad.append({"where": where, "reason": f"duplicate {self.key} {value!r}"})
        else:
            self._index[value] = n
            return True
        return False

    def _index_table(self) -> None:
        if self.key not in self._table.column_names:
            raise InputError(f"{self.source.spec()}: no column {self.key!r} (columns: {self._table.column_names})")
        n = 0
        for chunk in self._table.data.column(self.key).chunks:
            for value in chunk.to_pylist():
                self._add(self.where_of(n), value, n)
                n += 1

    def _index_jsonl(self, path: Path) -> None:
        with open_jsonl(path) as fh:
            lineno = 0
            while True:
                pos = fh.tell()
                line = fh.readline()
                if not line:
                    break
                lineno += 1
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    obj = json.loads(line, parse_constant=reject_constant)
                except (ValueError, UnicodeDecodeError) as e:
                    self.bad.append({"where": where, "reason": f"not valid JSON: {e}"})
                    continue
                if not isinstance(obj, dict):
                    self.bad.append({"where": where, "reason": f"expected a JSON object, got {type(obj).__name__}"})
                    continue
                if self._add(where, obj.get(self.key), len(self._offsets)):
                    self._offsets.append(pos)
                    self._lines.append(lineno)

    def where_of(self, n: int) -> str:
        """The ``where`` of indexed row ``n``."""
        src = self.source
        if isinstance(src, HubSource):
            return src.where(n)
        if self._table is not None:
            return f"{src.path}[{n}]"
        return f"{src.path}:{self._lines[n]}"

    def where(self, key: str) -> str:
        """The ``where`` of the row of ``key`` (an indexed key)."""
        return self.where_of(self._index[key])

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def keys(self):
        """The indexed keys (a view; for counting orphans: keys never looked up)."""
        return self._index.keys()

    def get(self, key: str) -> tuple[str, dict[str, Any]] | None:
        """``(where, row)`` of ``key``, or ``None`` when the source has no row with it."""
        n = self._index.get(key)
        if n is None:
            return None
        if self._table is not None:
            return self.where_of(n), dict(self._table[n])
        with self.source.path.open("rb") as fh:
            fh.seek(self._offsets[n])
            return self.where_of(n), json.loads(fh.readline())
