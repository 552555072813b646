"""Training throughput: dasd packing vs TRL SFTTrainer at its best settings, same toy data and model.

    HF_HUB_OFFLINE=1 python benchmarks/train_packing.py [--examples 192] [--context 1024] [--repeats 3] [--defaults]

All train a fresh copy of the same tiny Llama (fp32, sdpa attention, CPU) for one epoch on the same
chat examples, whose response lengths are long-tailed like chains of thought:

- **dasd**: its trainer, one packed sequence of at most ``--context`` tokens a step (best-fit
  decreasing, position ids restarting per example so attention stays inside each), loss on the
  assistant's tokens;
- **TRL best**: ``SFTTrainer`` with ``packing=True`` (its best-fit-decreasing ``bfd`` strategy,
  which turns on ``padding_free``: position ids restart per example, and transformers' sdpa masks
  each example off from the others), a prompt-completion dataset with ``completion_only_loss``
  (loss on the assistant's tokens, as dasd), one packed sequence of ``max_length = --context``
  a step (``--trl-batch``; a larger one is flattened into one longer sequence, whose dense
  sdpa mask grows with its square);
- **TRL defaults** (``--defaults``): packing off (padded batches of 8), loss on every token.

One torch thread by default (``--threads``): on a loaded 2-core machine, two threads that wait
for each other at every operation made single steps 10-20x slower at random. Both TRL runs set
``bf16=False`` and ``gradient_checkpointing=False`` (TRL turns both on by default;
on a CPU they only cost time). Runs interleave (dasd, TRL best[, TRL defaults], dasd, ...) so each
ratio compares neighbours in time on a shared machine, after one untimed run of each arm on 16
examples (the first TRL run in a process was up to 2x slower). Printed: each run's real (non-padding)
training tokens per second (dasd: its training loop's steps; TRL: ``on_train_begin`` to
``on_train_end``), each repeat's ratio dasd / TRL, their range, and the share of padding tokens fed
to the model. Targets (README): dasd / TRL best >= 1.5; dasd padding <= 2%. Not a timed test.
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


def run_trl(model_dir: str, examples: list[dict], context: int, out: Path, best: bool, batch: int) -> tuple[float, float]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_train_end(self, *a, **k):
            self.secs = time.perf_counter() - self.t0

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    common = dict(output_dir=str(out), max_length=context, num_train_epochs=1, learning_rate=1e-3, use_cpu=True,
                  bf16=False, gradient_checkpointing=False, report_to="none", save_strategy="no", logging_steps=1000,
                  dataloader_num_workers=0, seed=0)
    if best:
        data = [{"prompt": ex["messages"][:-1], "completion": ex["messages"][-1:]} for ex in examples]
        args = SFTConfig(packing=True, packing_strategy="bfd", padding_free=True, completion_only_loss=True,
                         per_device_train_batch_size=batch, **common)
    else:
        data = examples
        args = SFTConfig(**common)
    clock = Clock()
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(data), processing_class=tok,
                         callbacks=[clock])
    real = total = 0
    for b in trainer.get_train_dataloader():
        mask = b.get("attention_mask")
        ids = b["input_ids"]
        real += int(mask.sum()) if mask is not None else ids.numel()
        total += ids.numel()
    trainer.train()
    return real / clock.secs, 1 - real / total


def main() -> None:
    import statistics

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=192)
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    ap.add_argument("--trl-batch", type=int, default=1, help="packed sequences per step for TRL best (dasd: 1)")
    ap.add_argument("--defaults", action="store_true", help="also run TRL's defaults (packing off) each round")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the same for all)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    arms = ["dasd", "TRL best"] + (["TRL defaults"] if args.defaults else [])
    tps: dict[str, list[float]] = {a: [] for a in arms}
    pad: dict[str, float] = {}
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = build_model(tmp / "model")
        examples = make_examples(args.examples)

        def run(arm: str, data: list[dict], out: Path) -> tuple[float, float]:
            if arm == "dasd":
                return run_dasd(model_dir, data, args.context, out)
            return run_trl(model_dir, data, args.context, out, arm == "TRL best", args.trl_batch)

        for arm in arms:  # untimed: imports and first calls cost the first run of each arm seconds
            run(arm, examples[:16], tmp / f"{arm.replace(' ', '-')}-warmup")
        for rep in range(args.repeats):
            for arm in arms:
                t, p = run(arm, examples, tmp / f"{arm.replace(' ', '-')}-{rep}")
                tps[arm].append(t)
                pad[arm] = p
            load.append(os.getloadavg()[0])
            print(f"round {rep + 1}: " + ", ".join(f"{a} {tps[a][-1]:.0f} tok/s" for a in arms) + "; dasd / "
                  + ", dasd / ".join(f"{a} {tps['dasd'][-1] / tps[a][-1]:.2f}" for a in arms[1:]), flush=True)
    print(f"{args.examples} examples, context {args.context}, {args.repeats} interleaved rounds, "
          f"1-min load average {min(load):.1f}-{max(load):.1f}")
    for a in arms:
        print(f"{a:13s}: {min(tps[a]):7.0f}-{max(tps[a]):7.0f} tokens/s, padding {pad[a]:6.2%}")
    for a in arms[1:]:
        r = [d / t for d, t in zip(tps["dasd"], tps[a])]
        print(f"ratio dasd / {a}: {min(r):.2f}-{max(r):.2f} (median {statistics.median(r):.2f}) over {len(r)} rounds")
    print(f"dasd padding {pad['dasd']:.2%} (target <= 2%)")


if __name__ == "__main__":
    main()
