"""Client overhead of the openai engine: its sampling throughput over HTTP / the server's own.

The server (``python -m dasd.engines.server``, hf engine on a random tiny Llama, CPU) runs in a
subprocess on loopback. Both sides sample the same per-sample requests (n=1, one seed each, so
both draw the very same tokens):

- **direct**: the same engine config in this process, ``engine.generate`` on full batches of
  ``min(concurrency, --batch)`` rows: the best the server's batching worker can do with that many
  requests in flight (with fewer in flight than ``--batch`` its batches cannot be fuller);
- **through the client**: ``OpenAIEngine.generate`` against the server with ``--concurrency``
  requests in flight.

Per concurrency level the runs alternate direct, client, direct, client, ..., direct (load on a
shared machine drifts), and each client run is compared with the mean of the two direct runs
around it. Printed per level, as the range (min-max) over the repeats and the median:

- **to direct**: client tokens/s / direct tokens/s: the fraction of the engine's batched
  throughput a sampling job gets through HTTP, JSON and the client's bookkeeping;
- **to busy**: client tokens/s / the server engine's tokens per busy second on the batches it
  actually ran (``/dasd/stats``), i.e. the share of the wall time its engine was working;
- **rows per engine call** of the server (``rows / generate_calls``), and its ``gather_s`` (idle
  seconds gathering batches) per client run;
- **CPU seconds per engine-busy second** of the client (this process) and of the server's HTTP
  front end (its process, not the engine's): what they take from the engine when all share a
  machine's cores, as here (on a cluster the client is not on the GPU server).

The direct throughput at ``--batch`` rows and at fewer is printed too: with fewer requests in
flight than ``--batch`` the server's batches are smaller, and slower per token.

The target is >= 0.95 to direct once the concurrency keeps the server's batches full
(concurrency >= 2 x batch: the next batch is queued while one runs).

Run::

    HF_HUB_OFFLINE=1 python benchmarks/openai_overhead.py [--requests 256] [--concurrency 64,16] [--repeats 5]
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


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc``), its children left out."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=256, help="samples (one request each)")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--batch", type=int, default=32, help="engine rows per batch (server and direct)")
    ap.add_argument("--concurrency", default="64,16", help="client concurrency levels")
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
        client_cfg = EngineConfig(kind="openai", model="bench", openai={"base_urls": [base], "concurrency": 8})
        make_engine(client_cfg).generate(reqs[:8])

        def direct(batch: int) -> tuple[int, float]:
            eng = direct_engines[batch]
            rows = [GenerateRequest(id=r.id, messages=r.messages, n=1, temperature=r.temperature,
                                    max_tokens=r.max_tokens, seed=sample_seed(r.seed, 0)) for r in reqs]
            t0 = time.perf_counter()
            toks = 0
            for s in range(0, len(rows), batch):
                toks += sum(len(g[0].logprobs) for g in eng.generate(rows[s : s + batch]))
            return toks, time.perf_counter() - t0

        def client(conc: int) -> dict:
            eng = make_engine(client_cfg.model_copy(update={"openai": client_cfg.openai.model_copy(update={"concurrency": conc})}))
            before = httpx.get(f"http://127.0.0.1:{port}/dasd/stats").json()
            cpu0, front0 = time.process_time(), cpu_seconds(server.pid)
            t0 = time.perf_counter()
            out = eng.generate(reqs)
            secs = time.perf_counter() - t0
            cpu, front = time.process_time() - cpu0, cpu_seconds(server.pid) - front0
            after = httpx.get(f"http://127.0.0.1:{port}/dasd/stats").json()
            d = {k: after[k] - before[k] for k in ("tokens", "busy_s", "rows", "generate_calls", "gather_s")}
            return {"tokens": sum(len(g[0].logprobs) for g in out), "secs": secs, "busy": d["tokens"] / d["busy_s"],
                    "fill": d["rows"] / max(1, d["generate_calls"]), "gather_s": d["gather_s"],
                    "cpu": cpu / d["busy_s"], "front": front / d["busy_s"]}

        levels = sorted((int(c) for c in args.concurrency.split(",")), reverse=True)
        direct_engines = {}
        for b in sorted({min(c, args.batch) for c in levels}, reverse=True):
            direct_engines[b] = make_engine(EngineConfig(model=model_dir, device="cpu", batch_size=b))
            direct_engines[b].generate(reqs[:2])  # warm-up
        res = {c: {"to_direct": [], "to_busy": [], "fill": [], "gather": [], "cpu": [], "front": []} for c in levels}
        direct_tps: dict[int, list[float]] = {b: [] for b in direct_engines}
        load = [os.getloadavg()[0]]
        for c in levels:
            b = min(c, args.batch)
            toks, secs = direct(b)
            before = toks / secs
            direct_tps[b].append(before)
            for rep in range(args.repeats):  # direct, client, direct: each client run between two direct ones
                r = client(c)
                toks, secs = direct(b)
                after = toks / secs
                direct_tps[b].append(after)
                if r["tokens"] != toks:
                    print(f"  (client sampled {r['tokens']} tokens, direct {toks}: not the same samples)", flush=True)
                tps = r["tokens"] / r["secs"]
                d = (before + after) / 2
                for key, val in (("to_direct", tps / d), ("to_busy", tps / r["busy"]), ("fill", r["fill"]),
                                 ("gather", r["gather_s"]), ("cpu", r["cpu"]), ("front", r["front"])):
                    res[c][key].append(val)
                load.append(os.getloadavg()[0])
                print(f"  c={c} run {rep + 1}: client {tps:.0f} tok/s, direct at {b} rows {before:.0f} and {after:.0f} "
                      f"tok/s: {tps / d:.3f} to direct, {tps / r['busy']:.3f} to busy, {r['fill']:.1f} rows/call, "
                      f"gather {r['gather_s']:.2f} s; CPU s per engine-busy s: client {r['cpu']:.2f}, "
                      f"server front end {r['front']:.2f}", flush=True)
                before = after

        def rng(xs: list[float], fmt: str = ".3f") -> str:
            return f"{min(xs):{fmt}}-{max(xs):{fmt}} (median {statistics.median(xs):{fmt}})"

        print(f"model: random Llama hidden {args.hidden} x {args.layers} layers; {args.requests} samples x "
              f"{args.max_tokens} tokens; batch {args.batch}; {args.threads} torch thread(s) a side; "
              f"{args.repeats} client runs a level, each between two direct runs; "
              f"1-min load average {min(load):.1f}-{max(load):.1f}")
        for b, xs in sorted(direct_tps.items()):
            print(f"direct (engine.generate, {b}-row batches): {rng(xs, '.0f')} tok/s")
        for c in levels:
            print(f"openai engine, concurrency {c:4d}: to direct at {min(c, args.batch)} rows {rng(res[c]['to_direct'])}; "
                  f"to busy {rng(res[c]['to_busy'])}; rows per engine call {rng(res[c]['fill'], '.1f')}; "
                  f"gather {rng(res[c]['gather'], '.2f')} s a run; CPU s per engine-busy s: client "
                  f"{rng(res[c]['cpu'], '.2f')}, server front end {rng(res[c]['front'], '.2f')}")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
