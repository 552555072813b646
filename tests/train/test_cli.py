"""`python -m dasd.train`, what `accelerate launch` and `torchrun` start on every process, as a user
runs it: what it prints on stderr."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import yaml

from .conftest import make_pool

# transformers' own progress bars: loading a model's weights, writing a model's shards
HF_BARS = ("Loading weights", "Writing model shards", "Loading checkpoint shards", "it/s]")


def _setup(tmp_path, steps: int = 3):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in make_pool()), encoding="utf-8")
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump({"base_model": "toy:student", "context": 256, "micro_batch": 1, "grad_accum": 1,
                                   "report_to": "none", "save_every": 2,
                                   "stages": [{"name": "s1", "data": str(data), "init": "base", "max_steps": steps}]}))
    return cfg, {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _progress_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("train s1: ")]


def test_stderr_that_is_not_a_terminal_gets_log_lines_and_no_progress_bars(tmp_path):
    """transformers drew its bars (loading the weights, writing the final model's shards) with
    carriage returns into a log file; `dasd train` turns them off, `python -m dasd.train` did not."""
    cfg, env = _setup(tmp_path)
    r = subprocess.run([sys.executable, "-m", "dasd.train", "--config", str(cfg), "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr and not [b for b in HF_BARS if b in r.stderr], r.stderr
    assert [line.split(",")[0] for line in _progress_lines(r.stderr)] == [
        "train s1: 1/3 step (33%)", "train s1: 2/3 step (67%)", "train s1: 3/3 step (100%)"]
    assert r.stdout.startswith("s1: 3 steps, final loss ")


@pytest.mark.slow
def test_two_processes_show_the_progress_of_the_main_one_only(tmp_path):
    """Under `torchrun` with two processes, each loaded the model with its own bar; the step progress
    is the main process's alone."""
    cfg, env = _setup(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        str(port), "-m", "dasd.train", "--config", str(cfg), "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr and not [b for b in HF_BARS if b in r.stderr], r.stderr
    assert [line.split(",")[0] for line in _progress_lines(r.stderr)] == [
        "train s1: 1/3 step (33%)", "train s1: 2/3 step (67%)", "train s1: 3/3 step (100%)"]
    assert r.stdout.count("s1: 3 steps, final loss ") == 2  # each process says how its run ended
