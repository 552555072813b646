"""The server's batching worker on loopback: how full its engine calls are (``/dasd/stats``).

Requests are held half-sent on raw HTTP connections so that which of them are in flight when the
worker decides is fixed by the test, not by timing.
"""

from __future__ import annotations

import http.client
import json
import time

import httpx

from dasd.engines import GenerateRequest
from dasd.engines.server import EngineServer, ServerThread

from .test_openai import PROMPTS


def _stats(srv: ServerThread) -> dict:
    return httpx.get(f"http://{srv.host}:{srv.port}/dasd/stats", timeout=30).json()


def _wait_for(srv: ServerThread, what: str, value: int) -> None:
    """Poll /dasd/stats until ``what`` (fields joined by ``+``) adds up to ``value``."""
    deadline = time.monotonic() + 60  # a deadline for a hung test, not a measurement
    while sum(_stats(srv)[f] for f in what.split("+")) != value:
        assert time.monotonic() < deadline, f"/dasd/stats {what} never reached {value}: {_stats(srv)}"
        time.sleep(0.01)


def _message(k: int) -> list[dict]:
    return [{"role": "user", "content": PROMPTS[k % len(PROMPTS)] + f" #{k}"}]


def _alone(ref_engine, k: int):
    """What the hf engine samples in-process for request ``k``."""
    return ref_engine.generate([GenerateRequest(id=f"r{k}", messages=_message(k), n=1, temperature=1.0,
                                                max_tokens=6, seed=k)])[0][0]


def _start(srv: ServerThread, k: int) -> tuple[http.client.HTTPConnection, bytes]:
    """A chat request whose headers and first half of the body are sent; returns it and the rest."""
    body = json.dumps({"model": "tiny", "messages": _message(k),
                       "n": 1, "max_tokens": 6, "seed": k, "logprobs": True}).encode()
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=60)
    conn.putrequest("POST", "/v1/chat/completions")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(len(body)))
    conn.endheaders()
    conn.send(body[: len(body) // 2])
    return conn, body[len(body) // 2 :]


def test_a_batch_waits_for_requests_still_arriving(server_engine, ref_engine):
    """Five requests in flight and ``max_batch`` 5: one engine call of 5 rows.

    ``batch_wait_s=0`` stands for a wait that has expired before the others arrive: a worker that
    ran whatever was queued once a fixed wait expired (the old one) made calls of 1 and 4 rows here.
    """
    server = EngineServer(server_engine, served_name="tiny", max_batch=5, batch_wait_s=0.0, max_gather_s=120.0)
    with ServerThread(server) as srv:
        held = [_start(srv, k) for k in range(4)]
        _wait_for(srv, "open_requests", 4)  # four handlers are reading their bodies
        first, rest = _start(srv, 4)
        first.send(rest)
        _wait_for(srv, "queued_rows+rows", 1)  # the fifth is queued (or, wrongly, in the engine)
        for conn, rest in held:
            conn.send(rest)
        answers = [json.loads(conn.getresponse().read()) for conn, _ in [*held, (first, b"")]]
        stats = _stats(srv)
    assert stats["batch_rows"] == {"5": 1}
    assert stats["rows"] == 5 and stats["generate_calls"] == 1 and stats["queued_rows"] == 0
    for k, ans in enumerate(answers):  # batched together, each is what the hf engine samples alone
        (choice,) = ans["choices"]
        assert choice["message"]["content"] == _alone(ref_engine, k).text, k


def test_a_full_batch_runs_at_once_and_batches_stay_full(server_engine):
    """Twelve requests queued behind a running call, ``max_batch`` 4: the next calls are 4, 4, 4 rows.

    The engine is held inside its first call (a gate around the real engine) until all twelve are
    queued, so each later call finds more queued than fits: every one of them must be full.
    """
    import threading

    class Gated:
        def __init__(self, engine):
            self.engine, self.gate = engine, threading.Event()

        def __getattr__(self, name):
            return getattr(self.engine, name)

        def generate(self, requests):
            self.gate.wait(120)
            return self.engine.generate(requests)

    gated = Gated(server_engine)
    server = EngineServer(gated, served_name="tiny", max_batch=4, batch_wait_s=0.0, max_gather_s=120.0)
    with ServerThread(server) as srv:
        first, rest = _start(srv, 0)
        first.send(rest)
        _wait_for(srv, "generate_calls", 1)  # in the engine, held at the gate
        conns = [_start(srv, k) for k in range(1, 13)]
        for conn, rest in conns:
            conn.send(rest)
        _wait_for(srv, "queued_rows", 12)
        gated.gate.set()
        answers = [json.loads(conn.getresponse().read()) for conn, _ in [(first, b""), *conns]]
        stats = _stats(srv)
    assert stats["batch_rows"] == {"1": 1, "4": 3}
    assert all(len(ans["choices"]) == 1 for ans in answers)
