"""Tokenizers for the toy world's models: real byte-level BPE tokenizers built with `tokenizers`.

Both toy models use the same chat format (ChatML-like, as Qwen's):

    <|im_start|>system\n...<|im_end|>\n<|im_start|>user\n...<|im_end|>\n<|im_start|>assistant\n

The teacher and the student are given *different* vocabularies (different ``vocab_size`` and
training corpora), so that cross-tokenizer sentence scoring is exercised for real. Byte-level
pre-tokenisation means any unicode text can be encoded, and that a multi-byte character may be
split across tokens, as with Qwen's and gpt-oss's tokenizers.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

PAD = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [PAD, IM_START, IM_END]

CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# A Qwen3-style template: ``CHAT_TEMPLATE`` except that an assistant turn holding ``</think>`` is
# re-laid as ``<think>\nR\n</think>\n\nA`` (the whitespace around the reasoning ``R`` and answer ``A``
# changed, nothing else), so training finds a response in its rendered conversation through that
# whitespace rather than verbatim. No toy model uses it; tests and benchmarks/scale.py put it on a
# toy tokenizer.
QWEN_LIKE_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' and '</think>' in m['content'] %}"
    "<|im_start|>assistant\n<think>\n{{ m['content'].split('</think>')[0].split('<think>')[-1].strip('\n') }}"
    "\n</think>\n\n{{ m['content'].split('</think>')[-1].lstrip('\n') }}<|im_end|>\n"
    "{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer(corpus: Iterable[str], vocab_size: int, split_digits: bool = False) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``corpus`` with at most ``vocab_size`` entries.

    ``vocab_size`` counts the 256 byte symbols and the 3 special tokens, so a value of 259 gives
    a pure byte-level tokenizer with no merges. ``split_digits``: every digit is a token of its own
    (a ``Digits`` pre-tokenizer first, as Llama's and Qwen's tokenizers do). Deterministic for a
    given corpus order.
    """
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be >= {256 + len(SPECIAL_TOKENS)}, got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if split_digits:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), tok.pre_tokenizer])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=IM_END, bos_token=None, unk_token=None
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 4096
    return fast
