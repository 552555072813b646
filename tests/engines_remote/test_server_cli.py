"""`python -m dasd.engines.server` (engine in its own process) serves what the hf engine samples, and
its engine process ends when the server is killed."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import proctree
import pytest

from dasd.engines import GenerateRequest, ScoreRequest, make_engine
from dasd.engines.openai import sample_seed
from dasd.errors import ContextLengthError

from .conftest import openai_config


@pytest.mark.slow  # two cold starts of torch (server and its engine process): ~15-30 s on 2 cores
def test_server_command_matches_hf(tiny_lm_dir, ref_engine):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.Popen([sys.executable, "-m", "dasd.engines.server", "--model", tiny_lm_dir, "--port", str(port),
                             "--served-name", "tiny", "--device", "cpu"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "server did not start"
            try:
                if httpx.get(base + "/models", timeout=1).json()["data"][0]["id"] == "tiny":
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        eng = make_engine(openai_config(tiny_lm_dir, [base], top_logprobs=2))
        msgs = [{"role": "user", "content": "Compute 3 + 4 then times 2."}]
        gens = eng.generate([GenerateRequest(id="a", messages=msgs, n=2, max_tokens=10, seed=4)])[0]
        scored = eng.score([ScoreRequest(id="s", messages=msgs, continuation=gens[1].text)])[0]
        bad = make_engine(openai_config(tiny_lm_dir, [base]))
        with pytest.raises(ContextLengthError, match="HTTP 400: .*max_model_len is 1024"):  # from the engine process
            bad.generate([GenerateRequest(id="long", prefix="7 " * 1100, max_tokens=4)])
    finally:
        tree = proctree.descendants(proc.pid)
        proc.kill()  # SIGKILL: the engine process ends with the server all the same (it used to run on)
        proc.wait(timeout=30)
    assert tree and not proctree.left_alive(tree), tree
    for g in gens:
        want = ref_engine.generate([GenerateRequest(id="a", messages=msgs, n=1, max_tokens=10, seed=sample_seed(4, g.index))])[0][0]
        assert g.text == want.text and g.logprobs == pytest.approx(want.logprobs, abs=1e-5)
        assert len(g.top_logprobs) == len(g.logprobs)
    want = ref_engine.score([ScoreRequest(id="s", messages=msgs, continuation=gens[1].text)])[0]
    assert scored.token_ids == want.token_ids and scored.logprobs == pytest.approx(want.logprobs, abs=1e-5)
