"""The hf engine on real tiny Llamas: equivalences between generate, score and plain references."""

from __future__ import annotations

import random

import pytest
import torch

from dasd.engines import EngineConfig, GenerateRequest, ScoreRequest, make_engine
from dasd.errors import DasdError

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Compute 3 + 4 then times 2."}]
OTHER = [{"role": "user", "content": "Caf\u00e9 \u65e5\u672c\u8a9e \U0001f600: 12 / 4 = ?"}]
CONTINUATION = "<think>\nStart with 5. 5 - 2 = 3. Caf\u00e9 \u4e2d\u6587 \U0001f469\u200d\U0001f52c\n</think>\nSo \\boxed{3}."


def reference_logprobs(engine, context_ids: list[int], cont_ids: list[int]) -> list[float]:
    """Plain full-logits reference: one forward pass of the whole model, log_softmax, gather."""
    ids = torch.tensor([context_ids + cont_ids])
    with torch.no_grad():
        logp = torch.log_softmax(engine.model(input_ids=ids).logits.float(), dim=-1)[0]
    start = len(context_ids) - 1
    return [float(logp[start + j, t]) for j, t in enumerate(cont_ids)]


def close(a: list[float], b: list[float], tol: float = 1e-4) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= tol for x, y in zip(a, b))


def test_generate_logprobs_equal_score_with_ids(any_engine):
    reqs = [
        GenerateRequest(id="a", messages=MESSAGES, n=3, temperature=1.0, max_tokens=24, seed=1),
        GenerateRequest(id="b", messages=OTHER, n=2, temperature=0.6, top_p=0.9, max_tokens=17, seed=2),
    ]
    gens = any_engine.generate(reqs)
    score_reqs = [
        ScoreRequest(id=f"{g.request_id}/{g.index}", messages=req.messages, continuation=g.text, continuation_ids=g.token_ids)
        for req, gs in zip(reqs, gens) for g in gs
    ]
    scores = any_engine.score(score_reqs)
    flat = [g for gs in gens for g in gs]
    for g, s in zip(flat, scores):
        assert g.logprob_mode == s.logprob_mode == "raw"
        assert s.token_ids == g.token_ids and s.offsets == g.offsets and s.tokens == g.tokens
        assert close(g.logprobs, s.logprobs), (g.logprobs, s.logprobs)


def test_generate_logprobs_equal_score_of_text_when_canonical(hf_engine):
    req = GenerateRequest(id="a", messages=MESSAGES, n=40, temperature=1.0, max_tokens=4, seed=3)
    canonical = [g for g in hf_engine.generate([req])[0] if hf_engine.encode(g.text) == g.token_ids]
    assert len(canonical) >= 2
    scores = hf_engine.score([ScoreRequest(id="s", messages=MESSAGES, continuation=g.text) for g in canonical])
    for g, s in zip(canonical, scores):
        assert s.token_ids == g.token_ids
        assert close(g.logprobs, s.logprobs)


@pytest.mark.parametrize("chunk", [1, 7, 100_000])
def test_chunked_scoring_equals_full_logits_reference(any_engine, chunk):
    path = any_engine.cfg.model
    engine = make_engine(EngineConfig(model=path, device="cpu", logprob_chunk=chunk, score_batch_tokens=64))
    reqs = [
        ScoreRequest(id="m", messages=MESSAGES, continuation=CONTINUATION),
        ScoreRequest(id="p", prefix="Question: 2 + 2?\nAnswer:", continuation=" 4, since 2 + 2 = 4 \u2713"),
        ScoreRequest(id="e", prefix="x", continuation=""),
    ]
    results = engine.score(reqs)
    for req, res in zip(reqs, results):
        ctx = engine.context_ids(req.messages, req.prefix, req.id)
        assert res.token_ids == engine.encode(req.continuation)
        assert close(res.logprobs, reference_logprobs(engine, ctx, res.token_ids), tol=1e-5)
    assert results[2].logprobs == [] and results[2].offsets == []


def test_score_offsets_cover_the_continuation(any_engine):
    (res,) = any_engine.score([ScoreRequest(id="m", messages=MESSAGES, continuation=CONTINUATION)])
    assert res.offsets[0][0] == 0 and res.offsets[-1][1] == len(CONTINUATION)
    whole = [(i, s, e) for i, (s, e) in zip(res.token_ids, res.offsets) if "\ufffd" not in any_engine.tokenizer.decode([i])]
    assert len(whole) > len(res.token_ids) // 2
    for i, s, e in whole:  # a token that is whole characters sits exactly on them, unless sharing a split one
        piece = any_engine.tokenizer.decode([i])
        assert CONTINUATION[s:e] == piece or piece in CONTINUATION[s:e]


def test_score_batching_does_not_change_results(hf_engine, tiny_lm_dir):
    reqs = [
        ScoreRequest(id=str(i), prefix="Step %d:" % i, continuation=CONTINUATION[: 10 + 7 * i]) for i in range(6)
    ] + [ScoreRequest(id="m", messages=OTHER, continuation=CONTINUATION)]
    alone = make_engine(EngineConfig(model=tiny_lm_dir, device="cpu", score_batch_tokens=1))
    batched = hf_engine.score(reqs)
    for a, b in zip(alone.score(reqs), batched):
        assert a.request_id == b.request_id and a.token_ids == b.token_ids
        assert close(a.logprobs, b.logprobs, tol=1e-5)


def test_messages_and_templated_prefix_agree(hf_engine):
    prefix = hf_engine.tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    a = hf_engine.score([ScoreRequest(id="a", messages=MESSAGES, continuation=CONTINUATION)])[0]
    b = hf_engine.score([ScoreRequest(id="b", prefix=prefix, continuation=CONTINUATION)])[0]
    assert a.logprobs == b.logprobs
    ga = hf_engine.generate([GenerateRequest(id="a", messages=MESSAGES, n=2, max_tokens=12, seed=5)])[0]
    gb = hf_engine.generate([GenerateRequest(id="b", prefix=prefix, n=2, max_tokens=12, seed=5)])[0]
    assert [g.token_ids for g in ga] == [g.token_ids for g in gb]
    assert ga[0].prompt_tokens == hf_engine.count_tokens(prefix)


def test_prefix_continuation_extends_the_prefix(hf_engine):
    """Greedy from the chat prompt, then greedy from (prompt + first tokens) gives the rest."""
    prompt = hf_engine.tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    (full,) = hf_engine.generate([GenerateRequest(id="a", prefix=prompt, temperature=0, max_tokens=12)])[0]
    cut = next(k for k in range(3, 9) if hf_engine.encode(prompt + full.text[: full.offsets[k][0]])
               == hf_engine.encode(prompt) + full.token_ids[:k])
    head = full.text[: full.offsets[cut][0]]
    (rest,) = hf_engine.generate([GenerateRequest(id="b", prefix=prompt + head, temperature=0, max_tokens=12 - cut)])[0]
    assert rest.token_ids == full.token_ids[cut:]
    assert close(rest.logprobs, full.logprobs[cut:], tol=1e-5)
    assert head + rest.text == full.text


def greedy_reference(engine, prompt_ids: list[int], steps: int) -> list[int]:
    """Argmax decoding with full forward passes, no cache, no batching."""
    ids = list(prompt_ids)
    with torch.no_grad():
        for _ in range(steps):
            tok = int(engine.model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
            if tok in engine.stop_ids:
                break
            ids.append(tok)
    return ids[len(prompt_ids):]


def test_temperature_zero_is_greedy(any_engine):
    reqs = [GenerateRequest(id="a", messages=MESSAGES, n=2, temperature=0, max_tokens=15, seed=1),
            GenerateRequest(id="b", messages=OTHER, n=1, temperature=0, max_tokens=9, seed=2)]
    gens = any_engine.generate(reqs)
    for req, gs in zip(reqs, gens):
        want = greedy_reference(any_engine, any_engine.context_ids(req.messages, None, req.id), req.max_tokens)
        assert all(g.token_ids == want for g in gs)


def test_tiny_top_p_is_greedy(hf_engine):
    a = hf_engine.generate([GenerateRequest(id="a", messages=OTHER, n=3, temperature=1.0, top_p=1e-6, max_tokens=10, seed=9)])[0]
    b = hf_engine.generate([GenerateRequest(id="a", messages=OTHER, n=1, temperature=0, max_tokens=10)])[0]
    assert all(g.token_ids == b[0].token_ids for g in a)
    assert all(close(g.logprobs, b[0].logprobs, tol=1e-6) for g in a)


def test_seeded_samples_do_not_depend_on_batching(tiny_lm_dir, hf_engine):
    reqs = [GenerateRequest(id=f"r{i}", messages=[{"role": "user", "content": "x" * (i + 1)}], n=1 + i % 3,
                            temperature=1.0, top_p=0.95 if i % 2 else 1.0, max_tokens=6 + 3 * i, seed=100 + i)
            for i in range(5)]
    base = hf_engine.generate(reqs)  # batch_size 4
    one = make_engine(EngineConfig(model=tiny_lm_dir, device="cpu", batch_size=1)).generate(reqs)
    shuffled = list(reversed(reqs))
    wide = make_engine(EngineConfig(model=tiny_lm_dir, device="cpu", batch_size=16)).generate(shuffled)[::-1]
    for other in (one, wide):
        for gs, hs in zip(base, other):
            assert [g.index for g in gs] == list(range(len(gs)))
            assert [g.token_ids for g in gs] == [h.token_ids for h in hs]
            assert [g.finish_reason for g in gs] == [h.finish_reason for h in hs]
            assert all(close(g.logprobs, h.logprobs, tol=1e-5) for g, h in zip(gs, hs))
    again = hf_engine.generate(reqs)
    assert [[g.token_ids for g in gs] for gs in again] == [[g.token_ids for g in gs] for gs in base]
    reseeded = hf_engine.generate([GenerateRequest(**{**reqs[4].__dict__, "seed": 7})])[0]
    assert [g.token_ids for g in reseeded] != [g.token_ids for g in base[4]]
    assert base[2][0].token_ids != base[2][1].token_ids  # samples of one request differ


def test_finish_reasons(hf_engine):
    req = GenerateRequest(id="a", messages=MESSAGES, n=24, temperature=1.0, max_tokens=25, seed=4)
    gens = hf_engine.generate([req])[0]
    reasons = {g.finish_reason for g in gens}
    assert reasons == {"stop", "length"}
    for g in gens:
        assert not set(g.token_ids) & hf_engine.stop_ids
        assert len(g.token_ids) == len(g.logprobs) == len(g.offsets) == len(g.tokens)
        if g.finish_reason == "length":
            assert len(g.token_ids) == 25
    # Sampling is a prefix process: the same request with max_tokens k gives each sample's first k
    # tokens; a sample that stopped after k tokens is cut with "length" at k and stops at k + 1.
    k = len(next(g for g in gens if g.finish_reason == "stop").token_ids)
    for limit in (k, k + 1):
        cut = hf_engine.generate([GenerateRequest(**{**req.__dict__, "max_tokens": limit})])[0]
        for g, c in zip(gens, cut):
            assert c.token_ids == g.token_ids[:limit]
            stops = g.finish_reason == "stop" and len(g.token_ids) < limit
            assert c.finish_reason == ("stop" if stops else "length")


def test_max_model_len(tiny_lm_dir):
    engine = make_engine(EngineConfig(model=tiny_lm_dir, device="cpu", max_model_len=80))
    prompt_len = len(engine.context_ids(MESSAGES, None, "a"))
    (g,) = engine.generate([GenerateRequest(id="a", messages=MESSAGES, temperature=0, max_tokens=500)])[0]
    assert g.finish_reason == "length" and len(g.token_ids) == 80 - prompt_len
    with pytest.raises(DasdError, match="max_model_len"):
        engine.score([ScoreRequest(id="long", messages=MESSAGES, continuation="a b c d " * 40)])
    with pytest.raises(DasdError, match="max_model_len"):
        engine.generate([GenerateRequest(id="long", prefix="a b c d " * 40)])


def test_count_tokens(any_engine):
    text = "Caf\u00e9 \U0001f600 <|im_end|>"
    assert any_engine.count_tokens(text) == len(any_engine.tokenizer(text, add_special_tokens=False)["input_ids"])
    assert any_engine.count_tokens("") == 0


def test_requests_shuffle_invariance_for_score(hf_engine):
    reqs = [ScoreRequest(id=str(i), prefix="p" * i + ":", continuation=CONTINUATION[i:]) for i in range(5)]
    shuffled = reqs[:]
    random.Random(0).shuffle(shuffled)
    by_id = {r.request_id: r for r in hf_engine.score(shuffled)}
    for r in hf_engine.score(reqs):
        assert r.logprobs == pytest.approx(by_id[r.request_id].logprobs, abs=1e-5)


def test_score_ids_that_are_not_the_text_fail_before_compute(hf_engine):
    ids = hf_engine.encode("hello world")
    with pytest.raises(DasdError, match="request 'bad'.*not this text's tokens"):
        hf_engine.score([ScoreRequest(id="ok", prefix="x", continuation="fine"),
                         ScoreRequest(id="bad", prefix="x", continuation="hello there", continuation_ids=ids)])


def test_score_returns_the_offsets_a_request_gives_without_computing_them(hf_engine):
    """score_as_trained hands the engine the cut response's ids with their spans in the response: the
    engine returns those spans as given (not computed again from the cut text, which with re-laid
    whitespace is not the response), and the log-probs are those of the same request without them."""
    import numpy as np

    from dasd.engines.offsets import token_offsets
    from dasd.train.encode import response_tokens, score_as_trained

    response = "<think>\n\nStart with 5. Caf\u00e9 \U0001f600\n</think>\n\nSo \\boxed{3}."
    (cut,) = response_tokens(hf_engine.tokenizer, [(MESSAGES, response)])
    plain = ScoreRequest(id="r", prefix=cut.context, continuation=cut.text, continuation_ids=cut.ids)
    given = ScoreRequest(id="r", prefix=cut.context, continuation=cut.text, continuation_ids=cut.ids, offsets=cut.offsets)
    unchecked = ScoreRequest(id="r", prefix=cut.context, continuation="not the ids' text", continuation_ids=cut.ids,
                             offsets=cut.offsets)
    want, got, got_unchecked = hf_engine.score([plain, given, unchecked])
    assert want.offsets == token_offsets(hf_engine.tokenizer, cut.ids, cut.text)
    assert got.offsets is cut.offsets and got_unchecked.offsets is cut.offsets
    assert got.logprobs == want.logprobs == got_unchecked.logprobs and got.token_ids == want.token_ids == cut.ids
    ((via,), alone) = score_as_trained(hf_engine, [ScoreRequest(id="r", messages=MESSAGES, continuation=response)])
    assert alone == 0 and np.array_equal(via.offsets, cut.offsets) and via.logprobs == want.logprobs
    for bad in (dict(offsets=cut.offsets), dict(continuation_ids=cut.ids, offsets=cut.offsets[:-1])):
        with pytest.raises(ValueError, match="offsets need continuation_ids, one span per id"):
            ScoreRequest(id="r", prefix="x", continuation=cut.text, **bad)


@pytest.fixture(scope="module")
def peaked_engine(tiny_lm_dir, tmp_path_factory):
    """The tiny model with its final norm scaled x12: a peaked next-token distribution, so that
    temperature and top-p visibly change it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = str(tmp_path_factory.mktemp("peaked"))
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    with torch.no_grad():
        model.model.norm.weight.mul_(12.0)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_lm_dir).save_pretrained(out)
    return make_engine(EngineConfig(model=out, device="cpu", batch_size=1000))


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.5, 1.0), (1.5, 0.8)])
def test_sampled_first_tokens_follow_the_tempered_distribution(peaked_engine, temperature, top_p):
    """3000 first tokens against softmax(logits / T) cut to the top-p nucleus: the 6 most likely
    tokens and the rest each within 5 standard errors; nothing outside the nucleus."""
    engine, n = peaked_engine, 3000
    (gens,) = engine.generate([GenerateRequest(id="d", messages=OTHER, n=n, temperature=temperature,
                                               top_p=top_p, max_tokens=1, seed=11)])
    with torch.no_grad():
        ctx = torch.tensor([engine.context_ids(OTHER, None, "d")])
        logits = engine.model(input_ids=ctx).logits[0, -1].double()
    probs = torch.softmax(logits / temperature, -1)
    sorted_p, order = torch.sort(probs, descending=True, stable=True)
    keep = (sorted_p.cumsum(0) - sorted_p) < top_p
    probs = torch.zeros_like(probs).index_put_((order[keep],), sorted_p[keep])
    probs /= probs.sum()
    assert float(probs.max()) > 0.1  # peaked enough for the check to mean something
    first = [g.token_ids[0] if g.token_ids else engine.tokenizer.eos_token_id for g in gens]
    counts = torch.bincount(torch.tensor(first), minlength=probs.shape[0]).double() / n
    assert float(counts[probs == 0].sum()) == 0.0
    top = torch.argsort(probs, descending=True)[:6]
    emp = torch.cat([counts[top], 1 - counts[top].sum(0, keepdim=True)])
    want = torch.cat([probs[top], 1 - probs[top].sum(0, keepdim=True)])
    sigma = torch.sqrt(want * (1 - want) / n)
    assert bool(((emp - want).abs() <= 5 * sigma + 1e-9).all()), (emp, want)


def vllm_text(tokenizer, prompt_ids: list[int], ids: list[int]) -> str:
    """The text vLLM's v1 detokenizer gives for ``ids`` after ``prompt_ids``, by the same means
    (vllm/v1/engine/detokenizer.py, FastIncrementalDetokenizer): a tokenizers ``DecodeStream``
    primed with the prompt, stepped once per id, its chunks joined. A step returns nothing while
    the text decoded so far ends in U+FFFD, so the bytes of a character cut at the end never
    arrive."""
    from tokenizers.decoders import DecodeStream

    stream = DecodeStream(ids=prompt_ids, skip_special_tokens=False)
    return "".join(stream.step(tokenizer._tokenizer, i) or "" for i in ids)


@pytest.fixture(scope="module")
def sentencepiece_chat_engine(sentencepiece_tokenizer, tmp_path_factory):
    """A tiny Llama on the Llama-2-style tokenizer (its decoder strips the leading space of what it
    decodes) with a chat template, nudged towards '▁the', '▁a' and the two bytes of 'é'."""
    import copy

    from sp_tokenizer import save_nudged_llama

    tok = copy.deepcopy(sentencepiece_tokenizer)
    tok.chat_template = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}[assistant]{% endif %}")
    out = save_nudged_llama(tok, ["\u2581the", "\u2581a", "<0xC3>", "<0xA9>"], tmp_path_factory.mktemp("sp_chat"), 256)
    return make_engine(EngineConfig(model=out, device="cpu", batch_size=8))


def test_a_sentencepiece_chat_generation_keeps_its_first_space_like_vllm(sentencepiece_chat_engine):
    """A chat generation's text is what vLLM returns: the text its tokens add to the prompt. A first
    token '▁the' is ' the', not 'the' (the hf engine decoded the ids on their own, and the
    sentencepiece decoder stripped that space); offsets stay exact on that text."""
    engine = sentencepiece_chat_engine
    tok = engine.tokenizer
    reqs = [GenerateRequest(id="s", messages=[{"role": "user", "content": "Hi there"}], n=8, max_tokens=10, seed=3),
            GenerateRequest(id="g", messages=[{"role": "user", "content": "Hi there"}], temperature=0, max_tokens=6)]
    gens = [g for gs in engine.generate(reqs) for g in gs]
    prompt = engine.context_ids(reqs[0].messages, None, "s")
    led_by_space = 0
    for g in gens:
        assert g.text == vllm_text(tok, prompt, g.token_ids)
        assert g.offsets[0][0] == 0 and g.offsets[-1][1] == len(g.text)
        for piece, (s, e), nxt in zip(g.tokens, g.offsets, g.offsets[1:] + [(len(g.text), 0)]):
            if piece.startswith("<0x"):  # one byte of a character: that whole character (or, cut
                assert (e - s == 1 and nxt[0] in (s, e)) or s == e == len(g.text)  # at the end, none)
            else:
                assert g.text[s:e] == piece.replace("\u2581", " ") and nxt[0] == e
        led_by_space += g.tokens[0].startswith("\u2581")
    assert gens[-1].text == " a a a a a a"  # greedy: '▁a' six times
    assert gens[-1].offsets[:2] == [(0, 2), (2, 4)]
    assert led_by_space >= 2  # the case at issue really happened (the greedy one and a sampled one)


def test_a_byte_level_chat_generation_is_its_decoded_ids_as_in_vllm(any_engine):
    """Byte-level BPE (the toy models): the text is the ids decoded on their own, which is also what
    vLLM returns after the prompt, and each token's span holds its text (unchanged by the
    sentencepiece rule above)."""
    reqs = [GenerateRequest(id="a", messages=MESSAGES, n=3, max_tokens=12, seed=4),
            GenerateRequest(id="b", messages=OTHER, n=2, max_tokens=12, seed=5)]
    for req, gens in zip(reqs, any_engine.generate(reqs)):
        prompt = any_engine.context_ids(req.messages, None, req.id)
        for g in gens:
            text = any_engine.tokenizer.decode(g.token_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            assert g.text == vllm_text(any_engine.tokenizer, prompt, g.token_ids)
            # the ids decoded, less a character cut at the end (vLLM holds back its U+FFFD)
            assert g.text == text or (text.startswith(g.text) and text.endswith("\ufffd"))
            assert g.offsets[0][0] == 0 and g.offsets[-1][1] == len(g.text)


def test_a_generation_cut_inside_a_character_ends_before_it_like_vllm(sentencepiece_chat_engine):
    """max_tokens stops some samples after '<0xC3>', the first byte-fallback piece of 'é'. vLLM's
    detokenizer holds back text that ends in U+FFFD and nothing releases it at the end, so its text
    stops before that character; the hf engine's text did end in U+FFFD. The cut token gets the empty
    span at the end of the text, and the sample re-scores with its own ids to the same offsets and
    log-probs."""
    from dasd.engines.offsets import spans_from_bytes, token_bytes

    engine = sentencepiece_chat_engine
    tok = engine.tokenizer
    msgs = [{"role": "user", "content": "Hi there"}]
    (gens,) = engine.generate([GenerateRequest(id="c", messages=msgs, n=24, max_tokens=3, seed=2)])
    prompt = engine.context_ids(msgs, None, "c")
    cut = []
    for g in gens:
        assert not g.text.endswith("\ufffd")
        assert all(0 <= s <= e <= len(g.text) for s, e in g.offsets) and g.offsets[-1][1] == len(g.text)
        full = spans_from_bytes(token_bytes(tok, g.token_ids))[0]  # the ids' bytes, all decoded
        if "\ufffd" not in full[:-1]:  # (no invalid byte run inside the text: see docs/engines.md)
            assert g.text == vllm_text(tok, prompt, g.token_ids)
            if full == g.text + "\ufffd" and g.tokens[-1] == "<0xC3>":  # (or a stray '<0xA9>', also held back)
                cut.append(g)
    assert len(cut) >= 2  # the case at issue happened
    for g in cut:
        assert g.offsets[-1] == (len(g.text), len(g.text))
        if len(g.tokens) > 1:  # the token before ends the text
            s, e = g.offsets[-2]
            assert e == len(g.text) > s
            if not g.tokens[-2].startswith("<0x"):
                assert g.text[s:e] == g.tokens[-2].replace("\u2581", " ")
        (res,) = engine.score([ScoreRequest(id="c", messages=msgs, continuation=g.text, continuation_ids=g.token_ids)])
        assert res.offsets == g.offsets and close(res.logprobs, g.logprobs)


@pytest.fixture(scope="module")
def byte_level_cut_engine(tiny_lm_dir, tmp_path_factory):
    """A tiny Llama on the toy byte-level BPE tokenizer, nudged towards the single-byte tokens of 'é'
    ('Ã' 0xC3, '©' 0xA9) and of '中' ('ä' 0xE4, '¸' 0xB8, 'Ń' 0xAD), which its merges otherwise join."""
    from sp_tokenizer import save_nudged_llama
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    out = save_nudged_llama(tok, ["\u00c3", "\u00a9", "\u00e4", "\u00b8", "\u0143"], tmp_path_factory.mktemp("bl_cut"), 256)
    return make_engine(EngineConfig(model=out, device="cpu", batch_size=8))


def test_a_byte_level_generation_cut_inside_a_character_ends_before_it_like_vllm(byte_level_cut_engine):
    """Byte-level BPE (GPT-2, Qwen, Llama 3, gpt-oss): max_tokens stops samples after the first one or
    two bytes of 'é' or '中'. vLLM's detokenizer (a tokenizers DecodeStream: no chunk while the text
    so far ends in U+FFFD, nothing flushed at the end) returns the text before that character; so
    does the hf engine (its decoded ids ended in U+FFFD), with the cut tokens' empty spans at the end
    of the text, and the sample re-scores with its own ids to the same offsets and log-probs."""
    from dasd.engines.offsets import token_bytes

    engine = byte_level_cut_engine
    tok = engine.tokenizer
    msgs = [{"role": "user", "content": "Caf\u00e9?"}]
    (gens,) = engine.generate([GenerateRequest(id="c", messages=msgs, n=64, max_tokens=3, seed=5)])
    prompt = engine.context_ids(msgs, None, "c")
    cut = []
    for g in gens:
        decoded = tok.decode(g.token_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        assert g.text == vllm_text(tok, prompt, g.token_ids)
        assert all(0 <= s <= e <= len(g.text) for s, e in g.offsets)
        assert not g.offsets or g.offsets[-1][1] == len(g.text)
        pieces = token_bytes(tok, g.token_ids)
        if decoded.endswith("\ufffd"):  # what the hf engine returned before
            assert not g.text.endswith("\ufffd") and decoded.startswith(g.text) and len(decoded) > len(g.text)
            held = [k for k in range(len(pieces)) if g.offsets[k] == (len(g.text), len(g.text))]
            assert held and held == list(range(held[0], len(pieces)))  # the tokens after the text's last character
            assert b"".join(pieces[: held[0]]).decode("utf-8", errors="replace") == g.text
            (res,) = engine.score([ScoreRequest(id="c", messages=msgs, continuation=g.text, continuation_ids=g.token_ids)])
            assert res.offsets == g.offsets and close(res.logprobs, g.logprobs)
            if g.text and "\ufffd" not in g.text and (pieces[-1] in (b"\xc3", b"\xe4") or pieces[-2:] == [b"\xe4", b"\xb8"]):
                cut.append(g)  # valid text, then the first bytes of 'é' or '中'
    assert len(cut) >= 3, [g.tokens for g in gens]  # the case at issue happened ('Ã', '©', 'Ã': 'é')


class _VLLMStandIn:
    """What ``vllm.LLM.generate`` returns (vllm/v1/engine/output_processor.py, detokenizer.py) for
    samples whose ids are given: a ``CompletionOutput`` per prompt whose ``token_ids`` and per-token
    ``logprobs`` hold the token that ended the turn (the detokenizer leaves it out of the text only),
    ``finish_reason`` 'stop' or 'length', ``stop_reason`` None for the eos id, else the stop id.
    vLLM itself does not run on this machine; its own equality test is tests/engines_remote."""

    def __init__(self, model, **kwargs):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(kwargs.get("tokenizer") or model)
        self.canned: list[tuple[list[int], list[int], list[float], bool]] = []  # context, ids, log-probs, stopped

    def get_tokenizer(self):
        return self.tokenizer

    def generate(self, prompts, params, use_tqdm=False):
        from types import SimpleNamespace as NS

        outs = []
        for prompt, (ctx, ids, lps, stopped) in zip(prompts, self.canned, strict=True):
            assert prompt["prompt_token_ids"] == ctx
            steps = [{t: NS(logprob=lp)} for t, lp in zip(ids, lps)]
            if stopped:
                eos = self.tokenizer.eos_token_id
                ids, steps = ids + [eos], steps + [{eos: NS(logprob=-0.25)}]
            outs.append(NS(outputs=[NS(token_ids=ids, logprobs=steps, finish_reason="stop" if stopped else "length",
                                       stop_reason=None)]))
        return outs


def test_the_vllm_engine_gives_the_hf_engines_generation_for_the_same_tokens(hf_engine, tiny_lm_dir, monkeypatch):
    """Given the ids the hf engine sampled, as vLLM returns them, the vllm engine's Generation is the hf
    engine's: text, tokens, ids, offsets, log-probs. vLLM lists the eos that ended a turn in
    ``token_ids`` and log-probs; the vllm engine kept it, so a stopped sample's text ended in
    '<|im_end|>' and it had one token and log-prob more than the hf engine's."""
    import sys
    from types import SimpleNamespace as NS

    monkeypatch.setitem(sys.modules, "vllm", NS(LLM=_VLLMStandIn, SamplingParams=lambda **kw: NS(**kw)))
    vl = make_engine(EngineConfig(kind="vllm", model=tiny_lm_dir))
    reqs = [GenerateRequest(id="a", messages=MESSAGES, n=6, max_tokens=12, seed=4),
            GenerateRequest(id="b", messages=OTHER, n=6, max_tokens=12, seed=5)]
    hf_gens = hf_engine.generate(reqs)
    vl.llm.canned = [(hf_engine.context_ids(r.messages, None, r.id), g.token_ids, g.logprobs, g.finish_reason == "stop")
                     for r, gens in zip(reqs, hf_gens) for g in gens]
    stopped = 0
    for hs, vs in zip(hf_gens, vl.generate(reqs), strict=True):
        for h, v in zip(hs, vs, strict=True):
            assert (v.text, v.tokens, v.token_ids, v.offsets, v.finish_reason) == \
                   (h.text, h.tokens, h.token_ids, h.offsets, h.finish_reason)
            assert v.logprobs == pytest.approx(h.logprobs) and len(v.logprobs) == len(v.token_ids)
            stopped += h.finish_reason == "stop"
    assert 0 < stopped < 12  # both kinds of end happened
