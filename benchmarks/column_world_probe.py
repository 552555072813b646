"""A candidate toy world probed before any rebuild: two-digit sums, where the teacher's column style
(units, then tens with the carry) is what the student lacks, can learn, and what lowers its errors.

    HF_HUB_OFFLINE=1 python benchmarks/column_world_probe.py --out DIR [--examples 300] [--epochs 8] \
        [--styles oneshot column] [--problems 200] [--max-chain 8] [--digit-share 0] [--seed 0]

Why: in the shipped world every step is one small lookup (single digits modulo 10), the student's
only errors are slips, and no style removes them (``style_learnability.py``; self-checks cost more
than they catch at this size). Here a step is a two-digit addition modulo 100:

- ``oneshot``: ``Step 1: add 47. 38 + 47 = 85.`` The tens digit needs the carry of the units, which
  the model must work out without writing it: hard for a tiny model.
- ``column``: ``Step 1: add 47. 8 + 7 = 15, 3 + 4 + 1 = 8, so 38 + 47 = 85.`` Every token is a
  single-digit fact or a copy. Digits are single tokens (``build_tokenizer(..., split_digits=True)``,
  as Llama and Qwen tokenizers do), so composing 85 from 8 and 5 is copying.

A student base (the shipped student's recipe: hidden 64, 3 layers, 2400 steps x 8 at lr 3e-3, a
20% slip rate) is built once into ``DIR/student`` on ``oneshot`` responses only, chains of 2 to
``--max-chain`` steps; then a fresh copy of it is fine-tuned on ``--examples`` clean responses
(2% slips) of each style (``dasd.toy.checks.finetune``, the world checks' recipe) and sampled once
per held-out problem (chains 2 to 5) at T=0.6 and T=1.0. Printed: accuracy, by chain length, and
the share of responses written in the trained style. A world built on this would have the teacher
write both styles, so that DAS's Teacher sentences are the column lines; this probe checks only the
precondition (learnable, and lowers the error rate), not the teacher or the selection.
Results: ``benchmarks/results/column-world-probe.md``.
"""

from __future__ import annotations

import argparse
import os
import random
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from dasd.toy.column import STYLES, SumProblem, make_sum_problems, response, style_of  # noqa: E402

def measure(model, tok, problems: list[SumProblem], style: str | None, seed: int) -> list[str]:
    from dasd.toy.measure import evaluate_accuracy
    from dasd.toy.world import verify

    rows = []
    for temp in (0.6, 1.0):
        acc, texts = evaluate_accuracy(model, problems, temp, 600, seed=seed, tokenizer=tok, return_texts=True)
        by_len: dict[int, list[bool]] = {}
        for p, t in zip(problems, texts):
            by_len.setdefault(len(p.addends), []).append(verify(t, p.answer))
        lengths = " / ".join(f"{sum(v) / len(v):.2f}" for _, v in sorted(by_len.items()))
        in_style = sum(style_of(t) == (style or "oneshot") for t in texts) / len(texts)
        rows.append(f"{style or 'base'} | {temp} | {acc:.3f} | {lengths} | {in_style:.2f}")
    return rows


def main(argv: list[str] | None = None) -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dasd.toy import build
    from dasd.toy.checks import finetune
    from dasd.toy.model import save_model
    from dasd.toy.tokenizer import build_tokenizer

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="where the student base is built (reused when there)")
    ap.add_argument("--examples", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--styles", nargs="+", default=list(STYLES), choices=STYLES)
    ap.add_argument("--problems", type=int, default=200, help="held-out test problems")
    ap.add_argument("--max-chain", type=int, default=8, help="longest chain in the student base's corpus")
    ap.add_argument("--digit-share", type=float, default=0.0,
                    help="share of the student base's corpus that is one-digit problems (teaching it the "
                         "single-digit sums a column is made of); its base is then built into OUT/student-digits")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    base = Path(a.out) / ("student-digits" if a.digit_share else "student")
    if not (base / "config.json").is_file():
        spec = replace(build.STUDENT_SPEC, max_chain=a.max_chain)
        rng = random.Random(f"column-probe/corpus/{a.seed}")
        n_one = round(spec.n_problems * a.digit_share)
        problems = (make_sum_problems(spec.n_problems - n_one, a.seed, "train", 2, a.max_chain)
                    + make_sum_problems(n_one, a.seed, "train", 2, a.max_chain, digits=1))
        rng.shuffle(problems)
        corpus = [(p, response(p, "oneshot", rng, 0.2)) for p in problems]
        tok = build_tokenizer(build.tokenizer_corpus(corpus[:4000], build_tokenizer([""], build.BYTE_VOCAB)),
                              build.STUDENT_VOCAB, split_digits=True)
        tmp = base.with_name(".student.building")  # renamed into place: a crash leaves no half model
        save_model(build.train_model(spec, tok, corpus, a.seed, log=lambda msg: None), tok, str(tmp))
        tmp.rename(base)
    test = make_sum_problems(a.problems, a.seed, "test")
    train = make_sum_problems(a.examples, a.seed + 1, "train")
    print(f"[student base {base}; {a.examples} examples per style, {a.epochs} epochs, lr {a.lr:g}; "
          f"{a.problems} test problems x 1 sample, chains 2..5; seed {a.seed}]")
    print("style | T | accuracy | by chain length 2..5 | in style")
    for style in (None, *a.styles):
        tok = AutoTokenizer.from_pretrained(str(base))
        model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
        if style is not None:
            rng = random.Random(a.seed)
            torch.manual_seed(a.seed)
            finetune(model, tok, [(p, response(p, style, rng, 0.02)) for p in train], a.epochs, a.lr, 8, a.seed)
        for row in measure(model, tok, test, style, a.seed):
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
