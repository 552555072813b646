"""`dasd import` (the CLI, in its own process) killed with SIGKILL in the middle of a pool, some
shards written and its writers' buffers not yet flushed, then run again to the end, has what an
uninterrupted import has: the same records, prompts and rejects, each once, the same counts, every
shard readable and no temp file (also when the kill came while a shard was being written)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from dasd.store import RunStore

N_PROMPTS = 3000  # two responses each, in shards of 256: the first is written long before the import ends


def source(tmp_path: Path, n: int = N_PROMPTS) -> Path:
    """Chat rows: two responses to each prompt (the prompts' and the pool's writers flush at different
    rows), and now and then a row with no response (quarantined)."""
    rows = []
    for i in range(n):
        for j in range(2):
            response = f"<think>{f'step {i}.{j}. ' * 60}</think> {i + 1}"
            rows.append({"messages": [{"role": "user", "content": f"Compute {i} + 1."},
                                      {"role": "assistant", "content": response}], "answer": str(i + 1)})
        if i % 700 == 0:
            rows.append({"messages": [{"role": "user", "content": f"No answer to {i}."}]})
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def dasd_import(run: Path, data: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dasd", "import", f"run_dir={run}", f"import.source={data}",
                             "import.format=chat"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "Traceback" not in out, out[-3000:]
    return out


def records(run: Path, pattern: str) -> dict[str, dict]:
    """Every record of the shards ``pattern`` names, by id, read shard by shard (an id twice fails,
    an unreadable shard too)."""
    out: dict[str, dict] = {}
    for p in sorted((run / "sample").glob(pattern)):
        rows = pq.read_table(p).to_pylist() if p.suffix == ".parquet" else map(json.loads, p.read_text().splitlines())
        for r in rows:
            assert r["id"] not in out, f"{r['id']} twice ({p.name})"
            out[r["id"]] = r
    return out


@pytest.mark.slow  # three runs of the CLI, ~20 s on 2 cores
def test_import_killed_mid_pool_resumes_to_what_an_uninterrupted_import_has(tmp_path):
    data = source(tmp_path)
    finish(dasd_import(tmp_path / "ref", data))
    run = tmp_path / "killed"
    proc = dasd_import(run, data)
    deadline = time.monotonic() + 300  # a guard against a hang, not a time limit on anything
    while not (run / "sample" / "pool-T1-00000.parquet").exists():  # the pool's first shard: polled, not guessed
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "no shard written"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    at_kill = records(run, "pool-T1-*.parquet")
    assert 256 <= len(at_kill) < 2 * N_PROMPTS
    manifest = json.loads((run / "manifest.json").read_text())
    assert not manifest["stages"]["import"]["complete"] and not list((run / "sample").glob("rejects-*"))
    finish(dasd_import(run, data))
    ref, got = records(tmp_path / "ref", "pool-T1-*.parquet"), records(run, "pool-T1-*.parquet")
    assert len(ref) == 2 * N_PROMPTS and got == ref
    assert records(run, "prompts-*.jsonl") == records(tmp_path / "ref", "prompts-*.jsonl")
    assert len(records(run, "prompts-*.jsonl")) == N_PROMPTS
    rejects = records(run, "rejects-*.jsonl")
    assert rejects == records(tmp_path / "ref", "rejects-*.jsonl") and len(rejects) == 5
    want, info = (json.loads((r / "manifest.json").read_text())["stages"]["import"] for r in (tmp_path / "ref", run))
    assert info["complete"] and info["counts"] == want["counts"] == info["pools"]["T1"]["counts"]
    assert want["counts"]["imported"] == 2 * N_PROMPTS and want["counts"]["rejected"] == 5
    assert [p.name for p in run.rglob(".*") if p.name != ".lock"] == []  # no temp file left


# `dasd import` killed with SIGKILL by itself once its third pool shard is written into its temp file,
# before the temp file is renamed to the shard: what a kill in the middle of a shard's write leaves
KILLED_IN_A_WRITE = """
import contextlib, os, signal, sys
from dasd import jsonl
from dasd.cli import main

real, shards = jsonl.atomic_open, []

@contextlib.contextmanager
def atomic_open(path, mode="w"):
    with real(path, mode) as fh:
        yield fh
        if str(path).endswith(".parquet"):
            shards.append(path)
            if len(shards) == 3:
                fh.flush()
                os.kill(os.getpid(), signal.SIGKILL)

jsonl.atomic_open = atomic_open  # columnar.write_shard imports it from jsonl as it writes
sys.exit(main(sys.argv[1:]))
"""


def test_an_import_killed_while_it_wrote_a_shard_leaves_no_temp_file_once_resumed(tmp_path):
    """The temp file of the shard being written stays after the kill (it is no shard: never read);
    the resumed import removes it. It used to stay for good: `dasd import` writes into RUN/sample but
    begins the stage ``import``, whose folder is the one swept when a stage begins."""
    data = source(tmp_path, 400)  # 800 responses: 4 shards
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", KILLED_IN_A_WRITE, "import", f"run_dir={run}",
                           f"import.source={data}", "import.format=chat"],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert len(records(run, "pool-T1-*.parquet")) == 2 * 256
    (left,) = (run / "sample").glob(".pool-T1-00002.parquet.*.tmp")  # the shard's bytes, never renamed
    assert pq.read_table(left).num_rows == 256
    out = finish(dasd_import(run, data))
    assert not left.exists() and [p.name for p in run.rglob(".*") if p.name != ".lock"] == []
    assert "1 temp file(s) left by an interrupted write removed" in out
    assert len(records(run, "pool-T1-*.parquet")) == 800


def test_a_writer_removes_the_temp_files_of_its_own_output_only_and_only_under_the_run_lock(tmp_path):
    """What a writer sweeps when it opens: the temp files of its output's shards, none of another
    output's (a writer of that one may be open), and nothing from a store that only reads."""
    store = RunStore(tmp_path / "run")
    d = store.stage_dir("sample")
    mine = [d / ".pool-T1-00003.parquet.k2j4x9_a.tmp", d / ".pool-T1-00000.jsonl.abc.tmp"]
    others = [d / ".pool-T1.5-00000.parquet.k2j4x9_a.tmp", d / ".prompts-00001.jsonl.x.tmp",
              d / ".import-digests.json.x.tmp", d / ".notes"]
    for p in mine + others:
        p.write_bytes(b"half")
    with RunStore.open(store.root).writer("sample", "pool-T1"):
        pass
    assert all(p.exists() for p in mine + others)
    with store.writer("sample", "pool-T1") as w:
        w.add({"id": "a", "prompt_id": "p", "text": "x", "teacher": {"token_ids": [1], "offsets": [[0, 1]],
                                                                     "logprobs": [-0.5]}})
    assert not any(p.exists() for p in mine) and all(p.exists() for p in others)
    assert [r["id"] for r in store.read("sample", "pool-T1")] == ["a"]
