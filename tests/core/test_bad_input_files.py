"""Input files that are not what they claim to be: compressed, Parquet under a .jsonl name, one
JSON array instead of JSON Lines, empty, a directory, CRLF line ends, a last line cut off, a damaged
Parquet row group. Each is either read correctly or refused in one line naming the file (and line)
and saying what it is instead; nothing is silently read as zero records."""

from __future__ import annotations

import bz2
import gzip
import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dasd.errors import InputError
from dasd.grading.loaders import load_aime
from dasd.jsonl import BadLine, iter_jsonl
from dasd.prompts import load_prompts
from dasd.sources import KeyedRows, iter_rows

from test_cli import assert_one_line_error, dasd

ROWS = [{"id": f"p{i}", "prompt": f"What is {i} + {i}?"} for i in range(3)]


def lines(rows, end="\n"):
    return "".join(json.dumps(r) + end for r in rows)


@pytest.mark.parametrize("pack, what", [(gzip.compress, "gzip-compressed: decompress it first (gunzip -k"),
                                        (bz2.compress, "bzip2-compressed"),
                                        (lambda b: b.decode().encode("utf-16"), "UTF-16 text (as Windows PowerShell "
                                                                                "writes): convert it to UTF-8")])
def test_a_compressed_or_utf16_file_is_refused_saying_so(tmp_path, pack, what):
    p = tmp_path / "prompts.jsonl"
    p.write_bytes(pack(lines(ROWS).encode()))
    for read in (lambda: load_prompts(p, None), lambda: list(iter_jsonl(p)), lambda: KeyedRows(p, "id"),
                 lambda: load_aime(p)):
        with pytest.raises(InputError, match=rf"^{p}: not JSON Lines text: {re.escape(what)}"):
            read()


@pytest.mark.parametrize("text", [json.dumps(ROWS) + "\n", json.dumps(ROWS, indent=2) + "\n",
                                  "\n\n[\n" + ",\n".join(json.dumps(r) for r in ROWS) + "\n]\n"])
def test_a_json_array_is_refused_naming_the_line_and_the_conversion(tmp_path, text):
    p = tmp_path / "prompts.json"
    p.write_text(text, encoding="utf-8")
    first = next(i for i, line in enumerate(text.splitlines(), 1) if line.strip())
    with pytest.raises(InputError, match=rf"^{p}:{first}: a JSON array, not JSON Lines .* jq -c '\.\[\]' {p} > "
                                         rf"{tmp_path / 'prompts.jsonl'}$"):
        load_prompts(p, None)


def test_a_line_holding_a_list_is_still_one_quarantined_record(tmp_path):
    p = tmp_path / "prompts.jsonl"
    p.write_text("[1, 2]\n" + lines(ROWS), encoding="utf-8")
    prompts, rejects = load_prompts(p, None)
    assert [x["id"] for x in prompts] == ["p0", "p1", "p2"]
    assert rejects[0]["where"] == f"{p}:1" and "expected a JSON object, got list" in rejects[0]["reason"]


def test_a_parquet_file_under_a_jsonl_name_is_read_as_parquet(tmp_path):
    p = tmp_path / "prompts.jsonl"
    pq.write_table(pa.Table.from_pylist(ROWS), p)
    rows = [r for _, r in iter_rows(p)]
    assert rows == ROWS
    assert [x["id"] for x in load_prompts(p, None)[0]] == ["p0", "p1", "p2"]
    assert KeyedRows(p, "id").get("p1")[1] == ROWS[1]
    with pytest.raises(InputError, match="a Parquet file: give it a .parquet name"):
        list(iter_jsonl(p))  # the run's own JSONL reader does not guess


def test_crlf_line_ends_read_the_same_records_as_lf(tmp_path):
    lf, crlf = tmp_path / "lf.jsonl", tmp_path / "crlf.jsonl"
    lf.write_bytes(lines(ROWS).encode())
    crlf.write_bytes(lines(ROWS, "\r\n").encode())
    assert load_prompts(crlf, None) == load_prompts(lf, None)
    a, b = KeyedRows(lf, "id"), KeyedRows(crlf, "id")
    assert [b.get(k)[1] for k in a.keys()] == ROWS and not b.bad


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_an_empty_source_is_an_error_not_an_empty_data_set(tmp_path, content):
    p = tmp_path / "prompts.jsonl"
    p.write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match=rf"^{p}: no records \(an empty file\?\)"):
        load_prompts(p, None)
    with pytest.raises(InputError, match=rf"^{p}: no rows with a string 'id' to look up \(0 bad rows\)"):
        KeyedRows(p, "id")
    q = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"id": pa.array([], pa.string())}), q)
    with pytest.raises(InputError, match=rf"^{q}: no records"):
        list(iter_rows(q))


def test_a_companion_without_one_usable_key_says_why(tmp_path):
    p = tmp_path / "lp.jsonl"
    p.write_text('{"uuid": "a"}\nnot json\n', encoding="utf-8")
    with pytest.raises(InputError, match=rf"no rows with a string 'sample_uuid' to look up \(2 bad rows; the first "
                                         rf"bad one: {p}:1: no string 'sample_uuid'\)"):
        KeyedRows(p, "sample_uuid")


def test_a_last_line_cut_off_is_quarantined_saying_so_and_the_rest_is_kept(tmp_path):
    p = tmp_path / "prompts.jsonl"
    p.write_text(lines(ROWS) + '{"id": "p3", "prompt": "What is', encoding="utf-8")
    prompts, rejects = load_prompts(p, None)
    assert [x["id"] for x in prompts] == ["p0", "p1", "p2"]
    assert rejects[0]["where"] == f"{p}:4" and "the file ends inside this line: cut off while written?" in rejects[0]["reason"]
    bad = [o for _, o in iter_jsonl(tmp_path / "prompts.jsonl") if isinstance(o, BadLine)]
    assert len(bad) == 1


def test_a_directory_where_a_jsonl_file_is_expected(tmp_path):
    with pytest.raises(InputError, match=rf"^{tmp_path}: is a directory, expected a JSON Lines file"):
        load_aime(tmp_path)


def test_a_damaged_parquet_row_group_stops_the_read_saying_how_far_it_got(tmp_path):
    p = tmp_path / "prompts.parquet"
    table = pa.table({"id": [f"p{i}" for i in range(100)], "prompt": ["x" * 50 + str(i) for i in range(100)]})
    pq.write_table(table, p, row_group_size=50, use_dictionary=False)
    col = pq.ParquetFile(p).metadata.row_group(1).column(1)  # the second row group's prompts
    data = bytearray(p.read_bytes())
    mid = col.data_page_offset + col.total_compressed_size // 2
    for k in range(mid, mid + 40):
        data[k] ^= 0x5A
    p.write_bytes(bytes(data))
    seen = []
    with pytest.raises(InputError, match=rf"^{p}: cannot read on after its first 50 rows \("):
        for where, _ in iter_rows(p, batch_rows=10):
            seen.append(where)
    assert seen == [f"{p}[{i}]" for i in range(50)]


def test_the_sample_stage_refuses_a_json_array_of_prompts_in_one_line(tmp_path):
    p = tmp_path / "prompts.json"
    p.write_text(json.dumps(ROWS, indent=2), encoding="utf-8")
    r = dasd("sample", f"run_dir={tmp_path / 'run'}", f"data.prompts={p}", "sample.k=1", "sample.temperatures=[1.0]")
    assert_one_line_error(r, f"{p}:1: a JSON array, not JSON Lines")
    assert not (tmp_path / "run" / "sample").exists() or not list((tmp_path / "run" / "sample").glob("pool-*"))


def test_nan_in_a_companion_line_is_not_json_there_either(tmp_path):
    p = tmp_path / "lp.jsonl"
    p.write_text('{"sample_uuid": "a", "logprobs": [-0.5]}\n{"sample_uuid": "b", "logprobs": [NaN]}\n', encoding="utf-8")
    idx = KeyedRows(p, "sample_uuid")
    assert list(idx.keys()) == ["a"]
    assert idx.bad == [{"where": f"{p}:2", "reason": "not valid JSON: non-finite number NaN is not valid JSON"}]
    assert [(n, o.reason) for n, o in iter_jsonl(p) if isinstance(o, BadLine)] == [(2, idx.bad[0]["reason"])]
