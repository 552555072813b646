"""Token character offsets on multi-byte text, checked against a brute-force reference and against
the rule's first, per-byte and per-token Python version (``Reference``), which the vectorised one
must equal on every input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from dasd.engines.offsets import (
    _ByteTable,
    decode_with_char_index,
    generation_spans,
    spans_from_bytes,
    token_bytes,
    token_offsets,
    token_spans,
)
from dasd.errors import DasdError

TEXTS = [
    "Caf\u00e9 na\u00efve r\u00e9sum\u00e9, \u65e5\u672c\u8a9e\u306e\u6587, emoji \U0001f600\U0001f389, $\\frac{1}{2}$ and \\[x^2\\].",
    "\u00e0\u00e9\u00ee\u00f5\u00fc \u4e2d\u6587\u5b57\u7b26 \U0001f469\u200d\U0001f52c \u2211_{i=1}^n i^2 \u2192 \u221e",
    "The answer is \\boxed{14}. \u2713\n\n\u00bfQu\u00e9? \u00a1S\u00ed! \U0001f914",
    "  leading spaces, trailing tab\t and a lone \u00e9",
]


def reference_spans(text: str, pieces: list[bytes]) -> list[tuple[int, int]]:
    """Brute force: the characters whose bytes intersect each token's byte range."""
    char_ranges, pos = [], 0
    for ch in text:
        n = len(ch.encode("utf-8"))
        char_ranges.append((pos, pos + n))
        pos += n
    spans, pos = [], 0
    for piece in pieces:
        b0, b1 = pos, pos + len(piece)
        hit = [c for c, (s, e) in enumerate(char_ranges) if s < b1 and b0 < e]
        spans.append((hit[0], hit[-1] + 1))
        pos = b1
    return spans


def check_invariants(text: str, spans: list[tuple[int, int]]) -> None:
    assert all(0 <= s <= e <= len(text) for s, e in spans)
    assert [s for s, _ in spans] == sorted(s for s, _ in spans)
    assert [e for _, e in spans] == sorted(e for _, e in spans)
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    assert all(nxt[0] <= prev[1] for prev, nxt in zip(spans, spans[1:]))  # no gaps


@pytest.fixture(params=["tiny", "other"])
def byte_level_tokenizer(request, tiny_lm_dir, tiny_lm_dir_other_vocab):
    return AutoTokenizer.from_pretrained(tiny_lm_dir if request.param == "tiny" else tiny_lm_dir_other_vocab)


@pytest.mark.parametrize("text", TEXTS)
def test_byte_level_offsets_match_reference(byte_level_tokenizer, text):
    tok = byte_level_tokenizer
    ids = tok(text, add_special_tokens=False)["input_ids"]
    pieces = token_bytes(tok, ids)
    assert b"".join(pieces) == text.encode("utf-8")
    spans = token_offsets(tok, ids, text)
    assert spans == reference_spans(text, pieces)
    check_invariants(text, spans)
    for i, (s, e), piece in zip(ids, spans, pieces):
        try:
            whole = piece.decode("utf-8")
        except UnicodeDecodeError:  # part of a character: checked by the reference above
            continue
        if text[s:e] == whole:
            assert tok.decode([i]) == whole
        else:  # a whole-character token next to a split character shares that character's span
            assert whole in text[s:e]


def test_texts_exercise_split_characters(byte_level_tokenizer):
    """The texts above (the second is outside the tokenizers' training corpus) split characters."""
    ids = byte_level_tokenizer(TEXTS[1], add_special_tokens=False)["input_ids"]
    broken = 0
    for piece in token_bytes(byte_level_tokenizer, ids):
        try:
            piece.decode("utf-8")
        except UnicodeDecodeError:
            broken += 1
    assert broken >= 4


def test_special_tokens_inside_text(hf_engine):
    tok = hf_engine.tokenizer
    text = "<|im_start|>assistant\n\u00e9t\u00e9<|im_end|>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.convert_tokens_to_ids("<|im_end|>") in ids
    spans = token_offsets(tok, ids, text)
    assert text[spans[0][0] : spans[0][1]] == "<|im_start|>"
    assert text[spans[-1][0] : spans[-1][1]] == "<|im_end|>"
    check_invariants(text, spans)


@pytest.mark.parametrize("text", TEXTS)
def test_sentencepiece_offsets(sentencepiece_tokenizer, text):
    tok = sentencepiece_tokenizer
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert any(p.startswith("<0x") for p in tok.convert_ids_to_tokens(ids))  # byte fallback used
    decoded = tok.decode(ids)
    assert decoded == text  # the decoder strips the '▁' the normaliser prepended
    spans = token_offsets(tok, ids, text)
    # reference: the same brute force on the prepended-space text, shifted by one character
    ref = reference_spans(" " + text, token_bytes(tok, ids))
    assert spans == [(max(s - 1, 0), max(e - 1, 0)) for s, e in ref]
    check_invariants(text, spans)


def test_mismatched_ids_are_an_error(hf_engine):
    tok = hf_engine.tokenizer
    ids = tok("hello world", add_special_tokens=False)["input_ids"]
    with pytest.raises(DasdError, match="not this text's tokens"):
        token_offsets(tok, ids, "hello there")


def test_partial_character_at_the_end():
    # an emoji cut after 2 of its 4 bytes (a generation that hit max_tokens mid-character)
    pieces = [b"ok ", "\U0001f600".encode()[:2]]
    text, spans = spans_from_bytes(pieces)
    assert text == "ok \ufffd" and spans == [(0, 3), (3, 4)]
    pieces = [b"a", "\U0001f600".encode()[:1], "\U0001f600".encode()[1:], b""]
    text, spans = spans_from_bytes(pieces)
    assert text == "a\U0001f600" and spans == [(0, 1), (1, 2), (1, 2), (2, 2)]


def held_back_text(pieces: list[bytes]) -> str:
    """vLLM's detokenizer rule, brute force: after each token it decodes everything so far and holds
    the text back while that ends in U+FFFD; what is held at the end is never released."""
    text = ""
    for k in range(1, len(pieces) + 1):
        so_far = b"".join(pieces[:k]).decode("utf-8", errors="replace")
        if not so_far.endswith("\ufffd"):
            text = so_far
    return text


def test_a_generation_cut_inside_a_character_ends_before_it():
    """max_tokens stopped a generation after 2 of an emoji's 4 bytes: vLLM's text is "ok " (it holds
    back the U+FFFD those bytes decode to), so the generation's text is too, and the cut token has
    the empty span at the end, not a span past the text."""
    emoji = "\U0001f600".encode()
    assert generation_spans([b"ok ", emoji[:2]]) == ("ok ", [(0, 3), (3, 3)])
    assert generation_spans([b"ok ", emoji[:1], emoji[1:2], b""]) == ("ok ", [(0, 3), (3, 3), (3, 3), (3, 3)])
    # completed characters and invalid bytes inside the text are kept, as vLLM keeps them
    assert generation_spans([b"a", emoji[:1], emoji[1:]]) == ("a\U0001f600", [(0, 1), (1, 2), (1, 2)])
    assert generation_spans([b"\xe6", b"b", b"\xe6\x97"]) == ("\ufffdb", [(0, 1), (1, 2), (2, 2)])
    # vLLM's test is the text ending in U+FFFD, so a stray byte or a real U+FFFD at the end goes too
    assert generation_spans([b"x", b"\x80"]) == ("x", [(0, 1), (1, 1)])
    assert generation_spans([b"x", "\ufffd".encode()]) == ("x", [(0, 1), (1, 1)])
    assert generation_spans([emoji[:2]]) == ("", [(0, 0)])
    assert generation_spans([]) == ("", [])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=4), max_size=10))
def test_generation_spans_follow_vllm_rule(pieces):
    text, spans = generation_spans(pieces)
    assert text == held_back_text(pieces)
    full, full_spans = spans_from_bytes(pieces)
    assert full.startswith(text)
    assert spans == [(min(s, len(text)), min(e, len(text))) for s, e in full_spans]


def test_a_held_back_generation_text_is_its_ids_text(sentencepiece_tokenizer):
    """Re-scoring a sample cut inside 'é' with its own ids: token_offsets takes the held-back text."""
    tok = sentencepiece_tokenizer
    ids = tok("an \u00e9", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids)[-2:] == ["<0xC3>", "<0xA9>"]
    text, spans = generation_spans(token_bytes(tok, ids[:-1]))
    assert text == " an "
    assert token_offsets(tok, ids[:-1], text) == spans and spans[-1] == (4, 4)
    with pytest.raises(DasdError, match="not this text's tokens"):
        token_offsets(tok, ids[:-1], " a")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40))
def test_decode_with_char_index_matches_python(data):
    text, index = decode_with_char_index(data)
    index = index.tolist()
    assert text == data.decode("utf-8", errors="replace")
    assert index == sorted(index)
    if data:
        assert index[0] == 0 and index[-1] == len(text) - 1
        # every character's bytes, regrouped, decode to that character (or are one invalid run)
        for c in range(len(text)):
            chunk = bytes(b for b, k in zip(data, index) if k == c)
            assert chunk.decode("utf-8", errors="replace") == text[c]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=5), min_size=1, max_size=12))
def test_spans_from_arbitrary_byte_pieces(pieces):
    text, spans = spans_from_bytes(pieces)
    assert len(spans) == len(pieces)
    assert all(0 <= s <= e <= len(text) for s, e in spans)
    assert [s for s, _ in spans] == sorted(s for s, _ in spans)
    assert [e for _, e in spans] == sorted(e for _, e in spans)


def test_unsupported_decoder_is_an_error_not_a_misalignment():
    """A WordPiece tokenizer ('##' continuations, spaces re-inserted by the decoder) is refused."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "the": 1, "cat": 2, "sat": 3, "##s": 4, "on": 5, "mat": 6}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    text = "the cats sat on the mat"
    ids = fast(text, add_special_tokens=False)["input_ids"]
    assert fast.decode(ids) == text
    with pytest.raises(DasdError, match="not supported"):
        token_offsets(fast, ids, text)



# -- the vectorised rule equals its first version ----------------------------------------------------


class Reference:
    """The offsets rule as first written, with per-byte and per-token Python loops (dasd 2707293):
    the reference the vectorised ``engines.offsets`` must equal on every input."""

    @staticmethod
    def token_bytes(tokenizer, ids) -> list[bytes]:
        table = _ByteTable(tokenizer)
        return [table.piece_bytes(tokenizer, i, p) for i, p in zip(ids, tokenizer.convert_ids_to_tokens(list(ids)))]

    @staticmethod
    def decode_with_char_index(data: bytes) -> tuple[str, list[int]]:
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
                if data[j] & 0xC0 != 0x80:
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

    @classmethod
    def pieces_spans(cls, pieces):
        data = b"".join(pieces)
        text, index = cls.decode_with_char_index(data)
        spans: list[tuple[int, int]] = []
        pos = 0
        for piece in pieces:
            b0, b1 = pos, pos + len(piece)
            if b1 > b0:
                spans.append((index[b0], index[b1 - 1] + 1))
            elif b0 == len(data):
                spans.append((len(text), len(text)))
            elif b0 == 0 or index[b0] != index[b0 - 1]:
                spans.append((index[b0], index[b0]))
            else:
                spans.append((index[b0], index[b0] + 1))
            pos = b1
        return text, index, spans

    @classmethod
    def spans_from_bytes(cls, pieces):
        text, _, spans = cls.pieces_spans(pieces)
        return text, spans

    @classmethod
    def generation_spans(cls, pieces):
        text, index, spans = cls.pieces_spans(pieces)
        cut = 0
        end = sum(len(p) for p in pieces)
        for piece in reversed(pieces):
            if end == 0:
                break
            whole = end == len(index) or index[end] != index[end - 1]
            if whole and text[index[end - 1]] != "\ufffd":
                cut = index[end - 1] + 1
                break
            end -= len(piece)
        return text[:cut], [(min(s, cut), min(e, cut)) for s, e in spans]

    @classmethod
    def token_offsets(cls, tokenizer, ids, text):
        pieces = cls.token_bytes(tokenizer, ids)
        decoded, spans = cls.spans_from_bytes(pieces)
        if decoded == text:
            return spans
        held, held_spans = cls.generation_spans(pieces)
        if held == text:
            return held_spans
        shift = len(decoded) - len(text)
        if shift > 0 and decoded.endswith(text) and not decoded[:shift].strip():
            return [(max(s - shift, 0), max(e - shift, 0)) for s, e in spans]
        raise DasdError("not this text's tokens")


# bytes that make UTF-8 edge cases: ASCII, continuation bytes, lead bytes of 2, 3 and 4-byte characters
# (overlong, surrogate and out-of-range ones included), never-valid bytes, and whole characters
# (U+FFFD itself, CJK, an emoji, the sentencepiece word-start)
EDGE_BYTES = [bytes([b]) for b in (0x20, 0x41, 0x0A, 0x80, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0, 0xED,
                                   0xEF, 0xF0, 0xF4, 0xF5, 0xFF)]
EDGE_BYTES += [c.encode() for c in ("\ufffd", "\u00e9", "\u65e5", "\U0001f600", "\u2581")]
soup = st.lists(st.one_of(st.sampled_from(EDGE_BYTES), st.binary(max_size=3)), max_size=6).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(st.lists(soup, max_size=14))
def test_vectorised_spans_equal_the_first_version_on_byte_soup(pieces):
    """Random pieces of UTF-8 edge-case bytes (characters split across pieces, invalid runs, U+FFFD
    in the text, empty pieces): the same text, byte index, spans and held-back generation."""
    text, index = decode_with_char_index(b"".join(pieces))
    assert (text, index.tolist()) == Reference.decode_with_char_index(b"".join(pieces))
    assert spans_from_bytes(pieces) == Reference.spans_from_bytes(pieces)
    assert generation_spans(pieces) == Reference.generation_spans(pieces)


def trained_bpe():
    """A byte-level BPE trained here on emoji, CJK and accented text, with added tokens (one special)."""
    from dasd.toy.tokenizer import build_tokenizer

    corpus = TEXTS * 5 + ["\u6570\u5b66\u306e\u554f\u984c \U0001f600\U0001f600 \u00e9t\u00e9 caf\u00e9 \u2581\u2581 \ufffd"] * 5
    tok = build_tokenizer(corpus, vocab_size=420)
    tok.add_tokens(["<tool>", "\u00e9t\u00e9!"])
    tok.add_special_tokens({"additional_special_tokens": ["<|sep|>"]})
    return tok


def tokenizer_zoo(tiny_lm_dir, tiny_lm_dir_other_vocab):
    """Real tokenizers of every kind the rule knows: byte-level BPE (the toy teacher's and student's, two
    tiny ones, one trained here with added tokens), sentencepiece-style with byte fallback (with and
    without a pad token and merges), and one whose decoder the rule does not know (WordPiece)."""
    from sp_tokenizer import llama2_style_tokenizer
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from dasd.toy.build import default_toy_dir

    wp = Tokenizer(models.WordPiece(vocab={"[UNK]": 0, "the": 1, "cat": 2, "sat": 3, "##s": 4, "on": 5}, unk_token="[UNK]"))
    wp.pre_tokenizer = pre_tokenizers.Whitespace()
    wp.decoder = decoders.WordPiece()
    return {
        "toy teacher": AutoTokenizer.from_pretrained(default_toy_dir() / "teacher"),
        "toy student": AutoTokenizer.from_pretrained(default_toy_dir() / "student"),
        "tiny": AutoTokenizer.from_pretrained(tiny_lm_dir),
        "tiny other": AutoTokenizer.from_pretrained(tiny_lm_dir_other_vocab),
        "trained BPE": trained_bpe(),
        "sentencepiece": llama2_style_tokenizer([("\u2581", "t"), ("h", "e"), ("\u2581t", "he"), ("a", "n")]),
        "sentencepiece, pad": llama2_style_tokenizer([], pad=True),
        "wordpiece": PreTrainedTokenizerFast(tokenizer_object=wp, unk_token="[UNK]"),
    }


def outcome(f, *args):
    """``f(*args)``, or the fact that it raised a DasdError."""
    try:
        return f(*args)
    except DasdError:
        return "DasdError"


def test_vectorised_offsets_equal_the_first_version_on_random_ids(tiny_lm_dir, tiny_lm_dir_other_vocab):
    """token_offsets (and token_spans, as an array) == the first version, for random ids of every kind
    of tokenizer (byte soup, split emoji and CJK, byte-fallback pieces, added and special tokens) and
    for real encodings cut at random points, against each text the ids may be asked with: their
    decoded bytes, a generation's held-back text, the tokenizer's own decoding (sentencepiece strips
    the leading space), the text less its first character, and a text they are not."""
    rng = np.random.default_rng(0)
    zoo = tokenizer_zoo(tiny_lm_dir, tiny_lm_dir_other_vocab)
    seen = {"split": 0, "held back": 0, "shifted": 0, "error": 0}
    for name, tok in zoo.items():
        encoded = [tok(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
        cases = [rng.integers(0, len(tok), size=rng.integers(0, 30)).tolist() for _ in range(150)]
        for _ in range(150):
            ids = encoded[rng.integers(len(encoded))]
            a, b = sorted(rng.integers(0, len(ids) + 1, size=2))
            cases.append(ids[a:b])
        cases += [[], [tok.all_special_ids[0]], encoded[0] + encoded[1]]
        for ids in cases:
            pieces = Reference.token_bytes(tok, ids)
            assert token_bytes(tok, ids) == pieces
            full, spans = Reference.spans_from_bytes(pieces)
            held, _ = Reference.generation_spans(pieces)
            for text in {full, held, tok.decode(ids), full[1:], full + "x"}:
                want = outcome(Reference.token_offsets, tok, ids, text)
                assert outcome(token_offsets, tok, ids, text) == want, (name, ids, text)
                got = outcome(token_spans, tok, np.asarray(ids, dtype=np.int32), text)
                assert want == (got if isinstance(got, str) else [tuple(s) for s in got.tolist()])
                seen["error"] += want == "DasdError"
                seen["held back"] += text == held != full and want != "DasdError"
                seen["shifted"] += len(text) < len(full) and text != held and want != "DasdError"
            seen["split"] += any(e > s2 for (_, e), (s2, _) in zip(spans, spans[1:]))
    assert min(seen.values()) >= 20, seen  # every branch of the rule was taken, many times


def test_ids_outside_the_vocabulary_are_an_error_naming_the_id():
    """A vocabulary with holes (WordLevel ids 0, 1, 7: len 3) has its ids past len(tokenizer) too; an id it
    does not have, negative or too large for the tokenizer's integers, is a DasdError naming it."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    wl = Tokenizer(models.WordLevel(vocab={"[UNK]": 0, "a": 1, "b": 7}, unk_token="[UNK]"))
    wl.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=wl, unk_token="[UNK]")
    assert len(tok) == 3 and token_bytes(tok, [7, 1, 7]) == Reference.token_bytes(tok, [7, 1, 7]) == [b"b", b"a", b"b"]
    assert token_offsets(tok, [1, 7], "ab") == Reference.token_offsets(tok, [1, 7], "ab") == [(0, 1), (1, 2)]
    for bad, named in (([1, 5], 5), ([-1], -1), ([2**40, 1], 2**40)):
        with pytest.raises(DasdError, match=rf"token id {named} is not in the tokenizer's vocabulary"):
            token_offsets(tok, bad, "ab")
