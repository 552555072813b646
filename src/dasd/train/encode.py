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

from dataclasses import dataclass, replace
from itertools import chain

import numpy as np

from dasd.engines.base import ScoreRequest, ScoreResult, score_or_refused
from dasd.errors import ContextLengthError, InputError
from dasd.text.align import codepoints, is_space

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
    prompt) and through it, and checking that both renderings are prefixes of the full text. The
    conversation through its last message is the full text itself and is not rendered again: ``a``
    assistant turns take ``2a`` renderings when the last message is one of them (a training
    example: two, its long response rendered once), ``2a + 1`` otherwise.
    """
    text = _render(tokenizer, messages, False)
    spans: list[tuple[int, int]] = []
    starts: list[int] = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        head = _render(tokenizer, messages[:i], True)
        upto = text if i == len(messages) - 1 else _render(tokenizer, messages[: i + 1], False)
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


def _nonspace(codes: np.ndarray) -> np.ndarray:
    """The positions of the code points (``text.align.codepoints``) that are not whitespace
    (``str.isspace``, by ``text.align.is_space``'s table)."""
    return np.flatnonzero(~is_space(codes))


def _align_nonspace(content: str, text: str, start: int, stop: int) -> np.ndarray | None:
    """Where each non-whitespace character of ``content`` is in ``text[start:stop]``, when the
    template changed only whitespace (Qwen3-style templates re-render ``<think>R</think>A`` as
    ``<think>\nR\n</think>\n\nA``): the rendered span holds the same non-whitespace characters in
    the same order (anything after them, e.g. the end-of-turn tag, is left alone). None when that
    does not hold."""
    want = codepoints(content)
    want = want[_nonspace(want)]
    span = codepoints(text[start:stop])
    found = _nonspace(span)[: len(want)]
    if len(found) < len(want) or not np.array_equal(span[found], want):
        return None
    return found + start


def _map_through_whitespace(content: str, n: int, text: str, start: int, stop: int) -> int | None:
    """Where ``content[:n]`` ends in ``text[start:stop]`` when the template changed only whitespace
    (``_align_nonspace``): right after the rendered copy of its last non-whitespace character
    (whitespace the template re-laid at the boundary goes to the continuation). None when the
    template changed more than whitespace."""
    found = _align_nonspace(content, text, start, stop)
    if found is None:
        return None
    k = sum(1 for c in content[:n] if not c.isspace())
    return start if k == 0 else int(found[k - 1]) + 1


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


@dataclass
class ResponseTokens:
    """A response as training tokenises it (``response_tokens``): ``ids``, the tokens that hold its
    characters in the rendered conversation; ``context``, the rendered text before the first of them
    (it tokenises to exactly the ids before them); ``text``, the rendered text they cover; and
    ``offsets``, each token's character span in the response as given (``engines.offsets``' rule,
    carried through any whitespace the template re-laid), a ``(len(ids), 2)`` int64 array."""

    context: str
    text: str
    ids: list[int]
    offsets: np.ndarray


# How far back into the generation prompt a response may begin: a template whose generation prompt
# opens the reasoning itself (``...assistant\n<think>\n``) renders a response ``<think>\nR...`` with
# its opener in the prompt.
_MAX_OPENER = 64


def response_tokens(tokenizer, pairs: list[tuple[list[dict], str]]) -> list[ResponseTokens | None]:
    """Per ``(messages, response)``: the tokens training gives ``response`` as the assistant turn after
    ``messages`` (the chat template and tokenisation of ``encode_batch``), for scoring a model on
    exactly what it is trained on. Tokenising the response on its own after the generation prompt
    can give other tokens: a sentencepiece tokenizer puts a word-start ``▁`` before it, a template
    re-lays the whitespace around ``<think>``, or its generation prompt already holds the opener.

    None where the response cannot be cut out of the conversation as tokens: the tokenizer is not a
    fast one (no offsets), the template does not render the generation prompt as a prefix of the
    conversation, changes the response beyond
    whitespace, the context before its first token does not tokenise to the ids before it, or its
    tokens do not decode to the text they cover (a token joined with the template's text after it).
    """
    from dasd.engines.base import encode_text
    from dasd.engines.offsets import token_spans
    from dasd.errors import DasdError

    out: list[ResponseTokens | None] = [None] * len(pairs)
    if not getattr(tokenizer, "is_fast", False):  # no offsets to find the tokens by (training needs them too)
        return out
    rendered: list[tuple[str, tuple[int, int]] | None] = []
    for messages, response in pairs:
        convo = [{"role": m["role"], "content": m["content"]} for m in messages]
        try:
            text, spans, _ = assistant_spans(tokenizer, [*convo, {"role": "assistant", "content": response}])
        except InputError:
            rendered.append(None)
            continue
        rendered.append((text, spans[-1]))
    todo = [k for k, r in enumerate(rendered) if r is not None]
    if not todo:
        return out
    enc = tokenizer([rendered[k][0] for k in todo], add_special_tokens=False, return_offsets_mapping=True)
    contexts: dict[str, list[int]] = {}  # context -> its ids: the responses to one prompt share it
    for k, ids, offs in zip(todo, enc["input_ids"], enc["offset_mapping"]):
        text, (head_end, turn_end) = rendered[k]
        response = pairs[k][1]
        solid = _nonspace(codepoints(response))
        if text.startswith(response, head_end):  # kept verbatim (ChatML and most templates)
            where = solid + head_end  # rendered position of each non-space character of the response
        else:
            where = _align_response(response, text, head_end, turn_end)
        if where is None or not len(where):
            continue
        lo = max(head_end, int(where[0] - solid[0]))
        hi = int(where[-1]) + 1
        tail = len(response) - int(solid[-1]) - 1  # trailing whitespace: trained where the template keeps it
        while hi < turn_end and tail and text[hi].isspace():
            hi, tail = hi + 1, tail - 1
        offs = _pairs(offs)
        held = np.flatnonzero((offs[:, 1] > offs[:, 0]) & (offs[:, 0] < hi) & (lo < offs[:, 1]))
        if not len(held):
            continue
        first, last = int(held[0]), int(held[-1])
        start, end = int(offs[first, 0]), int(offs[last, 1])
        context, covered, cut = text[:start], text[start:end], list(ids[first : last + 1])
        if context not in contexts:
            contexts[context] = encode_text(tokenizer, context)
        if contexts[context] != ids[:first]:
            continue
        try:
            spans = token_spans(tokenizer, cut, covered) + start
        except DasdError:
            continue
        out[k] = ResponseTokens(context, covered, cut, _to_response(spans, where, solid, len(response)))
    return out


def _pairs(pairs) -> np.ndarray:
    """A sequence of ``(start, end)`` pairs as a ``(n, 2)`` int64 array (faster than ``np.asarray``
    on a list of tuples)."""
    return np.fromiter(chain.from_iterable(pairs), dtype=np.int64, count=2 * len(pairs)).reshape(-1, 2)


def _align_response(response: str, text: str, head_end: int, turn_end: int) -> np.ndarray | None:
    """``_align_nonspace`` of the response in the rendered turn; where that fails, from a start inside
    the end of the generation prompt (a prompt that already opens the response: ``<think>``)."""
    found = _align_nonspace(response, text, head_end, turn_end)
    lead = response.lstrip()[:1]
    k = head_end
    while found is None and lead and k > max(0, head_end - _MAX_OPENER):
        k -= 1
        if text[k] == lead:
            found = _align_nonspace(response, text, k, turn_end)
    return found


def _to_response(spans: np.ndarray, where: np.ndarray, solid: np.ndarray, n: int) -> np.ndarray:
    """Rendered positions ``spans`` mapped into the response: a non-space character to itself, a
    position in re-laid whitespace along the response's own whitespace there (as far as it goes)."""
    j = np.searchsorted(where, spans, side="left")
    jc = np.minimum(j, len(where) - 1)
    exact = (j < len(where)) & (where[jc] == spans)
    before = np.maximum(0, solid[0] - (where[0] - spans))  # ahead of the first character
    jp = np.maximum(j - 1, 0)
    nxt = np.where(j < len(where), solid[jc], n)
    after = np.minimum(solid[jp] + 1 + (spans - where[jp] - 1), nxt)
    return np.where(exact, solid[jc], np.where(j == 0, before, after))


def encode_example(tokenizer, example: dict, mask_prefix: bool = False, where: str = "example") -> Encoded:
    """Tokenise one training example (``messages``, optional ``prefix_chars``) with loss labels."""
    ids, labels, loss, prefix = encode_batch(tokenizer, [example], mask_prefix, [where])[0]
    return Encoded(ids.tolist(), labels.tolist(), loss.tolist(), prefix.tolist())


def score_as_trained(engine, requests: list[ScoreRequest]) -> tuple[list[ScoreResult | ContextLengthError], int]:
    """``score_or_refused`` on the tokens training gives each response (``train.encode.response_tokens``
    with the engine's tokenizer): the student is scored on exactly the ids it is trained on, after
    exactly the context they follow there (a re-scoring teacher on the response as its own assistant
    turn), and the offsets are carried back into the response. A response whose tokens cannot be cut
    out of its rendered conversation is scored on its own tokens after the generation prompt, as
    asked; how many were is returned beside the results."""
    tok = getattr(engine, "tokenizer", None)
    cut = response_tokens(tok, [(r.messages, r.continuation) for r in requests]) \
        if tok is not None and getattr(tok, "chat_template", None) and requests else [None] * len(requests)
    asked = [r if c is None else ScoreRequest(id=r.id, prefix=c.context, continuation=c.text, continuation_ids=c.ids,
                                              offsets=c.offsets)  # dasd's engines return them, not computed again
             for r, c in zip(requests, cut)]
    # (set again here for an engine that does not take a request's offsets)
    results = [r if c is None or isinstance(r, ContextLengthError) else replace(r, offsets=c.offsets)
               for r, c in zip(score_or_refused(engine, asked), cut)]
    return results, sum(c is None for c in cut)


# A text whose ids tell apart tokenizers that share a vocabulary but not how they use it: Unicode
# normalisation (composed and decomposed accents, a ligature, full-width digits), case, runs of spaces,
# tabs and newlines, digits, LaTeX, CJK and an emoji (byte fallback), the reasoning tags.
PROBE = ("Let x = 3.14159; then 2x^2 + \\frac{1}{2} = 20.24.\n\n  Ünïcödé café cafe\u0301 \ufb01ne ５６ "
         "数学 🙂\t<think>Wait... so  UPPER lower</think>\n\\boxed{42}")


def tokenizer_differences(scored, trained) -> list[str]:
    """What makes ``scored`` (the tokenizer the student is scored with) tokenise otherwise than
    ``trained`` (the one training uses): ``vocabulary`` (token -> id, added tokens included),
    ``tokenisation`` (the ids of ``PROBE``: normalisation, pre-tokenisation, merges), ``chat template``
    (the context a response is scored after, ``score_as_trained``). Empty when they agree."""
    from dasd.engines.base import encode_text

    out = []
    if scored.get_vocab() != trained.get_vocab():
        out.append("vocabulary")
    if encode_text(scored, PROBE) != encode_text(trained, PROBE):
        out.append("tokenisation")
    if getattr(scored, "chat_template", None) != getattr(trained, "chat_template", None):
        out.append("chat template")
    return out


def scoring_tokenizer_warning(scored, scored_name: str, trained, trained_name: str, trained_key: str) -> str | None:
    """The one-line warning when the student's scoring tokenizer ``scored`` (named ``scored_name``:
    ``student.tokenizer``, else ``student.model``) tokenises otherwise than ``trained``, the one a
    training stage uses (``trained_name``, from the config key ``trained_key``); None when they agree
    (``tokenizer_differences``). Then DAS ranked sentences by the log-probs of tokens training never
    sees, and filter measured lengths in them.

    A warning, not a refusal: a differing tokenizer may be harmless or meant (the same model served
    under a name whose tokenizer files carry another template, a tokenizer with added tokens the data
    never use), the scored and selected data are already made, and what a mismatch costs is a worse
    selection, not a broken model; the user decides, with both names and what differs in hand."""
    diffs = tokenizer_differences(scored, trained)
    if not diffs:
        return None
    return (f"the student is scored with the tokenizer of {scored_name!r} (student.tokenizer, else student.model) "
            f"but trained with that of {trained_name!r} ({trained_key}): their {', '.join(diffs)} differ, so DAS "
            f"ranks sentences by the log-probs of tokens training never sees; set student.tokenizer to "
            f"{trained_name!r} (the scored model must be that model) and score and select again, or train "
            "the model that is scored")
