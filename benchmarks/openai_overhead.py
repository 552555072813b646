"""Client overhead of the openai engine: its sampling throughput over HTTP / the server's own.

The server (``python -m dasd.engines.server``, hf engine on a random tiny Llama, CPU) runs in a
subprocess on loopback. Both sides sample the same per-sample requests (n=1, one seed each, so
both draw the very same tokens):

- **server direct**: the same engine config in this process, ``engine.generate`` on full batches of
  ``--batch`` rows, which is what the server's batching worker runs when its queue is full;
- **through the client**: ``OpenAIEngine.generate`` against the server with ``--concurrency``
  requests in flight.

The printed ratio (client tokens/s / direct tokens/s of the run just before it, median over
``--repeats`` interleaved runs, since load on a shared machine drifts) is
the fraction of the server's throughput a sampling job gets through HTTP, JSON and retries'
bookkeeping; the target is >= 0.95 once the concurrency keeps the server's batches full.

Run::

    HF_HUB_OFFLINE=1 python benchmarks/openai_overhead.py [--requests 128] [--concurrency 16,64,256] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import httpx

from dasd.engines import EngineConfig, GenerateRequest, make_engine
from dasd.engines.openai import sample_seed
from dasd.toy.model import make_model, save_model
from dasd.toy.tokenizer import build_tokenizer

CORPUS = [
    "Compute 3 + 4 then times 2. 3 + 4 = 7. 7 * 2 = 14. The answer is \\boxed{14}.",
    "<think>\nStart with 5. 5 - 2 = 3.\n</think>\nSo \\boxed{3}.",
    "Let me think step by step. First, note that 12 / 4 = 3. Then 3 + 9 = 12.",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=128, help="samples (one request each)")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--batch", type=int, default=32, help="engine rows per batch (server and direct)")
    ap.add_argument("--concurrency", default="16,64,256", help="client concurrency levels")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads on each side (same for both)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)

    model_dir = tempfile.mkdtemp(prefix="dasd-bench-")
    tok = build_tokenizer(CORPUS * 20, vocab_size=300)
    save_model(make_model(tok, hidden=args.hidden, layers=args.layers, heads=4, seed=0), tok, model_dir)
    reqs = [
        GenerateRequest(id=f"r{k}", messages=[{"role": "user", "content": f"Compute {k} + {k % 7} then times 2."}],
                        n=1, temperature=1.0, max_tokens=args.max_tokens, seed=k)
        for k in range(args.requests)
    ]
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS=str(args.threads))
    server = subprocess.Popen(
        [sys.executable, "-m", "dasd.engines.server", "--model", model_dir, "--port", str(port), "--device", "cpu",
         "--served-name", "bench", "--batch-size", str(args.batch), "--max-batch", str(args.batch)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(600):
            try:
                if httpx.get(base + "/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            raise SystemExit("server did not start")
        direct_engine = make_engine(EngineConfig(model=model_dir, device="cpu", batch_size=args.batch))
        # warm-up both sides
        direct_engine.generate(reqs[:2])
        client_cfg = EngineConfig(kind="openai", model="bench", openai={"base_urls": [base], "concurrency": 8})
        make_engine(client_cfg).generate(reqs[:8])

        def direct() -> tuple[int, float]:
            rows = [GenerateRequest(id=r.id, messages=r.messages, n=1, temperature=r.temperature,
                                    max_tokens=r.max_tokens, seed=sample_seed(r.seed, 0)) for r in reqs]
            t0 = time.perf_counter()
            toks = 0
            for s in range(0, len(rows), args.batch):
                toks += sum(len(g[0].logprobs) for g in direct_engine.generate(rows[s : s + args.batch]))
            return toks, time.perf_counter() - t0

        def client(conc: int) -> tuple[int, float, float]:
            eng = make_engine(client_cfg.model_copy(update={"openai": client_cfg.openai.model_copy(update={"concurrency": conc})}))
            before = httpx.get(f"http://127.0.0.1:{port}/dasd/stats").json()
            t0 = time.perf_counter()
            out = eng.generate(reqs)
            secs = time.perf_counter() - t0
            after = httpx.get(f"http://127.0.0.1:{port}/dasd/stats").json()
            busy = (after["tokens"] - before["tokens"]) / (after["busy_s"] - before["busy_s"])
            fill = (after["rows"] - before["rows"]) / max(1, after["engine_calls"] - before["engine_calls"])
            if fill < args.batch * 0.9:
                print(f"  (concurrency {conc}: {fill:.1f} rows per engine call; batches not full)", flush=True)
            return sum(len(g[0].logprobs) for g in out), secs, busy

        levels = [int(c) for c in args.concurrency.split(",")]
        ratios = {c: [] for c in levels}
        busy_ratios = {c: [] for c in levels}
        directs = []
        for rep in range(args.repeats):  # pairs close in time see the same machine load
            toks, secs = direct()
            directs.append(toks / secs)
            for c in levels:
                toks_c, secs_c, busy = client(c)
                ratios[c].append(toks_c / secs_c / directs[-1])
                busy_ratios[c].append(toks_c / secs_c / busy)
            print(f"  run {rep + 1}: direct {directs[-1]:.1f} tok/s; ratios "
                  + ", ".join(f"c={c}: {ratios[c][-1]:.3f}" for c in levels), flush=True)
        print(f"model: random Llama hidden {args.hidden} x {args.layers} layers; {args.requests} samples x "
              f"{args.max_tokens} tokens; batch {args.batch}; {args.repeats} interleaved runs; medians")
        print(f"server direct (engine.generate, full batches): {statistics.median(directs):8.1f} tok/s")
        for c in levels:
            print(f"openai engine, concurrency {c:4d}: ratio to direct {statistics.median(ratios[c]):.3f}   "
                  f"(to the server's engine while busy: {statistics.median(busy_ratios[c]):.3f})")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
