"""Two CPU processes (gloo) give the same losses as one process with the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import make_pool as _pool


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(path: Path, base: str, data: Path, micro_batch: int, grad_accum: int) -> Path:
    cfg = {"base_model": base, "context": 256, "micro_batch": micro_batch, "grad_accum": grad_accum, "lr": 2e-3,
           "min_lr": 2e-4, "report_to": "none",
           "stages": [{"name": "s1", "data": str(data), "init": "base", "max_steps": 3}]}
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_two_processes_equal_one_process_with_same_global_batch(tiny_lm_dir, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _pool()))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    one = _config(tmp_path / "one.yaml", tiny_lm_dir, data, micro_batch=1, grad_accum=2)
    two = _config(tmp_path / "two.yaml", tiny_lm_dir, data, micro_batch=1, grad_accum=1)
    subprocess.run([sys.executable, "-m", "dasd.train", "--config", str(one), "--out", str(tmp_path / "o1")],
                   check=True, env=env, timeout=600)
    subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                    "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                    "--main_process_port", str(_free_port()),
                    "-m", "dasd.train", "--config", str(two), "--out", str(tmp_path / "o2")],
                   check=True, env=env, timeout=600)
    c1 = [json.loads(x) for x in (tmp_path / "o1/s1/curve.jsonl").read_text().splitlines()]
    c2 = [json.loads(x) for x in (tmp_path / "o2/s1/curve.jsonl").read_text().splitlines()]
    assert [r["step"] for r in c1] == [r["step"] for r in c2] == [1, 2, 3]
    for a, b in zip(c1, c2):
        assert a["tokens"] == b["tokens"] and a["loss_tokens"] == b["loss_tokens"]
        assert abs(a["loss"] - b["loss"]) < 1e-5
