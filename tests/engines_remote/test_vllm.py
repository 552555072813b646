"""The vllm engine: a clear error without vllm; on a GPU with vllm, it equals the hf engine."""

from __future__ import annotations

import importlib.util

import pytest

from dasd.engines import EngineConfig, GenerateRequest, ScoreRequest, make_engine
from dasd.errors import DasdError

HAVE_VLLM = importlib.util.find_spec("vllm") is not None


def test_missing_vllm_is_a_clear_error(tiny_lm_dir, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "vllm", None)  # what an environment without vllm sees: ImportError
    with pytest.raises(DasdError) as err:
        make_engine(EngineConfig(kind="vllm", model=tiny_lm_dir))
    msg = str(err.value)
    assert "requirements-vllm.txt" in msg and "kind: hf" in msg and "kind: openai" in msg


@pytest.mark.gpu
@pytest.mark.skipif(not HAVE_VLLM, reason="needs the vllm extra")
def test_vllm_matches_hf(tiny_lm_dir):
    hf = make_engine(EngineConfig(model=tiny_lm_dir, device="cuda", dtype="float32"))
    vl = make_engine(EngineConfig(kind="vllm", model=tiny_lm_dir, dtype="float32",
                                  vllm={"gpu_memory_utilization": 0.2, "enforce_eager": True}))
    msgs = [{"role": "user", "content": "Compute 3 + 4 then times 2."}]
    gens = vl.generate([GenerateRequest(id="a", messages=msgs, n=3, temperature=1.0, max_tokens=16, seed=1)])[0]
    assert [g.index for g in gens] == [0, 1, 2] and all(g.logprob_mode == "raw" for g in gens)
    for g in gens:  # vllm's raw sampled log-probs equal hf's teacher-forced ones for the same ids
        ref = hf.score([ScoreRequest(id="a", messages=msgs, continuation=g.text, continuation_ids=g.token_ids)])[0]
        assert g.logprobs == pytest.approx(ref.logprobs, abs=2e-3)
        assert g.offsets == ref.offsets
        given = ScoreRequest(id="a", messages=msgs, continuation=g.text, continuation_ids=g.token_ids,
                             offsets=[(0, 0)] * len(g.token_ids))  # returned as given, not computed again
        assert vl.score([given])[0].offsets is given.offsets
    reqs = [ScoreRequest(id="s", messages=msgs, continuation=" 3 + 4 = 7. \U0001f600")]
    a, b = vl.score(reqs)[0], hf.score(reqs)[0]
    assert a.token_ids == b.token_ids and a.offsets == b.offsets
    assert a.logprobs == pytest.approx(b.logprobs, abs=2e-3)
