"""`dasd sample` on a real tiny model: pools per temperature, resume equals uninterrupted, bad prompts quarantined."""

from __future__ import annotations

import json

import pytest

from dasd.config import load_config
from dasd.runs import open_engine
from dasd.stages.sample import run_sample
from dasd.store import RunStore


@pytest.fixture()
def prompts_file(tmp_path):
    rows = [{"id": f"p{i}", "prompt": f"Compute {i} + {i + 1}."} for i in range(5)]
    lines = [json.dumps(r) for r in rows]
    lines.insert(2, "{broken json")
    lines.append(json.dumps({"id": "nomsg"}))
    p = tmp_path / "prompts.jsonl"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def config(tmp_path, run, prompts_file, model):
    return load_config(None, [
        f"run_dir={tmp_path / run}", f"data.prompts={prompts_file}", f"teacher.model={model}",
        "sample.k=2", "sample.max_tokens=12", "sample.batch_prompts=2", "sample.temperatures=[0.6, 1.0]",
    ])


class Crash(Exception):
    pass


class CrashAfter:
    """A real engine that dies after ``n`` generate calls (to simulate a crash mid-stage)."""

    def __init__(self, engine, n):
        self.engine, self.n = engine, n

    def generate(self, reqs):
        if self.n == 0:
            raise Crash()
        self.n -= 1
        return self.engine.generate(reqs)


def records(run):
    store = RunStore.open(run)
    return {pool: sorted((r["id"], r["text"], tuple(r["teacher"]["logprobs"])) for r in store.read("sample", f"pool-{pool}"))
            for pool in ("T0.6", "T1")}


def test_sample_pools_resume_and_rejects(tmp_path, prompts_file, tiny_lm_dir):
    cfg = config(tmp_path, "full", prompts_file, tiny_lm_dir)
    counts = run_sample(cfg)
    assert counts["T0.6"]["samples"] == 10 and counts["T1"]["samples"] == 10
    full = records(tmp_path / "full")
    store = RunStore.open(tmp_path / "full")
    s = next(store.read("sample", "pool-T0.6"))
    assert s["teacher"]["logprob_mode"] == "raw" and s["model"] == tiny_lm_dir
    assert len(s["teacher"]["offsets"]) == len(s["teacher"]["logprobs"]) == len(s["teacher"]["token_ids"])
    rejects = list(store.read("sample", "rejects"))
    assert {r["where"] for r in rejects} == {f"{prompts_file}:3", f"{prompts_file}:7"}
    assert store.stage_info("sample")["complete"]

    cfg2 = config(tmp_path, "crashed", prompts_file, tiny_lm_dir)
    engine = open_engine(cfg2.teacher)
    with pytest.raises(Crash):
        run_sample(cfg2, engine=CrashAfter(engine, 3))
    partial = records(tmp_path / "crashed")
    assert 0 < sum(map(len, partial.values())) < 20
    assert not RunStore.open(tmp_path / "crashed").stage_info("sample")["complete"]
    run_sample(cfg2, engine=engine)
    assert records(tmp_path / "crashed") == full  # resumed == uninterrupted, nothing twice
