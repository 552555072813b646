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
    assert "| FAILED |" not in table and "| passed |" in table
    assert [ln for ln in table.splitlines() if "vllm == hf" in ln][0].endswith("| skipped (needs CUDA, device is cpu) |") \
        or "skipped (vllm not installed)" in table


def _module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check_under_test", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_skipped_rows_say_why_and_never_count_as_passed():
    gc = _module()
    gc.check_vllm("cpu")  # vllm missing, or no CUDA: either way it cannot run here
    (row,) = gc.ROWS
    assert row[0] == "vllm == hf" and row[3] in ("skipped (vllm not installed)", "skipped (needs CUDA, device is cpu)")
    text, status = gc.summary(gc.ROWS)
    assert status == 1 and text.endswith("0 passed, 0 failed, 1 skipped")  # nothing ran: not a success
    assert f"| {row[3]} |" in text and "| passed |" not in text
    gc.row("a", "1", "<= 2", True)
    text, status = gc.summary(gc.ROWS)
    assert status == 0 and text.endswith("1 passed, 0 failed, 1 skipped")
    gc.row("b", "3", "<= 2", False)
    text, status = gc.summary(gc.ROWS)
    assert status == 1 and text.endswith("1 passed, 1 failed, 1 skipped") and "| FAILED |" in text


def test_a_run_that_skips_everything_is_not_a_pass():
    p = _run("--device", "cpu", "--skip", "scoring,training,memory")
    assert p.returncode == 1, p.stdout + p.stderr
    assert "0 passed, 0 failed, 4 skipped" in p.stdout and p.stdout.count("| not run | - | skipped (--skip) |") == 3


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
