"""A real OpenAI/vLLM-schema server on loopback, backed by the hf engine on the tiny model."""

from __future__ import annotations

from contextlib import contextmanager

import pytest


@pytest.fixture(scope="session")
def ref_engine(tiny_lm_dir):
    """The hf engine the answers are compared with (a separate object from the server's)."""
    from dasd.engines import EngineConfig, make_engine

    return make_engine(EngineConfig(model=tiny_lm_dir, device="cpu", batch_size=8))


@pytest.fixture(scope="session")
def server_engine(tiny_lm_dir):
    from dasd.engines import EngineConfig, make_engine

    return make_engine(EngineConfig(model=tiny_lm_dir, device="cpu", batch_size=8))


@pytest.fixture
def serve(server_engine):
    """``with serve(faults=..., api_key=...) as srv:`` a started server; stopped on exit."""
    from dasd.engines.server import EngineServer, Faults, ServerThread

    @contextmanager
    def start(faults: Faults | None = None, api_key: str | None = None, engine=None):
        srv = EngineServer(engine or server_engine, served_name="tiny", faults=faults, api_key=api_key)
        with ServerThread(srv) as thread:
            thread.engine_server = srv
            yield thread

    return start


def openai_config(tiny_lm_dir, urls, **opts):
    from dasd.engines import EngineConfig

    base = {"base_urls": list(urls), "timeout_s": 5.0, "backoff_s": 0.01, "backoff_max_s": 0.2, "max_retries": 30,
            "concurrency": 8}
    base.update(opts)
    return EngineConfig(kind="openai", model="tiny", tokenizer=tiny_lm_dir, openai=base)
