"""Tokens/s of HFEngine.score against a bare batched forward pass of the same model on the same tokens.

Workload: ``--requests`` chat prompts, each with a ``--length``-token continuation (text), scored by
the engine (tokenisation, chat template, batching by tokens, chunked log-probs, offsets: all of it).
The baseline runs the same padded batches straight through ``model(...)`` and takes
``log_softmax(logits).gather(targets)``: what a naive scorer does, with no bookkeeping. The printed
ratio (engine tokens/s / baseline tokens/s) is the engine's efficiency; target >= 0.85. The model is
a small random Llama (hidden 128, 4 layers, vocab 512), or ``--model DIR``.

Run::

    HF_HUB_OFFLINE=1 python benchmarks/score_throughput.py [--requests 64] [--length 256] [--repeat 9] [--threads 1]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time

import torch

from dasd.engines import EngineConfig, ScoreRequest, make_engine
from dasd.toy.model import make_model, save_model
from dasd.toy.tokenizer import build_tokenizer

CORPUS = [
    "Start with 12. Add 7: 12 + 7 = 19. Multiply by 3: 19 * 3 = 57. The answer is \\boxed{57}.",
    "<think>\nFirst, 48 / 4 = 12. Then 12 - 5 = 7. Check: 7 + 5 = 12.\n</think>\nSo \\boxed{7}.",
    "Let me think step by step. We have 9 apples and eat 2, leaving 9 - 2 = 7 apples.",
]


def baseline(engine, batches: list[list[tuple[list[int], list[int]]]]) -> None:
    """Bare forward passes over the same right-padded batches: full logits, log_softmax, gather."""
    model = engine.model
    for batch in batches:
        seqs = [c + t for c, t in batch]
        width = max(len(s) for s in seqs) - 1
        ids = torch.full((len(seqs), width), engine.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for k, s in enumerate(seqs):
            ids[k, : len(s) - 1] = torch.tensor(s[:-1])
            mask[k, : len(s) - 1] = 1
        with torch.inference_mode():
            logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
            for k, (c, t) in enumerate(batch):
                logp[k, len(c) - 1 : len(c) - 1 + len(t)].gather(1, torch.tensor(t)[:, None])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="a model directory (default: a random toy-sized Llama)")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--length", type=int, default=256, help="continuation tokens per request")
    ap.add_argument("--batch-tokens", type=int, default=8192)
    ap.add_argument("--repeat", type=int, default=9, help="interleaved runs of each; the fastest counts")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 = least noise on a shared machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as d:
        path = args.model
        if path is None:
            tok = build_tokenizer(CORPUS * 20, vocab_size=512)
            save_model(make_model(tok, hidden=128, layers=4, heads=4, max_positions=2048, seed=0), tok, d)
            path = d
        engine = make_engine(EngineConfig(model=path, device="cpu", score_batch_tokens=args.batch_tokens))
        rng = random.Random(0)
        reqs = []
        for i in range(args.requests):
            words = " ".join(rng.choice(CORPUS) for _ in range(args.length // 8 + 4))
            ids = engine.encode(words)[: args.length]
            text = engine.tokenizer.decode(ids, clean_up_tokenization_spaces=False)
            msgs = [{"role": "user", "content": f"Problem {i}: compute {rng.randint(1, 99)} + {rng.randint(1, 99)}."}]
            reqs.append(ScoreRequest(id=str(i), messages=msgs, continuation=text))
        items = [(engine.context_ids(r.messages, None, r.id), engine.encode(r.continuation)) for r in reqs]
        n_tokens = sum(len(t) for _, t in items)
        # the engine's own batches: same sort and token budget as HFEngine.score
        order = sorted(range(len(items)), key=lambda k: sum(map(len, items[k])))
        batches, cur = [], []
        for k in order:
            width = sum(map(len, items[k])) - 1
            if cur and width * (len(cur) + 1) > args.batch_tokens:
                batches.append(cur)
                cur = []
            cur.append(items[k])
        batches.append(cur)
        engine.score(reqs[:2])
        baseline(engine, batches[:1])  # warm-up
        t_engine, t_base = [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            engine.score(reqs)
            t_engine.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            baseline(engine, batches)
            t_base.append(time.perf_counter() - t0)
        e, b = min(t_engine), min(t_base)
        print(f"{n_tokens} scored tokens in {len(batches)} batches; vocab {engine.head.weight.shape[0]}")
        print(f"engine.score : {n_tokens / e:10.0f} tokens/s")
        print(f"bare forward : {n_tokens / b:10.0f} tokens/s")
        print(f"ratio engine/bare = {b / e:.3f}  (target >= 0.85)")


if __name__ == "__main__":
    main()
