"""Character offsets of tokens in decoded text, exact for tokens that split a multi-byte character.

Why not the tokenizer's own ``offset_mapping``: it is only defined when *encoding* text, and for
byte-level BPE it is unreliable (overlapping or shifted spans were seen with ``use_regex=False``).
Sampled tokens are never encoded text anyway. So offsets are computed from bytes:

1. every token's bytes: for byte-level BPE (GPT-2, Qwen, Llama 3, gpt-oss) by mapping each
   character of the vocabulary string back through the byte-to-unicode table; for
   sentencepiece-style vocabularies (Llama 2, Mistral, Gemma) by turning ``▁`` into a space and
   ``<0xNN>`` byte-fallback pieces into that byte; added/special tokens are their content;
2. cumulative byte positions of each token in the concatenated bytes;
3. byte positions mapped to characters of the text those bytes decode to (UTF-8, invalid byte
   runs replaced by one U+FFFD each, exactly as ``bytes.decode(errors="replace")``).

**The rule.** A token covering bytes ``[b0, b1)`` gets the character span ``(start, end)`` with
``start`` = index of the character that contains byte ``b0`` and ``end`` = 1 + index of the
character that contains byte ``b1 - 1``. So several tokens that each hold a part of one character
(an emoji split in two byte-level tokens) all get that whole character, and a token that ends with
the first bytes of a character also covers it. A token with no bytes gets the empty span at its
position, or the whole character if its position falls inside one. Consequences: starts and ends are non-decreasing, every span
lies inside ``[0, len(text)]``, consecutive spans never leave a gap, and they overlap only on a
character split between tokens. ``text[start:end]`` of a token that splits no character is exactly
that token's text.

**A generation's text** (``generation_spans``, used by the hf and vllm engines) follows vLLM's
detokenizer, which holds back text that ends in U+FFFD until a later token completes the
character: a generation cut inside a multi-byte character (``max_tokens`` after the first
byte-fallback piece of "é") ends before that character, not with U+FFFD, and the tokens whose
bytes were dropped get the empty span ``(len(text), len(text))``.

If the tokenizer's decoding strips a leading space (sentencepiece) the spans are shifted left by the
stripped characters and clamped at 0. Any other mismatch between the tokens' bytes and the text is
an error (a tokenizer whose decoder this module does not understand, or ids that are not the
text's tokens), never a silent misalignment.
"""

from __future__ import annotations

import json
import re
import weakref
from collections.abc import Sequence
from functools import lru_cache

from dasd.errors import DasdError

_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@lru_cache(maxsize=1)
def byte_level_decoder() -> dict[str, int]:
    """The inverse of GPT-2's byte-to-unicode table: printable character -> byte value.

    Byte-level BPE writes every byte as one printable character: bytes that are printable
    Latin-1 characters stand for themselves, the other 68 bytes are shifted to code points 256+
    in increasing order.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\xa1"), ord("\xac") + 1))
        + list(range(ord("\xae"), ord("\xff") + 1))
    )
    table: dict[str, int] = {chr(b): b for b in printable}
    shift = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + shift)] = b
            shift += 1
    return table


def _decoder_kind(tokenizer) -> str:
    """'byte_level', 'sentencepiece' or 'unknown', from the fast tokenizer's decoder."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        # a slow sentencepiece tokenizer (LlamaTokenizer and friends)
        return "sentencepiece" if hasattr(tokenizer, "sp_model") else "unknown"
    dec = backend.decoder
    decoder = json.loads(dec.__getstate__()) if dec is not None else {}
    types = [decoder.get("type")] + [d.get("type") for d in decoder.get("decoders", []) or []]
    if "ByteLevel" in types:
        return "byte_level"
    if "Metaspace" in types or "ByteFallback" in types or "Replace" in types:
        return "sentencepiece"
    return "unknown"


class _ByteTable:
    """Per-tokenizer memo of id -> bytes (built lazily; rebuilt if the vocabulary grows)."""

    def __init__(self, tokenizer):
        self.kind = _decoder_kind(tokenizer)
        self.size = len(tokenizer)
        self.added = {i: t.content for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()}
        self.known: dict[int, bytes] = {}

    def piece_bytes(self, tokenizer, i: int, piece: str) -> bytes:
        if i in self.added:
            return self.added[i].encode("utf-8")
        if self.kind == "byte_level":
            table = byte_level_decoder()
            if all(c in table for c in piece):
                return bytes(table[c] for c in piece)
            return piece.encode("utf-8")  # a vocabulary entry outside the byte alphabet: as text
        if self.kind == "sentencepiece":
            m = _BYTE_FALLBACK.match(piece)
            return bytes([int(m.group(1), 16)]) if m else piece.replace("\u2581", " ").encode("utf-8")
        # unknown decoder: the token decoded alone; token_offsets checks the result against the text
        return tokenizer.decode([i], clean_up_tokenization_spaces=False).encode("utf-8")


_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def token_bytes(tokenizer, ids: Sequence[int]) -> list[bytes]:
    """The bytes each token id stands for in decoded text (see the module docstring)."""
    table = _TABLES.get(tokenizer)
    if table is None or table.size != len(tokenizer):
        table = _TABLES[tokenizer] = _ByteTable(tokenizer)
    missing = sorted({int(i) for i in ids} - table.known.keys())
    if missing:
        for i, piece in zip(missing, tokenizer.convert_ids_to_tokens(missing)):
            if piece is None:
                raise DasdError(f"token id {i} is not in the tokenizer's vocabulary ({len(tokenizer)} entries)")
            table.known[i] = table.piece_bytes(tokenizer, i, piece)
    return [table.known[int(i)] for i in ids]


def decode_with_char_index(data: bytes) -> tuple[str, list[int]]:
    """Decode UTF-8 like ``data.decode(errors="replace")``; also return each byte's character index.

    Valid multi-byte sequences map all their bytes to one character; each maximal invalid byte run
    (a character cut short, a stray continuation byte) maps to the one U+FFFD that replaces it.
    """
    index: list[int] = [0] * len(data)
    parts: list[str] = []
    n_chars = 0
    pos = 0
    while pos < len(data):
        try:
            chunk = data[pos:].decode("utf-8")
            valid_end, bad_end = len(data), len(data)
        except UnicodeDecodeError as err:
            chunk = data[pos : pos + err.start].decode("utf-8")
            valid_end, bad_end = pos + err.start, pos + err.end
        for j in range(pos, valid_end):
            if data[j] & 0xC0 != 0x80:  # a lead byte starts a character
                n_chars += 1
            index[j] = n_chars - 1
        parts.append(chunk)
        if bad_end > valid_end:
            parts.append("\ufffd")
            n_chars += 1
            for j in range(valid_end, bad_end):
                index[j] = n_chars - 1
        pos = bad_end
    return "".join(parts), index


def _pieces_spans(pieces: Sequence[bytes]) -> tuple[str, list[int], list[tuple[int, int]]]:
    """The text the concatenated ``pieces`` decode to, each byte's character index, each piece's span."""
    data = b"".join(pieces)
    text, index = decode_with_char_index(data)
    spans: list[tuple[int, int]] = []
    pos = 0
    for piece in pieces:
        b0, b1 = pos, pos + len(piece)
        if b1 > b0:
            spans.append((index[b0], index[b1 - 1] + 1))
        elif b0 == len(data):
            spans.append((len(text), len(text)))
        elif b0 == 0 or index[b0] != index[b0 - 1]:  # empty token at a character boundary
            spans.append((index[b0], index[b0]))
        else:  # empty token inside a character: that character, like its neighbours
            spans.append((index[b0], index[b0] + 1))
        pos = b1
    return text, index, spans


def spans_from_bytes(pieces: Sequence[bytes]) -> tuple[str, list[tuple[int, int]]]:
    """The text the concatenated ``pieces`` decode to, and each piece's character span in it."""
    text, _, spans = _pieces_spans(pieces)
    return text, spans


def generation_spans(pieces: Sequence[bytes]) -> tuple[str, list[tuple[int, int]]]:
    """A generation's text as vLLM's detokenizer returns it for these token ``pieces``, and their spans.

    vLLM decodes incrementally and holds back the text while what it has decoded so far ends in
    U+FFFD (``DecodeStream.step`` in tokenizers, ``detokenize_incrementally`` on its slow path:
    "potential unfinished byte sequence from byte fallback tokenization"); a later token that
    completes the character releases it, but nothing releases what is still held at the end. So the
    text is the decoded bytes up to the end of the last token after which the text so far does not
    end in U+FFFD: a generation cut inside a multi-byte character (``max_tokens``) loses that
    character's first bytes instead of ending in U+FFFD. The tokens whose bytes were dropped get the
    empty span at the end of the text; the others keep their ``spans_from_bytes`` spans.
    """
    text, index, spans = _pieces_spans(pieces)
    cut = 0
    end = sum(len(p) for p in pieces)
    for piece in reversed(pieces):  # ``end``: where the text so far ends after this token
        if end == 0:
            break
        whole = end == len(index) or index[end] != index[end - 1]  # no character split at ``end``
        if whole and text[index[end - 1]] != "\ufffd":
            cut = index[end - 1] + 1
            break
        end -= len(piece)
    return text[:cut], [(min(s, cut), min(e, cut)) for s, e in spans]


def token_offsets(tokenizer, ids: Sequence[int], text: str) -> list[tuple[int, int]]:
    """Character spans of token ``ids`` in ``text``, the decoded form of exactly those ids.

    ``text`` may also be the ids' text as a generation has it (``generation_spans``: a character cut
    at the end held back), so a sample is re-scored with its own ids. Raises DasdError if the ids'
    bytes do not decode to ``text`` (up to a leading space that the tokenizer's decoder strips),
    rather than returning misaligned spans.
    """
    pieces = token_bytes(tokenizer, ids)
    decoded, spans = spans_from_bytes(pieces)
    if decoded == text:
        return spans
    held, held_spans = generation_spans(pieces)
    if held == text:  # a generation's text: its trailing cut character held back (generation_spans)
        return held_spans
    shift = len(decoded) - len(text)
    if shift > 0 and decoded.endswith(text) and not decoded[:shift].strip():
        return [(max(s - shift, 0), max(e - shift, 0)) for s, e in spans]
    raise DasdError(
        f"token offsets: the {len(ids)} token ids decode to {decoded[:60]!r}... but the text is "
        f"{text[:60]!r}...; the ids are not this text's tokens, or this tokenizer's decoder "
        f"({_decoder_kind(tokenizer)}) is not supported by dasd.engines.offsets"
    )
