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

import codecs
import json
import re
import threading
import weakref
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

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
    """Per-tokenizer memo of id -> bytes (filled lazily; rebuilt if the vocabulary grows): ``pieces``
    (the bytes, None where not yet known) and ``lengths`` (their lengths, -1 where not yet known),
    so that a sequence's lengths are one numpy gather."""

    def __init__(self, tokenizer):
        self.kind = _decoder_kind(tokenizer)
        self.size = len(tokenizer)
        self.added = {i: t.content for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()}
        self.pieces: list[bytes | None] = [None] * self.size
        self.lengths = np.full(self.size, -1, dtype=np.int64)

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

    def lookup(self, tokenizer, ids: np.ndarray) -> np.ndarray:
        """The byte lengths of ``ids`` (an int64 array), learning the ids not seen before; an id the
        tokenizer does not have is a DasdError."""
        if not ids.size:
            return np.zeros(0, dtype=np.int64)
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0:
            raise DasdError(f"token id {lo} is not in the tokenizer's vocabulary ({len(tokenizer)} entries)")
        if hi >= len(self.lengths):  # past len(tokenizer): known only to a vocabulary with holes
            beyond = sorted({int(i) for i in ids[ids >= len(self.lengths)]})
            try:
                pieces = tokenizer.convert_ids_to_tokens(beyond)
            except OverflowError:
                pieces = [None]
            if None in pieces:
                i = beyond[pieces.index(None)] if len(pieces) == len(beyond) else hi
                raise DasdError(f"token id {i} is not in the tokenizer's vocabulary ({len(tokenizer)} entries)")
            self.pieces += [None] * (hi + 1 - len(self.pieces))
            self.lengths = np.concatenate([self.lengths, np.full(hi + 1 - len(self.lengths), -1, dtype=np.int64)])
        lengths = self.lengths[ids]
        if (lengths < 0).any():
            missing = np.unique(ids[lengths < 0]).tolist()
            for i, piece in zip(missing, tokenizer.convert_ids_to_tokens(missing)):
                if piece is None:
                    raise DasdError(f"token id {i} is not in the tokenizer's vocabulary ({len(tokenizer)} entries)")
                self.pieces[i] = data = self.piece_bytes(tokenizer, i, piece)
                self.lengths[i] = len(data)
            lengths = self.lengths[ids]
        return lengths


_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _table(tokenizer) -> _ByteTable:
    table = _TABLES.get(tokenizer)
    if table is None or table.size != len(tokenizer):
        table = _TABLES[tokenizer] = _ByteTable(tokenizer)
    return table


def _token_data(tokenizer, ids: Sequence[int]) -> tuple[np.ndarray, bytes]:
    """Each token's byte length and the tokens' bytes, concatenated."""
    table = _table(tokenizer)
    arr = np.asarray(ids, dtype=np.int64).reshape(-1)
    lengths = table.lookup(tokenizer, arr)
    return lengths, b"".join(map(table.pieces.__getitem__, ids if isinstance(ids, list) else arr.tolist()))


def token_bytes(tokenizer, ids: Sequence[int]) -> list[bytes]:
    """The bytes each token id stands for in decoded text (see the module docstring)."""
    table = _table(tokenizer)
    arr = np.asarray(ids, dtype=np.int64).reshape(-1)
    table.lookup(tokenizer, arr)
    return list(map(table.pieces.__getitem__, arr.tolist()))


# ``bytes.decode`` with this error handler is ``errors="replace"`` (one U+FFFD for each invalid byte
# run the decoder reports) that also records each run's byte range in ``_BAD.runs`` (per thread).
_BAD = threading.local()
_RECORD_REPLACE = "dasd.offsets.record_replace"


def _record_replace(err: UnicodeDecodeError) -> tuple[str, int]:
    _BAD.runs.append((err.start, err.end))
    return "\ufffd", err.end


codecs.register_error(_RECORD_REPLACE, _record_replace)


def decode_with_char_index(data: bytes) -> tuple[str, np.ndarray]:
    """Decode UTF-8 like ``data.decode(errors="replace")``; also return each byte's character index
    (an int64 array).

    Valid multi-byte sequences map all their bytes to one character; each maximal invalid byte run
    (a character cut short, a stray continuation byte) maps to the one U+FFFD that replaces it. So a
    byte starts a character when it is not a continuation byte (``10xxxxxx``) of valid text, or when
    it is the first byte of an invalid run; the index is the running count of those, less one.
    """
    starts = (np.frombuffer(data, dtype=np.uint8) & 0xC0) != 0x80
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        _BAD.runs = []
        text = data.decode("utf-8", errors=_RECORD_REPLACE)
        runs = np.asarray(_BAD.runs, dtype=np.int64).reshape(-1, 2)
        depth = np.zeros(len(data) + 1, dtype=np.int64)
        depth[runs[:, 0]] += 1  # the runs do not overlap: each start, and each end, is there once
        depth[runs[:, 1]] -= 1
        starts[np.cumsum(depth[:-1]) > 0] = False
        starts[runs[:, 0]] = True
    return text, np.cumsum(starts, dtype=np.int64) - 1


def _pieces_spans(lengths: np.ndarray, data: bytes) -> tuple[str, np.ndarray, np.ndarray]:
    """The text ``data`` (pieces of byte ``lengths``, concatenated) decodes to, each byte's character
    index, and each piece's span (an ``(n, 2)`` int64 array; the rule of the module docstring)."""
    text, index = decode_with_char_index(data)
    at = np.append(index, len(text))  # the character at each byte position; the text's end after the last
    ends = np.cumsum(lengths, dtype=np.int64)
    b0 = ends - lengths
    start = at[b0]
    # an empty piece inside a character (the bytes on both sides belong to it) gets that character
    inside = (lengths == 0) & (b0 > 0) & (b0 < len(data)) & (start == at[b0 - 1])
    end = np.where(lengths > 0, at[np.maximum(ends - 1, 0)] + 1, start + inside)
    return text, index, np.stack([start, end], axis=1)


def _held_back(text: str, index: np.ndarray, lengths: np.ndarray, spans: np.ndarray) -> tuple[str, np.ndarray]:
    """``generation_spans`` from what ``_pieces_spans`` gave: the text ends at the end of the last
    piece after which the text so far splits no character and does not end in U+FFFD."""
    ends = np.cumsum(lengths, dtype=np.int64)
    ends = ends[ends > 0]
    cut = 0
    if ends.size:
        at = np.append(index, len(text))
        last = at[ends - 1]  # the character each piece's last byte is in
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)  # decoded text: no surrogates
        ok = np.flatnonzero((at[ends] != last) & (codes[last] != 0xFFFD))
        cut = int(last[ok[-1]]) + 1 if ok.size else 0
    return text[:cut], np.minimum(spans, cut)


def _tuples(spans: np.ndarray) -> list[tuple[int, int]]:
    """An ``(n, 2)`` span array as a list of ``(start, end)`` tuples of ints."""
    return list(zip(spans[:, 0].tolist(), spans[:, 1].tolist()))


def _bytes_of(pieces: Sequence[bytes]) -> tuple[np.ndarray, bytes]:
    return np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces)), b"".join(pieces)


def spans_from_bytes(pieces: Sequence[bytes]) -> tuple[str, list[tuple[int, int]]]:
    """The text the concatenated ``pieces`` decode to, and each piece's character span in it."""
    text, _, spans = _pieces_spans(*_bytes_of(pieces))
    return text, _tuples(spans)


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
    lengths, data = _bytes_of(pieces)
    text, index, spans = _pieces_spans(lengths, data)
    held, held_spans = _held_back(text, index, lengths, spans)
    return held, _tuples(held_spans)


def token_spans(tokenizer, ids: Sequence[int], text: str) -> np.ndarray:
    """``token_offsets`` as an ``(len(ids), 2)`` int64 array."""
    lengths, data = _token_data(tokenizer, ids)
    decoded, index, spans = _pieces_spans(lengths, data)
    if decoded == text:
        return spans
    held, held_spans = _held_back(decoded, index, lengths, spans)
    if held == text:  # a generation's text: its trailing cut character held back (generation_spans)
        return held_spans
    shift = len(decoded) - len(text)
    if shift > 0 and decoded.endswith(text) and not decoded[:shift].strip():
        return np.maximum(spans - shift, 0)
    raise DasdError(
        f"token offsets: the {len(lengths)} token ids decode to {decoded[:60]!r}... but the text is "
        f"{text[:60]!r}...; the ids are not this text's tokens, or this tokenizer's decoder "
        f"({_decoder_kind(tokenizer)}) is not supported by dasd.engines.offsets"
    )


def token_offsets(tokenizer, ids: Sequence[int], text: str) -> list[tuple[int, int]]:
    """Character spans of token ``ids`` in ``text``, the decoded form of exactly those ids.

    ``text`` may also be the ids' text as a generation has it (``generation_spans``: a character cut
    at the end held back), so a sample is re-scored with its own ids. Raises DasdError if the ids'
    bytes do not decode to ``text`` (up to a leading space that the tokenizer's decoder strips),
    rather than returning misaligned spans. ``token_spans`` gives the same as an array.
    """
    return _tuples(token_spans(tokenizer, ids, text))
