"""The ``openai`` engine: sampling and scoring through any OpenAI-compatible server.

    engine:
      kind: openai
      model: Qwen/Qwen3-8B                 # the served model name (recorded in every Sample)
      tokenizer: /models/Qwen3-8B          # optional locally; needed for score() and token ids
      openai: {base_urls: [http://10.0.0.5:8000/v1, http://10.0.0.6:8000/v1], concurrency: 128}

What it does:
- **generate**: chat messages go to ``/chat/completions``; a raw ``prefix`` (mixed-policy
  continuation, already templated) goes to ``/completions`` with ``add_special_tokens: false``.
  Sample ``i`` of a request is its own HTTP request with ``n=1`` and ``seed=sample_seed(seed, i)``,
  so every sample is reproducible and can be resumed on its own. Per-token log-probs of the sampled
  tokens are always asked for (and ``openai.top_logprobs`` alternatives when > 0).
- **score**: teacher-forced log-probs through vLLM's ``prompt_logprobs`` (or ``echo`` with
  ``max_tokens=0``), on a token-id prompt built with the local ``tokenizer`` exactly as the hf
  engine builds it (chat template with generation prompt, continuation encoded on its own).
- **Streaming results**: ``generate_iter(requests)`` yields ``(request_index, Generation)`` as each
  sample finishes, so a caller can write it at once; ``generate`` collects the same.
- **Robustness**: ``openai.concurrency`` requests in flight, a ``timeout_s`` per request, retries
  on 429 / 5xx / timeouts / dropped connections / truncated bodies with jittered exponential
  backoff (``Retry-After`` honoured), up to ``max_retries``; 4xx errors fail at once with the
  server's message. A refusal of a request as longer than the server's context (``_refusal``:
  vLLM's "maximum context length", OpenAI's ``context_length_exceeded``) is a ``ContextLengthError``,
  which ``generate_iter(..., too_long=fn)`` hands to ``fn`` while the other requests go on. Several ``base_urls`` are load-balanced by fewest requests in flight.
  ``stats`` counts requests, ``retries``, ``retry:<kind>`` (429, 5xx, timeout, connection,
  malformed), ``retry_seconds`` (time lost to failed attempts and backoff) and ``nonfinite``
  (answers with NaN or infinite log-probs: returned as they are, for the stage to quarantine).
- **Reasoning**: a separate ``reasoning_content`` / ``reasoning`` field, or harmony channels left
  in the text (``<|channel|>analysis<|message|>...``), is folded into
  ``<think>\\n...\\n</think>\\n\\n`` before the answer.

Offsets: the tokens' bytes (the ``bytes`` field, a ``bytes:\\xNN`` token, the token string, or with
``openai.token_ids`` the local tokenizer's bytes of each id) are concatenated and decoded, giving
each token's span exactly as in ``engines.offsets``; when the returned text differs from the
tokens' text (folded reasoning, a stripped leading space, template markup) the spans are carried
over by a character alignment; a token with no characters in the text gets an empty span, and text
that comes from no token (beyond whitespace, the ``<think>`` markup and U+FFFD) is a DasdError. A
final end-of-turn token that the server lists (vLLM does) but whose text is not in the answer is
dropped, as the hf engine never returns its stop token.

Pitfalls: without ``openai.token_ids`` the ``token_ids`` of a Generation are empty and ``tokens``
are the server's token strings. ``logprob_mode`` is ``raw`` only when the server says so (dasd's
own server does) or the config says so. vLLM's default is raw log-probs (``--logprobs-mode
raw_logprobs``, docs/engines.md), but a vLLM server does not announce its mode, so ``auto`` treats
its answers as processed: set ``logprob_mode: raw`` when the server runs with the default.
"""

from __future__ import annotations

import ast
import asyncio
import codecs
import collections
import difflib
import email.utils
import hashlib
import math
import os
import queue
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from dasd.engines.base import (
    EngineStats,
    GenerateRequest,
    Generation,
    ScoreRequest,
    ScoreResult,
    build_context_ids,
    encode_text,
)
from dasd.engines.config import EngineConfig
from dasd.engines.offsets import spans_from_bytes, token_bytes, token_offsets
from dasd.errors import ConfigError, ContextLengthError, DasdError

_HARMONY = re.compile(
    r"<\|channel\|>(?P<channel>\w+)[^<]*<\|message\|>(?P<text>.*?)(?=<\|end\|>|<\|return\|>|<\|call\|>|<\|start\|>|$)",
    re.S,
)


@dataclass
class OpenAIGeneration(Generation):
    """A Generation plus, when asked (``openai.top_logprobs``), each token's top alternatives."""

    top_logprobs: list[dict[str, float]] | None = None


def sample_seed(seed: int, index: int) -> int:
    """The ``seed`` sent for sample ``index`` of a request seeded ``seed`` (31 bits, stable).

    ``hf.row_seed(seed, index) % (2**31 - 1)``, computed here so that the client needs no torch.
    """
    digest = hashlib.sha256(f"dasd/{seed}/{index}".encode()).digest()
    return (int.from_bytes(digest[:8], "little") & (2**63 - 1)) % (2**31 - 1)


# --------------------------------------------------------------------------- parsing helpers
def piece_bytes(token: str, raw: list[int] | None = None) -> bytes:
    """A token's bytes: the ``bytes`` field if given, a ``bytes:...`` token decoded, else UTF-8."""
    if raw is not None:
        return bytes(raw)
    if token.startswith("bytes:"):
        rest = token[len("bytes:"):]
        if rest[:2] in ("b'", 'b"'):
            return ast.literal_eval(rest)
        return codecs.escape_decode(rest.encode("latin-1", "backslashreplace"))[0]
    return token.encode("utf-8")


def split_harmony(text: str) -> tuple[str, str] | None:
    """(reasoning, answer) from text that still holds harmony channel markup, else None."""
    if "<|channel|>" not in text:
        return None
    reasoning, answer = [], []
    for m in _HARMONY.finditer(text):
        (answer if m["channel"] == "final" else reasoning).append(m["text"])
    return "\n".join(reasoning), "".join(answer)


def fold_reasoning(reasoning: str, content: str) -> str:
    """``<think>\\nREASONING\\n</think>\\n\\nANSWER`` (the Qwen3 / DeepSeek-R1 layout)."""
    return f"<think>\n{reasoning.strip(chr(10))}\n</think>\n\n{content.lstrip(chr(10))}"


def folded_anchors(reasoning: str, content: str) -> list[tuple[str, int, bool]]:
    """Where the parts of ``fold_reasoning(reasoning, content)`` lie: (substring, position, required)."""
    r, c = reasoning.strip("\n"), content.lstrip("\n")
    close = len("<think>\n") + len(r) + 1
    return [("<think>", 0, False), ("\n", 7, False), (r, 8, True), ("\n", close - 1, False),
            ("</think>", close, False), ("\n\n", close + 8, False), (c, close + 10, True)]


_ALIGN_LIMIT = 20_000  # characters; longer texts that need a general alignment are an error


def carry_spans(
    raw: str, spans: list[tuple[int, int]], text: str, anchors: list[tuple[str, int, bool]] | None = None,
    strict: bool = False,
) -> list[tuple[int, int]]:
    """Move character ``spans`` in ``raw`` onto ``text``.

    ``anchors`` (substring, its position in ``text``, required) are looked for in ``raw`` in order,
    a required one anywhere after the previous (``str.find``, linear), an optional one only right
    after it: their characters map one to one. Without anchors, or when a required
    one is missing, a general character alignment (difflib, quadratic at worst: texts up to
    20,000 characters) is used; beyond that it is a DasdError rather than a slow or wrong answer.
    A span's matched characters give its new span (first to last); a span with none gets the empty
    span where the next matched character goes. Starts and ends stay non-decreasing.

    ``strict``: every character of ``text`` must come from a token (``unspelled``), else DasdError:
    the tokens, and so their log-probs, belong to some other text.
    """
    if raw == text:
        return list(spans)
    where = _anchor_map(raw, anchors) if anchors else None
    if where is None:
        if max(len(raw), len(text)) > _ALIGN_LIMIT:
            raise DasdError(
                f"token offsets: the tokens' text ({len(raw)} chars) and the returned text "
                f"({len(text)} chars) differ and are too long to align; the server changed the text"
            )
        where = [-1] * len(raw)
        sm = difflib.SequenceMatcher(None, raw, text, autojunk=False)
        for a, b, size in sm.get_matching_blocks():
            for k in range(size):
                where[a + k] = b + k
    if strict and (bad := unspelled(raw, text, where, anchors)) is not None:
        j, k = bad
        raise DasdError(
            f"the tokens do not spell the returned text: {text[j:k][:60]!r} (characters {j}-{k} of "
            f"{len(text)}) comes from no token, so the log-probs cannot be placed on the text"
        )
    nxt = [len(text)] * (len(raw) + 1)  # text position of the next matched char at or after i
    for i in range(len(raw) - 1, -1, -1):
        nxt[i] = where[i] if where[i] >= 0 else nxt[i + 1]
    out: list[tuple[int, int]] = []
    for s, e in spans:
        hit = [where[i] for i in range(s, e) if where[i] >= 0]
        out.append((hit[0], hit[-1] + 1) if hit else (nxt[s], nxt[s]))
    return out


def unspelled(raw: str, text: str, where: list[int], anchors: list[tuple[str, int, bool]] | None) -> tuple[int, int] | None:
    """The first run ``(j, k)`` of ``text`` that no character of ``raw`` maps to (``where``: raw
    position -> text position or -1), or None when the tokens account for all of ``text``.

    Left unmatched without complaint: whitespace (a server may add spaces around special tokens),
    optional anchors (the ``<think>`` scaffolding ``fold_reasoning`` adds), and a run standing where
    the tokens have U+FFFD or that is itself U+FFFD (a character split over tokens that a server
    spells without their bytes). Characters of ``raw`` missing from ``text`` are fine (a stripped
    space, skipped special tokens, a stop string).
    """
    inv = [-1] * len(text)
    for i, j in enumerate(where):
        if j >= 0:
            inv[j] = i
    free = [False] * len(text)
    for seg, pos, required in anchors or []:
        if not required:
            free[pos : pos + len(seg)] = [True] * len(seg)
    last = -1  # raw position of the last matched text character
    j = 0
    while j < len(text):
        if inv[j] >= 0:
            last = inv[j]
            j += 1
            continue
        k = j
        while k < len(text) and inv[k] < 0:
            k += 1
        gap = raw[last + 1 : inv[k] if k < len(text) else len(raw)]
        run = [c for c, f in zip(text[j:k], free[j:k]) if not f and not c.isspace()]
        if run and "\ufffd" not in gap and set(run) != {"\ufffd"}:
            return j, k
        j = k
    return None


def _anchor_map(raw: str, anchors: list[tuple[str, int, bool]]) -> list[int] | None:
    """raw position -> text position for the anchors found in order; None if a required one is missing."""
    where = [-1] * len(raw)
    at = 0
    for seg, pos, required in anchors:
        if not seg:
            continue
        k = raw.find(seg, at) if required else (at if raw.startswith(seg, at) else -1)
        if k < 0:
            if required:
                return None
            continue
        where[k : k + len(seg)] = range(pos, pos + len(seg))
        at = k + len(seg)
    return where


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date); None if absent or bad."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class _Retryable(Exception):
    """A failed attempt worth retrying; ``kind`` is what ``stats`` counts it as."""

    def __init__(self, kind: str, msg: str, wait: float | None = None):
        super().__init__(msg)
        self.kind, self.wait = kind, wait


# --------------------------------------------------------------------------- the engine
class OpenAIEngine:
    """An OpenAI-compatible server behind the Engine protocol (see the module docstring).

    Knobs: EngineConfig.model (served model name), .tokenizer (local tokenizer, optional), and
    ``openai``: base_urls, api_key_env, concurrency, timeout_s, max_retries, backoff_s,
    backoff_max_s, top_logprobs, logprob_mode, token_ids, score_api, extra_body. ``stats``
    (``base.EngineStats``) counts requests, retries and retry causes.
    """

    # A server refuses prompt + max_tokens past its context (vLLM, OpenAI): a prompt that fits
    # ``max_len`` must leave room for ``max_tokens`` (``stages.sample._quarantine_long``).
    reserves_max_tokens = True

    def __init__(self, cfg: EngineConfig):
        self.cfg = cfg
        self.opt = cfg.openai
        self.name = cfg.model
        if not self.opt.base_urls:
            raise ConfigError(f"{cfg.key('openai.base_urls')}: kind openai needs at least one server URL")
        self.urls = [u.rstrip("/") for u in self.opt.base_urls]
        self.headers = {}
        if self.opt.api_key_env:
            key = os.environ.get(self.opt.api_key_env)
            if not key:
                raise ConfigError(
                    f"{cfg.key('openai.api_key_env')}: environment variable {self.opt.api_key_env} is not set"
                )
            self.headers["Authorization"] = f"Bearer {key}"
        self.tokenizer = None
        if cfg.tokenizer:
            from transformers import AutoTokenizer

            try:
                self.tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer, trust_remote_code=cfg.trust_remote_code)
            except Exception as err:  # transformers raises OSError/ValueError variously, some over several lines
                raise ConfigError(f"{cfg.key('tokenizer')}: cannot load a tokenizer from {cfg.tokenizer!r}: "
                                  f"{' '.join(str(err).split())}")
        if self.opt.token_ids and self.tokenizer is None:
            raise ConfigError(f"{cfg.key('openai.token_ids')} needs {cfg.key('tokenizer')} (the server model's tokenizer)")
        self.max_len: int | None = cfg.max_model_len  # known only when configured
        self.inflight = {u: 0 for u in self.urls}
        self._vocab_bytes: list[bytes] | None = None
        self._turn = 0
        self.stats = EngineStats()

    # ------------------------------------------------------------------ public API
    def generate_iter(
        self, requests: Iterable[GenerateRequest], skip: Callable[[int, int], bool] | None = None,
        too_long: Callable[[int, ContextLengthError], None] | None = None,
    ) -> Iterator[tuple[int, Generation]]:
        """Yield ``(request_index, generation)`` for every sample as soon as it finishes.

        ``requests``: any iterable, pulled as slots free (``openai.concurrency`` samples in flight and
        as many queued): only the requests with samples in flight or queued are held, so a generator
        of requests may be as long as the run. ``skip(request_index, sample_index)`` -> True leaves
        that sample out (already on disk); it is called when the request is pulled.
        Order is completion order. A request that fails for good (a 4xx answer, retries used up)
        raises DasdError after the samples finished before it were yielded; closing the iterator
        early cancels what is in flight. ``too_long(request_index, error)``: when given, a request
        the server refuses as longer than its context (``ContextLengthError``) is handed to it once,
        its samples not yet sent are not asked, and the other requests go on.
        """
        def jobs():
            for r, req in enumerate(requests):
                for i in range(req.n):
                    if skip is None or not skip(r, i):
                        yield (r, i), lambda c, req=req, i=i: self._sample(c, req, i)

        refused: set[int] = set()
        for (r, _), gen in self._stream(jobs(), soft=too_long is not None):
            if isinstance(gen, ContextLengthError):
                if r not in refused and too_long is not None:
                    refused.add(r)
                    too_long(r, gen)
                continue
            yield r, gen

    def generate(
        self, requests: list[GenerateRequest], on_result: Callable[[int, Generation], None] | None = None
    ) -> list[list[Generation]]:
        """Per request, its ``n`` generations in index order; ``on_result(r, g)`` is called as each finishes."""
        out: list[list[Generation | None]] = [[None] * req.n for req in requests]
        for r, g in self.generate_iter(requests):
            out[r][g.index] = g
            if on_result is not None:
                on_result(r, g)
        return out  # type: ignore[return-value]

    def score(
        self, requests: list[ScoreRequest], too_long: Callable[[int, ContextLengthError], None] | None = None,
    ) -> list[ScoreResult]:
        """Per request, teacher-forced log-probs of its continuation (needs ``engine.tokenizer``).
        ``too_long(request_index, error)``: when given, a request the server refuses as longer than
        its context is handed to it (its result is None) and the other requests go on."""
        if self.tokenizer is None:
            raise ConfigError(f"{self.cfg.key('tokenizer')}: kind openai needs the server model's tokenizer to score")
        jobs = [((k, 0), lambda c, req=req: self._score(c, req)) for k, req in enumerate(requests)]
        out: list[ScoreResult | None] = [None] * len(requests)
        for (k, _), res in self._stream(jobs, soft=too_long is not None):
            if isinstance(res, ContextLengthError):
                too_long(k, res)  # type: ignore[misc]
            else:
                out[k] = res
        return out  # type: ignore[return-value]

    def count_tokens(self, text: str) -> int:
        """Tokens in ``text``: the local tokenizer's count, else the server's ``/tokenize``."""
        if self.tokenizer is not None:
            return len(self.encode(text))
        ((_, n),) = list(self._stream([(0, lambda c: self._count(c, text))]))
        return n

    async def _count(self, client, text: str) -> int:
        """The server's ``/tokenize`` count (vLLM's, dasd's), with the retries of any request."""
        what = f"count_tokens (the server's /tokenize; set {self.cfg.key('tokenizer')} to count locally)"
        body = {"model": self.name, "prompt": text, "add_special_tokens": False}
        data = await self._post(client, "/tokenize", body, what, root=True)
        try:
            return int(data["count"])
        except (KeyError, TypeError, ValueError):
            raise DasdError(f"{what}: the answer has no count: {str(data)[:200]}") from None

    def encode(self, text: str) -> list[int]:
        return encode_text(self.tokenizer, text)

    def _pieces(self, ids: list[int]) -> list[bytes]:
        """Each id's bytes, from a table of the whole vocabulary built once (token_bytes per call
        re-reads the tokenizer's decoder config, too slow for every sample of a big vocabulary)."""
        if self._vocab_bytes is None:
            self._vocab_bytes = token_bytes(self.tokenizer, list(range(len(self.tokenizer))))
        table = self._vocab_bytes
        return [table[i] if 0 <= i < len(table) else token_bytes(self.tokenizer, [i])[0] for i in ids]

    def context_ids(self, messages, prefix: str | None, rid: str) -> list[int]:
        """Prompt ids: chat template with the generation prompt, or the raw prefix as given."""
        return build_context_ids(self.tokenizer, str(self.cfg.tokenizer or self.cfg.model), messages, prefix, rid)

    # ------------------------------------------------------------------ async machinery
    def _stream(self, jobs: Iterable, soft: bool = False) -> Iterator[tuple[Any, Any]]:
        """Run ``jobs`` [(key, make(client) -> coroutine)] on an event loop in a thread; yield (key, result).

        ``jobs`` is pulled here, in the caller's thread, as results come back: ``openai.concurrency``
        jobs run and as many wait queued (so no worker idles while the caller takes a result), the
        rest are not pulled yet.
        ``soft`` (keys ``(request, sample)``): a ``ContextLengthError`` is yielded as the result
        instead of ending the stream, and the request's jobs not yet started are dropped."""
        it = iter(jobs)
        first = next(it, None)
        if first is None:
            return
        import httpx

        out: queue.Queue = queue.Queue()
        stop = threading.Event()
        width = self.opt.concurrency
        ready = threading.Event()
        loop_of: dict = {}  # "loop": the event loop, once running
        pending: collections.deque = collections.deque()
        closed = [False]  # no more jobs will be fed
        refused: set = set()  # requests refused as too long (soft)

        async def main() -> None:
            more = asyncio.Event()
            loop_of["loop"], loop_of["more"] = asyncio.get_running_loop(), more
            ready.set()
            limits = httpx.Limits(max_connections=width, max_keepalive_connections=width)
            async with httpx.AsyncClient(limits=limits, timeout=self.opt.timeout_s, headers=self.headers) as client:
                async def worker() -> None:
                    while not stop.is_set():
                        if not pending:
                            if closed[0]:
                                return
                            more.clear()
                            await more.wait()
                            continue
                        key, make = pending.popleft()
                        if soft and key[0] in refused:
                            out.put(("skipped", None))
                            continue
                        try:
                            res = await make(client)
                        except ContextLengthError as err:
                            if not soft:
                                out.put(("error", err))
                                stop.set()
                                return
                            refused.add(key[0])
                            out.put(("ok", (key, err)))
                            continue
                        except DasdError as err:
                            out.put(("error", err))
                            stop.set()
                            return
                        except Exception as err:  # noqa: BLE001 - a bug or an odd server: report it
                            out.put(("error", DasdError(f"openai engine: {type(err).__name__}: {err}")))
                            stop.set()
                            return
                        out.put(("ok", (key, res)))

                tasks = [asyncio.create_task(worker()) for _ in range(width)]
                while not all(t.done() for t in tasks):
                    if stop.is_set():
                        for t in tasks:
                            t.cancel()
                    await asyncio.wait(tasks, timeout=0.05)

        def run() -> None:
            try:
                asyncio.run(main())
            except BaseException as err:  # noqa: BLE001
                out.put(("error", DasdError(f"openai engine: {type(err).__name__}: {err}")))
            finally:
                ready.set()
            out.put(("done", None))

        def feed(job) -> None:  # on the event loop
            if job is None:
                closed[0] = True
            else:
                pending.append(job)
            loop_of["more"].set()

        def send(job) -> bool:
            try:
                loop_of["loop"].call_soon_threadsafe(feed, job)
                return True
            except (KeyError, RuntimeError):  # the loop failed to start or has ended (its error is queued)
                return False

        thread = threading.Thread(target=run, daemon=True, name="dasd-openai")
        thread.start()
        ready.wait()
        queued, nxt = 0, first  # jobs sent and not answered; the next job to send (None: no more)
        try:
            while True:
                while nxt is not None and queued < 2 * width:
                    if not send(nxt):
                        break
                    queued += 1
                    nxt = next(it, None)
                    if nxt is None:
                        send(None)
                kind, val = out.get()
                if kind == "ok":
                    queued -= 1
                    yield val
                elif kind == "skipped":
                    queued -= 1
                elif kind == "error":
                    raise val
                else:
                    return
        finally:
            stop.set()
            thread.join()

    def _pick(self) -> str:
        """The base URL with the fewest requests in flight (round-robin among ties)."""
        self._turn += 1
        n = len(self.urls)
        order = [self.urls[(self._turn + k) % n] for k in range(n)]
        return min(order, key=lambda u: self.inflight[u])

    async def _post(self, client, path: str, body: dict, what: str, root: bool = False) -> dict:
        """POST with retries (see the module docstring); the parsed JSON answer. ``root``: ``path``
        is under the server's root, not its ``/v1`` (vLLM's ``/tokenize``)."""
        import httpx

        last = ""
        for attempt in range(self.opt.max_retries + 1):
            url = self._pick()
            base = re.sub(r"/v1$", "", url) if root else url
            self.inflight[url] += 1
            self.stats["requests"] += 1
            wait = None
            t0 = time.monotonic()
            try:
                try:
                    resp = await asyncio.wait_for(client.post(base + path, json=body), self.opt.timeout_s)
                    if resp.status_code == 200:
                        try:
                            return resp.json()
                        except ValueError:
                            raise _Retryable("malformed", "truncated or invalid JSON body")
                    if resp.status_code == 429 or resp.status_code >= 500:
                        kind = "429" if resp.status_code == 429 else "5xx"
                        raise _Retryable(kind, f"HTTP {resp.status_code}", _retry_after(resp.headers.get("retry-after")))
                    msg = f"{what}: {base}{path} answered HTTP {resp.status_code}: {_message(resp)}"
                    raise _refusal(resp, body, msg)
                except (asyncio.TimeoutError, httpx.TimeoutException):
                    raise _Retryable("timeout", f"timeout after {self.opt.timeout_s}s")
                except httpx.TransportError as err:
                    raise _Retryable("connection", f"{type(err).__name__}: {err}")
            except _Retryable as err:
                last = f"{url}: {err}"
                wait = err.wait
                self.stats["retry:" + err.kind] += 1
            finally:
                self.inflight[url] -= 1
            self.stats["retry_seconds"] += time.monotonic() - t0
            if attempt == self.opt.max_retries:
                break
            self.stats["retries"] += 1
            delay = min(wait if wait is not None else random.uniform(0, self.opt.backoff_s * 2**attempt),
                        self.opt.backoff_max_s)
            self.stats["retry_seconds"] += delay
            await asyncio.sleep(delay)
        raise DasdError(f"{what}: gave up after {self.opt.max_retries + 1} attempts; last error: {last}")

    # ------------------------------------------------------------------ generate
    def _body(self, req: GenerateRequest, index: int) -> tuple[str, dict]:
        body: dict[str, Any] = {
            "model": self.name, "n": 1, "temperature": req.temperature, "top_p": req.top_p,
            "max_tokens": req.max_tokens, "seed": sample_seed(req.seed, index),
        }
        k = self.opt.top_logprobs
        if req.messages is not None:
            path = "/chat/completions"
            body.update(messages=req.messages, logprobs=True)
            if k:
                body["top_logprobs"] = k
        else:
            path = "/completions"
            body.update(prompt=req.prefix, logprobs=k, add_special_tokens=False)
        if self.opt.token_ids:
            body["return_tokens_as_token_ids"] = True
        body.update(self.opt.extra_body)
        return path, body

    async def _sample(self, client, req: GenerateRequest, index: int) -> Generation:
        path, body = self._body(req, index)
        what = f"request {req.id!r} sample {index}"
        data = await self._post(client, path, body, what)
        try:
            return self._generation(req, index, path, data, what)
        except (AttributeError, KeyError, TypeError, ValueError) as err:  # a field of another type than the schema's
            raise DasdError(f"{what}: the server's answer does not follow the OpenAI schema "
                            f"({type(err).__name__}: {err}): {str(data)[:200]}") from None

    def _generation(self, req: GenerateRequest, index: int, path: str, data: Any, what: str) -> Generation:
        """The Generation in a server's answer (``_sample``)."""
        try:
            choice = data["choices"][0]
        except (KeyError, IndexError, TypeError):
            raise DasdError(f"{what}: the server's answer has no choices: {str(data)[:200]}")
        if path == "/chat/completions":
            msg = choice.get("message") or {}
            content = msg.get("content") or ""
            reasoning = msg.get("reasoning_content") or msg.get("reasoning") or ""
            entries = (choice.get("logprobs") or {}).get("content") or []
            toks = [e.get("token", "") for e in entries]
            raw_bytes = [e.get("bytes") for e in entries]
            lps = [e.get("logprob") for e in entries]
            tops = [{t.get("token", ""): t.get("logprob") for t in e.get("top_logprobs") or []} for e in entries]
        else:
            content, reasoning = choice.get("text") or "", ""
            lp = choice.get("logprobs") or {}
            toks = list(lp.get("tokens") or [])
            raw_bytes = [None] * len(toks)
            lps = list(lp.get("token_logprobs") or [])
            tops = [dict(t or {}) for t in lp.get("top_logprobs") or [{}] * len(toks)]
        if not entries_ok(toks, lps) and (toks or content or reasoning):
            if not toks:
                raise DasdError(f"{what}: the server returned no per-token log-probs (logprobs=true was sent)")
            numbers = sum(isinstance(x, (int, float)) for x in lps)
            raise DasdError(f"{what}: the server returned {len(toks)} tokens but {numbers} numeric log-probs")
        if not reasoning:
            parts = split_harmony(content)
            if parts is not None:
                reasoning, content = parts
        text = fold_reasoning(reasoning, content) if reasoning else content
        anchors = folded_anchors(reasoning, content) if reasoning else [(content, 0, True)]
        ids: list[int] = []
        if self.opt.token_ids:
            try:
                ids = [int(t.split(":", 1)[1]) for t in toks]
            except (IndexError, ValueError):
                raise DasdError(f"{what}: openai.token_ids is on but the server sent tokens like {toks[:1]}")
            pieces = self._pieces(ids)
            toks = self.tokenizer.convert_ids_to_tokens(ids)
        else:
            pieces = [piece_bytes(t, b) for t, b in zip(toks, raw_bytes)]
        raw_text, raw_spans = spans_from_bytes(pieces)
        try:
            offsets = carry_spans(raw_text, raw_spans, text, anchors, strict=True)
        except DasdError as err:
            raise DasdError(f"{what}: {err}") from None
        finish = "length" if choice.get("finish_reason") == "length" else "stop"
        if finish == "stop" and offsets and offsets[-1] == (len(text), len(text)) and len(lps) == len(offsets) \
                and not raw_text.endswith("\ufffd"):
            # the end-of-turn token (vLLM lists it; its text is not in the answer): not a text token (a
            # last token that is the first bytes of a character cut at the end is one: its text is held back)
            toks, offsets, lps, tops = toks[:-1], offsets[:-1], lps[:-1], tops[:-1]
            ids = ids[:-1]
        mode = self.opt.logprob_mode
        if mode == "auto":
            mode = "raw" if data.get("dasd_logprob_mode") == "raw" else "processed"
        if not all(math.isfinite(x) for x in lps):
            self.stats["nonfinite"] += 1  # kept as is: the stage quarantines the sample
        return OpenAIGeneration(
            request_id=req.id, index=index, text=text, tokens=toks, token_ids=ids, offsets=offsets,
            logprobs=[float(x) for x in lps], finish_reason=finish, logprob_mode=mode,
            prompt_tokens=int((data.get("usage") or {}).get("prompt_tokens") or 0),
            top_logprobs=tops if self.opt.top_logprobs else None,
        )

    # ------------------------------------------------------------------ score
    async def _score(self, client, req: ScoreRequest) -> ScoreResult:
        what = f"score request {req.id!r}"
        ctx = self.context_ids(req.messages, req.prefix, req.id)
        cont = list(req.continuation_ids) if req.continuation_ids is not None else self.encode(req.continuation)
        offsets = req.offsets if req.offsets is not None else token_offsets(self.tokenizer, cont, req.continuation)
        if not cont:
            lps: list[float] = []
        elif self.opt.score_api == "prompt_logprobs":
            body = {"model": self.name, "prompt": ctx + cont, "max_tokens": 1, "temperature": 0.0,
                    "prompt_logprobs": 0, **self.opt.extra_body}
            data = await self._post(client, "/completions", body, what)
            plp = (data.get("choices") or [{}])[0].get("prompt_logprobs")
            if not plp or len(plp) != len(ctx) + len(cont):
                raise DasdError(f"{what}: the server's prompt_logprobs do not cover the prompt (vLLM needed?)")
            lps = []
            for j, tid in enumerate(cont):
                entry = plp[len(ctx) + j] or {}
                hit = entry.get(str(tid))
                if hit is None:
                    raise DasdError(f"{what}: prompt_logprobs at position {len(ctx) + j} lack token {tid}")
                lps.append(float(hit["logprob"] if isinstance(hit, dict) else hit))
        else:
            body = {"model": self.name, "prompt": ctx + cont, "max_tokens": 0, "echo": True,
                    "logprobs": 0, **self.opt.extra_body}
            data = await self._post(client, "/completions", body, what)
            got = ((data.get("choices") or [{}])[0].get("logprobs") or {}).get("token_logprobs") or []
            if len(got) != len(ctx) + len(cont):
                raise DasdError(f"{what}: the server echoed {len(got)} log-probs for a prompt of {len(ctx) + len(cont)} "
                                "tokens: " + ("they do not cover it" if len(got) < len(ctx) + len(cont) else
                                              "it scored another text (max_tokens=0 was sent)"))
            lps = [float(x) for x in got[len(ctx) : len(ctx) + len(cont)]]
        mode = self.opt.logprob_mode
        if mode == "auto":
            mode = "raw" if (not cont or data.get("dasd_logprob_mode") == "raw") else "processed"
        return ScoreResult(
            request_id=req.id, tokens=self.tokenizer.convert_ids_to_tokens(cont), token_ids=cont,
            offsets=offsets, logprobs=lps, logprob_mode=mode, extra={"context_tokens": len(ctx)},
        )


def entries_ok(toks: list, lps: list) -> bool:
    """True when there is one finite log-prob per token and at least one token."""
    return bool(toks) and len(toks) == len(lps) and all(isinstance(x, (int, float)) for x in lps)


def _message(resp) -> str:
    try:
        err = resp.json().get("error")
        return str(err.get("message") if isinstance(err, dict) else err)[:500]
    except (ValueError, AttributeError):
        return resp.text[:500]


# A server's words for a request longer than the model's context: vLLM (every version: "This model's
# maximum context length is N tokens. However, you requested M tokens (P in the messages, Q in the
# completion)" / "your request has P input tokens", or "'max_tokens' ... is too large: Q. This model's
# maximum context length is N tokens and your request has P input tokens"), OpenAI (the same words,
# code context_length_exceeded), SGLang ("... exceeds the maximum allowed length"), llama.cpp
# (type exceed_context_size_error).
_TOO_LONG_CODES = {"context_length_exceeded", "exceed_context_size_error"}
_TOO_LONG_WORDS = re.compile(r"maximum context length|exceeds the maximum allowed length|exceeds the available context size", re.I)
_CONTEXT_IS = re.compile(r"maximum context length (?:is|of) (\d+)", re.I)


def _refusal(resp, body: dict, msg: str) -> DasdError:
    """The error for a 4xx answer: a ``ContextLengthError`` when the server says the request is longer
    than its context and a shorter prompt would fit; else a plain DasdError (so is a context refusal
    that no prompt could avoid: ``max_tokens`` not below the context is a config error, not a prompt's)."""
    try:
        err = resp.json().get("error")
    except (ValueError, AttributeError):
        err = None
    err = err if isinstance(err, dict) else {}
    text = str(err.get("message") or resp.text or "")
    if not (str(err.get("code")) in _TOO_LONG_CODES or str(err.get("type")) in _TOO_LONG_CODES
            or _TOO_LONG_WORDS.search(text)):
        return DasdError(msg)
    limit = _CONTEXT_IS.search(text)
    max_tokens = body.get("max_tokens")
    if limit and isinstance(max_tokens, int) and max_tokens >= int(limit[1]):
        return DasdError(f"{msg} (max_tokens {max_tokens} leaves no room for any prompt in the server's "
                         f"context of {limit[1]} tokens: lower max_tokens)")
    return ContextLengthError(msg)
