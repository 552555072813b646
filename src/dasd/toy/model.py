"""Tiny causal language models for the toy world and for tests: real ``LlamaForCausalLM``s.

They are loaded, sampled, scored and trained through exactly the code paths a real model uses.
"""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase


def make_model(
    tokenizer: PreTrainedTokenizerBase,
    hidden: int = 128,
    layers: int = 4,
    heads: int = 4,
    max_positions: int = 1024,
    seed: int = 0,
    vocab_size: int | None = None,
    init_std: float = 0.02,
) -> LlamaForCausalLM:
    """A randomly initialised Llama model sized for ``tokenizer`` (or an explicit ``vocab_size``).

    ``init_std`` is the weights' initial standard deviation (``initializer_range``). Pitfall: the
    Llama default 0.02 suits wide models; a model this narrow trained from scratch stalls with it
    (loss flat at chance for hundreds of steps on mod-10 addition), while ~1/sqrt(hidden) learns fast.
    """
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size or len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        initializer_range=init_std,
    )
    return LlamaForCausalLM(config)


def save_model(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerBase, out_dir: str) -> None:
    """Save in ordinary transformers format (config.json, model.safetensors, tokenizer files)."""
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
