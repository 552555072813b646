"""The column world: two-digit sums modulo 100, where the teacher's own sentences are what the
student needs (the second built-in toy world; the first is ``dasd.toy.world``, the chain world).

A problem reads::

    Start at 38. Step 1: add 47. Step 2: add 16. All arithmetic is modulo 100.

and its answer is the final value (here 1). A response is written in one of two **styles**:

- ``oneshot``: ``Step 1: add 47. 38 + 47 = 85.`` The tens digit needs the carry of the units, which
  the model must work out without writing it: hard for a tiny model.
- ``column``: ``Step 1: add 47. 8 + 7 = 15, 3 + 4 + 1 = 8, so 38 + 47 = 85.`` Every token is a
  single-digit fact or a copy. Digits are tokens of their own in both models' tokenizers (as in
  Llama's and Qwen's), so composing 85 from 8 and 5 is copying.

The teacher is trained on answers written in columns with probability ``COLUMN_SHARE`` and in one
shot otherwise, with 2% slips; the student base on one-shot answers only, with 20% slips. It never
saw a column line, so those are the sentences it finds unlikely and the teacher likely: DAS's
Teacher sentences, and ones that fix its errors once learnt. On this world the paper's DAS and
mixed-policy effects show (docs/toy-world.md, "The column world"; benchmarks/results/column-world*.md).

Usage::

    from dasd.toy.column import make_sum_problems, problem_to_prompt, response, style_of
    probs = make_sum_problems(200, seed=0, split="test")
    prompt = problem_to_prompt(probs[0])     # a Prompt record dict, domain "math", with its answer
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from dasd.records import content_id
from dasd.toy.world import SYSTEM_PROMPT

MODULUS = 100
STYLES = ("oneshot", "column")
COLUMN_SHARE = 0.4
"""Share of the teacher's training answers written in columns (the rest in one shot)."""
MAX_CHAIN = 8
"""Longest chain (steps) in the models' training corpora; prompts and test problems have 2 to 5."""
TRAIN_PROMPTS, TRAIN_SEED = 600, 1
"""The run config's training prompts (``configs/column.yaml``: ``data.toy``): 600 problems of the
train split drawn with seed 1 (the held-out problems use seed 0 of the test split)."""


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

    @property
    def id(self) -> str:
        return content_id("column-world", self.start, list(self.addends))


def make_sum_problems(n: int, seed: int, split: str, min_steps: int = 2, max_steps: int = 5,
                      digits: int = 2) -> list[SumProblem]:
    """``n`` distinct problems of ``split`` (``train`` or ``test``: one in ten spellings, by a stable
    hash, is a test problem, so the splits are disjoint whatever the seeds), with numbers of
    ``digits`` digits (1: a start 0-9 and addends 1-9)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
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


def problem_of(question: str) -> SumProblem:
    """The problem a question (``SumProblem.question``) spells."""
    start = re.match(r"Start at (\d+)\. ", question)
    if start is None:
        raise ValueError(f"not a column-world question: {question[:80]!r}")
    return SumProblem(int(start[1]), tuple(int(a) for a in re.findall(r"Step \d+: add (\d+)\.", question)))


def corpus(spec, seed: int, column_share: float = COLUMN_SHARE) -> list[tuple[SumProblem, str]]:
    """The training pairs of one model (``spec``: a ``dasd.toy.build.TrainSpec``; its ``name``,
    ``n_problems``, ``min_chain``, ``max_chain`` and ``error_rate`` are used): train problems answered
    by the generating process. The teacher writes columns with probability ``column_share``, any
    other model one-shot answers only."""
    rng = random.Random(f"column-world/corpus/{spec.name}/{seed}")
    problems = make_sum_problems(spec.n_problems, seed, "train", spec.min_chain, spec.max_chain)
    if spec.name != "teacher":
        return [(p, response(p, "oneshot", rng, spec.error_rate)) for p in problems]
    return [(p, response(p, "column" if rng.random() < column_share else "oneshot", rng, spec.error_rate))
            for p in problems]


def problem_to_prompt(p: SumProblem, benchmark: str | None = None) -> dict:
    """A Prompt record dict: the system turn the models were trained under, the question, the answer."""
    rec = {"id": p.id, "domain": "math",
           "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": p.question}],
           "answer": str(p.answer), "meta": {"chain_length": len(p.addends)}}
    if benchmark is not None:
        rec["meta"]["benchmark"] = benchmark
    return rec


def measure(model, tokenizer, problems: list[SumProblem], seed: int, temperatures=(0.6, 1.0),
            by_style: bool = False) -> dict:
    """Accuracy and share of column answers at each temperature, one sample per problem (responses up
    to 400 tokens); ``by_style``: also the accuracy of the column and of the one-shot answers (None
    when there are none). ``model``: a loaded model with its ``tokenizer``, or a model directory
    (``tokenizer`` None)."""
    from dasd.toy.measure import evaluate_accuracy
    from dasd.toy.world import verify

    out = {}
    for temp in temperatures:
        acc, texts = evaluate_accuracy(model, problems, temp, 400, seed=seed, tokenizer=tokenizer, return_texts=True)
        styles = [style_of(t) for t in texts]
        out[f"T={temp}"] = m = {"accuracy": round(acc, 4), "column_share": round(styles.count("column") / len(texts), 4)}
        if by_style:
            for style in STYLES:
                solved = [verify(t, p.answer) for t, p, s in zip(texts, problems, styles) if s == style]
                m[f"{style}_accuracy"] = round(sum(solved) / len(solved), 4) if solved else None
    return out
