"""The fault suite (`make test-slow`): `dasd sample` through the openai engine against the stand-in
server injecting every fault it knows at once (429 with Retry-After, 5xx, dropped connections,
timeouts, malformed bodies, NaN/-Infinity log-probs). Nothing is lost or duplicated: the samples
equal a fault-free run's (log-probs to float noise) once the quarantined ones are asked again;
every retry is counted by kind in the manifest."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from dasd.engines.server import Faults

FAULTS = dict(rate_429=0.1, rate_500=0.1, rate_drop=0.08, rate_slow=0.06, slow_seconds=1.5, rate_malformed=0.08,
              rate_nonfinite=0.08, retry_after="1", seed=11)


def dasd_sample(tmp_path, url, run):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Compute {i} + {i + 2}."}) + "\n" for i in range(12)))
    cfg = tmp_path / f"{run}.yaml"
    cfg.write_text(yaml.safe_dump({
        "run_dir": str(tmp_path / run), "data": {"prompts": str(prompts)},
        "teacher": {"kind": "openai", "model": "tiny", "openai": {"base_urls": [url], "timeout_s": 1.0, "backoff_s": 0.01,
                                                                  "backoff_max_s": 1.0, "max_retries": 50}},
        "sample": {"k": 2, "max_tokens": 10, "temperatures": [0.6, 1.0]},
    }))
    out = subprocess.run([sys.executable, "-m", "dasd", "sample", str(cfg)], capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr[-3000:]
    return out.stderr


def samples(run):
    """Sample records on disk by id (a duplicate would fail), log-probs apart (the server batches
    whatever is in flight together, so they match to float noise, not bit for bit)."""
    import pyarrow.parquet as pq

    out, lps = {}, {}
    for p in (run / "sample").glob("pool-*.parquet"):
        for r in pq.read_table(p).to_pylist():
            assert r["id"] not in out
            lps[r["id"]] = r.pop("teacher_logprobs")
            out[r["id"]] = r
    return out, lps


@pytest.mark.slow
def test_every_server_fault_at_once_loses_and_duplicates_nothing(serve, tmp_path):
    with serve() as srv:
        dasd_sample(tmp_path, srv.base_url, "ref")
    with serve(faults=Faults(**FAULTS)) as srv:
        err = dasd_sample(tmp_path, srv.base_url, "faulty")
        injected = dict(srv.engine_server.faults.counts)
        manifest = json.loads((tmp_path / "faulty" / "manifest.json").read_text())
        srv.engine_server.faults = Faults()  # the server heals; the quarantined samples are asked again
        dasd_sample(tmp_path, srv.base_url, "faulty")
    assert set(injected) == {"429", "500", "drop", "slow", "malformed", "nonfinite"}, injected
    faults = manifest["stages"]["sample"]["faults"]
    assert 0 < faults["nonfinite"] <= injected["nonfinite"]
    assert faults["by_kind"]["429"] == injected["429"] and faults["by_kind"]["5xx"] == injected["500"]
    assert faults["by_kind"]["malformed"] == injected["malformed"] and faults["by_kind"]["timeout"] >= injected["slow"]
    assert faults["by_kind"]["connection"] >= injected["drop"]
    assert faults["seconds_lost"] >= injected["429"]  # Retry-After: 1 honoured
    assert f"{faults['retries']} retries of" in err and "quarantined" in err
    (ref, ref_lp), (got, got_lp) = samples(tmp_path / "ref"), samples(tmp_path / "faulty")
    assert len(ref) == 48 and got == ref
    for sid, lp in ref_lp.items():
        assert got_lp[sid] == pytest.approx(lp, abs=1e-4)
