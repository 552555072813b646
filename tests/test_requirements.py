"""The pinned install sets: exact pins that agree with each other, and (slow) that pip's resolver accepts them.

The slow checks run ``pip install --dry-run --ignore-installed --report`` against the package index with this
machine's pip configuration switched off (no local wheel folders, no constraints), so they resolve what a GPU
machine gets, without installing anything. pip downloads the wheels it reads metadata from (several GB for the
CUDA sets) into a temporary folder.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)$")


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path) -> dict[str, str]:
    """``{canonical name: version}`` of a requirements file holding only exact pins (and ``-r`` includes)."""
    pins: dict[str, str] = {}
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-r "):
            for name, version in read_pins(path.parent / line[3:].strip()).items():
                assert name not in pins, f"{path.name}:{lineno}: {name} pinned twice"
                pins[name] = version
            continue
        m = PIN.match(line)
        assert m, f"{path.name}:{lineno}: not an exact pin: {line!r}"
        name = canon(m.group(1))
        assert name not in pins, f"{path.name}:{lineno}: {name} pinned twice"
        pins[name] = m.group(2)
    return pins


def test_sets_are_exact_pins_and_agree_with_pyproject():
    base = read_pins(ROOT / "requirements.txt")
    gpu = read_pins(ROOT / "requirements-gpu.txt")
    flash = read_pins(ROOT / "requirements-gpu-flash.txt")
    vllm = read_pins(ROOT / "requirements-vllm.txt")
    assert {k: gpu[k] for k in base} == base  # the GPU set is requirements.txt plus additions
    assert set(flash) == {"flash-attn"} and "flash-attn" not in gpu
    assert gpu["torch"] == base["torch"] and "vllm" not in gpu
    # vLLM's own set needs another torch and transformers: that is why it is a separate environment.
    assert vllm["vllm"] == "0.33.0" and (vllm["torch"], vllm["transformers"]) != (base["torch"], base["transformers"])

    lf = read_pins(ROOT / "requirements-llamafactory.txt")  # LLaMA-Factory's own venv (installed --no-deps)
    assert lf["llamafactory"] == "0.9.5" and lf["torch"] == base["torch"]
    assert "torchvision" not in lf and "torchaudio" not in lf  # no build of them for the CPU torch

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra, deps in project["optional-dependencies"].items():
        wanted += deps
    for dep in wanted:
        m = PIN.match(dep.replace(" ", ""))
        assert m, f"pyproject.toml: {dep!r} is not an exact pin"
        name = canon(m.group(1))
        assert gpu.get(name) == m.group(2), f"pyproject.toml pins {dep}, requirements-gpu.txt has {gpu.get(name)}"


def _index_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=10).close()
        return True
    except OSError:
        return False


def _dry_run(tmp_path: Path, *args: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k == "PIP_CERT"}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", FLASH_ATTENTION_SKIP_CUDA_BUILD="TRUE")
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
           "--report", str(report), *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, f"pip's resolver refused {args}:\n{proc.stderr[-4000:]}"
    installs = json.loads(report.read_text())["install"]
    return {canon(i["metadata"]["name"]): i["metadata"]["version"] for i in installs}


@pytest.mark.slow
@pytest.mark.skipif(not _index_reachable(), reason="needs the package index (pypi.org)")
def test_resolver_accepts_the_gpu_set(tmp_path):
    # flash-attn ships only its source and imports torch to build: resolve it without build isolation, against
    # the torch of this interpreter, exactly as requirements-gpu-flash.txt says to install it.
    pytest.importorskip("torch")
    chosen = _dry_run(tmp_path, "--no-build-isolation", "-r", "requirements-gpu.txt", "-r", "requirements-gpu-flash.txt")
    wanted = read_pins(ROOT / "requirements-gpu.txt") | read_pins(ROOT / "requirements-gpu-flash.txt")
    assert chosen == wanted  # the pins are the whole closure: pip adds nothing and changes nothing


@pytest.mark.slow
@pytest.mark.skipif(not _index_reachable(), reason="needs the package index (pypi.org)")
def test_resolver_accepts_the_vllm_set(tmp_path):
    chosen = _dry_run(tmp_path, "-r", "requirements-vllm.txt")
    assert chosen == read_pins(ROOT / "requirements-vllm.txt")
