"""Input rows from local files and from a hub-style data set read offline through `datasets`."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from dasd.configbase import StrictModel
from dasd.errors import ConfigError, InputError
from dasd.jsonl import BadLine
from dasd.sources import HubSource, KeyedRows, LocalSource, SourceSpec, count_rows, iter_rows, parse_source

ROWS = [{"uuid": f"u{i}", "input": f"q{i}", "output": f"<think>\nr{i}\n</think>\na{i}", "domain": "math",
         "meta": json.dumps({"i": i})} for i in range(5)]


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def hub_folder(tmp_path):
    """A folder laid out like the release's hub repository: two configs, each a JSONL data file."""
    root = tmp_path / "Superior-Reasoning-local"
    root.mkdir()
    (root / "README.md").write_text(
        "---\nconfigs:\n- config_name: stage1\n  data_files: stage1-train-data.jsonl\n"
        "- config_name: stage2\n  data_files: stage2-train-data.jsonl\n---\n# a local copy\n", encoding="utf-8")
    write_jsonl(root / "stage1-train-data.jsonl", ROWS[:3])
    write_jsonl(root / "stage2-train-data.jsonl", ROWS[3:])
    return root


@pytest.mark.parametrize("spec, want", [
    ("hf:Alibaba-Apsara/Superior-Reasoning-SFT-gpt-oss-120b:stage1@train",
     HubSource(repo="Alibaba-Apsara/Superior-Reasoning-SFT-gpt-oss-120b", config="stage1", split="train")),
    ("hf:org/name", HubSource(repo="org/name")),
    ("hf:org/name@test#v1.0", HubSource(repo="org/name", split="test", revision="v1.0")),
    ("hf:/data/copy:stage2", HubSource(repo="/data/copy", config="stage2")),
    ("data/stage1.jsonl", LocalSource(path="data/stage1.jsonl")),
])
def test_parse_source(spec, want):
    assert parse_source(spec) == want
    if isinstance(want, HubSource):
        assert parse_source(want.spec()) == want


@pytest.mark.parametrize("bad", ["hf:", "hf:org/name:", "hf:org/name@", "hf:org/name#", "hf::stage1", ""])
def test_bad_hub_specs_fail_when_the_config_loads(bad):
    class Cfg(StrictModel):
        source: SourceSpec | None = None

    with pytest.raises((ConfigError, ValidationError)) as e:
        Cfg(source=bad)
    assert "hf:<repo>[:<config>][@<split>][#<revision>]" in str(e.value)


def test_jsonl_rows_with_where(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [ROWS[0], "not json", "", ROWS[1]])
    got = list(iter_rows(str(path)))
    assert [w for w, _ in got] == [f"{path}:1", f"{path}:2", f"{path}:4"]
    assert got[0][1] == ROWS[0] and got[2][1] == ROWS[1] and isinstance(got[1][1], BadLine)
    assert count_rows(path) == 3


def test_parquet_rows_in_bounded_batches(tmp_path):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path, row_group_size=2)
    got = list(iter_rows(path, batch_rows=2))
    assert got == [(f"{path}[{i}]", r) for i, r in enumerate(ROWS)]
    assert count_rows(path) == 5


def test_saved_datasets_folder(tmp_path):
    import datasets

    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "saved"))
    assert list(iter_rows(tmp_path / "saved")) == [(f"{tmp_path / 'saved'}[{i}]", r) for i, r in enumerate(ROWS)]


def test_hub_data_set_streamed_offline(hub_folder, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    got = list(iter_rows(f"hf:{hub_folder}:stage2@train"))
    assert got == [(f"{hub_folder}:stage2[train][{i}]", r) for i, r in enumerate(ROWS[3:])]
    assert [r["uuid"] for _, r in iter_rows(f"hf:{hub_folder}:stage1")] == ["u0", "u1", "u2"]


def test_hub_stream_yields_rows_before_a_bad_file(hub_folder, tmp_path):
    """Rows arrive one by one: those of a good file come before a bad one stops the read."""
    (hub_folder / "README.md").write_text(
        "---\nconfigs:\n- config_name: both\n  data_files:\n  - stage2-train-data.jsonl\n  - broken.jsonl\n---\n",
        encoding="utf-8")
    write_jsonl(hub_folder / "broken.jsonl", ["not json"])
    rows = iter_rows(f"hf:{hub_folder}:both")
    assert [next(rows)[1]["uuid"], next(rows)[1]["uuid"]] == ["u3", "u4"]
    with pytest.raises(InputError, match=r"both\[train\]: cannot read on after its first 2 rows"):
        next(rows)


def test_hub_errors_name_the_source(hub_folder):
    with pytest.raises(InputError, match="stage3"):
        list(iter_rows(f"hf:{hub_folder}:stage3@train"))
    with pytest.raises(InputError, match=r"hf:org/not-here@train: cannot open this data set"):
        list(iter_rows("hf:org/not-here"))


def companion(n):
    return [{"sample_uuid": f"u{i}", "token_ids": [i, i + 1], "logprobs": [-0.5, -0.25]} for i in n]


def test_keyed_rows_from_jsonl_in_another_order(tmp_path):
    rows = companion([3, 1, 4]) + ["[1, 2]", {"token_ids": []}, companion([1])[0] | {"logprobs": [0.0, 0.0]}]
    path = write_jsonl(tmp_path / "lp.jsonl", rows)
    idx = KeyedRows(path, "sample_uuid")
    assert len(idx) == 3 and set(idx.keys()) == {"u1", "u3", "u4"} and "u1" in idx and "u0" not in idx
    assert idx.get("u1") == (f"{path}:2", companion([1])[0])  # the first row of a key wins
    assert idx.get("u4") == (f"{path}:3", companion([4])[0])
    assert idx.get("u0") is None
    assert idx.bad == [
        {"where": f"{path}:4", "reason": "expected a JSON object, got list"},
        {"where": f"{path}:5", "reason": "no string 'sample_uuid'"},
        {"where": f"{path}:6", "reason": "duplicate sample_uuid 'u1'"},
    ]


def test_keyed_rows_from_parquet_and_hub(tmp_path, hub_folder):
    path = tmp_path / "lp.parquet"
    pq.write_table(pa.Table.from_pylist(companion([2, 0, 1, 0])), path, row_group_size=2)
    idx = KeyedRows(path, "sample_uuid", cache_dir=str(tmp_path / "cache"))
    assert idx.get("u1") == (f"{path}[2]", companion([1])[0])
    assert idx.get("u9") is None
    assert idx.bad == [{"where": f"{path}[3]", "reason": "duplicate sample_uuid 'u0'"}]

    hub = KeyedRows(f"hf:{hub_folder}:stage1@train", "uuid", cache_dir=str(tmp_path / "cache"))
    assert hub.get("u2") == (f"{hub_folder}:stage1[train][2]", ROWS[2]) and len(hub) == 3
    with pytest.raises(InputError, match="no column 'sample_uuid'"):
        KeyedRows(f"hf:{hub_folder}:stage1@train", "sample_uuid", cache_dir=str(tmp_path / "cache"))
