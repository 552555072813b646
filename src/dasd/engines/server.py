"""An OpenAI/vLLM-schema HTTP server backed by any dasd Engine (hf on CPU, or any other backend).

    python -m dasd.engines.server --model runs/toy/teacher --port 8000
    # then, from anywhere: engine: {kind: openai, model: teacher, openai: {base_urls: [http://host:8000/v1]}}

Endpoints (the subset of vLLM's schema that dasd's ``openai`` engine uses):
- ``GET  /v1/models``
- ``POST /v1/chat/completions``: ``messages``, ``n``, ``temperature``, ``top_p``, ``max_tokens`` /
  ``max_completion_tokens``, ``seed``, ``logprobs``, ``top_logprobs``, ``return_tokens_as_token_ids``.
  Log-probs as ``choices[i].logprobs.content[j] = {token, logprob, bytes, top_logprobs}``.
- ``POST /v1/completions``: ``prompt`` (text, used as given without special tokens, or a list of
  token ids), the same sampling fields, ``logprobs`` (int), ``echo``, ``prompt_logprobs`` (vLLM's
  extension). Log-probs as ``{tokens, token_logprobs, text_offset, top_logprobs}``.
  ``max_tokens=0`` with ``echo`` scores the prompt only (OpenAI's legacy way of scoring). A
  token-id prompt whose ids do not re-encode to themselves can be scored but not continued
  exactly: with prompt log-probs asked, the sample continues its re-encoded text and the choice
  says so in ``dasd_note``; without, it is a 400.
- A request whose prompt + ``max_tokens`` passes the engine's known context (``max_model_len``) is
  a 400 with code ``context_length_exceeded`` in vLLM's words, as vLLM's server refuses it (the
  engine in process stops at the context instead); a prompt alone past it is the engine's refusal.
- ``POST /tokenize``: ``{prompt}`` -> ``{tokens, count}`` (vLLM's shape; count only is guaranteed).
- ``GET  /dasd/stats``: requests served, rows per engine call, tokens, seconds busy (below).

Every response carries ``"dasd_logprob_mode"`` (the engine's, ``raw`` for hf): log-probs are
untempered, which a client may rely on. A token whose bytes are not valid UTF-8 on their own (part
of a multi-byte character) is written ``"bytes:\\xe2\\x80"``; chat log-probs also give its exact
``bytes``. Seeds follow the engine: with hf, choice ``i`` of a request seeded ``s`` is sample ``i``
of ``GenerateRequest(seed=s)``, whatever else is in the batch.

``python -m dasd.engines.server`` runs the engine in its own process (``EngineProcess``) so that
the HTTP side never competes with the decode loop for the GIL; ``--in-process`` keeps it in one.

Concurrent requests are batched: a single worker runs the engine whenever it is free, on whatever
is queued (up to ``max_batch`` sample rows) in one call, so throughput grows with client
concurrency. While its batch is not full and the engine is idle it keeps gathering until no
request has arrived for ``batch_wait_s`` and none is still being parsed or answered (a client that
keeps N requests in flight sends the next one when it has an answer), at most ``max_gather_s``
(1 s); a full batch runs at once. Batching is static (a batch decodes to its longest row), not
vLLM's iteration-level continuous batching. ``GET /dasd/stats`` (JSON) says how full the batches were:
``requests`` (answered), ``generate_calls`` (engine calls that sampled), ``rows`` (sample rows
they ran, so ``rows / generate_calls`` is rows per call), ``batch_rows`` (``{rows: calls}``),
``tokens`` (generated), ``busy_s`` (seconds the engine was busy), ``gather_s`` (seconds the
engine sat idle gathering a batch that had its first request), ``engine_calls`` (all engine
calls, scoring and tokenizing included), ``queued_rows`` (waiting now), ``open_requests``
(being parsed or answered now) and ``faults``.

``Faults`` makes the server misbehave on purpose (429/500 answers, connections dropped
mid-response, answers slower than a client's timeout, malformed bodies, NaN/-Infinity log-probs)
for testing clients.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from dasd.engines.base import GenerateRequest, Generation, ScoreRequest
from dasd.errors import ContextLengthError, DasdError


@dataclass
class Faults:
    """Fault injection for client tests. Each request draws one fault (or none) from these rates.

    ``rate_429``/``rate_500``: answer that status at once (429 with ``Retry-After: retry_after``);
    ``rate_drop``: do the work, then send half the body and drop the connection; ``rate_slow``:
    do the work, then wait ``slow_seconds`` before answering (a timeout when that is longer than
    the client's); ``rate_malformed``: answer 200 with half of the JSON body, cleanly ended;
    ``rate_nonfinite``: answer 200 with the first token's log-prob NaN or -Infinity (in turn).
    ``seed`` makes the draws repeatable.
    """

    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_drop: float = 0.0
    rate_slow: float = 0.0
    slow_seconds: float = 2.0
    rate_malformed: float = 0.0
    rate_nonfinite: float = 0.0
    retry_after: str = "0"
    seed: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()

    def draw(self) -> str | None:
        with self._lock:
            u = self._rng.random()
        for name, rate in (("429", self.rate_429), ("500", self.rate_500), ("drop", self.rate_drop), ("slow", self.rate_slow),
                           ("malformed", self.rate_malformed), ("nonfinite", self.rate_nonfinite)):
            if u < rate:
                with self._lock:
                    self.counts[name] = self.counts.get(name, 0) + 1
                return name
            u -= rate
        return None


class _BadRequest(Exception):
    """A 400 answer; ``code`` is its ``error.code`` (``context_length_exceeded`` for a request longer
    than the model's context, as OpenAI's API says; else the status)."""

    def __init__(self, msg: str, code: str | int = 400):
        super().__init__(msg)
        self.code = code


def _refusal(err: DasdError) -> _BadRequest:
    """The 400 for an engine's refusal of one request."""
    return _BadRequest(str(err), "context_length_exceeded" if isinstance(err, ContextLengthError) else 400)


def _token_text(data: bytes) -> str:
    """A token's string: its UTF-8 text, or ``bytes:\\xNN...`` when it is not valid UTF-8 alone."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in data)


class EngineServer:
    """The batching worker and response builders; ``app`` is the FastAPI application.

    Knobs: ``served_name`` (the model name clients send and see), ``max_batch`` (sample rows per
    engine call), ``batch_wait_s`` (how long an idle engine's partial batch waits for another
    request once none is arriving or being answered; see the module docstring), ``max_gather_s``
    (the longest an idle engine gathers one batch), ``faults``,
    ``api_key`` (if set, requests must send it as a Bearer token). Pitfall: the engine is used
    from one worker thread only; do not use the same engine object elsewhere while the server runs.
    """

    def __init__(self, engine, served_name: str | None = None, max_batch: int = 64, faults: Faults | None = None,
                 api_key: str | None = None, batch_wait_s: float = 0.02, max_gather_s: float = 1.0):
        self.engine = engine
        self.batch_wait_s = batch_wait_s
        self.max_gather_s = max_gather_s
        self.api_key = api_key
        self.served_name = served_name or engine.name
        self.max_batch = max_batch
        self.faults = faults or Faults()
        self.tokenizer = getattr(engine, "tokenizer", None)
        self._vocab_bytes: list[bytes] | None = None
        self.mode = getattr(engine, "logprob_mode", "raw")
        self.stats: dict[str, Any] = {"requests": 0, "generate_calls": 0, "rows": 0, "batch_rows": {}, "tokens": 0,
                                      "busy_s": 0.0, "gather_s": 0.0, "engine_calls": 0}
        self._outside = 0  # requests on the HTTP side (being parsed or answered): neither queued nor in the engine
        self._queued_rows = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dasd-engine")
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self.app = self._build_app()

    # ------------------------------------------------------------------ batching
    async def _submit(self, kind: str, payload: Any):
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.get_running_loop().create_task(self._work())
        fut = asyncio.get_running_loop().create_future()
        self._outside -= 1
        try:
            self._queued_rows += _rows((kind, payload, fut))
            await self._queue.put((kind, payload, fut))
            return await fut
        finally:
            self._outside += 1

    async def _work(self) -> None:
        """Run the engine whenever it is free on what is queued (the policy is in the module docstring)."""
        loop = asyncio.get_running_loop()
        while True:
            items = [await self._queue.get()]  # engine idle, nothing queued: wait for a request
            rows = _rows(items[0])
            start = quiet_since = loop.time()
            while rows < self.max_batch:
                now = loop.time()
                if not self._queue.empty():
                    items.append(self._queue.get_nowait())
                    rows += _rows(items[-1])
                    quiet_since = now
                    continue
                if self._outside > 0:  # a request being parsed, or an answer whose client may send again
                    quiet_since = now
                elif now - quiet_since >= self.batch_wait_s:
                    break
                if now - start >= self.max_gather_s:
                    break
                await asyncio.sleep(0.002)  # polling: a cancelled get() could lose an item
            self.stats["gather_s"] += loop.time() - start
            self._queued_rows -= rows
            try:
                results = await loop.run_in_executor(self._pool, self._run, items)
            except BaseException as err:  # noqa: BLE001 - handed to every waiting request
                results = [err] * len(items)
            for (_, _, fut), res in zip(items, results):
                if not fut.done():
                    fut.set_exception(res) if isinstance(res, BaseException) else fut.set_result(res)

    def _run(self, items: list) -> list:
        """Engine calls for one batch: all generate requests together, then each other item."""
        t0 = time.perf_counter()
        out: list[Any] = [None] * len(items)
        gen = [k for k, (kind, _, _) in enumerate(items) if kind == "generate"]
        if gen:
            n = sum(items[k][1].n for k in gen)
            self.stats["generate_calls"] += 1
            self.stats["batch_rows"][n] = self.stats["batch_rows"].get(n, 0) + 1
            self.stats["rows"] += n
            try:
                res = self.engine.generate([items[k][1] for k in gen])
                for k, r in zip(gen, res):
                    out[k] = r
                    self.stats["tokens"] += sum(len(g.logprobs) for g in r)
            except DasdError:  # one bad request must not fail its batch-mates: run them alone
                for k in gen:
                    try:
                        out[k] = self.engine.generate([items[k][1]])[0]
                    except DasdError as err:
                        out[k] = _refusal(err)
        for k, (kind, payload, _) in enumerate(items):
            if kind == "generate":
                continue
            try:
                out[k] = payload()
            except _BadRequest as err:
                out[k] = err
            except DasdError as err:
                out[k] = _refusal(err)
        self.stats["engine_calls"] += 1
        self.stats["busy_s"] += time.perf_counter() - t0
        return out

    # ------------------------------------------------------------------ helpers
    def _bytes(self, g: Generation) -> list[bytes]:
        """Each generated token's exact bytes (from the tokenizer when there is one)."""
        if self.tokenizer is not None and g.token_ids:
            return [self._piece(t) for t in g.token_ids]
        return [g.text[s:e].encode() for s, e in g.offsets]

    def _piece(self, tid: int) -> bytes:
        """The bytes of token ``tid`` (a table of the whole vocabulary, built on first use)."""
        if self._vocab_bytes is None:
            from dasd.engines.offsets import token_bytes

            self._vocab_bytes = token_bytes(self.tokenizer, list(range(len(self.tokenizer))))
        if tid >= len(self._vocab_bytes):  # ids past the tokenizer (padded embedding rows)
            from dasd.engines.offsets import token_bytes

            return token_bytes(self.tokenizer, [tid])[0]
        return self._vocab_bytes[tid]

    def _top(self, prompt_ids: list[int], ids: list[int], k: int) -> list[list[tuple[int, float]]]:
        """Top-``k`` (id, raw log-prob) at each generated position."""
        fn = getattr(self.engine, "top_logprobs", None)
        return fn(prompt_ids, ids, k) if fn is not None else top_logprobs(self.engine, prompt_ids, ids, k)

    def _sampling(self, body: dict, rid: str) -> dict:
        """n, temperature, top_p, max_tokens and seed of a request (absent: the defaults); a value
        that is not a finite number is a 400, and so is one out of range (``GenerateRequest``)."""
        max_tokens = body.get("max_completion_tokens")
        if max_tokens is None:
            max_tokens = body.get("max_tokens")
        out = {}
        for key, value, default, kind in (("n", body.get("n"), 1, int), ("temperature", body.get("temperature"), 1.0, float),
                                          ("top_p", body.get("top_p"), 1.0, float), ("max_tokens", max_tokens, 256, int),
                                          ("seed", body.get("seed"), None, int)):
            if value is None:
                out[key] = default
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise _BadRequest(f"request {rid!r}: {key} must be a number, got {value!r}")
            else:
                out[key] = kind(value)
        if out["seed"] is None:
            out["seed"] = random.randrange(2**31)
        return out

    # ------------------------------------------------------------------ handlers
    async def chat(self, body: dict) -> dict:
        rid = f"chatcmpl-{uuid.uuid4().hex[:16]}"
        if body.get("stream"):
            raise _BadRequest("stream=true is not supported by this server")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _BadRequest("messages must be a non-empty list")
        for j, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise _BadRequest(f"messages[{j}] must be an object with a string role and a string content, "
                                  f"got {str(m)[:200]}")
        s = self._sampling(body, rid)
        k = body.get("top_logprobs")
        if k is None:
            k = 0
        elif isinstance(k, bool) or not isinstance(k, int) or k < 0 or (self.tokenizer is not None and k > len(self.tokenizer)):
            raise _BadRequest(f"top_logprobs must be a whole number from 0 to the vocabulary size, got {k!r}")
        try:
            req = GenerateRequest(id=rid, messages=messages, **s)
        except ValueError as err:
            raise _BadRequest(str(err))
        gens = await self._submit("generate", req)
        self._within_context(gens, body.get("max_completion_tokens", body.get("max_tokens")))
        want_lp = bool(body.get("logprobs"))
        as_ids = bool(body.get("return_tokens_as_token_ids"))
        choices = []
        for g in gens:
            choice = {"index": g.index, "message": {"role": "assistant", "content": g.text},
                      "finish_reason": g.finish_reason, "logprobs": None}
            if want_lp:
                tops = await self._submit("call", lambda g=g: self._top(self._prompt_ids(messages, None, rid), g.token_ids, k)) if k else None
                content = []
                for j, (tid, data, lp) in enumerate(zip(g.token_ids, self._bytes(g), g.logprobs)):
                    item = {"token": f"token_id:{tid}" if as_ids else _token_text(data), "logprob": lp,
                            "bytes": list(data), "top_logprobs": []}
                    if tops:
                        item["top_logprobs"] = [
                            {"token": f"token_id:{t}" if as_ids else _token_text(self._piece(t)), "logprob": v,
                             "bytes": list(self._piece(t))} for t, v in tops[j]
                        ]
                    content.append(item)
                choice["logprobs"] = {"content": content}
            choices.append(choice)
        return self._wrap(rid, "chat.completion", choices, gens)

    def _prompt_ids(self, messages, prefix, rid) -> list[int]:
        return self.engine.context_ids(messages, prefix, rid)

    async def completions(self, body: dict) -> dict:
        rid = f"cmpl-{uuid.uuid4().hex[:16]}"
        if body.get("stream"):
            raise _BadRequest("stream=true is not supported by this server")
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]
        if isinstance(prompt, list) and prompt and not isinstance(prompt[0], str):
            bad = next(((j, t) for j, t in enumerate(prompt) if isinstance(t, bool) or not isinstance(t, int)), None)
            if bad is not None:
                raise _BadRequest(f"prompt[{bad[0]}]: a token-id prompt holds whole numbers only, got {bad[1]!r}")
            if self.tokenizer is None:
                raise _BadRequest("token-id prompts need an engine with a tokenizer")
            ids = list(prompt)
            bad = next((t for t in ids if isinstance(t, bool) or not 0 <= t < len(self.tokenizer)), None)
            if bad is not None:
                raise _BadRequest(f"token id {bad} is not in this model's vocabulary ({len(self.tokenizer)} ids): "
                                  "is the client's tokenizer the served model's?")
            text = self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        elif isinstance(prompt, str):
            text, ids = prompt, None
        else:
            raise _BadRequest("prompt must be a string or a list of token ids")
        max_tokens = body.get("max_tokens")
        max_tokens = 16 if max_tokens is None else int(max_tokens)
        echo = bool(body.get("echo"))
        lp_k = body.get("logprobs")
        plp_k = body.get("prompt_logprobs")
        prompt_scores = None
        note = None
        if (echo and lp_k is not None) or plp_k is not None:
            if ids is None:
                ids = await self._submit("call", lambda: self._prompt_ids(None, text, rid))
            prompt_scores = await self._submit("call", lambda: self._score_prompt(ids, rid))
        if max_tokens == 0:
            if not echo:
                raise _BadRequest("max_tokens=0 is only allowed with echo=true")
            gens = [Generation(rid, 0, "", [], [], [], [], "length", self.mode, len(ids or []))]
        else:
            body = dict(body, max_tokens=max_tokens)
            s = self._sampling(body, rid)
            try:
                again = self.engine.context_ids(None, text, rid) if ids is not None else None
            except DasdError as err:
                raise _BadRequest(str(err))
            if ids is not None and again != ids:
                if prompt_scores is None:
                    raise _BadRequest("this token-id prompt does not re-encode to itself; send it as text")
                note = "sampled after the prompt's re-encoded text (its token ids do not re-encode to themselves)"
            try:
                req = GenerateRequest(id=rid, prefix=text, **s)
            except ValueError as err:
                raise _BadRequest(str(err))
            gens = await self._submit("generate", req)
            self._within_context(gens, max_tokens)
        choices = []
        for g in gens:
            choice: dict[str, Any] = {"index": g.index, "text": (text if echo else "") + g.text,
                                      "finish_reason": g.finish_reason, "logprobs": None}
            if max_tokens and note:
                choice["dasd_note"] = note
            if lp_k is not None:
                toks: list[str] = []
                lps: list[float | None] = []
                as_ids = bool(body.get("return_tokens_as_token_ids"))
                if echo:
                    assert prompt_scores is not None
                    toks += [f"token_id:{t}" if as_ids else _token_text(self._piece(t)) for t in ids]
                    lps += [None] + prompt_scores
                if as_ids:
                    toks += [f"token_id:{t}" for t in g.token_ids]
                else:
                    toks += [_token_text(b) for b in self._bytes(g)]
                lps += list(g.logprobs)
                offs, at = [], 0
                for t in toks:
                    offs.append(at)
                    at += len(t) if not t.startswith("bytes:") else 0
                choice["logprobs"] = {"tokens": toks, "token_logprobs": lps, "text_offset": offs,
                                      "top_logprobs": [None] * len(toks)}
            if plp_k is not None:
                choice["prompt_logprobs"] = [None] + [
                    {str(t): {"logprob": v, "rank": None, "decoded_token": _token_text(self._piece(t))}}
                    for t, v in zip(ids[1:], prompt_scores)
                ]
            choices.append(choice)
        return self._wrap(rid, "text_completion", choices, gens)

    def _within_context(self, gens: list[Generation], max_tokens) -> None:
        """A 400 (``context_length_exceeded``, in vLLM's words) when the prompt + the ``max_tokens`` the
        request asked for pass the engine's context, as vLLM's server refuses it; the engine itself
        (hf, vLLM offline) would stop at the context instead, a rollout shorter than asked. Checked on
        the prompt length the generation reports: a refused request's samples are dropped."""
        limit = getattr(self.engine, "max_len", None)
        if limit is None or max_tokens is None or not gens or gens[0].prompt_tokens + int(max_tokens) <= limit:
            return
        n = gens[0].prompt_tokens
        raise _BadRequest(f"'max_tokens' or 'max_completion_tokens' is too large: {max_tokens}. This model's maximum "
                          f"context length is {limit} tokens and your request has {n} input tokens "
                          f"({max_tokens} > {limit} - {n})", "context_length_exceeded")

    def _score_prompt(self, ids: list[int], rid: str) -> list[float]:
        """Log-probs of ids[1:], each given the ids before it (prompt_logprobs)."""
        if len(ids) < 2:
            return []
        first = self.tokenizer.decode(ids[:1], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if self.engine.context_ids(None, first, rid) != ids[:1]:
            raise _BadRequest("cannot score this prompt: its first token does not re-encode to itself")
        from dasd.engines.offsets import spans_from_bytes

        rest, spans = spans_from_bytes([self._piece(t) for t in ids[1:]])
        # the spans are the engines.offsets rule's for these ids in ``rest``: the engine takes them, not computing them again
        res = self.engine.score([ScoreRequest(id=rid, prefix=first, continuation=rest, continuation_ids=ids[1:],
                                              offsets=spans)])
        return list(res[0].logprobs)

    def _wrap(self, rid: str, obj: str, choices: list, gens: list[Generation]) -> dict:
        self.stats["requests"] += 1
        completion = sum(len(g.logprobs) for g in gens)
        prompt = gens[0].prompt_tokens if gens else 0
        mode = gens[0].logprob_mode if gens else self.mode
        return {
            "id": rid, "object": obj, "created": int(time.time()), "model": self.served_name,
            "choices": choices, "dasd_logprob_mode": mode,
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
        }

    # ------------------------------------------------------------------ app
    def _build_app(self):
        from fastapi import FastAPI
        from fastapi.responses import JSONResponse, Response, StreamingResponse

        app = FastAPI(title="dasd engine server")
        server = self

        def error(status: int, msg: str, kind: str, headers: dict | None = None, code: str | int | None = None):
            body = {"error": {"message": msg, "type": kind, "code": status if code is None else code}}
            return JSONResponse(body, status, headers=headers)

        async def handle(request: Request, fn):
            server._outside += 1
            try:
                res = await answer(request, fn)
            finally:
                server._outside -= 1
            if not isinstance(res, tuple):
                return res
            fault, data = res
            if fault == "malformed":
                return Response(data[: len(data) // 2], media_type="application/json")
            if fault == "slow":
                await asyncio.sleep(server.faults.slow_seconds)
            if fault == "drop":
                async def broken():
                    yield data[: len(data) // 2]
                    raise ConnectionAbortedError("connection dropped (injected)")

                return StreamingResponse(broken(), media_type="application/json")
            return Response(data, media_type="application/json")

        async def answer(request: Request, fn):
            """An error response, or (fault, body) for ``handle`` to send."""
            if server.api_key and request.headers.get("authorization") != f"Bearer {server.api_key}":
                return error(401, "missing or wrong API key", "authentication_error")
            fault = server.faults.draw()
            if fault == "429":
                return error(429, "rate limited (injected)", "rate_limit", {"Retry-After": server.faults.retry_after})
            if fault == "500":
                return error(500, "internal error (injected)", "server_error")
            try:
                body = await request.json()
            except ValueError:
                return error(400, "body is not JSON", "invalid_request_error")
            if not isinstance(body, dict):
                return error(400, "body must be a JSON object", "invalid_request_error")
            model = body.get("model")
            if model is not None and model != server.served_name:
                return error(404, f"model {model!r} not served here (this is {server.served_name!r})", "not_found")
            try:
                payload = await fn(body)
            except _BadRequest as err:
                return error(400, str(err), "invalid_request_error", code=err.code)
            if fault == "nonfinite" and _spoil_logprobs(payload, server.faults.counts["nonfinite"] % 2):
                return fault, json.dumps(payload, allow_nan=True).encode()
            return fault, JSONResponse(payload).body

        @app.get("/v1/models")
        async def models():
            return {"object": "list", "data": [{"id": server.served_name, "object": "model", "owned_by": "dasd"}]}

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            return await handle(request, server.chat)

        @app.post("/v1/completions")
        async def completions(request: Request):
            return await handle(request, server.completions)

        @app.post("/tokenize")
        async def tokenize(request: Request):
            async def fn(body):
                text = body.get("prompt")
                if not isinstance(text, str):
                    raise _BadRequest("prompt must be a string")
                eng = server.engine
                ids = await server._submit("call", lambda: eng.encode(text) if hasattr(eng, "encode") else None)
                n = len(ids) if ids is not None else await server._submit("call", lambda: eng.count_tokens(text))
                return {"tokens": ids or [], "count": n, "max_model_len": getattr(eng, "max_len", None)}

            return await handle(request, fn)

        @app.get("/dasd/stats")
        async def stats():
            return dict(server.stats, batch_rows=dict(server.stats["batch_rows"]), queued_rows=server._queued_rows,
                        open_requests=server._outside, faults=dict(server.faults.counts))

        return app


def _spoil_logprobs(payload: dict, nan: int) -> bool:
    """Set the first sampled token's log-prob of ``payload`` to NaN (``nan``) or -Infinity; False if it has none."""
    bad = math.nan if nan else -math.inf
    for choice in payload.get("choices") or []:
        lp = choice.get("logprobs") or {}
        if lp.get("content"):
            lp["content"][0]["logprob"] = bad
            return True
        if lp.get("token_logprobs"):
            lp["token_logprobs"][0] = bad
            return True
    return False


def _rows(item) -> int:
    kind, payload, _ = item
    return payload.n if kind == "generate" else 1


def top_logprobs(engine, prompt_ids: list[int], ids: list[int], k: int) -> list[list[tuple[int, float]]]:
    """Top-``k`` (id, raw log-prob) at each position of ``ids`` after ``prompt_ids`` (hf engine only)."""
    import torch

    if not (hasattr(engine, "base") and hasattr(engine, "logits")):
        raise _BadRequest("top_logprobs needs an engine that exposes its logits (hf)")
    if not ids:
        return []
    seq = torch.tensor(prompt_ids + ids[:-1], device=engine.device)[None]
    out = []
    with torch.inference_mode():
        hidden = engine.base(input_ids=seq).last_hidden_state[0, len(prompt_ids) - 1 :]
        for s in range(0, hidden.shape[0], 256):
            lp = torch.log_softmax(engine.logits(hidden[s : s + 256]), -1)
            vals, idx = lp.topk(k, dim=-1)
            out += [list(zip(i.tolist(), v.tolist())) for i, v in zip(idx, vals)]
    return out


def _engine_child(cfg: dict, conn) -> None:
    """Body of the engine process: build the engine, then answer (method, args) calls until None.
    It ends with the server's process, even mid-batch (``dasd.signals.exit_with_parent``)."""
    from dasd.engines import EngineConfig, make_engine
    from dasd.signals import exit_with_parent

    exit_with_parent()

    try:
        engine = make_engine(EngineConfig.model_validate(cfg))
    except BaseException as err:  # noqa: BLE001 - reported to the parent
        conn.send(("error", f"{type(err).__name__}: {err}"))
        return
    conn.send(("ready", {"name": engine.name, "tokenizer": getattr(engine, "tokenizer", None),
                         "max_len": getattr(engine, "max_len", None)}))
    while True:
        msg = conn.recv()
        if msg is None:
            return
        method, args = msg
        try:
            if method == "top_logprobs":
                res = top_logprobs(engine, *args)
            else:
                res = getattr(engine, method)(*args)
            conn.send(("ok", res))
        except _BadRequest as err:
            conn.send(("bad", str(err)))
        except ContextLengthError as err:
            conn.send(("too_long", str(err)))
        except DasdError as err:
            conn.send(("dasd", str(err)))
        except BaseException as err:  # noqa: BLE001
            conn.send(("error", f"{type(err).__name__}: {err}"))


class EngineProcess:
    """An engine built and run in a child process, with the Engine methods the server calls.

    Why: in one process the HTTP side's Python work (JSON, sockets) holds the GIL that the
    engine's decode loop needs, which slows generation by ~25% on small models. vLLM splits its
    API server from its engine core for the same reason. ``tokenizer`` is the child's, pickled.
    Calls are one at a time (the server's worker thread serialises them). ``close()`` ends it.
    """

    def __init__(self, cfg):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_engine_child, args=(cfg.model_dump(mode="json"), child), daemon=True,
                                name="dasd-engine")
        self.proc.start()
        child.close()
        kind, info = self.conn.recv()
        if kind != "ready":
            self.proc.join(timeout=10)
            raise DasdError(f"engine process: {info}")
        self.name, self.tokenizer, self.max_len = info["name"], info["tokenizer"], info["max_len"]
        self._lock = threading.Lock()

    def _call(self, method: str, *args):
        with self._lock:
            self.conn.send((method, args))
            kind, val = self.conn.recv()
        if kind == "ok":
            return val
        if kind == "bad":
            raise _BadRequest(val)
        if kind == "too_long":
            raise ContextLengthError(val)
        raise DasdError(val) if kind == "dasd" else RuntimeError(f"engine process: {val}")

    def generate(self, requests):
        return self._call("generate", requests)

    def score(self, requests):
        return self._call("score", requests)

    def count_tokens(self, text: str) -> int:
        return self._call("count_tokens", text)

    def encode(self, text: str) -> list[int]:
        return self._call("encode", text)

    def context_ids(self, messages, prefix, rid):
        return self._call("context_ids", messages, prefix, rid)

    def top_logprobs(self, prompt_ids, ids, k):
        return self._call("top_logprobs", prompt_ids, ids, k)

    def close(self) -> None:
        try:
            self.conn.send(None)
        except (OSError, BrokenPipeError):
            pass
        self.proc.join(timeout=30)
        if self.proc.is_alive():
            self.proc.terminate()


class ServerThread:
    """Run an ``EngineServer`` with uvicorn in a background thread on ``host``:``port`` (0 = free port).

        with ServerThread(EngineServer(engine)) as srv:
            print(srv.base_url)   # http://127.0.0.1:PORT/v1

    ``stop()`` (or leaving the ``with``) shuts the server down and joins the thread.
    """

    def __init__(self, server: EngineServer, host: str = "127.0.0.1", port: int = 0):
        import socket

        import uvicorn

        self.server = server
        if port == 0:
            with socket.socket() as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
        self.host, self.port = host, port
        config = uvicorn.Config(server.app, host=host, port=port, log_level="critical", access_log=False)
        self._uv = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._uv.run, daemon=True, name="dasd-server")

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._uv.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise DasdError(f"server on {self.host}:{self.port} did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._uv.should_exit = True
        self._thread.join(timeout=30)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    """``python -m dasd.engines.server --model DIR [--host H] [--port P] [--served-name NAME]``."""
    import uvicorn

    from dasd.engines import EngineConfig, make_engine

    ap = argparse.ArgumentParser(prog="python -m dasd.engines.server", description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="model directory for the hf engine")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--served-name", default=None, help="model name clients send (default: --model)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--batch-size", type=int, default=16, help="engine generation rows per batch")
    ap.add_argument("--max-batch", type=int, default=64, help="sample rows gathered per engine call")
    ap.add_argument("--batch-wait", type=float, default=0.02,
                    help="seconds an idle engine's partial batch waits for another request (see the module docstring)")
    ap.add_argument("--fault-429", type=float, default=0.0, help="(testing) fraction answered 429")
    ap.add_argument("--fault-500", type=float, default=0.0, help="(testing) fraction answered 500")
    ap.add_argument("--fault-drop", type=float, default=0.0, help="(testing) fraction dropped mid-response")
    ap.add_argument("--fault-slow", type=float, default=0.0, help="(testing) fraction answered slowly")
    ap.add_argument("--slow-seconds", type=float, default=2.0)
    ap.add_argument("--fault-malformed", type=float, default=0.0, help="(testing) fraction answered with half a body")
    ap.add_argument("--fault-nonfinite", type=float, default=0.0, help="(testing) fraction with a NaN/-Infinity log-prob")
    ap.add_argument("--in-process", action="store_true",
                    help="run the engine in the server process (default: its own process, no GIL sharing)")
    ap.add_argument("--api-key-env", default=None, help="require the key held in this environment variable")
    args = ap.parse_args(argv)
    import os

    key = os.environ.get(args.api_key_env) if args.api_key_env else None
    if args.api_key_env and not key:
        raise SystemExit(f"--api-key-env: environment variable {args.api_key_env} is not set")
    cfg = EngineConfig(model=args.model, device=args.device, batch_size=args.batch_size)
    engine = make_engine(cfg) if args.in_process else EngineProcess(cfg)
    faults = Faults(args.fault_429, args.fault_500, args.fault_drop, args.fault_slow, args.slow_seconds,
                    rate_malformed=args.fault_malformed, rate_nonfinite=args.fault_nonfinite)
    srv = EngineServer(engine, args.served_name, args.max_batch, faults, api_key=key, batch_wait_s=args.batch_wait)
    print(f"serving {srv.served_name} on http://{args.host}:{args.port}/v1", flush=True)
    try:
        uvicorn.run(srv.app, host=args.host, port=args.port, log_level="warning")
    finally:
        if isinstance(engine, EngineProcess):
            engine.close()


if __name__ == "__main__":
    main()
