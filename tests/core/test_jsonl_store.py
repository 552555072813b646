"""Run store and JSONL I/O: atomic shards, resume without duplicates, clear errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from dasd.errors import DasdError, InputError
from dasd.jsonl import BadLine, atomic_write_jsonl, iter_jsonl, read_jsonl
from dasd.store import RunStore, shard_paths


def test_iter_jsonl_reports_bad_lines_with_numbers(tmp_path):
    p = tmp_path / "in.jsonl"
    p.write_text('{"a": 1}\n\nnot json\n[1, 2]\n{"b": NaN}\n{"c": "日本"}\n', encoding="utf-8")
    items = list(iter_jsonl(p))
    assert [n for n, _ in items] == [1, 3, 4, 5, 6]
    bad = [o for _, o in items if isinstance(o, BadLine)]
    assert [b.line for b in bad] == [3, 4, 5]
    assert "not valid JSON" in bad[0].reason and "expected a JSON object" in bad[1].reason
    assert "NaN" in bad[2].reason
    assert bad[0].where() == f"{p}:3"
    with pytest.raises(InputError, match=r"in.jsonl:3"):
        read_jsonl(p)


def test_missing_file_is_input_error(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_jsonl(tmp_path / "nope.jsonl")


def test_atomic_write_leaves_old_file_on_error(tmp_path):
    p = tmp_path / "out.jsonl"
    atomic_write_jsonl(p, [{"x": 1}])

    def gen():
        yield {"x": 2}
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_write_jsonl(p, gen())
    assert read_jsonl(p) == [{"x": 1}]
    assert [f.name for f in tmp_path.iterdir()] == ["out.jsonl"]  # no temp file left behind


def test_writer_skips_existing_ids_and_resumes(tmp_path):
    store = RunStore(tmp_path / "run")
    with store.writer("sample", "pool-T1", shard_size=2) as w:
        for i in range(5):
            assert w.add({"id": f"r{i}", "v": i})
        assert not w.add({"id": "r0", "v": 99})
    assert len(shard_paths(store.root / "sample", "pool-T1")) == 3
    with store.writer("sample", "pool-T1", shard_size=2) as w:
        assert len(w.existing) == 5 and all(f"r{i}" in w.existing for i in range(5)) and "r5" not in w.existing
        added = [w.add({"id": f"r{i}", "v": i}) for i in range(7)]
    assert added == [False] * 5 + [True, True]
    recs = list(store.read("sample", "pool-T1"))
    assert [r["id"] for r in recs] == [f"r{i}" for i in range(7)]


def test_temp_files_are_not_read_as_shards(tmp_path):
    store = RunStore(tmp_path / "run")
    d = store.stage_dir("sample")
    (d / ".pool-T1-00000.jsonl.abc.tmp").write_text('{"id": "half', encoding="utf-8")
    assert list(store.read("sample", "pool-T1")) == []
    assert store.outputs("sample") == []


def test_open_bad_run_dir(tmp_path):
    with pytest.raises(DasdError, match="no such run directory"):
        RunStore.open(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DasdError, match="not a dasd run directory"):
        RunStore.open(tmp_path / "empty")
    (tmp_path / "empty" / "manifest.json").write_text("{oops", encoding="utf-8")
    with pytest.raises(DasdError, match="unreadable manifest"):
        RunStore.open(tmp_path / "empty")
    (tmp_path / "empty" / "manifest.json").write_bytes(b'{"stages": {"sample": "\xff"}}\n')  # a damaged byte
    with pytest.raises(DasdError, match=r"manifest.json: unreadable manifest \('utf-8' codec can't decode"):
        RunStore.open(tmp_path / "empty")


def test_manifest_records_config_counts_versions(tmp_path):
    store = RunStore(tmp_path / "run")
    store.begin_stage("sample", {"k": 2})
    assert not store.is_complete("sample", {"k": 2})
    store.end_stage("sample", {"T1": 4})
    again = RunStore.open(tmp_path / "run")
    info = again.stage_info("sample")
    assert info["complete"] and info["counts"] == {"T1": 4} and info["config"] == {"k": 2}
    assert "torch" in info["packages"] and "seconds" in info
    assert again.is_complete("sample", {"k": 2}) and not again.is_complete("sample", {"k": 3})


WRITER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from dasd.store import RunStore
    store = RunStore(sys.argv[1])
    with store.writer("stage", "out", shard_size=3) as w:
        for i in range(40):
            if f"r{i}" in w:
                continue
            w.add({"id": f"r{i}", "payload": "x" * 1000})
            if i == int(sys.argv[2]):
                print("ready", flush=True)
                time.sleep(60)
    """
)


def test_kill_9_mid_stage_then_resume_gives_same_records(tmp_path):
    run = tmp_path / "run"
    script = tmp_path / "writer.py"
    script.write_text(WRITER_SCRIPT, encoding="utf-8")
    proc = subprocess.Popen([sys.executable, str(script), str(run), "17"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = [r["id"] for r in RunStore.open(run).read("stage", "out")]
    assert 0 < len(partial) < 40  # some complete shards survived, the buffer was lost
    subprocess.run([sys.executable, str(script), str(run), "-1"], check=True)
    ids = []
    for path in shard_paths(run / "stage", "out"):
        ids += [json.loads(line)["id"] for line in path.read_text().splitlines()]
    assert sorted(ids) == sorted(f"r{i}" for i in range(40))  # every record exactly once on disk


def test_temp_files_left_by_a_killed_writer_are_removed_when_the_stage_begins_again(tmp_path):
    """kill -9 inside ``atomic_open`` leaves ``.NAME.XXXX.tmp`` beside the shards: never read, only disk."""
    store = RunStore(tmp_path / "run")
    store.begin_stage("sample", {"k": 2})
    with store.writer("sample", "pool-T1") as w:
        w.add({"id": "a", "x": 1})
    stage = store.root / "sample"
    left = stage / ".pool-T1-00001.jsonl.k2j4x9.tmp"
    left.write_text('{"id": "b", "x"')  # the half of a shard a killed write left
    keep = [stage / ".notes", stage / "sub" / ".x.tmp"]  # not ours: kept
    keep[1].parent.mkdir()
    for p in keep:
        p.write_text("x")
    before = sorted(p.name for p in stage.iterdir() if p != left)
    store.begin_stage("sample", {"k": 2})
    assert not left.exists()
    assert sorted(p.name for p in stage.iterdir()) == before
    assert all(p.exists() for p in keep)
    assert [r["id"] for r in store.read("sample", "pool-T1")] == ["a"]


def test_an_output_written_again_after_removal_gets_new_shard_names_so_readers_see_the_change(tmp_path):
    """An output removed and written again (a filter run with other rules) never reuses a shard
    name: a stage that read the old shards sees them gone even where the new one has the old one's
    size, and drops what it made from them."""
    from dasd.runs import drop_if_inputs_rewritten, read_shards

    store = RunStore(tmp_path / "run")
    with store.writer("filter", "notes") as w:
        w.add({"id": "r1", "v": "aaaa"})
    store.begin_stage("score", {}, read=read_shards(store, ("filter",)))
    with store.writer("score", "rejects") as w:
        w.add({"id": "s1", "from": "r1"})
    old = store.shard_files("filter", "notes")
    store.remove_output("filter", "notes")
    with store.writer("filter", "notes") as w:
        w.add({"id": "r2", "v": "bbbb"})
    new = store.shard_files("filter", "notes")
    assert [s for _, s in new] == [s for _, s in old] and new != old  # same size, another name
    assert [n for n, _ in new] == ["notes-00001.jsonl"]
    assert RunStore.open(tmp_path / "run").manifest["next_shard"] == {"filter/notes": 1}
    assert drop_if_inputs_rewritten(store, "score", ("filter",), ("rejects",)) == 1
    assert store.outputs("score") == []


def test_a_manifest_temp_file_left_by_a_killed_save_is_removed_when_the_run_is_opened_to_write(tmp_path):
    """kill -9 inside a manifest save leaves ``.manifest.json.XXXX.tmp`` in the run folder: removed by
    the next command that takes the run's lock, kept by a reader (``RunStore.open``)."""
    from dasd.lock import release_run_lock

    release_run_lock(RunStore(tmp_path / "run").root)
    left = tmp_path / "run" / ".manifest.json.k2j4x9.tmp"
    left.write_text('{"created": ')
    RunStore.open(tmp_path / "run")
    assert left.exists()
    RunStore(tmp_path / "run")
    assert not left.exists() and json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"] == {}
