"""`dasd sample` through the openai engine against a misbehaving server (issue 15, items 4, 5, 6):
non-finite log-probs are quarantined and the rest kept, retries are printed and kept in the
manifest, and resuming with a later temperature pool already complete works."""

from __future__ import annotations

import json

from dasd.config import load_config
from dasd.engines.server import Faults
from dasd.stages.sample import run_sample
from dasd.store import RunStore


def config(tmp_path, url, run="run"):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Compute {i} + {i + 1}."}) + "\n" for i in range(4)))
    return load_config(None, [
        f"run_dir={tmp_path / run}", f"data.prompts={prompts}", "teacher.kind=openai", "teacher.model=tiny",
        f"teacher.openai.base_urls=[{url}]", "teacher.openai.backoff_s=0.01", "teacher.openai.backoff_max_s=0.05",
        "teacher.openai.max_retries=40", "teacher.openai.timeout_s=1.0",
        "sample.k=2", "sample.max_tokens=8", "sample.temperatures=[0.6, 1.0]",
    ])


def test_resume_with_a_later_pool_already_complete(serve, tmp_path):
    with serve() as srv:
        cfg = config(tmp_path, srv.base_url)
        run_sample(cfg)
        for shard in (tmp_path / "run" / "sample").glob("pool-T0.6-*.parquet"):
            shard.unlink()  # the first pool lost (as if interrupted), the later one complete
        again = run_sample(cfg)
    assert again["T0.6"]["new"] == 8 and again["T1"]["new"] == 0 and again["T1"]["samples"] == 8


def test_non_finite_log_probs_are_quarantined_and_the_rest_kept(serve, tmp_path, capsys):
    with serve(faults=Faults(rate_nonfinite=0.4, seed=5)) as srv:
        cfg = config(tmp_path, srv.base_url)
        counts = run_sample(cfg)
        spoiled = srv.engine_server.faults.counts["nonfinite"]
        store = RunStore(cfg.run_dir)
        rejects = list(store.read("sample", "rejects"))
        assert spoiled > 0 and sum(c["quarantined"] for c in counts.values()) == spoiled == len(rejects)
        assert all(c["samples"] + c["quarantined"] == 8 for c in counts.values())
        assert all("non-finite teacher log-prob" in r["reason"] for r in rejects)
        assert store.stage_info("sample")["faults"]["nonfinite"] == spoiled
        assert "quarantined" in capsys.readouterr().err
        srv.engine_server.faults = Faults()  # the server heals: the next run asks again for what was quarantined
        again = run_sample(cfg)
    assert again["T0.6"]["samples"] == again["T1"]["samples"] == 8
    assert sum(c["new"] for c in again.values()) == spoiled


def test_retries_are_printed_and_kept_in_the_manifest(serve, tmp_path, capsys):
    faults = Faults(rate_429=0.15, rate_500=0.15, rate_drop=0.1, rate_malformed=0.1, retry_after="0", seed=7)
    with serve(faults=faults) as srv:
        cfg = config(tmp_path, srv.base_url)
        counts = run_sample(cfg)
        injected = dict(srv.engine_server.faults.counts)
    assert all(c["samples"] == 8 for c in counts.values())
    info = RunStore.open(cfg.run_dir).stage_info("sample")["faults"]
    assert info["retries"] == sum(injected.values()) and info["requests"] == 16 + info["retries"]
    assert info["by_kind"] == {k: v for k, v in {"429": injected.get("429", 0), "5xx": injected.get("500", 0),
                                                   "connection": injected.get("drop", 0),
                                                   "malformed": injected.get("malformed", 0)}.items() if v}
    assert info["seconds_lost"] >= 0
    assert f"{info['retries']} retries of {info['requests']} requests" in capsys.readouterr().err


def test_an_engine_handed_to_two_runs_counts_each_request_once(serve, tmp_path):
    """The engine's counts keep growing; each stage run records only what it added (``EngineStats.take``)."""
    from dasd.runs import open_engine, record_faults

    with serve(faults=Faults(rate_429=0.2, retry_after="0", seed=3)) as srv:
        cfg = config(tmp_path, srv.base_url)
        engine = open_engine(cfg.teacher)
        run_sample(cfg, engine=engine)
        first = RunStore.open(cfg.run_dir).stage_info("sample")["faults"]
        assert record_faults(RunStore(cfg.run_dir), "sample", [engine]) == first  # nothing new since: nothing added
        for shard in (tmp_path / "run" / "sample").glob("pool-T0.6-*.parquet"):
            shard.unlink()
        run_sample(cfg, engine=engine)  # a new run of the stage with the same engine
        second = RunStore.open(cfg.run_dir).stage_info("sample")["faults"]
    assert first["retries"] > 0 and first["requests"] == 16 + first["retries"]
    assert second["requests"] == 8 + second["retries"]  # this run's requests only
    assert engine.stats["requests"] == first["requests"] + second["requests"]
