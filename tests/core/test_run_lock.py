"""One writer per run directory (issue 15, item 2): a second writer is refused with one line naming
the holder; a lock left by a dead process (kill -9) is taken over. Real processes, real flock."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from dasd.lock import RunLockedError, holder, release_run_lock
from dasd.store import RunStore

HOLDER = textwrap.dedent(
    """
    import sys, time
    from dasd.store import RunStore
    RunStore(sys.argv[1])
    print("holding", flush=True)
    time.sleep(120)
    """
)


def hold(tmp_path, run):
    script = tmp_path / "hold.py"
    script.write_text(HOLDER, encoding="utf-8")
    proc = subprocess.Popen([sys.executable, str(script), str(run)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "holding"
    return proc


def test_a_second_writer_is_refused_naming_the_holder_then_takes_over_a_dead_ones_lock(tmp_path):
    run = tmp_path / "run"
    proc = hold(tmp_path, run)
    try:
        with pytest.raises(RunLockedError) as err:
            RunStore(run)
        msg = str(err.value)
        assert f"pid {proc.pid} on {socket.gethostname()} since 20" in msg and "\n" not in msg
        # the CLI: one line, exit 2, no traceback
        cfg = tmp_path / "c.yaml"
        cfg.write_text(f"run_dir: {run}\n", encoding="utf-8")
        out = subprocess.run([sys.executable, "-m", "dasd", "sample", str(cfg)], capture_output=True, text=True,
                             env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert out.returncode == 2 and f"pid {proc.pid}" in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
        RunStore.open(run)  # readers (report, export) are not refused
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    # the holder died without releasing anything: its lock is taken over
    store = RunStore(run)
    assert holder(run)["pid"] == os.getpid()
    assert json.loads((run / "manifest.json").read_text())["stages"] == {}
    release_run_lock(store.root)


def test_the_same_process_may_open_its_run_many_times(tmp_path):
    a, b = RunStore(tmp_path / "r"), RunStore(tmp_path / "r")
    assert a.root == b.root and holder(tmp_path / "r")["pid"] == os.getpid()
    release_run_lock(tmp_path / "r")
    proc = hold(tmp_path, tmp_path / "r")  # released: another process can take it
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_the_ranks_of_one_distributed_job_are_one_writer(tmp_path):
    run = tmp_path / "run"
    proc = hold(tmp_path, run)  # rank 0 of the job (or any writer)
    try:
        env = {**os.environ, "RANK": "1", "HF_HUB_OFFLINE": "1"}
        code = f"from dasd.store import RunStore; RunStore({str(run)!r}); print('ok')"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={**env, "RANK": "0"})
        assert out.returncode != 0 and "RunLockedError" in out.stderr
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def test_a_rank_above_0_leaves_the_run_files_to_rank_0(tmp_path):
    """Rank 0 may be saving the manifest (its temp file ``.manifest.json.XXXX.tmp`` about to be
    renamed) while another rank opens the run: that rank neither removes the temp file (rank 0's
    rename then failed: 'No such file or directory', seen in the two-process training test) nor
    writes a manifest of its own; its writers do not sweep temp files either."""
    run = tmp_path / "run"
    proc = hold(tmp_path, run)  # rank 0, holding the lock, with its manifest
    try:
        saving = run / ".manifest.json.a1b2c3.tmp"
        saving.write_text("{}", encoding="utf-8")
        shard_tmp = run / "train" / ".cache-00000.jsonl.x9y8.tmp"
        shard_tmp.parent.mkdir()
        shard_tmp.write_text("", encoding="utf-8")
        manifest = (run / "manifest.json").read_bytes()
        code = (f"from dasd.store import RunStore; s = RunStore({str(run)!r}); s.writer('train', 'cache').close(); "
                "print(s._locked)")
        env = {**os.environ, "RANK": "1", "HF_HUB_OFFLINE": "1"}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr
        assert saving.is_file() and shard_tmp.is_file() and (run / "manifest.json").read_bytes() == manifest
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
