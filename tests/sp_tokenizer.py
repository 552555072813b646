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


def save_nudged_llama(tok, favoured: list[str], out, max_positions: int) -> str:
    """A tiny Llama on ``tok`` saved to ``out``, nudged towards the ``favoured`` tokens and its eos (so
    that a generation from it usually starts with one of them and ends); ``out`` as a string."""
    import torch

    from dasd.toy.model import make_model, save_model

    model = make_model(tok, hidden=32, layers=1, heads=2, max_positions=max_positions, seed=0)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[:, 0] = 1.0
        emb[tok.convert_tokens_to_ids(favoured), 0] = 2.5
        emb[tok.eos_token_id, 0] = 2.2
    save_model(model, tok, str(out))
    return str(out)
