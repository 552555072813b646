"""The released DASD data, read faithfully: one response row, and its log-prob companion aligned to it.

Pure rules, no file I/O: reading rows is ``dasd.sources``; the import stage joins the two.

**The release** (``Alibaba-Apsara/Superior-Reasoning-SFT-gpt-oss-120b``, configs ``stage1``
sampled at T=0.6 and ``stage2`` at T=1.0) has one row per response: ``uuid``, ``input`` (the
question, a string), ``output`` (``<think>`` reasoning ``</think>`` then the answer), ``domain``
(e.g. ``math``, ``instruction_following``) and ``meta`` (a JSON *string*). ``parse_row`` turns a
row into a ``ReleasedRow``: the prompt keeps the source domain as given in ``meta.source_domain``
and gets the mapped ``Domain`` (``map_domain``), and ``meta`` is the row's meta parsed from JSON.

**The companion** (``...-Logprob``: ``sample_uuid``, ``token_ids``, ``logprobs``) is joined to a
row **by id** (``sample_uuid == uuid``), never by position. Its ``token_ids`` are gpt-oss (o200k +
harmony) ids of the *reasoning body only*: the text between ``<think>`` and ``</think>``, without
the tags, which the teacher never produced. Some rows go on after the body with the harmony header
of the final message and the final answer: ``<|end|><|start|>assistant<|channel|>final<|message|>``
answer ``<|return|>``. ``align_companion`` reads the ids as harmony messages (``harmony_messages``)
and accepts exactly two shapes:

- ``reasoning``: one analysis message (the ids start inside it; a trailing ``<|end|>`` or
  ``<|return|>`` is allowed): its text must be the body inside ``<think>...</think>``;
- ``reasoning+final``: that analysis message, then one ``final`` message: its text must also be
  the answer after ``</think>``.

"Must be" is exact equality of the ids' decoded text (byte-exact, ``dasd.engines.offsets``) with
the output's text, except for whitespace at the two ends of each part (the release writes
``<think>\\n`` body ``\\n</think>\\n\\n`` answer; the ids may or may not hold those newlines). Any
other shape, or a part whose text differs, is a ``Mismatch`` whose reason names the part and the
first differing character (its index in ``output`` and in the ids' text).

**What is dropped from the signal**: special tokens (every added token the tokenizer marks
special: ``<|start|>``, ``<|channel|>``, ``<|message|>``, ``<|end|>``, ``<|return|>``, ...) and the
ordinary tokens of a message *header* (the role ``assistant`` and the channel name ``final``
between ``<|start|>`` and ``<|message|>``). None of them is response text, so they have no span in
``output``; their log-probs are left out and counted in ``Aligned.dropped``. Every kept token gets
its character span in the full ``output`` (tokens that split a multi-byte character share it, as
everywhere in dasd). The ``<think>`` tags have no teacher token; with ``reasoning`` ids the answer
after ``</think>`` has none either, so its sentences are unscored by DAS (docs/das.md).

**Log-prob mode.** The card does not say whether the released log-probs are raw (log-softmax of
the untempered logits) or processed (after temperature 0.6 / top-p). ``LogprobMode`` is a declared
import setting, resolved per import by ``resolve_logprob_mode``; see docs/released-data.md.

Use: ``check_teacher_tokenizer(tok)`` once; per row ``row = parse_row(raw)`` (``ValueError``:
quarantine), then ``align_row(row, companion_row_or_None, tok)`` -> ``Aligned`` (``.teacher(mode)``
is the ``Sample.teacher`` record), ``Mismatch`` (``.reason``) or ``None`` (no companion row).
"""

from __future__ import annotations

import json
import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from dasd.errors import ConfigError
from dasd.records import Domain

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

LogprobMode = Literal["auto", "raw", "processed"]
"""How the released log-probs were computed: ``raw`` (untempered), ``processed`` (after the
sampling temperature/top-p), or ``auto``: raw when the pool was sampled at T=1 with top_p=1 (where
the two are the same numbers), else processed."""

LOGPROB_MODE_HELP = (
    "what the companion's log-probs are: raw = log-softmax of the untempered logits (used as they "
    "are); processed = after temperature/top-p (the score stage re-scores these responses with the "
    "teacher); auto = raw at temperature 1 and top_p 1 (where both are the same), else processed"
)

_DOMAINS: dict[str, Domain] = {
    "math": "math", "mathematics": "math",
    "code": "code", "coding": "code", "programming": "code",
    "science": "science", "scientific_qa": "science", "stem": "science",
    "physics": "science", "chemistry": "science", "biology": "science",
    "instruction": "instruction", "instruction_following": "instruction", "if": "instruction",
    "toy": "toy", "other": "other",
}


def map_domain(source_domain: str | None) -> Domain:
    """dasd's ``Domain`` for a release's ``domain`` value (case, ``-`` and spaces ignored); else ``other``."""
    if not isinstance(source_domain, str):
        return "other"
    key = source_domain.strip().lower().replace("-", "_").replace(" ", "_")
    return _DOMAINS.get(key, "other")


def parse_meta(value: Any) -> dict[str, Any]:
    """A row's ``meta``: a JSON-object string (as released), an object already, or empty.

    Raises ``ValueError`` naming the field for bad JSON or JSON that is not an object.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return {}
    if isinstance(value, dict):
        return dict(value)
    if not isinstance(value, str):
        raise ValueError(f"field 'meta' must be a JSON object string, got {type(value).__name__}")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as e:
        raise ValueError(f"field 'meta' is not valid JSON: {e}") from None
    if not isinstance(parsed, dict):
        raise ValueError(f"field 'meta' must be a JSON object, got a JSON {type(parsed).__name__}")
    return parsed


@dataclass(frozen=True)
class ReleasedRow:
    """One parsed release row.

    ``prompt`` is a raw prompt record for ``to_prompt`` (``prompt`` or ``messages``, ``domain``,
    ``meta``; no ``id``, so the prompt id is the content hash of its messages and the same question
    in stage1 and stage2 is one prompt). ``output`` is the response text as released.
    """

    uuid: str
    prompt: dict[str, Any]
    output: str


def _got(value: Any) -> str:
    """How a bad field value reads in a reason: nothing, an empty string, or its type."""
    if value is None:
        return "nothing"
    if isinstance(value, (str, list)) and not (value.strip() if isinstance(value, str) else value):
        return "an empty " + ("string" if isinstance(value, str) else "list")
    return type(value).__name__


def parse_row(raw: dict[str, Any]) -> ReleasedRow:
    """Parse one release row; ``ValueError`` names the field at fault.

    The prompt's ``domain`` is ``map_domain(domain)``; ``meta`` is ``parse_meta(meta)`` plus
    ``source_domain`` = the row's ``domain`` exactly as given (when it has one). A meta that
    already holds a different ``source_domain`` is an error rather than a silent overwrite.
    """
    uuid = raw.get("uuid")
    if "uuid" not in raw:
        raise ValueError("missing field 'uuid' (a non-empty string)")
    if not isinstance(uuid, str) or not uuid.strip():
        raise ValueError(f"field 'uuid' must be a non-empty string, got {_got(uuid)}")
    inp = raw.get("input")
    if isinstance(inp, str) and inp.strip():
        prompt: dict[str, Any] = {"prompt": inp}
    elif isinstance(inp, list) and inp:
        prompt = {"messages": inp}
    else:
        raise ValueError(f"field 'input' must be a non-empty string or chat list, got {_got(inp)}")
    out = raw.get("output")
    if not isinstance(out, str) or not out.strip():
        raise ValueError(f"field 'output' must be a non-empty string, got {_got(out)}")
    source_domain = raw.get("domain")
    if source_domain is not None and not isinstance(source_domain, str):
        raise ValueError(f"field 'domain' must be a string, got {type(source_domain).__name__}")
    meta = parse_meta(raw.get("meta"))
    if source_domain is not None:
        if "source_domain" in meta and meta["source_domain"] != source_domain:
            raise ValueError(f"field 'meta' has source_domain {meta['source_domain']!r} but field 'domain' is {source_domain!r}")
        meta["source_domain"] = source_domain
    prompt["domain"] = map_domain(source_domain)
    prompt["meta"] = meta
    return ReleasedRow(uuid=uuid, prompt=prompt, output=out)


# --------------------------------------------------------------------------- companion alignment


@dataclass(frozen=True)
class Aligned:
    """A companion row that fits its response.

    ``part`` says what the ids cover (``reasoning`` or ``reasoning+final``). ``token_ids``,
    ``offsets`` (character spans in the full ``output``) and ``logprobs`` are those of the kept
    tokens, in order; ``dropped`` counts the special and header tokens left out.
    """

    part: Literal["reasoning", "reasoning+final"]
    token_ids: list[int]
    offsets: list[tuple[int, int]]
    logprobs: list[float]
    dropped: int

    def teacher(self, logprob_mode: Literal["raw", "processed"]) -> dict[str, Any]:
        """The ``Sample.teacher`` record (``covers`` says which part of the text has teacher tokens)."""
        return {
            "token_ids": self.token_ids, "offsets": [list(o) for o in self.offsets], "logprobs": self.logprobs,
            "logprob_mode": logprob_mode, "covers": self.part,
        }


@dataclass(frozen=True)
class Mismatch:
    """A companion row that fits neither shape; ``reason`` names the part and the first difference."""

    reason: str


@dataclass
class HarmonyMessage:
    """One harmony message in a companion's ids: its channel and the positions of its content tokens."""

    channel: str
    content: list[int] = field(default_factory=list)
    header: list[int] = field(default_factory=list)  # positions of header text tokens (role, channel name)


class _HarmonyIds:
    """The tokenizer's harmony marker ids and its set of special ids (memoised per tokenizer)."""

    NAMES = ("<|start|>", "<|channel|>", "<|message|>", "<|end|>", "<|return|>", "<|call|>", "<|constrain|>")

    def __init__(self, tokenizer):
        decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        self.special = {int(i) for i, t in decoder.items() if getattr(t, "special", False)}
        self.special |= {int(i) for i in getattr(tokenizer, "all_special_ids", []) or []}
        self.names = {int(i): t.content for i, t in decoder.items()}
        by_name = {t.content: int(i) for i, t in decoder.items()}
        ids = {name: by_name.get(name) for name in self.NAMES}
        missing = [n for n in ("<|start|>", "<|channel|>", "<|message|>", "<|end|>") if ids[n] is None]
        if missing:
            name = getattr(tokenizer, "name_or_path", "") or "?"
            raise ConfigError(f"the teacher tokenizer {name!r} (teacher.tokenizer, else teacher.model) has no harmony "
                              f"tokens {missing}: the released ids need gpt-oss's tokenizer (o200k with the harmony "
                              "tokens), e.g. openai/gpt-oss-120b")
        self.start, self.channel, self.message, self.end = (ids[n] for n in ("<|start|>", "<|channel|>", "<|message|>", "<|end|>"))
        self.stop = {i for i in (ids["<|return|>"], ids["<|call|>"]) if i is not None}
        self.constrain = ids["<|constrain|>"]
        self.size = len(tokenizer)

    def name(self, i: int) -> str:
        return self.names.get(i, f"special id {i}")


_HARMONY: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _harmony_ids(tokenizer) -> _HarmonyIds:
    h = _HARMONY.get(tokenizer)
    if h is None or h.size != len(tokenizer):
        h = _HARMONY[tokenizer] = _HarmonyIds(tokenizer)
    return h


def check_teacher_tokenizer(tokenizer) -> None:
    """Raise ``ConfigError`` unless ``tokenizer`` has the harmony tokens (call once before aligning rows)."""
    _harmony_ids(tokenizer)


def harmony_messages(token_ids: Sequence[int], tokenizer) -> list[HarmonyMessage]:
    """Split companion ids into harmony messages; ``ValueError`` says where the structure breaks.

    The ids start inside the analysis message's content (its header is part of the prompt). A
    message ends at ``<|end|>`` (another may follow, opened by ``<|start|>``), at ``<|return|>`` or
    ``<|call|>`` (nothing may follow), or where the ids end. A header runs from ``<|start|>`` (or
    a ``<|channel|>`` at the very start) to ``<|message|>``; its channel is the first word of the
    text between ``<|channel|>`` and ``<|message|>`` (``<|constrain|>`` and what follows it in
    the header is ignored). Any other special token is an error.
    """
    from dasd.engines.offsets import token_bytes

    h = _harmony_ids(tokenizer)
    ids = [int(i) for i in token_ids]
    messages: list[HarmonyMessage] = []
    cur: HarmonyMessage | None = HarmonyMessage("analysis")
    state = "content"  # content | between | role | channel | done
    channel_pos: list[int] = []

    def header_channel(positions: list[int]) -> str:
        text = b"".join(token_bytes(tokenizer, [ids[p] for p in positions])).decode("utf-8", errors="replace")
        words = text.split()
        return words[0] if words else ""

    for pos, t in enumerate(ids):
        if state == "content":
            if t in h.special:
                if t == h.end or t in h.stop:
                    messages.append(cur)
                    cur = None
                    state = "between" if t == h.end else "done"
                elif t in (h.start, h.channel) and pos == 0:
                    cur = HarmonyMessage("")
                    state = "role" if t == h.start else "channel"
                elif t in (h.start, h.channel):
                    raise ValueError(f"token {pos} is {h.name(t)} inside a message (no <|end|> before it)")
                else:
                    raise ValueError(f"token {pos} is {h.name(t)} inside a message")
            else:
                cur.content.append(pos)
        elif state == "between":
            if t != h.start:
                raise ValueError(f"token {pos} follows <|end|> but is not <|start|> ({h.name(t) if t in h.special else 'text'})")
            cur = HarmonyMessage("")
            state = "role"
        elif state == "role":
            if t == h.channel:
                state, channel_pos = "channel", []
            elif t in h.special:
                raise ValueError(f"token {pos} is {h.name(t)} in a message header (expected <|channel|>)")
            else:
                cur.header.append(pos)
        elif state == "channel":
            if t == h.message:
                cur.channel = header_channel(channel_pos)
                state = "content"
            elif t == h.constrain:
                state = "constrain"
            elif t in h.special:
                raise ValueError(f"token {pos} is {h.name(t)} in a message header (expected <|message|>)")
            else:
                cur.header.append(pos)
                channel_pos.append(pos)
        elif state == "constrain":
            if t == h.message:
                cur.channel = header_channel(channel_pos)
                state = "content"
            elif t in h.special:
                raise ValueError(f"token {pos} is {h.name(t)} in a message header (expected <|message|>)")
            else:
                cur.header.append(pos)
        else:  # done
            raise ValueError(f"token {pos} comes after {h.name(ids[pos - 1]) if pos else 'the end'}, which ends the response")
    if state in ("role", "channel", "constrain"):
        raise ValueError("the ids end inside a message header")
    if cur is not None and state == "content":
        messages.append(cur)
    return messages


def _first_difference(a: str, b: str) -> int:
    n = min(len(a), len(b))
    for j in range(n):
        if a[j] != b[j]:
            return j
    return n


def _place(output: str, lo: int, decoded: str, part: str) -> tuple[int, int] | str:
    """Where ``decoded`` starts in ``output`` at ``lo`` (whitespace at either end aside): (shift, end), or a reason.

    ``shift`` turns a character index of ``decoded`` into one of ``output``; ``end`` is where the
    non-whitespace text of ``decoded`` ends in ``output``.
    """
    lead = len(decoded) - len(decoded.lstrip())
    core = decoded.strip()
    o = lo
    while o < len(output) and output[o].isspace():
        o += 1
    if output.startswith(core, o):
        return o - lead, o + len(core)
    j = _first_difference(output[o : o + len(core)], core)
    if o + j >= len(output):
        return (f"{part}: the output ends at char {o + j} but the ids' text goes on with {core[j:j + 30]!r} "
                f"(char {lead + j} of the ids' text)")
    return (f"{part} differs from the output at output char {o + j} (char {lead + j} of the ids' text): "
            f"output has {output[o + j:o + j + 30]!r}, the ids decode to {core[j:j + 30]!r}")


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i].isspace():
        i += 1
    return i


def _shifted(spans: list[tuple[int, int]], shift: int, lo: int, hi: int) -> list[tuple[int, int]]:
    """``spans`` moved by ``shift`` and clamped into ``[lo, hi]`` (only the ends can leave it: spans are monotonic)."""
    out = [(s + shift, e + shift) for s, e in spans]
    for k in range(len(out)):  # leading whitespace the output does not have
        if out[k][0] >= lo:
            break
        out[k] = (lo, max(out[k][1], lo))
    for k in range(len(out) - 1, -1, -1):  # trailing whitespace the output does not have
        if out[k][1] <= hi:
            break
        out[k] = (min(out[k][0], hi), hi)
    return out


def align_companion(output: str, token_ids: Sequence[Any], logprobs: Sequence[Any], tokenizer) -> Aligned | Mismatch:
    """Align one companion row (already joined by id) to its response ``output``; see the module doc.

    ``tokenizer`` is the teacher's (gpt-oss: o200k with the harmony tokens; ``ConfigError`` if it
    has none). Returns ``Aligned`` (kept tokens' ids, spans in ``output`` and log-probs) or
    ``Mismatch`` with the reason. The
    reasoning body starts after the first ``<think>`` and must be followed (after whitespace) by
    ``</think>``; so a literal ``</think>`` inside the reasoning does not end it early.
    """
    from dasd.engines.offsets import spans_from_bytes, token_bytes

    if not isinstance(token_ids, (list, tuple)) or not isinstance(logprobs, (list, tuple)):
        return Mismatch("companion: 'token_ids' and 'logprobs' must be lists")
    if len(token_ids) != len(logprobs):
        return Mismatch(f"companion: {len(token_ids)} token_ids but {len(logprobs)} logprobs")
    if not token_ids:
        return Mismatch("companion: no token_ids")
    n_vocab = len(tokenizer)
    for i, (t, lp) in enumerate(zip(token_ids, logprobs)):
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < n_vocab:
            return Mismatch(f"companion: token_ids[{i}] = {t!r} is not an id of the teacher tokenizer ({n_vocab} ids)")
        if isinstance(lp, bool) or not isinstance(lp, (int, float)) or not math.isfinite(lp):
            return Mismatch(f"companion: logprobs[{i}] = {lp!r} is not a finite number")
    try:
        messages = harmony_messages(token_ids, tokenizer)
    except ValueError as e:
        return Mismatch(f"companion ids are not harmony messages: {e}")
    channels = [m.channel for m in messages]
    if channels not in (["analysis"], ["analysis", "final"]) or not all(m.content for m in messages):
        shape = ", ".join(f"{c or '?'} ({len(m.content)} tokens)" for c, m in zip(channels, messages))
        return Mismatch(f"companion ids hold the messages [{shape}]; expected a non-empty analysis message "
                        "(the reasoning), optionally followed by a non-empty final message")
    open_at = output.find(THINK_OPEN)
    if open_at < 0:
        return Mismatch("output has no <think>: the reasoning body the ids belong to cannot be found")
    kept_ids: list[int] = []
    offsets: list[tuple[int, int]] = []
    lps: list[float] = []
    lo = open_at + len(THINK_OPEN)
    for k, msg in enumerate(messages):
        part = "reasoning body" if k == 0 else "final answer"
        ids = [int(token_ids[p]) for p in msg.content]
        decoded, spans = spans_from_bytes(token_bytes(tokenizer, ids))
        placed = _place(output, lo, decoded, part)
        if isinstance(placed, str):
            return Mismatch(placed)
        shift, end = placed
        after = _skip_space(output, end)
        if k == 0:
            if not output.startswith(THINK_CLOSE, after):
                return Mismatch(f"reasoning body: the ids' text ends at output char {end} but the output goes on with "
                                f"{output[end:end + 30]!r} instead of '</think>'")
            hi = after
        else:
            if after != len(output):
                return Mismatch(f"final answer: the ids' text ends at output char {end} but the output goes on with "
                                f"{output[end:end + 30]!r}")
            hi = len(output)
        kept_ids += ids
        offsets += _shifted(spans, shift, lo, hi)
        lps += [float(logprobs[p]) for p in msg.content]
        lo = hi + len(THINK_CLOSE)
    part = "reasoning+final" if len(messages) == 2 else "reasoning"
    return Aligned(part=part, token_ids=kept_ids, offsets=offsets, logprobs=lps, dropped=len(token_ids) - len(kept_ids))


def align_row(row: ReleasedRow, companion: dict[str, Any] | None, tokenizer) -> Aligned | Mismatch | None:
    """The teacher signal of one response from its companion row, looked up by ``row.uuid``.

    ``None`` when there is no companion row for it (counted *missing*), else ``align_companion``'s
    answer. A companion whose ``sample_uuid`` is not ``row.uuid`` is a join error (``ValueError``):
    rows are joined by id, never by position.
    """
    if companion is None:
        return None
    if companion.get("sample_uuid") != row.uuid:
        raise ValueError(f"companion row {companion.get('sample_uuid')!r} joined to response {row.uuid!r}: join by id")
    return align_companion(row.output, companion.get("token_ids"), companion.get("logprobs"), tokenizer)


def resolve_logprob_mode(mode: LogprobMode, temperature: float, top_p: float) -> Literal["raw", "processed"]:
    """The ``logprob_mode`` imported samples carry: ``auto`` is raw only at T=1 and top_p=1."""
    if mode == "auto":
        return "raw" if float(temperature) == 1.0 and float(top_p) == 1.0 else "processed"
    return mode
