"""The engine protocol: what every backend (hf, openai, vllm) does, and the records it returns.

Two calls:
- ``generate(requests)``: sample ``n`` continuations for each request, from chat messages (the
  engine applies its own tokenizer's chat template with the generation prompt) or from a raw text
  ``prefix`` (used as given: for mixed-policy continuation, the caller has already templated it).
- ``score(requests)``: teacher-forced per-token log-probs of a given ``continuation`` after a context.

Log-probs are always those of the *untempered* model (log-softmax of the raw logits, temperature 1,
no top-p), whatever temperature was used to sample: ``logprob_mode == "raw"``. A backend that can
only return processed log-probs says ``"processed"`` so that downstream stages can re-score.

Offsets are character spans ``(start, end)`` into the returned ``text`` (generate) or the
``continuation`` (score; or the request's own ``offsets``, returned as given). A token that covers only part of a multi-byte character (byte-level BPE)
is mapped to the character it starts in; see ``engines.offsets`` for the exact rule.
"""

from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

Messages = list[dict[str, str]]


@dataclass
class GenerateRequest:
    """One prompt to sample from. Exactly one of ``messages`` or ``prefix`` is set."""

    id: str
    messages: Messages | None = None
    prefix: str | None = None
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 512
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prefix is None):
            raise ValueError(f"request {self.id!r}: set exactly one of messages or prefix")
        if self.n < 1 or self.max_tokens < 1:
            raise ValueError(f"request {self.id!r}: n and max_tokens must be >= 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"request {self.id!r}: temperature >= 0 and 0 < top_p <= 1 required")


@dataclass
class Generation:
    """One sampled continuation. ``index`` is its position among the request's ``n`` samples."""

    request_id: str
    index: int
    text: str
    tokens: list[str]
    token_ids: list[int]
    offsets: list[tuple[int, int]]
    logprobs: list[float]
    finish_reason: str  # "stop" (end of turn / eos) or "length" (hit max_tokens)
    logprob_mode: str = "raw"
    prompt_tokens: int = 0


@dataclass
class ScoreRequest:
    """Teacher-forced scoring of ``continuation`` after a context (``messages`` or ``prefix``).

    If ``continuation_ids`` is given, exactly those token ids are scored (e.g. the ids a model
    sampled); otherwise the engine's tokenizer encodes ``continuation`` on its own, separately
    from the context, so that every token lies inside the continuation's characters.

    ``offsets``, only with ``continuation_ids``: their spans when the caller has them already
    (``train.encode.score_as_trained``: the spans in the response the ids were cut from, by the
    ``engines.offsets`` rule); the engine returns them as its result's ``offsets`` (the same
    object), neither computed again nor checked against ``continuation``.
    """

    id: str
    continuation: str
    messages: Messages | None = None
    prefix: str | None = None
    continuation_ids: list[int] | None = None
    offsets: Sequence[Sequence[int]] | None = None

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prefix is None):
            raise ValueError(f"request {self.id!r}: set exactly one of messages or prefix")
        if self.offsets is not None and (self.continuation_ids is None or len(self.offsets) != len(self.continuation_ids)):
            raise ValueError(f"request {self.id!r}: offsets need continuation_ids, one span per id")


@dataclass
class ScoreResult:
    request_id: str
    tokens: list[str]
    token_ids: list[int]
    offsets: list[tuple[int, int]]
    logprobs: list[float]
    logprob_mode: str = "raw"
    extra: dict = field(default_factory=dict)


@runtime_checkable
class Engine(Protocol):
    """What stages call. Implementations: ``hf`` (transformers), ``openai``, ``vllm``. An engine that
    counts requests and faults keeps them in ``stats``, an ``EngineStats`` (``runs.record_faults``)."""

    name: str  # model name or path, recorded in every Sample

    def generate(self, requests: list[GenerateRequest]) -> list[list[Generation]]:
        """Per request, its ``n`` generations in index order."""
        ...

    def score(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        """Per request, teacher-forced log-probs of its continuation."""
        ...

    def count_tokens(self, text: str) -> int:
        """Number of this model's tokens in ``text`` (no special tokens added)."""
        ...


class EngineStats(Counter):
    """An engine's running counts (``requests``, ``retries``, ``retry:<kind>``, ...): they only grow.
    ``take()`` returns what was added since the previous ``take()`` (everything, the first time), so
    whoever records them (``runs.record_faults``) counts each event once, however often it is handed
    the same engine."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self._taken: dict = {}

    def take(self) -> dict:
        """The counts added since the last ``take()``."""
        new = {k: v - self._taken.get(k, 0) for k, v in self.items()}
        self._taken = dict(self)
        return new


def each_or_refused(requests: list, call: Callable[[list], list],
                    hooked: Callable[[list, Callable[[int, Exception], None]], list] | None = None) -> list:
    """Per request, its result of ``call(requests)``, or the ``ContextLengthError`` of a request longer
    than the engine's context; the other requests are done all the same. ``hooked(requests,
    too_long)``, for an engine that hands each refusal to ``too_long(index, error)`` and goes on (the
    openai engine; its result at a refused index is ignored), is used when given; else a refused
    call is split in halves until the refused requests stand alone (the hf engine refuses before it
    computes anything)."""
    from dasd.errors import ContextLengthError

    if not requests:
        return []
    if hooked is not None:
        refused: dict[int, Exception] = {}
        results = hooked(requests, refused.__setitem__)
        return [refused.get(k, r) for k, r in enumerate(results)]
    try:
        return list(call(requests))
    except ContextLengthError as err:
        if len(requests) == 1:
            return [err]
        mid = len(requests) // 2
        return each_or_refused(requests[:mid], call) + each_or_refused(requests[mid:], call)


def encode_text(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` with no special tokens added (how every engine tokenises a continuation)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def build_context_ids(tokenizer, name: str, messages: Messages | None, prefix: str | None, rid: str) -> list[int]:
    """Prompt ids, built the same way by every engine that tokenises locally: the chat template with
    the generation prompt, or the raw ``prefix`` as given; an empty context becomes the BOS token."""
    from dasd.errors import DasdError

    if messages is not None:
        try:
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as err:
            raise DasdError(f"request {rid!r}: cannot apply {name}'s chat template: {err}") from None
    else:
        text = prefix or ""
    ids = encode_text(tokenizer, text)
    if not ids:
        if tokenizer.bos_token_id is None:
            raise DasdError(f"request {rid!r}: empty context and {name} has no BOS token")
        ids = [tokenizer.bos_token_id]
    return ids


def score_or_refused(engine, requests: list[ScoreRequest]) -> list:
    """Per request, its ``ScoreResult``, or the ``ContextLengthError`` of a request longer than the
    engine's context (``each_or_refused``: through ``score(too_long=)`` where the engine
    takes it, the openai engine; else by splitting a refused call)."""
    hooked = None
    if "too_long" in inspect.signature(engine.score).parameters:
        def hooked(reqs, too_long):
            return engine.score(reqs, too_long=too_long)
    return each_or_refused(requests, engine.score, hooked)


def first_or_refused(engine, requests: list[GenerateRequest]) -> list:
    """Per request (each ``n=1``), its generation, or the ``ContextLengthError`` of a request longer
    than the engine's context (``each_or_refused``: through ``generate_iter(too_long=)``
    where the engine takes it, the openai engine; else by splitting a refused call; every request
    has its own seed)."""
    stream = getattr(engine, "generate_iter", None)
    hooked = None
    if stream is not None and "too_long" in inspect.signature(stream).parameters:
        def hooked(reqs, too_long):
            out: list = [None] * len(reqs)
            for r, g in stream(reqs, too_long=too_long):
                out[r] = g
            return out
    return each_or_refused(requests, lambda reqs: [g[0] for g in engine.generate(reqs)], hooked)
