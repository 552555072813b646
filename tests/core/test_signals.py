"""Ctrl-C and SIGTERM (issue 15, item 8): what is complete is kept (buffered records flushed), one
line says how to resume, exit 130 / 143; re-running finishes with every record exactly once.
A full disk (item 9): one line naming the path, nothing half-written, resume once space is back."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import proctree
import pytest

from dasd import jsonl
from dasd.cli import main
from dasd.signals import Stopped, held, on_signal


def write_config(tmp_path, model, n=20):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Say {i}."}) + "\n" for i in range(n)), encoding="utf-8")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"run_dir: {tmp_path / 'run'}\nteacher: {{model: {model}}}\ndata: {{prompts: {prompts}}}\n"
                   "sample: {k: 2, max_tokens: 8, batch_prompts: 1, temperatures: [0.6, 1.0]}\n", encoding="utf-8")
    return cfg


def on_disk(run):
    """Every sample record on disk (a Counter of ids: duplicates would show) and leftover temp files."""
    import pyarrow.parquet as pq

    ids = Counter()
    for shard in (run / "sample").glob("pool-*.parquet"):  # every shard file, duplicates across shards included
        ids.update(pq.read_table(shard, columns=["id"]).column("id").to_pylist())
    return ids, list(run.rglob("*.tmp"))


@pytest.mark.parametrize("sig, code, why", [(signal.SIGTERM, 143, "terminated (SIGTERM)"),
                                            (signal.SIGINT, 130, "interrupted (Ctrl-C)")])
def test_a_signal_keeps_what_is_complete_and_says_how_to_resume(tmp_path, tiny_lm_dir, sig, code, why):
    cfg = write_config(tmp_path, tiny_lm_dir)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "dasd", "sample", str(cfg)], stderr=subprocess.PIPE, text=True, env=env)
    for line in proc.stderr:  # progress lines come every 10% off a terminal
        if "sample T0.6" in line and "/20" in line and " 0/20" not in line:
            break
    proc.send_signal(sig)
    rest = proc.stderr.read()
    assert proc.wait() == code, rest
    assert rest.strip().splitlines()[-1] == f"dasd: {why}; what was complete is kept; resume with: dasd sample {cfg}"
    assert "Traceback" not in rest
    ids, tmp = on_disk(tmp_path / "run")
    assert 0 < len(ids) < 80 and not tmp  # the samples finished before the signal were flushed, not lost
    out = subprocess.run([sys.executable, "-m", "dasd", "sample", str(cfg)], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    ids, tmp = on_disk(tmp_path / "run")
    assert len(ids) == 80 and set(ids.values()) == {1} and not tmp


# Like the `dasd` console script: dasd.cli is imported, then main() runs; a real signal arrives while
# main() imports transformers (a second or more of a command's start).
SIGNAL_WHILE_IMPORTING = """
import os, signal, sys
import dasd.cli

class SignalOnImport:
    def find_spec(self, name, path=None, target=None):
        if name == "transformers":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIG%s)
        return None

sys.meta_path.insert(0, SignalOnImport())
sys.exit(dasd.cli.main(["config", "show"]))
"""


@pytest.mark.parametrize("sig, code, why", [("INT", 130, "interrupted (Ctrl-C)"), ("TERM", 143, "terminated (SIGTERM)")])
def test_a_signal_while_the_command_starts_is_one_line(sig, code, why):
    """Ctrl-C in the first second of a command was a KeyboardInterrupt traceback (SIGTERM: a silent death)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", SIGNAL_WHILE_IMPORTING % sig], capture_output=True, text=True, env=env)
    assert out.returncode == code, out.stderr
    assert out.stderr.strip().splitlines() == [f"dasd: {why}; what was complete is kept; resume with: dasd config show"]

def test_a_full_disk_is_one_line_and_the_run_resumes_when_space_is_back(tmp_path, tiny_lm_dir, monkeypatch, capsys):
    cfg = write_config(tmp_path, tiny_lm_dir, n=6)
    real_fsync, writes = os.fsync, []

    def fsync(fd):  # the disk fills up at the third file written
        writes.append(fd)
        if len(writes) >= 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(jsonl.os, "fsync", fsync)
    assert main(["sample", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"dasd: error: {tmp_path / 'run'}") and "no space left on device" in err[0]
    assert not list((tmp_path / "run").rglob("*.tmp"))
    monkeypatch.setattr(jsonl.os, "fsync", real_fsync)  # space is back
    assert main(["sample", str(cfg)]) == 0
    ids, tmp = on_disk(tmp_path / "run")
    assert len(ids) == 24 and set(ids.values()) == {1} and not tmp


def test_a_stop_while_workers_start_waits_for_them_and_ends_with_one_line(tmp_path):
    """Without ``dasd.signals.held`` the parent exits while a worker still unpickles the pool's
    semaphores, and the worker prints a FileNotFoundError traceback after dasd's last line."""
    script = Path(__file__).with_name("stop_while_starting.py")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    # the pipe stays open while any worker lives: a worker left behind would be read too
    out = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 143, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert out.stderr.strip().splitlines()[-1].startswith("dasd: terminated (SIGTERM); what was complete is kept; ")


def test_held_defers_a_stop_to_the_end_of_the_block():
    previous = signal.signal(signal.SIGTERM, on_signal)
    ran = []
    try:
        with pytest.raises(Stopped):
            with held():
                with held():
                    os.kill(os.getpid(), signal.SIGTERM)
                    ran.append("inner")
                ran.append("outer")  # the outermost block decides
            ran.append("after")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert ran == ["inner", "outer"]


@pytest.mark.skipif(not proctree.HAS_PROC, reason="reads the process tree from /proc")
def test_kill_9_while_grading_leaves_no_process_and_no_sandbox_files(tmp_path):
    """SIGKILL to a process grading in a pool while a sandboxed program runs: every process it
    started ends (the pool's workers, the fork server, the resource tracker and the sandboxed
    program), its stdout reaches end-of-file, and the sandbox's files are removed. The workers used
    to wait on their queue forever, holding the killed command's output open."""
    import glob
    import time

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TMPDIR": str(tmp)}
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("killed_while_grading.py"))],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    tree: set[int] = set()
    try:
        t0 = time.monotonic()
        while not glob.glob(f"{tmp}/dasd-sbx-*/run/started") and proc.poll() is None and time.monotonic() - t0 < 120:
            time.sleep(0.05)
        assert proc.poll() is None and glob.glob(f"{tmp}/dasd-sbx-*/run/started"), proc.stdout.read().decode()
        tree = proctree.descendants(proc.pid)
        assert len(tree) >= 4, tree  # two workers, the fork server, the sandboxed program (and its launcher)
        proc.kill()
        proc.wait()
        left = proctree.left_alive(tree)
        assert not left, [Path(f"/proc/{p}/cmdline").read_bytes()[:120] for p in left if proctree.alive(p)]
        out = proc.stdout.read().decode()  # returns: nothing holds the killed command's output open
        assert "Traceback" not in out, out
        assert not list(tmp.glob("dasd-sbx-*")), list(tmp.iterdir())
    finally:
        proctree.kill_all((proc.pid, *tree))
