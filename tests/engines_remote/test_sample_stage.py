"""The sample stage with `teacher.kind: openai` against a faulty server: complete, once each, resumable."""

from __future__ import annotations

import json

from dasd.config import load_config
from dasd.engines.server import Faults
from dasd.stages.sample import run_sample
from dasd.store import RunStore


def test_sample_stage_through_openai(serve, tiny_lm_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Compute {i} + {i + 1}."}) + "\n" for i in range(4)))
    with serve(faults=Faults(rate_429=0.15, rate_500=0.15, rate_drop=0.05, seed=2)) as srv:
        cfg = load_config(None, [
            f"run_dir={tmp_path / 'run'}", f"data.prompts={prompts}", "teacher.kind=openai", "teacher.model=tiny",
            f"teacher.openai.base_urls=[{srv.base_url}]", "teacher.openai.backoff_s=0.01", "teacher.openai.max_retries=30",
            "sample.k=2", "sample.max_tokens=10", "sample.temperatures=[0.6, 1.0]",
        ])
        counts = run_sample(cfg)
        again = run_sample(cfg)
    assert counts["T0.6"]["samples"] == counts["T1"]["samples"] == 8
    assert again["T0.6"]["new"] == again["T1"]["new"] == 0
    store = RunStore.open(tmp_path / "run")
    for pool in ("T0.6", "T1"):
        recs = list(store.read("sample", f"pool-{pool}"))
        assert len(recs) == len({r["id"] for r in recs}) == 8
        for r in recs:
            t = r["teacher"]
            assert t["logprob_mode"] == "raw" and len(t["offsets"]) == len(t["logprobs"]) > 0
            assert all(0 <= s <= e <= len(r["text"]) for s, e in t["offsets"])
