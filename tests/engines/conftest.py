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
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    chars = "\u2581abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?$\\{}[]()^+-*/=_"
    for c in chars:
        vocab.setdefault(c, len(vocab))
    merges = [("\u2581", "t"), ("h", "e"), ("\u2581t", "he"), ("a", "n"), ("\u2581", "a")]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
