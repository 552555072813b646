"""Bad input bytes and hostile sizes are quarantined with file:line; files get the umask's mode; a full
disk is one clear error and leaves nothing half-written (issue 15, items 7, 9, 10)."""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import pytest

from dasd import jsonl
from dasd.errors import DiskFullError, OutputError
from dasd.jsonl import BadLine, atomic_write_json, iter_jsonl, read_jsonl
from dasd.prompts import load_prompts
from dasd.report.build import write_report
from dasd.store import RunStore


def test_invalid_utf8_is_quarantined_on_its_own_line_and_reading_goes_on(tmp_path):
    p = tmp_path / "in.jsonl"
    good = [json.dumps({"prompt": f"Say {i} " + "x" * 3000}) for i in range(6)]  # longer than a decode buffer
    lines = good[:4] + [b'{"prompt": "bad \xff\xfe byte"}'.decode("latin-1")] + good[4:]
    p.write_bytes("\n".join(lines).encode("latin-1") + b"\n")
    items = list(iter_jsonl(p))
    bad = [o for _, o in items if isinstance(o, BadLine)]
    assert [b.line for b in bad] == [5] and "not valid UTF-8" in bad[0].reason
    assert len(items) == 7  # the lines after the bad one are still read
    prompts, rejects = load_prompts(p, None)
    assert len(prompts) == 6 and rejects[0]["where"] == f"{p}:5"


def test_a_byte_order_mark_does_not_lose_the_first_record(tmp_path):
    p = tmp_path / "bom.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + b'{"id": "a", "prompt": "first"}\n{"id": "b", "prompt": "second"}\n')
    assert [r["id"] for r in read_jsonl(p)] == ["a", "b"]
    prompts, rejects = load_prompts(p, None)
    assert [x["id"] for x in prompts] == ["a", "b"] and not rejects


def test_an_oversized_record_is_quarantined_without_reading_it_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(jsonl, "MAX_RECORD_BYTES", 4096)
    import dasd.sources

    monkeypatch.setattr(dasd.sources, "MAX_RECORD_BYTES", 4096)
    p = tmp_path / "big.jsonl"
    with p.open("w", encoding="utf-8") as fh:
        fh.write(json.dumps({"id": "a", "prompt": "small"}) + "\n")
        fh.write(json.dumps({"id": "huge", "prompt": "y" * 50_000}) + "\n")
        fh.write(json.dumps({"id": "c", "prompt": "after"}) + "\n")
    items = list(iter_jsonl(p, 4096))
    assert [n for n, _ in items] == [1, 2, 3]
    assert isinstance(items[1][1], BadLine) and "over the 4096-byte cap" in items[1][1].reason
    prompts, rejects = load_prompts(p, None)
    assert [x["id"] for x in prompts] == ["a", "c"]
    assert rejects[0]["where"] == f"{p}:2" and "cap" in rejects[0]["reason"]


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_written_files_follow_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
        store = RunStore(tmp_path / f"run{mask}")
        with store.writer("sample", "prompts") as w:  # a JSONL output
            w.add({"id": "p1", "messages": [{"role": "user", "content": "q"}]})
        with store.writer("sample", "pool-T1") as w:  # a columnar (Parquet) output
            w.add({"id": "r1", "prompt_id": "p1", "model": "m", "temperature": 1.0, "top_p": 1.0, "seed": 0,
                   "index": 0, "text": "t", "finish_reason": "stop",
                   "teacher": {"token_ids": [1], "offsets": [[0, 1]], "logprobs": [-0.5], "logprob_mode": "raw"}})
        report = write_report(store.root)
    finally:
        os.umask(old)
    want = 0o666 & ~mask
    for f in [tmp_path / "a.json", store.root / "manifest.json", store.root / "sample" / "prompts-00000.jsonl",
              store.root / "sample" / "pool-T1-00000.parquet", report]:
        assert stat.S_IMODE(f.stat().st_mode) == want, f


def test_a_full_disk_is_one_error_naming_the_file_and_nothing_half_written(tmp_path, monkeypatch):
    target = tmp_path / "out.json"
    atomic_write_json(target, {"old": True})

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(jsonl.os, "fsync", full)
    with pytest.raises(DiskFullError, match=rf"{target}: no space left on device"):
        atomic_write_json(target, {"new": True})
    assert json.loads(target.read_text()) == {"old": True}
    assert [f.name for f in tmp_path.iterdir()] == ["out.json"]


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc (a folder that refuses new files)")
def test_a_folder_that_refuses_new_files_is_one_error_naming_the_path_not_the_temp_file():
    target = Path("/proc/dasd-report.html")  # /proc refuses to create files: ENOENT, not EACCES
    with pytest.raises(OutputError, match=rf"^{target}: cannot write: .*: /proc; nothing was written$") as err:
        atomic_write_json(target, {"x": 1})
    assert ".tmp" not in str(err.value)
