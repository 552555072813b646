"""Turn a chat training example into token ids and per-token loss labels.

Rules (tested token by token in tests/train/test_encode.py):

- The text is the model's own chat template applied to ``messages`` (no generation prompt).
- Loss goes to **assistant turns only**: each assistant turn's span runs from the first character of
  its content to the end of the turn as the template renders it, trailing whitespace excluded. With
  ChatML that is the content plus the closing ``<|im_end|>`` (the ``\\n`` after it belongs to the
  template's next line, not to the assistant).
- A token carries loss when its character span (fast tokenizer offsets) overlaps a loss span.
- Mixed-policy examples: the first ``prefix_chars`` characters of the **last** assistant turn were
  written by the student. A token carrying **any** prefix character is a *prefix token* (with
  byte-level BPE a token may straddle the boundary or hold part of a multi-byte character). Prefix
  tokens carry loss unless ``mask_prefix`` is set (the paper trains them unmasked).
- ``labels[t]`` is the target of position ``t``: ``ids[t+1]`` when token ``t+1`` carries loss, else
  ``IGNORE``; the last position has no target. Labels are shifted here, per example, so that packing
  can never make one example predict the first token of the next.

Pitfall: templates that rewrite assistant content (e.g. move ``<think>`` into a separate field or drop
earlier turns' reasoning) break the character mapping; that is detected and reported, never guessed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dasd.errors import InputError

IGNORE = -100


@dataclass
class Encoded:
    """One tokenised example: ``input_ids``, shifted ``labels`` and the per-token masks behind them."""

    input_ids: list[int]
    labels: list[int]
    loss_mask: list[bool]  # token t carries loss (is predicted)
    prefix_mask: list[bool]  # token t carries a student-prefix character

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_loss_tokens(self) -> int:
        return sum(1 for y in self.labels if y != IGNORE)


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def assistant_spans(tokenizer, messages: list[dict], where: str = "example") -> tuple[str, list[tuple[int, int]], list[int]]:
    """Render ``messages`` and return ``(text, loss spans, content starts)`` of the assistant turns.

    Spans are found by rendering the conversation up to each assistant turn (with the generation
    prompt) and through it, and checking that both renderings are prefixes of the full text.
    """
    text = _render(tokenizer, messages, False)
    spans: list[tuple[int, int]] = []
    starts: list[int] = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        head = _render(tokenizer, messages[:i], True)
        upto = _render(tokenizer, messages[: i + 1], False)
        if not text.startswith(head) or not text.startswith(upto) or len(upto) < len(head):
            raise InputError(f"{where}: the chat template does not render assistant turn {i} as a prefix of the "
                             "conversation (it rewrites earlier turns); cannot locate the assistant tokens")
        end = len(upto.rstrip())
        spans.append((len(head), end))
        starts.append(len(head))
    return text, spans, starts


def _render_one(tokenizer, example: dict, where: str) -> tuple[str, list[tuple[int, int]], tuple[int, int] | None]:
    """Text, assistant loss spans and the student-prefix char span (or None) of one example."""
    messages = [{"role": m["role"], "content": m["content"]} for m in example["messages"]]
    prefix_chars = int(example.get("prefix_chars", 0) or 0)
    text, spans, starts = assistant_spans(tokenizer, messages, where)
    if not spans:
        raise InputError(f"{where}: no assistant message, nothing to train on")
    prefix_span = None
    if prefix_chars > 0:
        last = [m for m in messages if m["role"] == "assistant"][-1]["content"]
        if prefix_chars > len(last):
            raise InputError(f"{where}: prefix_chars={prefix_chars} is longer than the last assistant message ({len(last)} chars)")
        s = starts[-1]
        if text[s : s + len(last)] == last:
            prefix_span = (s, s + prefix_chars)
        else:
            end = _map_through_whitespace(last, prefix_chars, text, s, spans[-1][1])
            if end is None:
                raise InputError(f"{where}: the chat template rewrites the last assistant message beyond whitespace, "
                                 "so prefix_chars cannot be mapped to tokens; use a template that keeps assistant "
                                 "content verbatim")
            prefix_span = (s, end)
    return text, spans, prefix_span


def _map_through_whitespace(content: str, n: int, text: str, start: int, stop: int) -> int | None:
    """Where ``content[:n]`` ends in ``text[start:stop]`` when the template changed only whitespace.

    Qwen3-style templates re-render ``<think>R</think>A`` as ``<think>\nR\n</think>\n\nA``. The
    rendered span must hold the same non-whitespace characters in the same order; the prefix ends
    right after the rendered copy of its last non-whitespace character (whitespace the template
    re-laid at the boundary goes to the continuation). None when that does not hold.
    """
    want = [c for c in content if not c.isspace()]
    k = sum(1 for c in content[:n] if not c.isspace())
    seen, pos = 0, start
    for pos in range(start, stop):
        c = text[pos]
        if c.isspace():
            continue
        if seen == len(want):
            break
        if c != want[seen]:
            return None
        seen += 1
        if seen == k:
            end = pos + 1
    if seen != len(want):
        return None
    return start if k == 0 else end


def _masks(offsets: np.ndarray, spans, prefix_span) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised overlap of token char spans ``offsets`` (T x 2) with loss spans and the prefix span."""
    a, b = offsets[:, 0], offsets[:, 1]
    real = b > a
    loss = np.zeros(len(offsets), dtype=bool)
    for s, e in spans:
        loss |= (a < e) & (s < b)
    loss &= real
    prefix = np.zeros(len(offsets), dtype=bool)
    if prefix_span is not None:
        prefix = (a < prefix_span[1]) & (prefix_span[0] < b) & real
    return loss, prefix


def encode_batch(tokenizer, examples: list[dict], mask_prefix: bool = False,
                 wheres: list[str] | None = None) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Encode many examples with one (parallel, Rust-side) tokenizer call.

    Returns per example ``(input_ids, labels, loss_mask, prefix_mask)`` as numpy arrays
    (int32, int32, bool, bool); same rules as ``encode_example``.
    """
    wheres = wheres or [f"example {i}" for i in range(len(examples))]
    rendered = [_render_one(tokenizer, ex, w) for ex, w in zip(examples, wheres)]
    enc = tokenizer([r[0] for r in rendered], add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for (text, spans, prefix_span), ids, offs in zip(rendered, enc["input_ids"], enc["offset_mapping"]):
        ids = np.asarray(ids, dtype=np.int32)
        loss, prefix = _masks(np.asarray(offs, dtype=np.int64).reshape(-1, 2), spans, prefix_span)
        if mask_prefix:
            loss = loss & ~prefix
        labels = np.full(len(ids), IGNORE, dtype=np.int32)
        labels[:-1] = np.where(loss[1:], ids[1:], IGNORE)
        out.append((ids, labels, loss, prefix))
    return out


def encode_example(tokenizer, example: dict, mask_prefix: bool = False, where: str = "example") -> Encoded:
    """Tokenise one training example (``messages``, optional ``prefix_chars``) with loss labels."""
    ids, labels, loss, prefix = encode_batch(tokenizer, [example], mask_prefix, [where])[0]
    return Encoded(ids.tolist(), labels.tolist(), loss.tolist(), prefix.tolist())
