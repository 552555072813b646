"""Loss masks, token by token: assistant tokens (content + end-of-turn) and the student prefix rule."""

from __future__ import annotations

import re

import numpy as np
import pytest
from transformers import AutoTokenizer

from dasd.errors import InputError
from dasd.toy.tokenizer import QWEN_LIKE_TEMPLATE as QWEN_LIKE
from dasd.train.encode import IGNORE, encode_example

ANSWER = "Café 日本 is 7."


@pytest.fixture(scope="module")
def tok(tiny_lm_dir):
    return AutoTokenizer.from_pretrained(tiny_lm_dir)


def _bytes_of(tok, ids):
    """Raw bytes of each token, from the byte-level alphabet (an oracle independent of offsets)."""
    inv = {c: b for b, c in enumerate(_byte_alphabet())}
    out = []
    for t in tok.convert_ids_to_tokens(ids):
        if t in tok.all_special_tokens:
            out.append(t.encode())
        else:
            out.append(bytes(inv[c] for c in t))
    return out


def _byte_alphabet():
    # GPT-2 byte <-> unicode table (the one ByteLevel uses), rebuilt here for the oracle
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs))
    return [chr(table[b]) for b in range(256)]


def _example(prefix_chars=0, answer=ANSWER):
    return {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "3+4?"},
                         {"role": "assistant", "content": answer}], "prefix_chars": prefix_chars}


def _joined(tok, ids, mask):
    return b"".join(b for b, m in zip(_bytes_of(tok, ids), mask) if m)


def test_loss_tokens_are_the_assistant_content_and_end_of_turn(tok):
    e = encode_example(tok, _example())
    assert _joined(tok, e.input_ids, e.loss_mask) == (ANSWER + "<|im_end|>").encode()
    # the loss-carrying tokens form one contiguous run ending at <|im_end|>, before the final newline
    idx = [i for i, m in enumerate(e.loss_mask) if m]
    assert idx == list(range(idx[0], idx[-1] + 1))
    assert tok.convert_ids_to_tokens(e.input_ids[idx[-1]]) == "<|im_end|>"
    assert not e.loss_mask[-1]  # the "\n" after <|im_end|>
    # labels are the shifted loss tokens
    assert e.labels[-1] == IGNORE
    for t in range(len(e) - 1):
        assert e.labels[t] == (e.input_ids[t + 1] if e.loss_mask[t + 1] else IGNORE)


def test_multibyte_character_split_over_tokens_is_all_prefix(tok):
    # "日" is 3 UTF-8 bytes; this tokenizer spells it as 3 byte tokens. Prefix "Café 日" ends right after it.
    e = encode_example(tok, _example(prefix_chars=len("Café 日")))
    pre = [i for i, p in enumerate(e.prefix_mask) if p]
    assert _joined(tok, e.input_ids, e.prefix_mask) == "Café 日".encode()
    ri = "日".encode()
    assert _bytes_of(tok, [e.input_ids[i] for i in pre[-3:]]) == [ri[0:1], ri[1:2], ri[2:3]]
    assert not e.prefix_mask[pre[-1] + 1]  # the first byte of "本" is not
    # unmasked by default: loss still covers prefix + continuation
    assert _joined(tok, e.input_ids, e.loss_mask) == (ANSWER + "<|im_end|>").encode()


def test_token_straddling_the_prefix_boundary_is_a_prefix_token(tok):
    answer = "So the answer is 7."
    e0 = encode_example(tok, _example(answer=answer))
    toks = tok.convert_ids_to_tokens(e0.input_ids)
    # find a multi-character token inside the answer and cut the prefix in its middle
    start = next(i for i, m in enumerate(e0.loss_mask) if m)
    pos = 0
    for i in range(start, len(toks)):
        piece = _bytes_of(tok, [e0.input_ids[i]])[0].decode()
        if len(piece) >= 2:
            cut = pos + 1
            break
        pos += len(piece)
    e = encode_example(tok, _example(prefix_chars=cut, answer=answer))
    pre = [i for i, p in enumerate(e.prefix_mask) if p]
    assert pre == list(range(start, i + 1))  # the straddling token i is included
    assert _joined(tok, e.input_ids, e.prefix_mask).decode().startswith(answer[:cut])


def test_masked_prefix_removes_exactly_the_prefix_tokens(tok):
    n = len("Café 日")
    un = encode_example(tok, _example(prefix_chars=n))
    m = encode_example(tok, _example(prefix_chars=n), mask_prefix=True)
    assert un.input_ids == m.input_ids
    assert m.loss_mask == [lm and not p for lm, p in zip(un.loss_mask, un.prefix_mask)]
    assert _joined(tok, m.input_ids, m.loss_mask) == ("本 is 7.<|im_end|>").encode()


def test_multi_turn_every_assistant_turn_carries_loss(tok):
    ex = {"messages": [{"role": "user", "content": "a?"}, {"role": "assistant", "content": "first"},
                       {"role": "user", "content": "b?"}, {"role": "assistant", "content": "second"}]}
    e = encode_example(tok, ex)
    assert _joined(tok, e.input_ids, e.loss_mask) == b"first<|im_end|>second<|im_end|>"


def test_bad_prefix_is_an_error_naming_the_example(tok):
    with pytest.raises(InputError, match=r"data.jsonl:3.*prefix_chars"):
        encode_example(tok, _example(prefix_chars=999), where="data.jsonl:3")


def test_prefix_survives_a_template_that_relays_think_whitespace(tiny_lm_dir):
    """Qwen3-style templates re-render <think>R</think>A with newlines; the prefix maps through that."""
    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    tok.chat_template = QWEN_LIKE
    answer = "<think>3 + 4 = 7.</think>So 7."
    e = encode_example(tok, _example(prefix_chars=len("<think>3 + 4"), answer=answer))
    assert _joined(tok, e.input_ids, e.loss_mask) == b"<think>\n3 + 4 = 7.\n</think>\n\nSo 7.<|im_end|>"
    pre = _joined(tok, e.input_ids, e.prefix_mask)
    assert pre.startswith(b"<think>\n3 + 4") and len(pre) <= len(b"<think>\n3 + 4 ")  # at most one straddling token


def test_template_that_changes_content_is_refused_for_prefix_examples(tiny_lm_dir):
    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    tok.chat_template = QWEN_LIKE.replace("{{ m['content'].split('</think>')[-1].lstrip('\n') }}", "{{ 'changed' }}")
    ex = _example(prefix_chars=4, answer="<think>a</think>b")
    with pytest.raises(InputError, match="rewrites the last assistant message"):
        encode_example(tok, ex)
    encode_example(tok, _example(answer="<think>a</think>b"))  # without a prefix the turn's span is all that matters


def _assistant_spans_rendered_per_turn(tokenizer, messages, where="example"):
    """``assistant_spans`` as it was: the conversation rendered again through every assistant turn,
    the last one included (three renderings for a training example; the reference)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    spans, starts = [], []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        head = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        upto = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False, add_generation_prompt=False)
        if not text.startswith(head) or not text.startswith(upto) or len(upto) < len(head):
            raise InputError(f"{where}: the chat template does not render assistant turn {i} as a prefix of the "
                             "conversation (it rewrites earlier turns); cannot locate the assistant tokens")
        spans.append((len(head), len(upto.rstrip())))
        starts.append(len(head))
    return text, spans, starts


# Qwen3's habit of dropping the reasoning of every assistant turn but the last: earlier turns are
# rewritten, which assistant_spans refuses (a multi-turn conversation) or does not see (one turn).
DROPS_EARLIER_THINK = QWEN_LIKE.replace(
    "{% if m['role'] == 'assistant' and '</think>' in m['content'] %}",
    "{% if m['role'] == 'assistant' and '</think>' in m['content'] and not loop.last %}"
    "<|im_start|>assistant\n{{ m['content'].split('</think>')[-1].lstrip('\n') }}<|im_end|>\n"
    "{% elif m['role'] == 'assistant' and '</think>' in m['content'] %}")


def _conversations(rng):
    """Conversations of every shape assistant_spans meets: one assistant turn last (a training
    example, with a student prefix or not), several, one ending in a user turn, none; responses
    with every kind of whitespace, think blocks, trailing whitespace."""
    out = [_example(), _example(prefix_chars=len("Café 日")),
           {"messages": [{"role": "user", "content": "a?"}, {"role": "assistant", "content": "<think>x</think>first "},
                         {"role": "user", "content": "b?"}, {"role": "assistant", "content": "<think>\ny\n</think>second\n"}]},
           {"messages": [{"role": "user", "content": "a?"}, {"role": "assistant", "content": "first"},
                         {"role": "user", "content": "b?"}]},
           {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "a?"}]}]
    for _ in range(60):
        turns = [{"role": "system", "content": "Be brief."}] if rng.random() < 0.5 else []
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            turns += [{"role": "user", "content": rng.choice(["3+4?", "Café  日本?\n", "x"])},
                      {"role": "assistant", "content": _random_response(rng, think=rng.random() < 0.7)}]
        last = turns[-1]["content"]
        prefix = rng.randint(1, len(last)) if rng.random() < 0.4 else 0
        out.append({"messages": turns, "prefix_chars": prefix})
    return out


@pytest.mark.parametrize("template", [None, QWEN_LIKE, DROPS_EARLIER_THINK], ids=["chatml", "qwen", "drops-think"])
@pytest.mark.parametrize("which", ["tiny", "tiny other vocab", "toy student", "toy teacher"])
def test_assistant_spans_and_encoding_are_those_of_a_rendering_per_turn(tiny_lm_dir, tiny_lm_dir_other_vocab, which,
                                                                         template, monkeypatch):
    """Rendering the conversation once less (its last turn is the full text) changes nothing: text,
    spans and starts of every conversation, or the same error; and the ids, labels and masks
    ``encode_batch`` makes from them, with every toy tokenizer under ChatML and Qwen-like templates."""
    import random

    import dasd.train.encode as encode
    from dasd.toy.build import default_toy_dir

    path = {"tiny": tiny_lm_dir, "tiny other vocab": tiny_lm_dir_other_vocab,
            "toy student": default_toy_dir() / "student", "toy teacher": default_toy_dir() / "teacher"}[which]
    tok = AutoTokenizer.from_pretrained(str(path))
    if template:
        tok.chat_template = template
    examples = _conversations(random.Random(3))
    outcomes = {"spans": 0, "refused": 0}
    for ex in examples:
        messages = ex["messages"]
        try:
            want = _assistant_spans_rendered_per_turn(tok, messages, "ex")
        except InputError as e:
            with pytest.raises(InputError, match=re.escape(str(e))):
                encode.assistant_spans(tok, messages, "ex")
            outcomes["refused"] += 1
            continue
        assert encode.assistant_spans(tok, messages, "ex") == want
        outcomes["spans"] += 1
    assert outcomes["spans"] > 30 and (outcomes["refused"] > 10) == (template == DROPS_EARLIER_THINK)

    trainable = []
    for ex in examples:
        try:
            encode.encode_batch(tok, [ex])
            trainable.append(ex)
        except InputError:
            pass
    assert len(trainable) > 30
    for mask_prefix in (False, True):
        got = encode.encode_batch(tok, trainable, mask_prefix)
        with monkeypatch.context() as m:
            m.setattr(encode, "assistant_spans", _assistant_spans_rendered_per_turn)
            want = encode.encode_batch(tok, trainable, mask_prefix)
        assert len(got) == len(want) == len(trainable)
        for g, w in zip(got, want):
            assert all(a.dtype == b.dtype and a.tolist() == b.tolist() for a, b in zip(g, w))


def test_a_training_example_is_rendered_twice(tiny_lm_dir):
    """The chat template is applied twice per training example (the generation prompt, and the
    whole conversation once: the long response is not rendered a second time), twice per assistant
    turn of a multi-turn example, and twice per response ``response_tokens`` cuts out."""
    from dasd.train.encode import encode_batch, response_tokens

    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    tok.chat_template = QWEN_LIKE
    seen = []
    real = tok.apply_chat_template

    def counting(messages, **kwargs):
        seen.append(len(messages))
        return real(messages, **kwargs)

    tok.apply_chat_template = counting  # the tokenizer's own method, each call recorded
    examples = [_example(), _example(prefix_chars=3, answer="<think>3 + 4 = 7.</think>So 7."),
                {"messages": [{"role": "user", "content": "a?"}, {"role": "assistant", "content": "first"},
                              {"role": "user", "content": "b?"}, {"role": "assistant", "content": "second"}]}]
    out = encode_batch(tok, examples)
    assert [int((labels != IGNORE).sum()) > 0 for _, labels, _, _ in out] == [True] * 3
    assert seen == [3, 2, 3, 2, 4, 1, 2, 3]  # each in full, then each prompt (and the middle turn through itself)
    seen.clear()
    found = response_tokens(tok, [(_example()["messages"][:-1], "So 7."), ([{"role": "user", "content": "x"}], "y")])
    assert None not in found and seen == [3, 2, 2, 1]


@pytest.mark.parametrize("template", [None, QWEN_LIKE], ids=["chatml", "qwen"])
def test_response_tokens_are_the_training_tokens_of_the_response(tiny_lm_dir, template):
    """response_tokens: the ids training gives the response, right after the ids of its context, and
    each token's span in the response as given (through the whitespace a Qwen3-style template re-lays;
    byte pieces of one character share it)."""
    from dasd.train.encode import response_tokens

    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    if template:
        tok.chat_template = template
    response = "<think>Café 日本: 3 + 4 = 7.</think>So 7. 😀"
    example = _example(answer=response)
    (rt,) = response_tokens(tok, [(example["messages"][:-1], response)])
    after = _check_training_tokens(tok, example["messages"][:-1], response, rt, verbatim=template is None)
    assert after[0] == "<|im_end|>"
    assert rt.offsets[0, 0] == 0 and rt.offsets[-1, 1] == len(response)


def _check_training_tokens(tok, messages, response, rt, verbatim):
    """``rt`` (``response_tokens``) holds the ids training gives ``response`` after ``messages``, right
    after the ids of its context, and each token's span in the response as given; returns the
    tokens training gives after them."""
    from dasd.engines.offsets import token_bytes

    enc = encode_example(tok, {"messages": [*messages, {"role": "assistant", "content": response}]})
    ctx = tok(rt.context, add_special_tokens=False)["input_ids"]
    assert enc.input_ids[: len(ctx) + len(rt.ids)] == ctx + rt.ids
    assert all(enc.loss_mask[len(ctx) : len(ctx) + len(rt.ids)])
    after = tok.convert_ids_to_tokens(enc.input_ids[len(ctx) + len(rt.ids) :])
    assert not "".join(after[: after.index("<|im_end|>")]).replace("Ċ", "")  # at most a newline the template added
    assert b"".join(token_bytes(tok, rt.ids)).decode() == rt.text
    assert "".join(rt.text.split()) == "".join(response.split())  # every non-space character, nothing else
    pieces = [p.decode("utf-8", errors="ignore") for p in token_bytes(tok, rt.ids)]
    assert rt.offsets.dtype == np.int64 and rt.offsets.shape == (len(rt.ids), 2)
    offsets = [tuple(o) for o in rt.offsets.tolist()]
    for piece, (s, e) in zip(pieces, offsets):
        if piece:  # a whole character or more: the same non-space text in the response
            assert "".join(piece.split()) == "".join(response[s:e].split()), (piece, response[s:e])
    assert all(0 <= a <= b <= len(response) for a, b in offsets)
    assert all(a <= c and b <= d for (a, b), (c, d) in zip(offsets, offsets[1:]))
    if verbatim:  # the spans tile the response (pieces of one character share its span)
        spans = [sp for k, sp in enumerate(offsets) if k == 0 or sp != offsets[k - 1]]
        assert "".join(response[s:e] for s, e in spans) == response
    return after


def _random_response(rng, think: bool) -> str:
    """Toy reasoning with every kind of whitespace and multi-byte characters; with ``think``, a
    ``<think>R</think>A`` that a Qwen3-style template re-lays only the whitespace of."""
    pieces = ["3", " + ", "4 = 7.", " ", "  ", "\n", "\n\n", "\t", "\u3000", "\xa0", "\u2028", "Café", "日本", "😀", "So", "Check"]

    def words(k):
        return "".join(rng.choice(pieces) for _ in range(rng.randint(1, k))).strip()

    text = words(40)
    if think:
        text = f"<think>{rng.choice(['', chr(10)])}{text}{rng.choice(['', chr(10)])}</think>{rng.choice(['', chr(10)])}{words(8)}"
    return text or "7"


@pytest.mark.parametrize("template", [None, QWEN_LIKE], ids=["chatml", "qwen"])
def test_response_tokens_are_the_training_tokens_of_random_responses(tiny_lm_dir, template):
    """The same on many random responses (several to a prompt, several prompts in one call): the
    vectorised alignment finds the training tokens of every one."""
    import random

    from dasd.train.encode import response_tokens

    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    if template:
        tok.chat_template = template
    rng = random.Random(0)
    prompts = [[{"role": "user", "content": q}] for q in ("3+4?", "Café  日本?\n", "x")]
    pairs = [(rng.choice(prompts), _random_response(rng, think=template is not None or rng.random() < 0.5))
             for _ in range(120)]
    found = response_tokens(tok, pairs)
    assert all(rt is not None for rt in found)
    for (messages, response), rt in zip(pairs, found):
        _check_training_tokens(tok, messages, response, rt, verbatim=template is None)


def test_response_tokens_tokenise_a_shared_context_once(tiny_lm_dir, monkeypatch):
    """The responses to one prompt share their context: it is tokenised once to check it, not once per
    response (a long prompt is the cost of every check)."""
    import dasd.engines.base as base
    from dasd.train.encode import response_tokens

    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    seen = []

    def counting(tokenizer, text):
        seen.append(text)
        return real(tokenizer, text)

    real = base.encode_text
    monkeypatch.setattr(base, "encode_text", counting)
    prompts = [[{"role": "user", "content": "3+4? " * 20}], [{"role": "user", "content": "5-2?"}]]
    pairs = [(prompts[i % 2], f"{i} + 4 = 7. So 7.") for i in range(8)]
    found = response_tokens(tok, pairs)
    assert all(rt is not None for rt in found)
    assert sorted(seen) == sorted({rt.context for rt in found}) and len(seen) == 2


def _align_nonspace_by_character(content, text, start, stop):
    """``_align_nonspace`` as the character loop it was (the reference for the vectorised one)."""
    want = [c for c in content if not c.isspace()]
    found = []
    for pos in range(start, stop):
        if len(found) == len(want):
            break
        c = text[pos]
        if c.isspace():
            continue
        if c != want[len(found)]:
            return None
        found.append(pos)
    return found if len(found) == len(want) else None


def test_align_nonspace_is_the_character_loop():
    """On random texts (every kind of whitespace, astral and lone surrogate characters, re-laid
    whitespace, a changed, missing or extra character, any window) the vectorised alignment gives
    the character loop's answer."""
    import random

    from dasd.train.encode import _align_nonspace

    rng = random.Random(0)
    alphabet = ["a", "b", "<", "é", "日", "😀", "\ud800", " ", "\n", "\t", "\u3000", "\xa0", "\u2028", "\x1c", "\x85"]
    kinds = {"none": 0, "some": 0}
    for _ in range(3000):
        content = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        laid = [c if not c.isspace() or rng.random() < 0.5 else rng.choice(["", " ", "\n\n"]) for c in content]
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 5))) + "".join(laid) + "<|im_end|>"
        if rng.random() < 0.3 and text:
            k = rng.randrange(len(text))
            text = text[:k] + rng.choice(["", "x", " ", "日"]) + text[k + 1 :]
        start = rng.randint(0, len(text))
        stop = rng.randint(start, len(text))
        want = _align_nonspace_by_character(content, text, start, stop)
        got = _align_nonspace(content, text, start, stop)
        assert (None if got is None else got.tolist()) == want, (content, text, start, stop)
        kinds["none" if want is None else "some"] += 1
    assert min(kinds.values()) > 300  # both answers are exercised


def test_nonspace_is_every_character_isspace_does_not_hold_for():
    """The vectorised alignment's non-whitespace positions (``text.align``'s one whitespace table) are
    exactly where ``str.isspace`` is false, over all of Unicode and a lone surrogate."""
    from dasd.text.align import codepoints
    from dasd.train.encode import _nonspace

    every = "".join(map(chr, range(0x110000)))
    assert _nonspace(codepoints(every)).tolist() == [c for c in range(0x110000) if not chr(c).isspace()]


def test_response_tokens_none_when_the_template_changes_the_response(tiny_lm_dir):
    from dasd.train.encode import response_tokens

    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    tok.chat_template = QWEN_LIKE.replace("{{ m['content'].split('</think>')[-1].lstrip('\n') }}", "{{ 'changed' }}")
    assert response_tokens(tok, [(_example()["messages"][:-1], "<think>a</think>b")]) == [None]


def test_tokenizer_differences_name_what_differs_between_real_tokenizers(tiny_lm_dir, tiny_lm_dir_other_vocab,
                                                                         tmp_path):
    """The same tokenizer saved twice agrees; another vocabulary, another normalisation over the same
    vocabulary (sentencepiece with NFKC: the ligature and full-width digits of the probe) and another
    chat template are each named."""
    import shutil

    from tokenizers import normalizers

    from dasd.train.encode import PROBE, tokenizer_differences

    from sp_tokenizer import llama2_style_tokenizer

    shutil.copytree(tiny_lm_dir, tmp_path / "copy")
    tiny, copy, other = (AutoTokenizer.from_pretrained(str(p)) for p in (tiny_lm_dir, tmp_path / "copy",
                                                                          tiny_lm_dir_other_vocab))
    assert tokenizer_differences(tiny, copy) == []
    assert tokenizer_differences(tiny, other) == ["vocabulary", "tokenisation"]
    retemplated = AutoTokenizer.from_pretrained(tiny_lm_dir)
    retemplated.chat_template = tiny.chat_template.replace("<|im_start|>", "<|im_start|> ")
    assert tokenizer_differences(tiny, retemplated) == ["chat template"]

    merges = [("\u2581", "t"), ("h", "e"), ("\u2581t", "he"), ("f", "i")]
    sp, sp_nfkc = llama2_style_tokenizer(merges), llama2_style_tokenizer(merges)
    sp_nfkc.backend_tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(),
                                                                 sp.backend_tokenizer.normalizer])
    assert sp.get_vocab() == sp_nfkc.get_vocab()
    assert sp("\ufb01ne")["input_ids"] != sp_nfkc("\ufb01ne")["input_ids"] and "\ufb01" in PROBE
    assert tokenizer_differences(sp, sp_nfkc) == ["tokenisation"]


def test_a_student_scored_with_another_tokenizer_than_training_uses_is_one_warning(tiny_lm_dir,
                                                                                  tiny_lm_dir_other_vocab, tmp_path):
    """`dasd train` warns, once, in one line naming both tokenizers, what differs and the fix, when the
    student was scored (student.tokenizer, else student.model) with a tokenizer other than the one a
    stage trained on the run's pools uses (train.base_model here); not when they agree (the fix, or
    the same files elsewhere), nor for stages trained on a JSONL file."""
    import shutil
    from pathlib import Path

    from dasd.config import load_config
    from dasd.runs import scoring_tokenizer_warnings

    demo = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
    shutil.copytree(tiny_lm_dir, tmp_path / "copy")
    data = tmp_path / "d.jsonl"
    data.write_text("")

    def warnings(*overrides):
        cfg = load_config(demo, [f"train.base_model={tiny_lm_dir}", *overrides])
        return scoring_tokenizer_warnings(cfg, cfg.train)

    assert warnings(f"student.model={tiny_lm_dir_other_vocab}") == [
        f"the student is scored with the tokenizer of {tiny_lm_dir_other_vocab!r} (student.tokenizer, else "
        f"student.model) but trained with that of {tiny_lm_dir!r} (train.base_model): their vocabulary, tokenisation "
        "differ, so DAS ranks sentences by the log-probs of tokens training never sees; set student.tokenizer to "
        f"{tiny_lm_dir!r} (the scored model must be that model) and score and select again, or train the "
        "model that is scored"]
    assert warnings(f"student.model={tiny_lm_dir_other_vocab}", f"student.tokenizer={tiny_lm_dir}") == []
    assert warnings(f"student.model={tmp_path / 'copy'}") == []
    stages = f'train.stages=[{{"name": "s1", "data": "{data}", "init": "base"}}]'
    assert warnings(f"student.model={tiny_lm_dir_other_vocab}", stages) == []
