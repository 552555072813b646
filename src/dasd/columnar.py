"""Columnar shards: the typed contract between the token-carrying stages (Parquet, zstd).

Four outputs carry per-token arrays and are stored as Parquet shards, one explicit Arrow schema
each (``KINDS``), checked when a shard is written and when it is read:

==========  ===================================  ===========================================
kind        outputs                              refers to
==========  ===================================  ===========================================
``sample``  ``sample/pool-<pool>``               nothing (the teacher samples themselves)
``kept``    ``filter/kept-<pool>``               ``sample/pool-<pool>``
``scored``  ``score/pool-<pool>``                ``filter/kept-<pool>``
``chosen``  ``select/selected-<pool>``,          ``score/pool-<pool>``
            ``select/rejected-<pool>``
==========  ===================================  ===========================================

Columns (all nullable; ``list`` columns are Arrow lists):

- sample fields: ``id``, ``prompt_id``, ``model``, ``temperature``, ``top_p``, ``seed``, ``index``,
  ``text``, ``finish_reason``; the teacher signal ``teacher_token_ids`` (int32),
  ``teacher_offsets`` (int32, the character spans flattened: ``s0, e0, s1, e1, ...``),
  ``teacher_logprobs`` (float32), ``teacher_logprob_mode``, ``teacher_tokens`` (strings, optional),
  ``teacher_rescored``; ``extra``: the record's other top-level fields as one JSON object
  (metadata such as ``source_id`` or ``normalization``; never token arrays);
- ``scored`` and ``chosen`` add ``student_offsets`` (int32, flattened), ``student_logprobs``
  (float32), ``sentences`` (a list of ``records.Sentence`` structs) and ``das`` (the summary);
- every kind but ``sample`` adds ``ref_shard`` (an upstream shard's file name) and ``ref_row``.

**Passing records on without copying.** A record read from a columnar output carries a ``Ref``
under the key ``_ref`` (its stage, shard and row, and the field values it was read with). When a
stage writes such a record to the next output, the row stores the reference and only the fields
that are new or were replaced (compared by identity with what was read): ``filter`` writes a
reference, ``score`` a reference + the student signal + sentences + summary, ``select`` a
reference alone. A record with no reference (made in memory, or one that dropped a field it was
read with) is written whole. Reading joins a row with its upstream row (``store.RunStore.read``).

In memory a record keeps its familiar shape: ``teacher`` / ``student`` are dicts whose ``offsets``
is an ``(n, 2)`` int32 numpy array and ``logprobs`` a float32 numpy array (``token_ids`` int32).
Log-probs are stored as float32 (7 significant digits).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dasd.errors import DasdError

EXT = "parquet"
REF = "_ref"

SENTENCE = pa.struct([
    ("start", pa.int32()), ("end", pa.int32()), ("lp_teacher", pa.float64()), ("lp_student", pa.float64()),
    ("n_teacher_tokens", pa.int32()), ("n_student_tokens", pa.int32()), ("delta", pa.float64()), ("type", pa.string()),
    ("lpc_teacher", pa.float64()), ("lpc_student", pa.float64()),  # bits per character (das.unit: char)
])
DAS = pa.struct([
    ("n_sentences", pa.int32()), ("n_teacher", pa.int32()), ("n_student", pa.int32()), ("n_shared", pa.int32()),
    ("n_unscored", pa.int32()), ("frac_teacher", pa.float64()), ("frac_student", pa.float64()),
    ("frac_shared", pa.float64()), ("frac_unscored", pa.float64()), ("mean_delta", pa.float64()),
    ("score", pa.float64()), ("weight", pa.string()), ("tau", pa.float64()), ("unit", pa.string()),
    ("penalty", pa.float64()),
])
I32, F32 = pa.list_(pa.int32()), pa.list_(pa.float32())

# Top-level record fields stored in their own columns (anything else goes to ``extra``).
SAMPLE_FIELDS = (
    ("id", pa.string()), ("prompt_id", pa.string()), ("model", pa.string()), ("temperature", pa.float64()),
    ("top_p", pa.float64()), ("seed", pa.int64()), ("index", pa.int64()), ("text", pa.string()),
    ("finish_reason", pa.string()),
)
TEACHER_COLUMNS = (
    ("teacher_token_ids", I32), ("teacher_offsets", I32), ("teacher_logprobs", F32),
    ("teacher_logprob_mode", pa.string()), ("teacher_tokens", pa.list_(pa.string())), ("teacher_rescored", pa.bool_()),
)
STUDENT_COLUMNS = (("student_offsets", I32), ("student_logprobs", F32))
SCORE_FIELDS = (("sentences", pa.list_(SENTENCE)), ("das", DAS))
REF_COLUMNS = (("ref_shard", pa.string()), ("ref_row", pa.int32()))
_TEACHER_KEYS = {"token_ids", "offsets", "logprobs", "logprob_mode", "tokens", "rescored"}
_STUDENT_KEYS = {"offsets", "logprobs"}


@dataclass(frozen=True)
class Kind:
    """One columnar output kind: its schema and the output it refers to (``(stage, prefix)`` or None)."""

    name: str
    schema: pa.Schema
    upstream: tuple[str, str] | None
    fields: tuple[str, ...]  # the record fields with columns of their own (besides ``extra``)


def _kind(name: str, upstream, scored: bool) -> Kind:
    cols = list(SAMPLE_FIELDS) + list(TEACHER_COLUMNS)
    fields = [f for f, _ in SAMPLE_FIELDS] + ["teacher"]
    if scored:
        cols += list(STUDENT_COLUMNS) + list(SCORE_FIELDS)
        fields += ["student", "sentences", "das"]
    cols.append(("extra", pa.string()))
    if upstream:
        cols += list(REF_COLUMNS)
    return Kind(name, pa.schema(cols), upstream, tuple(fields))


KINDS: dict[str, Kind] = {
    "sample": _kind("sample", None, False),
    "kept": _kind("kept", ("sample", "pool"), False),
    "scored": _kind("scored", ("filter", "kept"), True),
    "chosen": _kind("chosen", ("score", "pool"), True),
}
# (stage folder, output name prefix) -> kind; an output is ``<prefix>-<pool>``.
OUTPUTS: dict[tuple[str, str], str] = {
    ("sample", "pool"): "sample", ("filter", "kept"): "kept", ("score", "pool"): "scored",
    ("select", "selected"): "chosen", ("select", "rejected"): "chosen",
}


def kind_of(stage: str, name: str) -> Kind | None:
    """The columnar kind of output ``name`` of ``stage`` (None: a JSONL output)."""
    prefix, _, pool = name.partition("-")
    k = OUTPUTS.get((stage, prefix))
    return KINDS[k] if k and pool else None


def upstream_output(kind: Kind, name: str) -> tuple[str, str]:
    """``(stage, output)`` that rows of ``name`` (a ``kind`` output) refer to: same pool, upstream prefix."""
    assert kind.upstream is not None
    stage, prefix = kind.upstream
    return stage, f"{prefix}-{name.partition('-')[2]}"


@dataclass(eq=False)
class Ref:
    """Where a record was read: the stage folder, shard file name, row, and the field values it had then.

    Positions are not part of a record's content: any two ``Ref`` compare equal, so records read
    from a resumed run equal those of an uninterrupted one.
    """

    folder: Path
    shard: str
    row: int
    values: dict = field(repr=False)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ref)

    __hash__ = None  # type: ignore[assignment]


def reference(folder: Path, shard: str, row: int, record_id: str) -> dict:
    """A record that is only a reference to row ``row`` of ``shard`` in stage folder ``folder`` (ids must match)."""
    return {"id": record_id, REF: Ref(Path(folder), shard, row, {})}


# -- writing --------------------------------------------------------------------------------------


def _int_array(v: Any, what: str) -> np.ndarray:
    a = np.asarray(v)
    if a.size == 0:
        return np.zeros(0, np.int32)
    if a.dtype.kind not in "iu":
        raise ValueError(f"{what}: expected integers, got {a.dtype} values")
    if a.min() < -(2**31) or a.max() >= 2**31:
        raise ValueError(f"{what}: a value does not fit in int32")
    return a.astype(np.int32, copy=False).reshape(-1)


def _float_array(v: Any, what: str) -> np.ndarray:
    try:
        a = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what}: expected numbers ({e})") from None
    if a.ndim != 1:
        raise ValueError(f"{what}: expected a flat list of numbers")
    if not np.isfinite(a).all():
        i = int(np.flatnonzero(~np.isfinite(a))[0])
        raise ValueError(f"{what}[{i}] = {a[i]!r}: not a finite number")
    return a.astype(np.float32)


def _list_column(items: list[np.ndarray | None], typ: pa.DataType) -> pa.Array:
    """An Arrow list column from per-row numpy arrays (None: a null row)."""
    lengths = np.array([0 if x is None else len(x) for x in items], dtype=np.int64)
    offsets = np.zeros(len(items) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    present = [x for x in items if x is not None]
    values = np.concatenate(present) if present else np.zeros(0, typ.value_type.to_pandas_dtype())
    mask = pa.array([x is None for x in items], type=pa.bool_())
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, typ.value_type), mask=mask)


def _signal_arrays(sig: Any, side: str, rid: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(sig, dict):
        raise ValueError(f"record {rid}: '{side}' must be an object, got {type(sig).__name__}")
    unknown = set(sig) - allowed
    if unknown:
        raise ValueError(f"record {rid}: '{side}' has fields with no column: {', '.join(sorted(unknown))}")
    out: dict[str, Any] = {}
    offs = sig.get("offsets")
    lps = sig.get("logprobs")
    if offs is not None:
        a = _int_array(offs, f"record {rid}: {side}.offsets")
        if a.size % 2:
            raise ValueError(f"record {rid}: {side}.offsets must be [start, end] pairs")
        out["offsets"] = a
    if lps is not None:
        out["logprobs"] = _float_array(lps, f"record {rid}: {side}.logprobs")
    if offs is not None and lps is not None and out["offsets"].size != 2 * out["logprobs"].size:
        raise ValueError(f"record {rid}: {side} has {out['offsets'].size // 2} offsets but {out['logprobs'].size} logprobs")
    if sig.get("token_ids") is not None:
        out["token_ids"] = _int_array(sig["token_ids"], f"record {rid}: {side}.token_ids")
    return out


def _changed(rec: dict, ref: Ref | None, key: str) -> bool:
    """Whether ``rec[key]`` must be written (no usable reference, or not the object that was read)."""
    return ref is None or key not in ref.values or rec.get(key) is not ref.values[key]


def to_table(kind: Kind, records: Sequence[dict], upstream: Path | None = None) -> pa.Table:
    """The Arrow table of ``records`` under ``kind``'s schema; ``ValueError`` names record and field.

    ``upstream``: the stage folder this output's rows may refer to (in the same run directory)."""
    rows: list[tuple[dict, Ref | None]] = []
    for r in records:
        ref = r.get(REF)
        usable = (
            isinstance(ref, Ref) and kind.upstream is not None and upstream is not None and ref.folder == upstream
            and all(k in r for k in ref.values if k != REF)  # a record that dropped a field is written whole
        )
        rows.append((r, ref if usable else None))
    cols: dict[str, list] = {name: [] for name in kind.schema.names}
    for r, ref in rows:
        rid = str(r.get("id", "?"))
        for name, _ in SAMPLE_FIELDS:
            cols[name].append(r.get(name) if name == "id" or _changed(r, ref, name) else None)
        t = r.get("teacher") if _changed(r, ref, "teacher") else None
        ta = _signal_arrays(t, "teacher", rid, _TEACHER_KEYS) if t is not None else {}
        cols["teacher_token_ids"].append(ta.get("token_ids"))
        cols["teacher_offsets"].append(ta.get("offsets"))
        cols["teacher_logprobs"].append(ta.get("logprobs"))
        cols["teacher_logprob_mode"].append(t.get("logprob_mode") if t is not None else None)
        cols["teacher_tokens"].append(list(t["tokens"]) if t is not None and t.get("tokens") is not None else None)
        cols["teacher_rescored"].append(bool(t["rescored"]) if t is not None and "rescored" in t else None)
        if "student_offsets" in cols:
            s = r.get("student") if _changed(r, ref, "student") else None
            sa = _signal_arrays(s, "student", rid, _STUDENT_KEYS) if s is not None else {}
            cols["student_offsets"].append(sa.get("offsets"))
            cols["student_logprobs"].append(sa.get("logprobs"))
            cols["sentences"].append(r.get("sentences") if _changed(r, ref, "sentences") else None)
            cols["das"].append(r.get("das") if _changed(r, ref, "das") else None)
        extra = {k: v for k, v in r.items() if k not in kind.fields and k != REF and _changed(r, ref, k)}
        try:
            cols["extra"].append(json.dumps(extra, ensure_ascii=False, allow_nan=False) if extra else None)
        except (TypeError, ValueError) as e:
            raise ValueError(f"record {rid}: fields {sorted(extra)} cannot be stored as JSON ({e})") from None
        if kind.upstream is not None:
            cols["ref_shard"].append(ref.shard if ref else None)
            cols["ref_row"].append(ref.row if ref else None)
    arrays = []
    for f in kind.schema:
        try:
            if pa.types.is_list(f.type) and pa.types.is_primitive(f.type.value_type):
                arrays.append(_list_column(cols[f.name], f.type))
            else:
                arrays.append(pa.array(cols[f.name], type=f.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError) as e:
            bad = _first_bad(cols[f.name], f.type, records)
            raise ValueError(f"{bad}field '{f.name}' does not fit the {kind.name} schema ({f.type}): {e}") from None
    return pa.Table.from_arrays(arrays, schema=kind.schema)


_PY_TYPES = {pa.string(): (str,), pa.float64(): (int, float), pa.int64(): (int,)}


def check(kind: Kind, record: dict) -> None:
    """Check one record against ``kind``'s schema without building Arrow arrays (``ValueError``
    names record and field); ``to_table`` then cannot fail on it."""
    rid = str(record.get("id", "?"))
    for name, typ in SAMPLE_FIELDS:
        v = record.get(name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, _PY_TYPES[typ])):
            raise ValueError(f"record {rid}: field '{name}' does not fit the {kind.name} schema ({typ}): {v!r}")
    ints = [f.name for f in DAS if f.type == pa.int32()]
    for side, allowed in (("teacher", _TEACHER_KEYS), ("student", _STUDENT_KEYS)):
        if record.get(side) is not None and (side == "teacher" or "student_offsets" in kind.schema.names):
            _signal_arrays(record[side], side, rid, allowed)
            words = record[side].get("tokens")
            if words is not None and not all(isinstance(w, str) for w in words):
                raise ValueError(f"record {rid}: {side}.tokens must be strings")
    if "sentences" in kind.schema.names:
        names = set(SENTENCE.names)
        for i, row in enumerate(record.get("sentences") or []):
            if not isinstance(row, dict) or set(row) - names:
                raise ValueError(f"record {rid}: sentences[{i}] has fields with no column: {sorted(set(row) - names)}")
        das = record.get("das")
        if das is not None and (not isinstance(das, dict) or set(das) - set(DAS.names)
                                or any(das.get(k) is not None and not isinstance(das[k], int) for k in ints)):
            raise ValueError(f"record {rid}: 'das' does not fit the summary's columns ({', '.join(DAS.names)})")
    extra = {k: v for k, v in record.items() if k not in kind.fields and k != REF}
    try:
        json.dumps(extra, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"record {rid}: fields {sorted(extra)} cannot be stored as JSON ({e})") from None


def _first_bad(values: list, typ: pa.DataType, records: Sequence[dict]) -> str:
    """``"record <id>: "`` of the first value that does not convert to ``typ`` ("" if none)."""
    for v, r in zip(values, records):
        try:
            pa.array([v], type=typ)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            return f"record {r.get('id', '?')}: "
    return ""


def write_shard(path: Path, table: pa.Table) -> None:
    """Write ``table`` to ``path`` as Parquet (zstd) atomically: temp file, fsync, rename."""
    from dasd.jsonl import atomic_open

    with atomic_open(path, "wb") as fh:
        pq.write_table(table, fh, compression="zstd", compression_level=6, use_dictionary=["model", "prompt_id",
                       "finish_reason", "teacher_logprob_mode", "ref_shard"], write_statistics=False,
                       row_group_size=64, write_page_checksum=True)


# -- reading --------------------------------------------------------------------------------------


def _one_line(e: BaseException) -> str:
    """An exception's message on one line (Arrow's can span several)."""
    return " ".join(str(e).split())


def read_table(path: Path, kind: Kind, columns: list[str] | None = None) -> pa.Table:
    """A shard's table, its schema checked against ``kind`` (``DasdError`` names file and field)."""
    try:
        schema = pq.read_schema(path)
    except (OSError, ValueError, pa.ArrowException) as e:  # ValueError: a damaged name (not UTF-8)
        raise DasdError(f"{path}: corrupt run file (not a readable Parquet shard: {_one_line(e)})") from None
    if schema.remove_metadata() != kind.schema:
        want = {f.name: f.type for f in kind.schema}
        got = {f.name: f.type for f in schema}
        diff = [n for n in want if got.get(n) != want[n]] + [n for n in got if n not in want]
        if not diff:  # same names and types: another order, or a field's nullability
            f, g = next((f, g) for f, g in zip(kind.schema, schema) if not f.equals(g))
            raise DasdError(f"{path}: does not match the {kind.name} schema (expected {f}, found {g})")
        raise DasdError(f"{path}: does not match the {kind.name} schema (field '{diff[0]}': expected "
                        f"{want.get(diff[0], 'no such field')}, found {got.get(diff[0], 'nothing')})")
    try:
        # pages written with a checksum (``write_shard``) are verified: a damaged byte is an error, not wrong data
        return pq.read_table(path, columns=columns, page_checksum_verification=True)
    except (OSError, ValueError, pa.ArrowException) as e:
        raise DasdError(f"{path}: corrupt run file ({_one_line(e)})") from None


def shard_rows(path: Path) -> int:
    return pq.ParquetFile(path).metadata.num_rows


class _Lists:
    """Row-wise numpy views of an Arrow list column (no copy)."""

    def __init__(self, col: pa.ChunkedArray | pa.Array):
        arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        self.offsets = arr.offsets.to_numpy()
        vt = arr.type.value_type
        self.values = arr.values.to_numpy(zero_copy_only=False) if pa.types.is_primitive(vt) else arr.values.to_pylist()
        self.null = arr.is_null().to_numpy(zero_copy_only=False)

    def __getitem__(self, i: int):
        if self.null[i]:
            return None
        return self.values[self.offsets[i] : self.offsets[i + 1]]


def _signal(lists: dict[str, _Lists], scalars: dict[str, list], prefix: str, i: int, path: Path) -> dict | None:
    offs = lists[f"{prefix}_offsets"][i]
    lps = lists[f"{prefix}_logprobs"][i]
    mode = scalars.get(f"{prefix}_logprob_mode", [None] * (i + 1))[i]
    if offs is None and lps is None and mode is None:
        return None
    sig: dict[str, Any] = {}
    if prefix == "teacher" and (tok := lists["teacher_token_ids"][i]) is not None:
        sig["token_ids"] = tok
    if prefix == "teacher" and (words := lists["teacher_tokens"][i]) is not None:
        sig["tokens"] = list(words)
    offs = np.zeros((0, 2), np.int32) if offs is None else offs.reshape(-1, 2)
    lps = np.zeros(0, np.float32) if lps is None else lps
    if len(offs) != len(lps):
        raise DasdError(f"{path}: row {i}: {prefix} has {len(offs)} offsets but {len(lps)} logprobs")
    sig["offsets"], sig["logprobs"] = offs, lps
    if mode is not None:
        sig["logprob_mode"] = mode
    if prefix == "teacher" and scalars["teacher_rescored"][i] is not None:
        sig["rescored"] = scalars["teacher_rescored"][i]
    return sig


def decode(table: pa.Table, kind: Kind, path: Path) -> list[dict]:
    """The rows of a shard as partial records: only non-null fields (the row's own values), plus
    ``ref_shard``/``ref_row`` when the row refers upstream. ``RunStore`` joins and adds ``_ref``.
    Values a damaged shard cannot hold (text that is not UTF-8, ``extra`` that is not JSON, offsets
    that are not pairs) are a ``DasdError`` naming the file."""
    try:
        return _decode(table, kind, path)
    except (ValueError, pa.ArrowException) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise DasdError(f"{path}: corrupt run file ({type(e).__name__}: {_one_line(e)})") from None


def _decode(table: pa.Table, kind: Kind, path: Path) -> list[dict]:
    names = set(table.column_names)
    lists = {n: _Lists(table[n]) for n in names if pa.types.is_list(table.schema.field(n).type)
             and pa.types.is_primitive(table.schema.field(n).type.value_type) or n == "teacher_tokens"}
    scalars = {n: table[n].to_pylist() for n in names if n not in lists}
    out = []
    for i in range(table.num_rows):
        rec: dict[str, Any] = {}
        for name, _ in SAMPLE_FIELDS:
            v = scalars[name][i]
            if v is not None:
                rec[name] = v
        t = _signal(lists, scalars, "teacher", i, path)
        if t is not None:
            rec["teacher"] = t
        if "student_offsets" in lists:
            s = _signal(lists, scalars, "student", i, path)
            if s is not None:
                rec["student"] = s
            for name in ("sentences", "das"):
                if scalars[name][i] is not None:
                    rec[name] = scalars[name][i]
        if scalars["extra"][i] is not None:
            rec.update(json.loads(scalars["extra"][i]))
        if "ref_shard" in scalars and scalars["ref_shard"][i] is not None:
            rec["ref_shard"], rec["ref_row"] = scalars["ref_shard"][i], scalars["ref_row"][i]
        out.append(rec)
    return out


def plain(value: Any) -> Any:
    """``value`` with numpy arrays turned into lists (for JSON and for comparing with JSONL records)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items() if k != REF}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value
