"""`dasd sample` (the CLI, in its own process) killed with SIGKILL in the middle of a pool, with
requests in flight against a loopback server, some shards written and a writer's buffer not yet
flushed, then run again to the end, has what an uninterrupted run has: the same sample ids, texts,
token ids and log-probs, the same counts in the manifest, the same rejects, each record once, every
shard readable and no temp file; the resumed run asks the server only for what was lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import proctree
import pyarrow.parquet as pq
import pytest
import yaml

from dasd.engines.server import Faults

from .test_sample_faults import LONG

N_PROMPTS, K = 40, 4  # 160 samples a pool in shards of 64: the first is written long before the pool ends
TOTAL = 2 * N_PROMPTS * K  # two temperatures


def write_config(tmp_path: Path, url: str, tokenizer: str, run: str) -> Path:
    prompts = tmp_path / "prompts.jsonl"
    if not prompts.exists():  # first a prompt the server refuses as too long: judged before the first shard
        rows = [{"id": "long", "prompt": LONG}] + [{"id": f"p{i}", "prompt": f"Compute {i} + {i + 3}."}
                                                   for i in range(N_PROMPTS)]
        prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tmp_path / f"{run}.yaml"
    cfg.write_text(yaml.safe_dump({
        "run_dir": str(tmp_path / run), "data": {"prompts": str(prompts)},
        "teacher": {"kind": "openai", "model": "tiny", "tokenizer": tokenizer,
                    "openai": {"base_urls": [url], "token_ids": True, "concurrency": 8, "timeout_s": 10.0,
                               "backoff_s": 0.01, "backoff_max_s": 0.2, "max_retries": 20}},
        "sample": {"k": K, "max_tokens": 8, "temperatures": [0.6, 1.0]},
    }))
    return cfg


def dasd_sample(cfg: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dasd", "sample", str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "Traceback" not in out, out[-3000:]
    return out


def kill_when_written(proc: subprocess.Popen, *paths: Path) -> None:
    """SIGKILL ``proc`` as soon as every one of ``paths`` exists (polled: no guess of how long it takes);
    no process it started may outlive it."""
    deadline = time.monotonic() + 300  # a guard against a hang, not a time limit on anything
    while not all(p.exists() for p in paths):
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < deadline, f"{[p.name for p in paths]} not written"
        time.sleep(0.01)
    tree = proctree.descendants(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL and not proctree.left_alive(tree)


def samples(run: Path) -> dict[str, dict]:
    """Every sample on disk by id, read shard by shard (an id twice fails, an unreadable shard too)."""
    out: dict[str, dict] = {}
    for p in sorted((run / "sample").glob("pool-*.parquet")):
        for r in pq.read_table(p).to_pylist():
            assert r["id"] not in out, f"{r['id']} twice ({p.name})"
            out[r["id"]] = r
    return out


def rejects(run: Path) -> list[str]:
    """The ids of the quarantine records on disk, every line of every shard."""
    return [json.loads(line)["id"] for p in sorted((run / "sample").glob("rejects-*.jsonl"))
            for line in p.read_text().splitlines()]


def stage(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())["stages"]["sample"]


@pytest.mark.slow  # four runs of the CLI, two of them to the end: ~40 s on 2 cores
def test_sample_killed_mid_pool_twice_resumes_to_what_an_uninterrupted_run_has(serve, tiny_lm_dir, tmp_path):
    from dasd.engines import EngineConfig, make_engine

    short = make_engine(EngineConfig(model=tiny_lm_dir, device="cpu", batch_size=8, max_model_len=100))
    run = tmp_path / "killed"
    d = run / "sample"
    # every answer waits a little (asynchronously, on the server): requests are in flight when the kill comes
    with serve(engine=short, faults=Faults(rate_slow=1.0, slow_seconds=0.05)) as srv:
        finish(dasd_sample(write_config(tmp_path, srv.base_url, tiny_lm_dir, "ref")))
        cfg = write_config(tmp_path, srv.base_url, tiny_lm_dir, "killed")
        # killed once when the first pool's first shard (and the refusal judged before it) is on disk ...
        kill_when_written(dasd_sample(cfg), d / "pool-T0.6-00000.parquet", d / "rejects-00000.jsonl")
        first = samples(run)
        assert 64 <= len(first) < TOTAL and rejects(run) == ["too-long-long"] and not stage(run)["complete"]
        # ... and again, resumed, when it wrote a shard of the second pool
        kill_when_written(dasd_sample(cfg), d / f"pool-T1-{len(list(d.glob('pool-T1-*.parquet'))):05d}.parquet")
        second = samples(run)
        assert len(first) < len(second) < TOTAL and not stage(run)["complete"]
        assert all(second[sid] == first[sid] for sid in first)  # what was on disk stays as it was
    # the server goes on answering the requests a killed run left in flight: the last run gets its own
    # (the same engine, another port), to count what it asks
    with serve(engine=short) as srv:
        finish(dasd_sample(write_config(tmp_path, srv.base_url, tiny_lm_dir, "killed")))
        asked = srv.engine_server.stats["requests"]
    ref, got = samples(tmp_path / "ref"), samples(run)
    assert len(ref) == TOTAL and set(got) == set(ref)
    assert asked == TOTAL - len(second)  # only what was missing: the refused prompt was not sent again
    for sid, want in ref.items():  # the server batches what is in flight: log-probs equal to float noise
        have, want = dict(got[sid]), dict(want)
        assert have.pop("teacher_logprobs") == pytest.approx(want.pop("teacher_logprobs"), abs=1e-4), sid
        assert have == want, sid  # text, token ids, offsets, finish reason, ...
    assert rejects(run) == rejects(tmp_path / "ref") == ["too-long-long"]  # the same rejects, once
    want_info, info = stage(tmp_path / "ref"), stage(run)
    assert info["complete"] and set(info["counts"]) == set(want_info["counts"]) == {"T0.6", "T1"}
    for pool, temp in (("T0.6", 0.6), ("T1", 1.0)):
        want, have = dict(want_info["counts"][pool]), dict(info["counts"][pool])
        assert have.pop("mean_token_logprob") == pytest.approx(want.pop("mean_token_logprob"), abs=1e-5)
        assert want.pop("new") == N_PROMPTS * K
        assert have.pop("new") == sum(got[sid]["temperature"] == temp for sid in set(got) - set(second))
        assert have == want
        assert want["samples"] == N_PROMPTS * K and want["quarantined"] == want["refused_too_long"] == 1
    assert [p.name for p in run.rglob(".*") if p.name != ".lock"] == []  # no temp file left
