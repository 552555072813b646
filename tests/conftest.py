"""Shared fixtures: tiny real models and tokenizers built on the fly (nothing is downloaded)."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def dasd_logging():
    """dasd's log lines go to stderr as the CLI sends them (tests read them with capsys ``.err``)."""
    from dasd.log import setup

    setup()

SAMPLE_CORPUS = [
    "Compute 3 + 4 then times 2. 3 + 4 = 7. 7 * 2 = 14. The answer is \\boxed{14}.",
    "<think>\nStart with 5. 5 - 2 = 3.\n</think>\nSo \\boxed{3}.",
    "Caf\u00e9 na\u00efve r\u00e9sum\u00e9, \u65e5\u672c\u8a9e\u306e\u6587, emoji \U0001f600\U0001f389, $\\frac{1}{2}$ and \\[x^2\\].",
    "Let me think step by step. First, note that 12 / 4 = 3. Then 3 + 9 = 12.",
]


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory):
    """A random tiny Llama with a small byte-level BPE tokenizer (vocab ~300), saved to disk."""
    from dasd.toy.model import make_model, save_model
    from dasd.toy.tokenizer import build_tokenizer

    out = tmp_path_factory.mktemp("tiny_lm")
    tok = build_tokenizer(SAMPLE_CORPUS * 20, vocab_size=300)
    model = make_model(tok, hidden=32, layers=2, heads=2, seed=0)
    save_model(model, tok, str(out))
    return str(out)


@pytest.fixture(scope="session")
def tiny_lm_dir_other_vocab(tmp_path_factory):
    """A second tiny Llama whose tokenizer has a different vocabulary (vocab ~400)."""
    from dasd.toy.model import make_model, save_model
    from dasd.toy.tokenizer import build_tokenizer

    out = tmp_path_factory.mktemp("tiny_lm_other")
    tok = build_tokenizer(list(reversed(SAMPLE_CORPUS)) * 30, vocab_size=400)
    model = make_model(tok, hidden=48, layers=2, heads=2, seed=1)
    save_model(model, tok, str(out))
    return str(out)


class CountingScorer:
    """A real engine that counts the score requests it answers (``requests``)."""

    def __init__(self, engine):
        self.engine, self.requests = engine, 0

    def score(self, reqs):
        self.requests += len(reqs)
        return self.engine.score(reqs)

    def __getattr__(self, name):
        return getattr(self.engine, name)


@pytest.fixture(scope="session")
def counting_scorer():
    """``counting_scorer(engine)`` -> the engine, counting the score requests it answers (``.requests``)."""
    return CountingScorer


def _nudged_lm(out, corpus, vocab_size, seed, favour, boost, hidden=32) -> str:
    """A random tiny Llama (1 layer) whose tied lm head favours the tokens whose text is in
    ``favour`` (e.g. the end-of-turn token, so that sampling ends), saved to ``out``; its path."""
    import torch

    from dasd.toy.model import make_model, save_model
    from dasd.toy.tokenizer import build_tokenizer

    tok = build_tokenizer(corpus, vocab_size=vocab_size)
    model = make_model(tok, hidden=hidden, layers=1, heads=2, max_positions=512, seed=seed)
    ids = [i for i in range(len(tok)) if tok.decode([i]) in favour]
    assert ids, "nothing to favour"
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[:, 0] = 1.0
        emb[ids, 0] = boost
    save_model(model, tok, str(out))
    return str(out)


@pytest.fixture(scope="session")
def nudged_lm():
    """``nudged_lm(out, corpus, vocab_size, seed, favour, boost, hidden=32)`` -> model dir: a random
    tiny Llama nudged towards some tokens (models that finish their answers, for stage tests)."""
    return _nudged_lm


@pytest.fixture(scope="session")
def o200k_harmony_dir(tmp_path_factory):
    """A saved fast tokenizer with gpt-oss's ids: o200k_base (199,998 ranks) + harmony specials 199998-200012
    (``o200k_pattern.txt`` beside it, for tests that build tiktoken's encoder)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("o200k", Path(__file__).resolve().parents[1] / "benchmarks" / "o200k.py")
    o200k = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(o200k)
    return o200k.save_harmony_tokenizer(tmp_path_factory.mktemp("o200k_harmony"))


@pytest.fixture
def sums_chat_file(tmp_path):
    """``tmp_path/ex.jsonl``: six chat training examples (a sum asked, answered with a think block)."""
    path = tmp_path / "ex.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"{i} + {i % 3}?"},
                          {"role": "assistant", "content": f"<think>{i} + {i % 3} = {i + i % 3}.</think> {i + i % 3}"}]}
            for i in range(6)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def two_stage_config():
    """``two_stage_config(run, data, lr, *overrides)``: the config of training stage ``s`` (the toy
    student trained 3 steps at ``lr`` on chat file ``data``) and ``t`` (``s`` trained 2 steps more),
    both in ``eval.models``, a checkpoint at every step."""
    from dasd.config import load_config

    def make(run, data, lr: float, *overrides: str):
        return load_config(None, [
            f"run_dir={run}", "train.save_every=1", "eval.models=[s, t]",
            f"train.stages=[{{name: s, data: '{data}', init: base, max_steps: 3, lr: {lr}}}, "
            f"{{name: t, data: '{data}', init: previous, max_steps: 2}}]", *overrides])
    return make


@pytest.fixture(scope="session")
def crash_at():
    """``crash_at(stage, step)``: an ``on_step`` hook for ``run_train`` that raises at that step of that stage."""
    def make(stage: str, step: int):
        def hook(m):
            if m["stage"] == stage and m["step"] == step:
                raise RuntimeError("simulated crash")
        return hook
    return make
