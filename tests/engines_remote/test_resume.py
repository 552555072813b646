"""A sampling job killed mid-way and restarted against the same server: complete, no duplicates."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dasd.engines import GenerateRequest
from dasd.engines.openai import sample_seed
from dasd.engines.server import Faults
from dasd.jsonl import read_jsonl

from . import sample_job

JOB = Path(sample_job.__file__)


def on_disk(out: Path) -> list[dict]:
    return [r for p in sorted(out.glob("samples-*.jsonl")) for r in read_jsonl(p)]


def run_job(url: str, out: Path) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.Popen([sys.executable, str(JOB), url, str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_killed_job_resumes_without_duplicates(serve, ref_engine, tiny_lm_dir, tmp_path):
    out = tmp_path / "job"
    total = sample_job.N_PROMPTS * sample_job.K
    with serve(faults=Faults(rate_slow=1.0, slow_seconds=0.25)) as srv:  # every answer takes >= 0.25 s
        job = run_job(srv.base_url, out)
        deadline = time.monotonic() + 120
        while len(on_disk(out)) < 4:
            assert job.poll() is None, job.communicate()[0]
            assert time.monotonic() < deadline, "the job wrote nothing"
            time.sleep(0.05)
        job.send_signal(signal.SIGKILL)
        job.wait(timeout=30)
        first = len(on_disk(out))
        assert 4 <= first < total  # really interrupted
        job = run_job(srv.base_url, out)
        log, _ = job.communicate(timeout=180)
        assert job.returncode == 0, log
    records = on_disk(out)
    assert len(records) == total and len({r["id"] for r in records}) == total
    assert f"done: {total - first} new" in log
    # resumed == uninterrupted: each sample is what the hf engine draws for its seed
    reqs = {r.id: r for r in sample_job.requests()}
    for rec in records:
        req = reqs[rec["prompt_id"]]
        one = GenerateRequest(id=req.id, messages=req.messages, n=1, temperature=req.temperature,
                              top_p=req.top_p, max_tokens=req.max_tokens, seed=sample_seed(req.seed, rec["index"]))
        want = ref_engine.generate([one])[0][0]
        assert rec["text"] == want.text and rec["logprobs"] == pytest.approx(want.logprobs, abs=1e-5)
