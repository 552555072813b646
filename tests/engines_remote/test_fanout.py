"""Ray fan-out: on a local Ray instance with two CPU replicas, score/sample equal one process."""

from __future__ import annotations

import importlib.util

import pytest

from dasd.engines import EngineConfig, GenerateRequest, ScoreRequest, make_engine
from dasd.errors import DasdError

HAVE_RAY = importlib.util.find_spec("ray") is not None


def test_missing_ray_is_a_clear_error(tiny_lm_dir, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without ray sees: ImportError
    with pytest.raises(DasdError, match=r"pip install 'dasd\[ray\]'"):
        make_engine(EngineConfig(model=tiny_lm_dir, ray={"address": "local"}))


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_RAY, reason="needs the ray extra (pip install 'dasd[ray]')")
def test_ray_two_replicas_equal_one_process(tiny_lm_dir, ref_engine):
    from dasd.prompts import toy_prompts

    prompts = toy_prompts(10, seed=0, split="train", system_prompt=None)
    reqs = [GenerateRequest(id=p["id"], messages=p["messages"], n=2, temperature=1.0, max_tokens=12, seed=k)
            for k, p in enumerate(prompts)]
    want_gen = ref_engine.generate(reqs)
    scores = [ScoreRequest(id=g.request_id, messages=r.messages, continuation=g.text)
              for r, gens in zip(reqs, want_gen) for g in gens]
    want = ref_engine.score(scores)
    eng = make_engine(EngineConfig(model=tiny_lm_dir, device="cpu", batch_size=8,
                                   ray={"address": "local", "replicas": 2, "num_cpus": 1, "chunk": 3}))
    try:
        got = eng.score(scores)
        got_gen = eng.generate(reqs)
        streamed = sorted((r, g.index) for r, g in eng.generate_iter(reqs[:4]))
    finally:
        eng.close()
    for a, b in zip(got, want):
        assert (a.request_id, a.tokens, a.token_ids, a.offsets, a.extra) == (b.request_id, b.tokens, b.token_ids, b.offsets, b.extra)
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)
    for xs, ys in zip(got_gen, want_gen):
        assert [(g.index, g.text, g.token_ids) for g in xs] == [(g.index, g.text, g.token_ids) for g in ys]
    assert streamed == [(r, i) for r in range(4) for i in range(2)]


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_RAY, reason="needs the ray extra (pip install 'dasd[ray]')")
def test_ray_replicas_judge_a_too_long_request_as_one_engine(tiny_lm_dir, tmp_path):
    """The fan-out of hf replicas with ``max_model_len`` is, to the stages, one hf engine of that
    config: the same ``max_len`` and prompt ids (so `dasd sample` quarantines a too-long prompt
    before asking), and a replica's refusal stays a ``ContextLengthError`` (so `score` and `mix`
    quarantine or skip that record) instead of a "replica failed" error that stops the stage."""
    import json

    from dasd.config import load_config
    from dasd.errors import ContextLengthError
    from dasd.stages.sample import run_sample
    from dasd.store import RunStore

    prompts = tmp_path / "prompts.jsonl"
    rows = [{"id": f"p{i}", "prompt": f"Compute {i} + {i + 1}."} for i in range(3)]
    rows.append({"id": "long", "prompt": "Compute 3 + 4 then times 2. " * 6})
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    one = make_engine(EngineConfig(model=tiny_lm_dir, device="cpu", max_model_len=100))
    eng = make_engine(EngineConfig(model=tiny_lm_dir, device="cpu", max_model_len=100,
                                   ray={"address": "local", "replicas": 2, "num_cpus": 1, "chunk": 2}))
    try:
        assert (eng.max_len, eng.reserves_max_tokens) == (one.max_len, False) == (100, False)
        msgs = [{"role": "user", "content": rows[3]["prompt"]}]
        assert eng.context_ids(msgs, None, "long") == one.context_ids(msgs, None, "long")
        long_score = [ScoreRequest(id="long", messages=msgs, continuation="7 * 2 = 14.")]
        for engine in (one, eng):
            with pytest.raises(ContextLengthError, match=r"request 'long': context \+ continuation is \d+ tokens, max_model_len is 100"):
                engine.score(long_score)
        counts = {}
        for name, engine in (("one", one), ("ray", eng)):
            cfg = load_config(None, [f"run_dir={tmp_path / name}", f"data.prompts={prompts}", f"teacher.model={tiny_lm_dir}",
                                     "teacher.max_model_len=100", "sample.k=2", "sample.max_tokens=8",
                                     "sample.temperatures=[1.0]"])
            counts[name] = run_sample(cfg, engine=engine)
            (rej,) = list(RunStore.open(tmp_path / name).read("sample", "rejects"))
            assert rej["id"] == "too-long-long"
    finally:
        eng.close()
    ray_lp, one_lp = counts["ray"]["T1"].pop("mean_token_logprob"), counts["one"]["T1"].pop("mean_token_logprob")
    assert ray_lp == pytest.approx(one_lp, abs=1e-5)  # float rounding between batch shapes
    assert counts["ray"] == counts["one"] and counts["one"]["T1"]["samples"] == 6 and counts["one"]["T1"]["quarantined"] == 1
