"""Engines built once per session on the shared tiny models, plus a sentencepiece-style tokenizer."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def hf_engine(tiny_lm_dir):
    from dasd.engines import EngineConfig, make_engine

    return make_engine(EngineConfig(model=tiny_lm_dir, device="cpu", batch_size=4))


@pytest.fixture(scope="session")
def hf_engine_other(tiny_lm_dir_other_vocab):
    from dasd.engines import EngineConfig, make_engine

    return make_engine(EngineConfig(model=tiny_lm_dir_other_vocab, device="cpu", batch_size=3))


@pytest.fixture(params=["tiny", "other"])
def any_engine(request, hf_engine, hf_engine_other):
    """Both tiny models (different byte-level vocabularies and sizes)."""
    return hf_engine if request.param == "tiny" else hf_engine_other


@pytest.fixture(scope="session")
def sentencepiece_tokenizer():
    """A Llama-2-style tokenizer: Metaspace '▁' words, <0xNN> byte fallback, leading-space strip.

    Its vocabulary holds ASCII letters, a few merges and all 256 byte pieces, so accented letters,
    CJK and emoji are encoded as byte-fallback pieces, as in Llama 2 / Mistral.
    """
    from sp_tokenizer import llama2_style_tokenizer

    return llama2_style_tokenizer([("\u2581", "t"), ("h", "e"), ("\u2581t", "he"), ("a", "n"), ("\u2581", "a")])
