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
from dataclasses import dataclass, replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODULUS = 100
STYLES = ("oneshot", "column")


@dataclass(frozen=True)
class SumProblem:
    """A start value and the two-digit numbers added to it in turn, modulo 100."""

    start: int
    addends: tuple[int, ...]

    @property
    def question(self) -> str:
        steps = " ".join(f"Step {i}: add {a}." for i, a in enumerate(self.addends, 1))
        return f"Start at {self.start}. {steps} All arithmetic is modulo {MODULUS}."

    @property
    def answer(self) -> int:
        return (self.start + sum(self.addends)) % MODULUS


def make_sum_problems(n: int, seed: int, split: str, min_steps: int = 2, max_steps: int = 5,
                      digits: int = 2) -> list[SumProblem]:
    """``n`` distinct problems of ``split`` (``train`` or ``test``: one in ten spellings, by a stable
    hash, is a test problem, so the splits are disjoint whatever the seeds), with numbers of
    ``digits`` digits (1: a start 0-9 and addends 1-9)."""
    from dasd.records import content_id

    lo, hi = (10, 100) if digits == 2 else (1, 10)
    rng = random.Random(f"column-probe/{seed}/{split}/{min_steps}-{max_steps}" + ("" if digits == 2 else f"/{digits}"))
    out: list[SumProblem] = []
    seen: set[SumProblem] = set()
    while len(out) < n:
        p = SumProblem(rng.randrange(lo - (digits == 1), hi),
                       tuple(rng.randrange(lo, hi) for _ in range(rng.randint(min_steps, max_steps))))
        is_test = int(content_id("column-probe", p.start, list(p.addends)), 16) % 10 == 0
        if p in seen or is_test != (split == "test"):
            continue
        seen.add(p)
        out.append(p)
    return out


def response(p: SumProblem, style: str, rng: random.Random, error_rate: float) -> str:
    """A response in ``style``; with probability ``error_rate`` a step's sum is off by 1 or 10 (a
    slip, carried on)."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    x, lines = p.start, [f"Start at {p.start}."]
    for i, a in enumerate(p.addends, 1):
        total = x + a
        if rng.random() < error_rate:
            total += rng.choice([-10, -1, 1, 10])
        if style == "oneshot":
            body = f"{x} + {a} = {total}"
        else:
            units = x % 10 + a % 10
            tens = x // 10 + a // 10 + units // 10
            body = f"{x % 10} + {a % 10} = {units}, {x // 10} + {a // 10} + {units // 10} = {tens}, so {x} + {a} = {total}"
        body += "." if total < MODULUS else f", which is {total % MODULUS} modulo {MODULUS}."
        lines.append(f"Step {i}: add {a}. {body}")
        x = total % MODULUS
    body = "\n".join([*lines, f"The final value is {x}."])
    return f"<think>\n{body}\n</think>\nThe answer is \\boxed{{{x}}}."


def style_of(text: str) -> str | None:
    """``column`` when a step line holds a units sum before the full sum, ``oneshot`` when step
    lines hold only the full sum, else None."""
    lines = [ln for ln in text.split("\n") if ln.startswith("Step ")]
    if not lines:
        return None
    return "column" if all(", so " in ln for ln in lines) else "oneshot" if not any(", so " in ln for ln in lines) else None


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
