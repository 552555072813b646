"""Peak memory of HFEngine.score on one 16K-token continuation with Qwen's 151,936-entry vocabulary.

Full logits for that sequence would take 16384 x 151936 x 4 bytes = 9.3 GiB. The hf engine turns
final hidden states into log-probs ``logprob_chunk`` positions at a time, so its extra memory should
be about ``logprob_chunk x vocab x 4`` bytes plus activations. This script measures the peak
resident-memory increase (psutil, sampled every millisecond in a thread) while scoring, for a few
chunk sizes, and prints it with its ratio to the full-logits size. The model is a random tiny Llama
(hidden 64, 2 layers) so that logits, not weights, dominate.

Run::

    HF_HUB_OFFLINE=1 python benchmarks/score_memory.py [--tokens 16384] [--chunks 256,512,1024]
"""

from __future__ import annotations

import argparse
import gc
import random
import tempfile
import threading
import time

import psutil
import torch

from dasd.engines import EngineConfig, ScoreRequest, make_engine
from dasd.toy.model import make_model, save_model
from dasd.toy.tokenizer import build_tokenizer

QWEN_VOCAB = 151_936


class PeakRSS:
    """Highest resident set size seen while the block runs, sampled from a thread."""

    def __enter__(self) -> PeakRSS:
        self.proc = psutil.Process()
        self.base = self.peak = self.proc.memory_info().rss
        self.stop = False
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _watch(self) -> None:
        while not self.stop:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.001)

    def __exit__(self, *exc) -> None:
        self.stop = True
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def increase(self) -> int:
        return self.peak - self.base


def long_case(tokens: int):
    """``(tokenizer, model, ids, text)``: a random tiny Llama with Qwen's vocabulary and a random
    continuation of ``tokens`` tokens (``ids``) with its text."""
    tok = build_tokenizer(["a b c d e f g 1 2 3 + - = . the answer is"] * 10, vocab_size=300)
    model = make_model(tok, hidden=64, layers=2, heads=2, max_positions=tokens + 64, vocab_size=QWEN_VOCAB)
    rng = random.Random(0)
    ids = [rng.randrange(3, len(tok)) for _ in range(tokens)]
    return tok, model, ids, tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--chunks", default="256,512,1024")
    args = ap.parse_args()
    torch.set_num_threads(1)
    tok, model, ids, text = long_case(args.tokens)
    full_logits = args.tokens * QWEN_VOCAB * 4
    print(f"continuation: {args.tokens} tokens; vocab {QWEN_VOCAB}; full float32 logits would be "
          f"{full_logits / 2**30:.2f} GiB")
    with tempfile.TemporaryDirectory() as d:
        save_model(model, tok, d)
        del model
        for chunk in [int(c) for c in args.chunks.split(",")]:
            engine = make_engine(EngineConfig(model=d, device="cpu", logprob_chunk=chunk, score_batch_tokens=args.tokens + 64))
            req = ScoreRequest(id="long", prefix="the answer is", continuation=text, continuation_ids=ids)
            engine.score([ScoreRequest(id="warm", prefix="the answer is", continuation=tok.decode(ids[:50]), continuation_ids=ids[:50])])
            gc.collect()
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                (res,) = engine.score([req])
                secs = time.perf_counter() - t0
            assert len(res.logprobs) == args.tokens
            print(f"logprob_chunk={chunk:5d}: peak RSS increase {mem.increase / 2**20:8.1f} MiB = "
                  f"{mem.increase / full_logits:.3f} x full logits (chunk buffer alone "
                  f"{chunk * QWEN_VOCAB * 4 / 2**20:.0f} MiB); {secs:.1f} s")
            del engine, res
            gc.collect()


if __name__ == "__main__":
    main()
