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
