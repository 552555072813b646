"""Training throughput: dasd packing vs TRL SFTTrainer's defaults (padding), same toy data and model.

    HF_HUB_OFFLINE=1 python benchmarks/train_packing.py [--examples 192] [--context 1024]

Both train a fresh copy of the same tiny Llama for one epoch on the same chat examples, whose
response lengths are long-tailed like chains of thought. Printed: real (non-padding) training tokens
per second of each, their ratio (target >= 1.5), and the share of padding tokens fed to the model
(target for dasd <= 2%). Ratios from one run on one machine; not a timed test.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def make_examples(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a = rng.randint(2, 99)
        steps = max(1, min(60, int(rng.lognormvariate(1.6, 0.9))))  # long-tailed number of reasoning steps
        chain, x = [], a
        for _ in range(steps):
            b = rng.randint(1, 9)
            chain.append(f"{x} + {b} = {x + b}.")
            x += b
        out.append({"messages": [{"role": "system", "content": "You are a helpful assistant."},
                                 {"role": "user", "content": f"Start from {a} and add {steps} numbers."},
                                 {"role": "assistant", "content": f"<think>{' '.join(chain)}</think> \\boxed{{{x}}}"}]})
    return out


def build_model(out: Path) -> str:
    from dasd.toy.model import make_model, save_model
    from dasd.toy.tokenizer import build_tokenizer

    corpus = [m["content"] for ex in make_examples(200, seed=1) for m in ex["messages"]]
    tok = build_tokenizer(corpus, vocab_size=400)
    save_model(make_model(tok, hidden=64, layers=2, heads=4, max_positions=2048, seed=0), tok, str(out))
    return str(out)


def run_dasd(model_dir: str, examples: list[dict], context: int, out: Path) -> tuple[float, float]:
    import json

    from dasd.train.config import TrainConfig
    from dasd.train.trainer import run_training

    cfg = TrainConfig(base_model=model_dir, context=context, micro_batch=1, grad_accum=1, epochs=1, lr=1e-3,
                      min_lr=1e-4, report_to=[], stages=[{"name": "bench", "data": "pool", "init": "base"}])
    (res,) = run_training(cfg, out, {"pool": examples})
    curve = [json.loads(x) for x in Path(res["curve"]).read_text().splitlines()]
    return sum(r["tokens"] for r in curve) / curve[-1]["elapsed_s"], res["padding_share"]


def run_trl(model_dir: str, examples: list[dict], context: int, out: Path) -> tuple[float, float]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    args = SFTConfig(output_dir=str(out), max_length=context, num_train_epochs=1, learning_rate=1e-3,
                     use_cpu=True, bf16=False, report_to="none", save_strategy="no", logging_steps=1000,
                     dataloader_num_workers=0, seed=0)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(examples), processing_class=tok)
    real = total = 0
    for batch in trainer.get_train_dataloader():
        mask = batch.get("attention_mask")
        ids = batch["input_ids"]
        real += int(mask.sum()) if mask is not None else ids.numel()
        total += ids.numel()
    t0 = time.perf_counter()
    trainer.train()
    return real / (time.perf_counter() - t0), 1 - real / total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=192)
    ap.add_argument("--context", type=int, default=1024)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = build_model(tmp / "model")
        examples = make_examples(args.examples)
        ours_tps, ours_pad = run_dasd(model_dir, examples, args.context, tmp / "dasd")
        trl_tps, trl_pad = run_trl(model_dir, examples, args.context, tmp / "trl")
    print(f"dasd packing : {ours_tps:9.0f} tokens/s, padding {ours_pad:6.2%}")
    print(f"TRL defaults : {trl_tps:9.0f} tokens/s, padding {trl_pad:6.2%}")
    print(f"ratio dasd/TRL tokens/s: {ours_tps / trl_tps:.2f} (target >= 1.5); dasd padding {ours_pad:.2%} (target <= 2%)")


if __name__ == "__main__":
    main()
