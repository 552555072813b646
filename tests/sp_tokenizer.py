"""A Llama-2-style tokenizer built in memory for tests: Metaspace '▁' words, <0xNN> byte fallback and
a decoder that strips the leading space of what it decodes, as Llama 2 / Mistral do."""

from __future__ import annotations

CHARS = "\u2581abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?$\\{}[]()^+-*/=_"


def llama2_style_tokenizer(merges: list[tuple[str, str]], chars: str = CHARS, pad: bool = False):
    """Its vocabulary: <unk>, <s>, </s> (and <pad>), all 256 byte pieces, ``chars`` and the ``merges``;
    accented letters, CJK and emoji are encoded as byte-fallback pieces."""
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {"<unk>": 0, "<s>": 1, "</s>": 2, **({"<pad>": 3} if pad else {})}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for c in chars:
        vocab.setdefault(c, len(vocab))
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   **({"pad_token": "<pad>"} if pad else {}))
