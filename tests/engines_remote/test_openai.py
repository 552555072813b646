"""The openai engine over real HTTP on loopback against dasd's own server (hf engine, tiny model).

Equivalence: what comes back through HTTP, under injected faults, equals what the hf engine
gives in-process for the same seeds and text.
"""

from __future__ import annotations

import re

import pytest

from dasd.engines import GenerateRequest, ScoreRequest, make_engine
from dasd.engines.offsets import generation_spans
from dasd.engines.openai import (
    carry_spans, fold_reasoning, folded_anchors, piece_bytes, sample_seed, split_harmony,
)
from dasd.engines.server import Faults
from dasd.errors import ConfigError, DasdError

from .conftest import openai_config

PROMPTS = ["Compute 3 + 4 then times 2.", "Start with 5. 5 - 2 = ?", "Caf\u00e9 \u65e5\u672c \U0001f600 12 / 4", "Let me think."]


def chat_requests(n_prompts: int = 8, n: int = 2, max_tokens: int = 12) -> list[GenerateRequest]:
    return [
        GenerateRequest(id=f"p{k}", messages=[{"role": "user", "content": PROMPTS[k % len(PROMPTS)] + f" #{k}"}],
                        n=n, temperature=1.0, top_p=0.95, max_tokens=max_tokens, seed=100 + k)
        for k in range(n_prompts)
    ]


def prefix_requests() -> list[GenerateRequest]:
    return [
        GenerateRequest(id=f"x{k}", prefix=f"<think>\nStart with {k}. {k} - 2 =", n=2, temperature=0.8,
                        max_tokens=10, seed=7 + k)
        for k in range(2)
    ]


def reference(ref_engine, req: GenerateRequest, index: int):
    """What the hf engine samples in-process for sample ``index`` of ``req``."""
    one = GenerateRequest(id=req.id, messages=req.messages, prefix=req.prefix, n=1, temperature=req.temperature,
                          top_p=req.top_p, max_tokens=req.max_tokens, seed=sample_seed(req.seed, index))
    return ref_engine.generate([one])[0][0]


FAULTS = dict(rate_429=0.15, rate_500=0.15, rate_drop=0.1, rate_slow=0.1, slow_seconds=2.0, seed=3)


@pytest.mark.parametrize("token_ids", [False, True])
def test_sampling_under_faults_equals_hf(serve, ref_engine, tiny_lm_dir, token_ids):
    reqs = chat_requests() + prefix_requests()
    with serve(faults=Faults(**FAULTS)) as srv:
        eng = make_engine(openai_config(tiny_lm_dir, [srv.base_url], timeout_s=1.0, token_ids=token_ids))
        out: dict = {}
        seen = [(r, g.index) for r, g in _collect(eng, reqs, out)]
        faults = dict(srv.engine_server.faults.counts)
    expected = [(r, i) for r, req in enumerate(reqs) for i in range(req.n)]
    assert sorted(seen) == expected  # every sample exactly once: none lost, none duplicated
    assert {"429", "500", "drop", "slow"} <= set(faults), faults  # every kind of fault happened
    assert eng.stats["retries"] >= sum(faults.values())
    for (r, i), g in out.items():
        want = reference(ref_engine, reqs[r], i)
        assert g.text == want.text and g.offsets == want.offsets and g.finish_reason == want.finish_reason
        assert g.logprobs == pytest.approx(want.logprobs, abs=1e-5)
        assert g.logprob_mode == "raw" and g.prompt_tokens == want.prompt_tokens
        if token_ids:
            assert g.token_ids == want.token_ids and g.tokens == want.tokens
            # the sampled tokens' log-probs equal the hf engine's teacher-forced ones for this text
            scored = ref_engine.score([ScoreRequest(id=g.request_id, messages=reqs[r].messages,
                                                    prefix=reqs[r].prefix, continuation=g.text,
                                                    continuation_ids=g.token_ids)])[0]
            assert g.logprobs == pytest.approx(scored.logprobs, abs=1e-4)
        else:
            assert g.token_ids == []  # the server's token strings, byte-exact (bytes:\xNN for partial characters)
            # their bytes decoded, less a character cut at the end (vLLM's and the hf engine's text)
            assert generation_spans([piece_bytes(t) for t in g.tokens])[0] == g.text


def _collect(eng, reqs, out):
    for r, g in eng.generate_iter(reqs):
        assert (r, g.index) not in out
        out[(r, g.index)] = g
        yield r, g


@pytest.mark.parametrize("api", ["prompt_logprobs", "echo"])
def test_score_equals_hf(serve, ref_engine, tiny_lm_dir, api):
    reqs = chat_requests(n_prompts=4, n=1, max_tokens=10)
    gens = ref_engine.generate(reqs)
    scores = [ScoreRequest(id=r.id, messages=r.messages, continuation=g[0].text) for r, g in zip(reqs, gens)]
    scores += [ScoreRequest(id="pre", prefix="Start with 5.", continuation=" 5 - 2 = 3. \U0001f600\u00e9"),
               ScoreRequest(id="ids", prefix="Compute", continuation=gens[0][0].text,
                            continuation_ids=gens[0][0].token_ids),
               ScoreRequest(id="empty", prefix="Compute", continuation=""),
               # spans the caller has already (score_as_trained) are returned as given, not computed again
               ScoreRequest(id="given", prefix="Compute", continuation=gens[0][0].text, continuation_ids=gens[0][0].token_ids,
                            offsets=[(0, 0)] * len(gens[0][0].token_ids))]
    with serve(faults=Faults(rate_429=0.15, rate_500=0.15, seed=1)) as srv:
        eng = make_engine(openai_config(tiny_lm_dir, [srv.base_url], score_api=api))
        got = eng.score(scores)
    want = ref_engine.score(scores)
    for a, b in zip(got, want):
        assert (a.request_id, a.token_ids, a.tokens, a.offsets) == (b.request_id, b.token_ids, b.tokens, b.offsets)
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)
        assert a.logprob_mode == "raw" and a.extra == b.extra
    assert got[-2].logprobs == [] and got[0].logprobs
    assert got[-1].offsets is scores[-1].offsets and got[-1].logprobs == pytest.approx(got[-3].logprobs, abs=1e-5)


class _ScoresAsked:
    """The server's real engine, keeping every score request it is asked."""

    def __init__(self, engine):
        self.engine, self.asked = engine, []

    def score(self, requests):
        self.asked += requests
        return self.engine.score(requests)

    def __getattr__(self, name):
        return getattr(self.engine, name)


@pytest.mark.parametrize("api", ["prompt_logprobs", "echo"])
def test_the_server_hands_its_engine_the_spans_it_has(serve, server_engine, ref_engine, tiny_lm_dir, api):
    """The server spells a token-id prompt's continuation from its tokens' bytes, which gives their
    spans too: it passes them on (``ScoreRequest.offsets``), the spans the engine would compute, and
    the log-probs are those of the engine computing them itself."""
    from dataclasses import replace

    from dasd.engines.offsets import token_offsets

    reqs = [ScoreRequest(id="pre", prefix="Start with 5.", continuation=" 5 - 2 = 3. \U0001f600\u00e9 done"),
            ScoreRequest(id="chat", messages=[{"role": "user", "content": PROMPTS[2]}], continuation="Caf\u00e9 \U0001f600 ok.")]
    asked = _ScoresAsked(server_engine)
    with serve(engine=asked) as srv:
        got = make_engine(openai_config(tiny_lm_dir, [srv.base_url], score_api=api)).score(reqs)
    assert len(asked.asked) == len(reqs)
    for req in asked.asked:
        assert req.offsets is not None and len(req.offsets) == len(req.continuation_ids) > 5
        assert list(req.offsets) == token_offsets(ref_engine.tokenizer, req.continuation_ids, req.continuation)
        alone = ref_engine.score([replace(req, offsets=None)])[0]  # the engine computes the spans itself
        assert ref_engine.score([req])[0].logprobs == alone.logprobs
    for a, b in zip(got, ref_engine.score(reqs)):
        assert (a.token_ids, a.offsets) == (b.token_ids, b.offsets)
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)


def test_top_logprobs_and_count_tokens(serve, ref_engine, tiny_lm_dir):
    req = chat_requests(n_prompts=1, n=1, max_tokens=8)
    with serve() as srv:
        eng = make_engine(openai_config(tiny_lm_dir, [srv.base_url], top_logprobs=3))
        g = eng.generate(req)[0][0]
        no_tok = make_engine(openai_config(tiny_lm_dir, [srv.base_url]).model_copy(update={"tokenizer": None}))
        n_server = no_tok.count_tokens("Caf\u00e9 na\u00efve 12 / 4")
    assert n_server == ref_engine.count_tokens("Caf\u00e9 na\u00efve 12 / 4") == eng.count_tokens("Caf\u00e9 na\u00efve 12 / 4")
    assert len(g.top_logprobs) == len(g.logprobs) > 0
    for top, lp in zip(g.top_logprobs, g.logprobs):
        vals = list(top.values())
        assert 1 <= len(vals) <= 3 and vals == sorted(vals, reverse=True) and lp <= vals[0] + 1e-6
    with pytest.raises(ConfigError, match="tokenizer"):
        no_tok.score([ScoreRequest(id="a", prefix="x", continuation="y")])


def test_count_tokens_through_the_server_is_retried(serve, ref_engine, tiny_lm_dir):
    """Without a local tokenizer the count comes from /tokenize: a 429 / 5xx / dropped answer there
    is retried like any request (it was one bare request: the first fault ended `dasd mix`)."""
    texts = [f"Caf\u00e9 {k} + {k} = {2 * k}. \U0001f600" for k in range(8)]
    with serve(faults=Faults(rate_429=0.25, rate_500=0.25, rate_drop=0.15, retry_after="0", seed=4)) as srv:
        eng = make_engine(openai_config(tiny_lm_dir, [srv.base_url]).model_copy(update={"tokenizer": None}))
        got = [eng.count_tokens(t) for t in texts]
        faults = dict(srv.engine_server.faults.counts)
    assert got == [ref_engine.count_tokens(t) for t in texts]
    assert sum(faults.values()) > 0 and eng.stats["retries"] == sum(faults.values())
    with serve() as srv:
        eng = make_engine(openai_config(tiny_lm_dir, [srv.base_url + "/nowhere/v1"]).model_copy(update={"tokenizer": None}))
        with pytest.raises(DasdError, match=r"count_tokens .*set engine.tokenizer to count locally.*HTTP 404"):
            eng.count_tokens("x")


def test_two_servers_share_the_load(serve, ref_engine, tiny_lm_dir):
    from dasd.engines import EngineConfig

    second = make_engine(EngineConfig(model=tiny_lm_dir, device="cpu", batch_size=8))
    reqs = chat_requests(n_prompts=6, n=2, max_tokens=6)
    with serve() as a, serve(engine=second) as b:
        eng = make_engine(openai_config(tiny_lm_dir, [a.base_url, b.base_url], concurrency=6))
        out = eng.generate(reqs)
        served = (a.engine_server.stats["requests"], b.engine_server.stats["requests"])
    assert sum(served) == 12 and min(served) > 0
    for r, gens in enumerate(out):
        assert [g.index for g in gens] == [0, 1]
        for g in gens:
            assert g.text == reference(ref_engine, reqs[r], g.index).text


def test_api_key_from_environment(serve, tiny_lm_dir, monkeypatch):
    req = chat_requests(n_prompts=1, n=1, max_tokens=4)
    with serve(api_key="s3cret") as srv:
        cfg = openai_config(tiny_lm_dir, [srv.base_url], api_key_env="DASD_TEST_KEY")
        with pytest.raises(ConfigError, match="DASD_TEST_KEY is not set"):
            make_engine(cfg)
        monkeypatch.setenv("DASD_TEST_KEY", "s3cret")
        assert make_engine(cfg).generate(req)[0][0].logprobs
        monkeypatch.setenv("DASD_TEST_KEY", "wrong")
        eng = make_engine(cfg)
        with pytest.raises(DasdError, match="HTTP 401"):
            eng.generate(req)
        assert eng.stats["retries"] == 0  # a client error is not retried


def test_client_errors_fail_fast_and_retries_end(serve, tiny_lm_dir):
    req = chat_requests(n_prompts=1, n=1, max_tokens=4)
    with serve() as srv:
        eng = make_engine(openai_config(tiny_lm_dir, [srv.base_url]).model_copy(update={"model": "nope"}))
        with pytest.raises(DasdError, match=r"request 'p0' sample 0: .*HTTP 404.*not served here"):
            eng.generate(req)
    with serve(faults=Faults(rate_500=1.0)) as srv:
        eng = make_engine(openai_config(tiny_lm_dir, [srv.base_url], max_retries=2))
        with pytest.raises(DasdError, match="gave up after 3 attempts; last error: .*HTTP 500"):
            eng.generate(req)
        assert srv.engine_server.faults.counts == {"500": 3}


def test_bad_request_values_are_400s_not_retried_500s(serve, tiny_lm_dir, tiny_lm_dir_other_vocab):
    """Values dasd's server cannot use are a 400 saying why: ids past the served vocabulary (a client
    whose tokenizer is another model's) were a 500 (retried, then 'gave up') or a 400 about an empty
    context; a non-number temperature was a 500; top_p 0 and n 0 were silently read as 1."""
    import httpx

    msgs = [{"role": "user", "content": "hi"}]
    with serve() as srv:
        wrong = make_engine(openai_config(tiny_lm_dir, [srv.base_url]).model_copy(update={"tokenizer": tiny_lm_dir_other_vocab}))
        cont = "Caf\u00e9 \u65e5\u672c \U0001f600 " * 3
        assert max(wrong.encode(cont)) >= len(srv.engine_server.tokenizer)
        with pytest.raises(DasdError, match=r"HTTP 400: token id \d+ is not in this model's vocabulary \(\d+ ids\): "
                                            r"is the client's tokenizer the served model's\?"):
            wrong.score([ScoreRequest(id="s", prefix="Compute", continuation=cont)])
        assert wrong.stats["retries"] == 0
        for fields, message in [({"temperature": "hot"}, "temperature must be a number, got 'hot'"),
                                ({"top_p": 0}, "0 < top_p <= 1 required"), ({"n": 0}, "n and max_tokens must be >= 1"),
                                ({"max_tokens": None, "max_completion_tokens": 0}, "n and max_tokens must be >= 1")]:
            resp = httpx.post(srv.base_url + "/chat/completions", json={"model": "tiny", "messages": msgs, "max_tokens": 2, **fields})
            assert resp.status_code == 400 and message in resp.json()["error"]["message"], resp.text
        resp = httpx.post(srv.base_url + "/completions", json={"model": "tiny", "prompt": [-1], "max_tokens": 2})
        assert resp.status_code == 400 and "token id -1 is not in" in resp.text


def test_retry_after_is_honoured(serve, tiny_lm_dir):
    import time

    req = chat_requests(n_prompts=1, n=1, max_tokens=4)
    with serve(faults=Faults(rate_429=1.0, retry_after="1")) as srv:
        eng = make_engine(openai_config(tiny_lm_dir, [srv.base_url], max_retries=1, backoff_s=0.001))
        t0 = time.monotonic()
        with pytest.raises(DasdError, match="HTTP 429"):
            eng.generate(req)
        waited = time.monotonic() - t0
    assert waited >= 0.2  # backoff_max_s (0.2 s) caps Retry-After; backoff alone would wait ~1 ms


# ----------------------------------------------------------------------------- text handling
def test_reasoning_fields_are_folded_with_exact_spans(ref_engine):
    """A vLLM reasoning parser splits the tokens' text into reasoning and answer; spans follow."""
    tok = ref_engine.tokenizer
    raw = "<think>\nStart with 5. 5 - 2 = 3.\n</think>\n\nSo \\boxed{3} \U0001f600."
    ids = ref_engine.encode(raw)
    from dasd.engines.offsets import spans_from_bytes, token_bytes

    pieces = token_bytes(tok, ids)
    text_raw, spans = spans_from_bytes(pieces)
    assert text_raw == raw
    reasoning, content = "Start with 5. 5 - 2 = 3.", "So \\boxed{3} \U0001f600."  # what the parser returns
    text = fold_reasoning(reasoning, content)
    assert text == raw
    assert carry_spans(text_raw, spans, text) == spans
    # DeepSeek-R1 style: "<think>\n" is in the prompt, so the tokens start inside the reasoning
    raw2 = raw[len("<think>\n"):]
    ids2 = ref_engine.encode(raw2)
    text_raw2, spans2 = spans_from_bytes(token_bytes(tok, ids2))
    moved = carry_spans(text_raw2, spans2, text)
    assert [text[s:e] for s, e in moved] == [text_raw2[s:e] for s, e in spans2]
    anchored = carry_spans(text_raw2, spans2, text, folded_anchors(reasoning, content))
    assert anchored == moved
    # long texts go through the linear anchors (a 100K-character answer, a space stripped)
    long_raw = " " + "3 + 4 = 7. " * 10_000
    long_spans = [(k, k + 1) for k in range(len(long_raw))]
    out = carry_spans(long_raw, long_spans, long_raw[1:], [(long_raw[1:], 0, True)])
    assert out[0] == (0, 0) and out[1:] == [(k, k + 1) for k in range(len(long_raw) - 1)]
    with pytest.raises(DasdError, match="too long to align"):
        carry_spans(long_raw, long_spans, long_raw[1:] + "x", [(long_raw[1:] + "x", 0, True)])
    # harmony channels left in the content
    harmony = "<|channel|>analysis<|message|>Think hard.<|end|><|start|>assistant<|channel|>final<|message|>42<|return|>"
    assert split_harmony(harmony) == ("Think hard.", "42")
    folded = fold_reasoning(*split_harmony(harmony))
    out = carry_spans(harmony, [(30, 41), (len(harmony) - 12, len(harmony) - 10)], folded)
    assert [folded[s:e] for s, e in out] == ["Think hard.", "42"]


def test_token_bytes_forms():
    assert piece_bytes("caf\u00e9") == "caf\u00e9".encode()
    assert piece_bytes("bytes:\\xe2\\x80") == b"\xe2\x80"
    assert piece_bytes("bytes:b'\\xe2'") == b"\xe2"
    assert piece_bytes("\ufffd", [240, 159]) == b"\xf0\x9f"


def test_sample_seed_is_the_hf_row_seed():
    from dasd.engines.hf import row_seed

    for seed, index in [(0, 0), (5, 3), (2**31 - 2, 7), (123456789, 0)]:
        assert sample_seed(seed, index) == row_seed(seed, index) % (2**31 - 1)


def test_listed_end_of_turn_token_is_dropped(serve, tiny_lm_dir):
    """A vLLM-style answer lists the stop token's log-prob; it is not part of the text. (vLLM's
    reasoning parser splits the text; the log-probs cover every generated token, reasoning included.)"""
    from fastapi import FastAPI

    from dasd.engines.server import ServerThread

    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat():
        pieces = ["<think>", "\n", "Six", " sevens", ".", "\n", "</think>", "\n\n", "4", "2"]
        content = [{"token": t, "logprob": -0.5, "bytes": list(t.encode()), "top_logprobs": []} for t in pieces]
        content.append({"token": "<|im_end|>", "logprob": -0.1, "bytes": list(b"<|im_end|>"), "top_logprobs": []})
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": "42", "reasoning_content": "Six sevens."},
                             "finish_reason": "stop", "logprobs": {"content": content}}],
                "usage": {"prompt_tokens": 5}}

    class Plain:  # ServerThread only needs `.app`
        pass

    srv = Plain()
    srv.app = app
    with ServerThread(srv) as thread:
        eng = make_engine(openai_config(tiny_lm_dir, [thread.base_url]))
        g = eng.generate(chat_requests(n_prompts=1, n=1))[0][0]
    assert g.text == "<think>\nSix sevens.\n</think>\n\n42"
    assert g.tokens[-2:] == ["4", "2"] and g.logprobs == [-0.5] * 10
    assert [g.text[s:e] for s, e in g.offsets] == ["<think>", "\n", "Six", " sevens", ".", "\n", "</think>", "\n\n", "4", "2"]
    assert g.logprob_mode == "processed" and g.prompt_tokens == 5  # a server that does not say raw


@pytest.mark.parametrize("eos", [False, True])
def test_a_last_token_cut_inside_a_character_is_kept_before_a_stop(tiny_lm_dir, eos):
    """A generation that stops right after the first byte of a character (its text held back, as
    vLLM's detokenizer and the hf engine give it) keeps that token and its log-prob: it is not the
    listed end-of-turn token, which is dropped when it follows. (It was dropped as one.)"""
    from fastapi import FastAPI

    from dasd.engines.server import ServerThread

    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat():
        content = [{"token": t, "logprob": -0.5, "bytes": list(t.encode()), "top_logprobs": []} for t in ["4", "2"]]
        content.append({"token": "bytes:\\xc3", "logprob": -0.7, "bytes": [0xC3], "top_logprobs": []})
        if eos:
            content.append({"token": "<|im_end|>", "logprob": -0.1, "bytes": list(b"<|im_end|>"), "top_logprobs": []})
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": "42"},
                             "finish_reason": "stop", "logprobs": {"content": content}}], "usage": {"prompt_tokens": 5}}

    class Plain:  # ServerThread only needs `.app`
        pass

    srv = Plain()
    srv.app = app
    with ServerThread(srv) as thread:
        g = make_engine(openai_config(tiny_lm_dir, [thread.base_url])).generate(chat_requests(n_prompts=1, n=1))[0][0]
    assert g.text == "42" and g.logprobs == [-0.5, -0.5, -0.7] and g.finish_reason == "stop"
    assert g.offsets == [(0, 1), (1, 2), (2, 2)]


def _answers_with(tiny_lm_dir, answer: dict):
    """An engine against a loopback stand-in that answers every chat request with ``answer``
    (``content``, optional ``reasoning_content``, and ``tokens`` [(token, bytes or None, logprob)])."""
    from fastapi import FastAPI

    from dasd.engines.server import ServerThread

    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat():
        entries = [{"token": t, "logprob": lp, "top_logprobs": [], **({"bytes": list(b)} if b is not None else {})}
                   for t, b, lp in answer["tokens"]]
        message = {"role": "assistant", "content": answer["content"], "reasoning_content": answer.get("reasoning_content")}
        return {"choices": [{"index": 0, "message": message, "finish_reason": "length", "logprobs": {"content": entries}}],
                "dasd_logprob_mode": "raw"}

    class Plain:  # ServerThread only needs `.app`
        pass

    srv = Plain()
    srv.app = app
    return ServerThread(srv)


def _toks(*pieces):
    return [(t, None, -0.25) for t in pieces]


@pytest.mark.parametrize("case, content, tokens, where", [
    ("another answer's tokens", "Something else, 42.", _toks("Start", " at", " 3", "."), "'ome' (characters 1-4"),
    ("a token left out", "Start at 3. Step 1:", _toks("Start", " at", ".", " Step", " 1", ":"), "' 3' (characters 8-10 of 19)"),
    ("text past the tokens", "Start at 3. Step 1: and more", _toks("Start", " at", " 3", ".", " Step", " 1", ":"), "' and more'"),
])
def test_tokens_that_do_not_spell_the_text_are_an_error(tiny_lm_dir, case, content, tokens, where):
    """The log-probs belong to the tokens: when they are not the text's, the sample is refused, not
    kept with log-probs on the wrong characters."""
    with _answers_with(tiny_lm_dir, {"content": content, "tokens": tokens}) as thread:
        eng = make_engine(openai_config(tiny_lm_dir, [thread.base_url]))
        with pytest.raises(DasdError, match=r"request 'p0' sample 0: the tokens do not spell the returned text: "
                                            + re.escape(where)):
            eng.generate(chat_requests(n_prompts=1, n=1))


def test_texts_the_tokens_spell_with_known_differences_are_kept(tiny_lm_dir):
    """What servers legitimately do to the text keeps the sample, each token on its characters."""
    cases = [
        # a character split over two tokens that the server spells as U+FFFD, without bytes
        ({"content": "Hi \U0001f600!", "tokens": _toks("Hi", " \ufffd", "\ufffd", "!")},
         ["Hi", " ", "", "!"]),  # the two halves get no characters (no bytes to place them by)
        # a leading space the server strips; a stop string the text leaves out
        ({"content": "Start at 3.", "tokens": _toks(" Start", " at", " 3", ".", "\n\nUser")}, ["Start", " at", " 3", ".", ""]),
        # DeepSeek-R1 style: "<think>\n" was in the prompt, the reasoning parser folds it back
        ({"content": "42", "reasoning_content": "Six sevens.", "tokens": _toks("Six", " sevens", ".", "\n</think>\n\n", "4", "2")},
         ["Six", " sevens", ".", "\n</think>\n\n", "4", "2"]),
    ]
    for answer, spelled in cases:
        with _answers_with(tiny_lm_dir, answer) as thread:
            g = make_engine(openai_config(tiny_lm_dir, [thread.base_url])).generate(chat_requests(n_prompts=1, n=1))[0][0]
        assert [g.text[s:e] for s, e in g.offsets] == spelled and g.logprobs == [-0.25] * len(spelled)


def test_answers_off_the_schema_are_one_line_errors(tiny_lm_dir):
    with _answers_with(tiny_lm_dir, {"content": "Start at", "tokens": [("Start", None, -0.1), (" at", None, None)]}) as thread:
        with pytest.raises(DasdError, match=r"request 'p0' sample 0: the server returned 2 tokens but 1 numeric log-probs"):
            make_engine(openai_config(tiny_lm_dir, [thread.base_url])).generate(chat_requests(n_prompts=1, n=1))
    with _answers_with(tiny_lm_dir, {"content": "", "tokens": [("<|im_end|>", None, None)]}) as thread:
        with pytest.raises(DasdError, match=r"1 tokens but 0 numeric log-probs"):
            make_engine(openai_config(tiny_lm_dir, [thread.base_url])).generate(chat_requests(n_prompts=1, n=1))


# ----------------------------------------------------------------------------- context-length refusals
def _refuses_with(status: int, error: dict, long_from: int = 0):
    """A loopback stand-in for vLLM's chat endpoint: a request whose first message is at least
    ``long_from`` characters is answered ``status`` with ``{"error": error}``; a shorter one with a
    one-token answer."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    from dasd.engines.server import ServerThread

    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(body: dict):
        if len(body["messages"][0]["content"]) >= long_from:
            return JSONResponse({"error": error}, status)
        entry = {"token": "4", "logprob": -0.5, "top_logprobs": []}
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": "4"}, "finish_reason": "stop",
                             "logprobs": {"content": [entry]}}], "dasd_logprob_mode": "raw"}

    class Plain:
        pass

    srv = Plain()
    srv.app = app
    return ServerThread(srv)


VLLM_TOO_LONG = [  # what vLLM (several versions), OpenAI, SGLang and llama.cpp say when the prompt does not fit
    {"message": "This model's maximum context length is 64 tokens. However, you requested 90 tokens (82 in the "
                "messages, 8 in the completion). Please reduce the length of the messages or completion.",
     "type": "BadRequestError", "code": 400},
    {"message": "This model's maximum context length is 64 tokens. However, your request has 82 input tokens. Please "
                "reduce the length of the input messages.", "type": "BadRequestError", "param": None, "code": 400},
    {"message": "'max_tokens' or 'max_completion_tokens' is too large: 8. This model's maximum context length is 64 "
                "tokens and your request has 60 input tokens (8 > 64 - 60).", "type": "BadRequestError", "code": 400},
    {"message": "Your input is too long.", "type": "invalid_request_error", "code": "context_length_exceeded"},
    {"message": "Input length (82 tokens) exceeds the maximum allowed length (64 tokens).", "code": 400},
    {"message": "the request exceeds the available context size", "type": "exceed_context_size_error", "code": 400},
]


@pytest.mark.parametrize("error", VLLM_TOO_LONG)
def test_a_context_length_refusal_is_a_per_request_outcome(tiny_lm_dir, error):
    """A prompt the server refuses as longer than its context is a ContextLengthError naming the
    request; with ``too_long``, generate_iter hands it over once and samples the other requests."""
    from dasd.errors import ContextLengthError

    reqs = chat_requests(n_prompts=3, n=3, max_tokens=8)
    reqs[1].messages = [{"role": "user", "content": "Compute 3 + 4 then times 2. " * 10}]
    with _refuses_with(400, error, long_from=200) as thread:
        eng = make_engine(openai_config(tiny_lm_dir, [thread.base_url]))
        with pytest.raises(ContextLengthError, match=r"request 'p1' sample \d: .*HTTP 400: " + re.escape(error["message"][:30])):
            eng.generate(reqs)
        refused: list = []
        got = sorted((r, g.index) for r, g in eng.generate_iter(reqs, too_long=lambda r, err: refused.append((r, err))))
    assert got == [(0, 0), (0, 1), (0, 2), (2, 0), (2, 1), (2, 2)]
    assert [r for r, _ in refused] == [1] and isinstance(refused[0][1], ContextLengthError)
    assert error["message"] in str(refused[0][1])
    assert eng.stats["retries"] == 0


@pytest.mark.parametrize("status, error", [
    (400, {"message": "Invalid 'tools' format", "type": "invalid_request_error", "code": 400}),
    (404, {"message": "The model `tiny` does not exist.", "type": "NotFoundError", "code": 404}),
    # max_tokens alone is not below the context: no prompt could fit, the config is at fault
    (400, {"message": "This model's maximum context length is 8 tokens. However, you requested 40 tokens (32 in the "
                      "messages, 8 in the completion).", "type": "BadRequestError", "code": 400}),
])
def test_other_client_errors_still_end_the_call(tiny_lm_dir, status, error):
    from dasd.errors import ContextLengthError

    reqs = chat_requests(n_prompts=2, n=1, max_tokens=8)
    with _refuses_with(status, error) as thread:
        eng = make_engine(openai_config(tiny_lm_dir, [thread.base_url]))
        with pytest.raises(DasdError, match=rf"HTTP {status}: " + re.escape(error["message"][:30])) as caught:
            list(eng.generate_iter(reqs, too_long=lambda r, err: pytest.fail(f"request {r} taken as too long")))
    assert not isinstance(caught.value, ContextLengthError)
    if "maximum context length is 8" in error["message"]:
        assert "max_tokens 8 leaves no room for any prompt in the server's context of 8 tokens" in str(caught.value)


def test_dasd_server_says_context_length_exceeded(serve, tiny_lm_dir):
    """dasd's own server answers a prompt longer than its engine's context with OpenAI's code
    ``context_length_exceeded``, so its client can tell it from other 400s."""
    import httpx

    from dasd.errors import ContextLengthError

    short = make_engine(EngineConfig_hf(tiny_lm_dir, max_model_len=100))
    long_msg = [{"role": "user", "content": "Compute 3 + 4 then times 2. " * 6}]
    with serve(engine=short) as srv:
        resp = httpx.post(srv.base_url + "/chat/completions", json={"model": "tiny", "messages": long_msg, "max_tokens": 4})
        assert resp.status_code == 400 and resp.json()["error"]["code"] == "context_length_exceeded"
        assert "max_model_len is 100" in resp.json()["error"]["message"]
        eng = make_engine(openai_config(tiny_lm_dir, [srv.base_url]))
        with pytest.raises(ContextLengthError, match=r"request 's' sample 0: .*HTTP 400: .*prompt has \d+ tokens, max_model_len is 100"):
            eng.generate([GenerateRequest(id="s", messages=long_msg, max_tokens=4)])
        with pytest.raises(ContextLengthError, match=r"score request 'c': .*HTTP 400: .*max_model_len is 100"):
            eng.score([ScoreRequest(id="c", messages=[{"role": "user", "content": "Hi."}], continuation="7 " * 120)])
        resp = httpx.post(srv.base_url + "/chat/completions", json={"model": "tiny", "messages": long_msg, "max_tokens": "x"})
        assert resp.status_code == 400 and resp.json()["error"]["code"] == 400  # other 400s keep their status as code


def test_dasd_server_refuses_a_prompt_plus_max_tokens_past_its_context_as_vllm_does(serve, tiny_lm_dir):
    """A prompt that fits but not with the max_tokens asked is a 400 context_length_exceeded in
    vLLM's words (its server validates prompt + max_tokens before generating; the stand-in gave a
    rollout cut at the context, shorter than asked), on both endpoints; the client sees a
    ContextLengthError. Without max_tokens, or with one that fits, it generates."""
    import httpx

    from dasd.errors import ContextLengthError

    short = make_engine(EngineConfig_hf(tiny_lm_dir, max_model_len=100))
    msg = [{"role": "user", "content": "Compute 3 + 4."}]
    n = len(short.context_ids(msg, None, "x"))
    assert n < 100
    with serve(engine=short) as srv:
        for path, body in (("/chat/completions", {"messages": msg}), ("/completions", {"prompt": "7 " * 20})):
            n_in = n if path == "/chat/completions" else len(short.context_ids(None, "7 " * 20, "x"))
            resp = httpx.post(srv.base_url + path, json={"model": "tiny", **body, "max_tokens": 100 - n_in + 1})
            assert resp.status_code == 400 and resp.json()["error"]["code"] == "context_length_exceeded", resp.text
            assert resp.json()["error"]["message"] == (
                f"'max_tokens' or 'max_completion_tokens' is too large: {100 - n_in + 1}. This model's maximum context "
                f"length is 100 tokens and your request has {n_in} input tokens ({100 - n_in + 1} > 100 - {n_in})")
            ok = httpx.post(srv.base_url + path, json={"model": "tiny", **body, "max_tokens": 100 - n_in, "temperature": 0})
            assert ok.status_code == 200 and ok.json()["usage"]["prompt_tokens"] == n_in
        assert httpx.post(srv.base_url + "/chat/completions", json={"model": "tiny", "messages": msg}).status_code == 200
        eng = make_engine(openai_config(tiny_lm_dir, [srv.base_url]))
        with pytest.raises(ContextLengthError, match=r"HTTP 400: 'max_tokens' .* too large"):
            eng.generate([GenerateRequest(id="s", messages=msg, max_tokens=100 - n + 1)])


def EngineConfig_hf(model_dir, **kw):
    from dasd.engines import EngineConfig

    return EngineConfig(model=model_dir, device="cpu", batch_size=8, **kw)


def test_echo_scoring_refuses_more_log_probs_than_tokens(tiny_lm_dir):
    """An echo answer with more log-probs than the prompt has tokens scored another text: an error
    naming the request, not its tail sliced off."""
    from fastapi import FastAPI

    from dasd.engines.server import ServerThread

    app = FastAPI()
    extra = {"n": 2}

    @app.post("/v1/completions")
    async def completions(body: dict):
        n = len(body["prompt"]) + extra["n"]
        return {"choices": [{"index": 0, "text": "", "logprobs": {"token_logprobs": [None] + [-0.5] * (n - 1)}}]}

    class Plain:
        pass

    srv = Plain()
    srv.app = app
    req = ScoreRequest(id="s", messages=[{"role": "user", "content": "Hi."}], continuation="Start at 3.")
    with ServerThread(srv) as thread:
        eng = make_engine(openai_config(tiny_lm_dir, [thread.base_url], score_api="echo"))
        n = len(eng.context_ids(req.messages, None, "s")) + len(eng.encode(req.continuation))
        with pytest.raises(DasdError, match=rf"score request 's': the server echoed {n + 2} log-probs for a prompt of "
                                            rf"{n} tokens: it scored another text"):
            eng.score([req])
        extra["n"] = -1
        with pytest.raises(DasdError, match=rf"echoed {n - 1} log-probs for a prompt of {n} tokens: they do not cover it"):
            eng.score([req])
        extra["n"] = 0
        assert eng.score([req])[0].logprobs == [-0.5] * len(eng.encode(req.continuation))


def test_server_refuses_malformed_fields_with_400s(serve):
    """A string top_logprobs was a 500 the client retried until it gave up; a message without
    content was accepted; a token-id prompt holding a string was refused without saying where."""
    import httpx

    msgs = [{"role": "user", "content": "hi"}]
    with serve() as srv:
        def post(path, **body):
            return httpx.post(srv.base_url + path, json={"model": "tiny", "max_tokens": 2, **body})

        for value in ("3", 2.5, -1, True, 10**6):
            resp = post("/chat/completions", messages=msgs, logprobs=True, top_logprobs=value)
            assert resp.status_code == 400, resp.text
            assert f"top_logprobs must be a whole number from 0 to the vocabulary size, got {value!r}" in resp.text
        for messages, where in [([{"role": "system", "content": "Be brief."}, {"role": "user"}], "messages[1]"),
                                ([{"role": "user", "content": None}], "messages[0]"),
                                ([{"content": "hi"}], "messages[0]"), (["hi"], "messages[0]")]:
            resp = post("/chat/completions", messages=messages)
            assert resp.status_code == 400 and f"{where} must be an object with a string role and a string content" in resp.text
        for prompt, where in [([5, "7", 9], "prompt[1]: a token-id prompt holds whole numbers only, got '7'"),
                              ([5, 6.5], "prompt[1]: a token-id prompt holds whole numbers only, got 6.5"),
                              ([None], "prompt[0]"), ([[5, 6], [7]], "prompt[0]")]:
            resp = post("/completions", prompt=prompt)
            assert resp.status_code == 400 and where in resp.json()["error"]["message"], resp.text
        assert srv.engine_server.stats["requests"] == 0  # nothing reached the engine
        ok = post("/chat/completions", messages=msgs, logprobs=True, top_logprobs=2)
        assert ok.status_code == 200 and len(ok.json()["choices"][0]["logprobs"]["content"][0]["top_logprobs"]) == 2


def test_generate_iter_pulls_requests_lazily(serve, ref_engine, tiny_lm_dir):
    """generate_iter takes a generator of requests and pulls it as slots free: when the first
    sample comes back, at most concurrency + as many queued samples' requests were pulled (not
    the 40), and every request is still answered once, equal to the hf engine's answer."""
    reqs = chat_requests(n_prompts=40, n=1, max_tokens=4)
    pulled: list[int] = []

    def lazy():
        for k, req in enumerate(reqs):
            pulled.append(k)
            yield req

    with serve() as srv:
        eng = make_engine(openai_config(tiny_lm_dir, [srv.base_url], concurrency=2))
        when_first, got = None, {}
        for r, g in eng.generate_iter(lazy()):
            when_first = len(pulled) if when_first is None else when_first
            got[r] = g
    assert when_first is not None and when_first <= 2 * 2 + 1, when_first
    assert sorted(got) == list(range(40)) and len(pulled) == 40
    for r in (0, 17, 39):
        assert got[r].text == reference(ref_engine, reqs[r], 0).text
