"""benchmarks/gpu_check.py, the one-script check of the GPU paths: a CPU dry run (slow) proves the
script itself works before a GPU is lent; on a CUDA machine (gpu marker) every check must pass."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=1800)


@pytest.mark.slow
def test_dry_run_on_cpu_passes_every_check():
    p = _run("--device", "cpu", "--tokens", "1024", "--steps", "2")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    table = p.stdout[p.stdout.index("| check |"):]
    for check in ("generate == score", "score fp32 vs cpu", "score bf16 vs fp32", "train bf16+ckpt step 1",
                  "long score memory", "vllm == hf"):
        assert check in table
    assert "| NO |" not in table


def test_missing_cuda_is_exit_2_with_a_clear_line():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    p = _run("--device", "cuda")
    assert p.returncode == 2 and "no CUDA device" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_every_gpu_path_passes_on_cuda():
    p = _run("--device", "cuda")
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-3000:]
