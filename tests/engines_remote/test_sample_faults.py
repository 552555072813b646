"""`dasd sample` through the openai engine against a misbehaving server (issue 15, items 4, 5, 6):
non-finite log-probs are quarantined and the rest kept, retries are printed and kept in the
manifest, and resuming with a later temperature pool already complete works."""

from __future__ import annotations

import json
import re

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


LONG = "Compute 3 + 4 then times 2. " * 6  # over 100 tokens with the tiny model's template


def config_with(tmp_path, url, extra_rows=(), overrides=(), run="run"):
    """``config`` with more prompt rows and overrides."""
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"id": f"p{i}", "prompt": f"Compute {i} + {i + 1}."} for i in range(4)] + list(extra_rows)
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return load_config(None, [
        f"run_dir={tmp_path / run}", f"data.prompts={prompts}", "teacher.kind=openai", "teacher.model=tiny",
        f"teacher.openai.base_urls=[{url}]", "teacher.openai.backoff_s=0.01", "teacher.openai.backoff_max_s=0.05",
        "teacher.openai.max_retries=40", "teacher.openai.timeout_s=5.0",
        "sample.k=2", "sample.max_tokens=8", "sample.temperatures=[0.6, 1.0]", *overrides,
    ])


def test_a_prompt_the_server_refuses_as_too_long_is_quarantined_and_the_rest_sampled(serve, tiny_lm_dir, tmp_path, capsys):
    """vLLM answers 400 'maximum context length' for a prompt that does not fit: that prompt is
    quarantined as too long (the server's words as the reason), the others are sampled, the stage
    ends normally, and a rerun does not ask again until the teacher's context changed."""
    from dasd.engines import EngineConfig, make_engine
    from dasd.stages.sample import _context_key

    short = make_engine(EngineConfig(model=tiny_lm_dir, device="cpu", batch_size=8, max_model_len=100))
    with serve(engine=short) as srv:
        cfg = config_with(tmp_path, srv.base_url, [{"id": "long", "prompt": LONG}])
        counts = run_sample(cfg)
        assert counts["T0.6"]["samples"] == counts["T1"]["samples"] == 8  # the 4 short prompts, k=2
        assert counts["T0.6"]["quarantined"] == counts["T0.6"]["refused_too_long"] == 1
        # not asked again at the next temperature, and counted there too: that pool lacks its samples as well
        assert counts["T1"]["quarantined"] == counts["T1"]["refused_too_long"] == 1
        store = RunStore.open(cfg.run_dir)
        assert store.stage_info("sample")["complete"]
        (rej,) = list(store.read("sample", "rejects"))
        assert rej["id"] == "too-long-long" and rej["context"] == _context_key(cfg)
        assert rej["reason"].startswith("the teacher's server refused it as longer than its context: request 'long' sample")
        assert re.search(r"HTTP 400: .*prompt has \d+ tokens, max_model_len is 100", rej["reason"])
        assert "1 prompt(s) refused by the teacher's server as longer than its context (e.g. long)" in capsys.readouterr().err
        served = srv.engine_server.stats["requests"]
        again = run_sample(cfg)
        assert again["T0.6"]["new"] == again["T1"]["new"] == 0
        assert again["T0.6"]["quarantined"] == again["T0.6"]["refused_too_long"] == 1  # still quarantined: counted
        assert srv.engine_server.stats["requests"] == served  # nothing asked again
        assert RunStore.open(cfg.run_dir).count("sample", "rejects") == 1
        # another max_tokens is another verdict for a server (it counts prompt + max_tokens): asked again
        # (pools drawn under the old cap are not sampled on: they are deleted first)
        bigger = config_with(tmp_path, srv.base_url, [{"id": "long", "prompt": LONG}], ["sample.max_tokens=6"], run="run")
        assert _context_key(bigger) != _context_key(cfg)
        RunStore.open(cfg.run_dir).remove_outputs("sample", ("pool-",))
        third = run_sample(bigger)
    assert third["T0.6"]["refused_too_long"] == 1 and third["T0.6"]["samples"] == 8


def test_any_other_client_error_still_stops_the_stage(serve, tmp_path):
    """Only a context-length refusal is a prompt's fault: a 404 (wrong model name) stops the stage
    with its one-line error and quarantines nothing."""
    import pytest

    from dasd.errors import DasdError

    with serve() as srv:
        cfg = config_with(tmp_path, srv.base_url, overrides=["teacher.model=nope"])
        with pytest.raises(DasdError, match=r"request 'p\d' sample \d: .*HTTP 404: model 'nope' not served here"):
            run_sample(cfg)
    assert RunStore.open(cfg.run_dir).count("sample", "rejects") == 0


def test_with_a_known_context_a_server_needs_room_for_max_tokens(serve, tiny_lm_dir, tmp_path):
    """teacher.max_model_len with the openai kind: a prompt is too long when prompt + max_tokens
    passes it (vLLM refuses that; the hf engine would only clip the generation), judged locally
    without asking; max_tokens that leaves no room for any prompt is a config error."""
    import pytest

    from dasd.engines import make_engine
    from dasd.errors import ConfigError

    from .conftest import openai_config

    tok = make_engine(openai_config(tiny_lm_dir, ["http://127.0.0.1:9/v1"]))

    def n_tokens(text):  # as the stage builds the prompt: the default system turn, then the user's
        msgs = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": text}]
        return len(tok.context_ids(msgs, None, "x"))

    n_long = n_tokens("Compute 3 + 4 then times 2.")
    n_short = max(n_tokens(f"Compute {i} + {i + 1}.") for i in range(4))
    assert n_short < n_long
    with serve() as srv:
        over = [f"teacher.tokenizer={tiny_lm_dir}", f"teacher.max_model_len={n_long + 8 - 1}"]
        cfg = config_with(tmp_path, srv.base_url, [{"id": "long", "prompt": "Compute 3 + 4 then times 2."}], over)
        counts = run_sample(cfg)
        served = srv.engine_server.stats["requests"]
        with pytest.raises(ConfigError, match=r"sample.max_tokens \(8\) leaves no room for a prompt in teacher.max_model_len \(8\)"):
            run_sample(config_with(tmp_path, srv.base_url, overrides=[f"teacher.tokenizer={tiny_lm_dir}",
                                                                       "teacher.max_model_len=8"], run="run2"))
    assert not (tmp_path / "run2").exists()  # refused before the stage began
    assert counts["T0.6"]["samples"] == 8 and counts["T0.6"]["quarantined"] == 1 and counts["T0.6"]["refused_too_long"] == 0
    assert served == 16  # 4 prompts x k=2 x 2 temperatures: the long one was never sent
    (rej,) = list(RunStore.open(cfg.run_dir).read("sample", "rejects"))
    assert rej["reason"] == (f"prompt has {n_long} tokens, the teacher's context is {n_long + 7} (engine max_model_len) "
                             "and the server counts the prompt + sample.max_tokens (8)")


def test_a_failed_stage_keeps_its_retries_in_the_manifest(serve, tmp_path):
    """Retries and seconds lost before a stage fails reach manifest.json (they were recorded only at
    the end of a stage that finished); the stage's own error is the one raised."""
    import random

    import pytest

    from dasd.errors import DasdError

    assert random.Random(11).random() < 0.8  # the first request drawn is a 429
    with serve(faults=Faults(rate_429=0.8, retry_after="0", seed=11)) as srv:
        cfg = config_with(tmp_path, srv.base_url, overrides=["teacher.model=nope", "teacher.openai.concurrency=1"])
        with pytest.raises(DasdError, match=r"HTTP 404: model 'nope' not served here"):
            run_sample(cfg)
        injected = srv.engine_server.faults.counts["429"]
    info = RunStore.open(cfg.run_dir).stage_info("sample")
    assert not info["complete"]
    assert info["faults"]["retries"] == info["faults"]["by_kind"]["429"] == injected > 0
    assert info["faults"]["requests"] == injected + 1 and info["faults"]["seconds_lost"] >= 0


class _Asked:
    """The server's real engine, keeping the last message of every request it is asked to sample for."""

    def __init__(self, engine):
        self.engine, self.prompts = engine, []

    def generate(self, requests):
        self.prompts += [r.messages[-1]["content"] for r in requests]
        return self.engine.generate(requests)

    def __getattr__(self, name):
        return getattr(self.engine, name)


class _Killed(Exception):
    pass


class _DiesAfterARefusal:
    """The stage's real openai engine, killed at the first sample it hands back after the server
    refused a request as too long (the stage has judged the refusal and taken that sample)."""

    def __init__(self, engine):
        self.engine = engine

    def generate_iter(self, requests, skip=None, too_long=None):
        from contextlib import closing

        refused = []

        def seen(r, err):
            refused.append(r)
            too_long(r, err)

        with closing(self.engine.generate_iter(requests, skip=skip, too_long=seen)) as it:
            for item in it:
                yield item
                if refused:
                    raise _Killed()

    def __getattr__(self, name):
        return getattr(self.engine, name)


def test_a_refusal_judged_before_a_crash_mid_pool_is_not_asked_again(serve, tiny_lm_dir, tmp_path):
    """A prompt the server refused as too long is quarantined as it is judged, not when its pool ends:
    a run killed later in the same pool keeps the verdict, the resumed run does not send the prompt to
    the server again (it used to: the verdicts of an unfinished pool were lost), and its counts are an
    uninterrupted run's."""
    import pytest

    from dasd.engines import EngineConfig, make_engine
    from dasd.runs import open_engine

    prompts = tmp_path / "prompts.jsonl"  # "long" first: refused before the short prompts are asked
    rows = [{"id": "long", "prompt": LONG}] + [{"id": f"p{i}", "prompt": f"Compute {i} + {i + 1}."} for i in range(4)]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def cfg_of(run):
        return load_config(None, [
            f"run_dir={tmp_path / run}", f"data.prompts={prompts}", "teacher.kind=openai", "teacher.model=tiny",
            f"teacher.openai.base_urls=[{srv.base_url}]", "teacher.openai.concurrency=1",
            "teacher.openai.backoff_s=0.01", "teacher.openai.timeout_s=5.0",
            "sample.k=2", "sample.max_tokens=8", "sample.temperatures=[0.6, 1.0]"])

    def without_new(counts):
        return {pool: {k: v for k, v in c.items() if k != "new"} for pool, c in counts.items()}

    asked = _Asked(make_engine(EngineConfig(model=tiny_lm_dir, device="cpu", batch_size=8, max_model_len=100)))
    with serve(engine=asked) as srv:
        want = without_new(run_sample(cfg_of("ref")))
        cfg = cfg_of("killed")
        asked.prompts.clear()
        with pytest.raises(_Killed):
            run_sample(cfg, engine=_DiesAfterARefusal(open_engine(cfg.teacher)))
        assert asked.prompts[0] == LONG and "Compute 0 + 1." in asked.prompts  # refused, then a sample of p0 came back
        assert [r["id"] for r in RunStore.open(cfg.run_dir).read("sample", "rejects")] == ["too-long-long"]
        asked.prompts.clear()
        again = run_sample(cfg)
    assert LONG not in asked.prompts  # the verdict was kept: not sent again
    assert len(asked.prompts) == 15  # the 16 samples of the 4 short prompts (k=2, 2 pools) but the one on disk
    assert {pool: c["new"] for pool, c in again.items()} == {"T0.6": 7, "T1": 8}
    assert without_new(again) == want
    assert want["T0.6"]["quarantined"] == want["T0.6"]["refused_too_long"] == 1 == want["T1"]["refused_too_long"]
    assert want["T0.6"]["samples"] == want["T1"]["samples"] == 8
    assert RunStore.open(cfg.run_dir).count("sample", "rejects") == 1
