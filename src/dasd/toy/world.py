"""The toy world's task: chained single-digit arithmetic modulo 10, its verifier, and the teacher's
known generating process.

A problem reads::

    Start at 3. Step 1: add 4. Step 2: multiply by 2. Step 3: subtract 5. All arithmetic is modulo 10.

and its answer is the final digit (here 9). The steps are numbered so that a tiny model can find the
k-th operation by matching "Step k:" (an induction pattern) instead of counting commas. A response has the shape of a long-CoT model's::

    <think>
    ...reasoning in one of several styles...
    </think>
    The answer is \\boxed{9}.

The generating process (``solution_text``) writes a correct (or, with ``error_rate``, slightly wrong)
solution in one of three **styles**; the toy teacher is trained on a mixture of them
(``TEACHER_STYLE_MIX``, 2% slips), the student base on a different one (``STUDENT_STYLE_MIX``) with
far more slips (``STUDENT_ERROR_RATE``) and a rubber-stamp check habit. See docs/toy-world.md for how the
mechanisms DASD relies on show up in this world, and ``dasd.toy.checks`` for how the build measures them.

Usage::

    from dasd.toy.world import make_problems, problem_to_prompt, verify
    probs = make_problems(100, seed=0, split="test")
    prompt = problem_to_prompt(probs[0])          # a Prompt record dict, domain "toy"
    verify("<think>\\n...\\n</think>\\nThe answer is \\\\boxed{9}.", prompt["answer"])
"""

from __future__ import annotations

import hashlib
import os
import random
import re
from dataclasses import dataclass

from dasd.jsonl import atomic_write_jsonl
from dasd.records import Prompt, content_id

SYSTEM_PROMPT = "You are a helpful assistant."
MODULUS = 10
SPLITS = ("train", "dev", "test")
MIN_STEPS, MAX_STEPS = 2, 7

# Operations: (name in the question, verb in the responses, symbol, allowed operands).
# "multiply by 0/1" and "add/subtract 0" are left out: they make chains trivial.
OPS = {
    "add": ("Add", "add", "+", tuple(range(1, 10))),
    "subtract": ("Subtract", "subtract", "-", tuple(range(1, 10))),
    "multiply": ("Multiply by", "multiply by", "*", tuple(range(2, 10))),
}

STYLES = ("steps", "compact", "check")
"""Solution styles, all valid:

- ``steps``: one line per step, restating the operation and writing the raw result before reducing it
  ("Step 2: multiply by 2. 7 * 2 = 14, which is 4 modulo 10."). Long, every computation local. A
  line may end with a rubber-stamp check, "Check: ok.", which checks nothing (the student's habit).
- ``compact``: one short numbered equation per step, already reduced ("2: 7 * 2 = 4.").
- ``check``: ``steps`` with a real self-check after every step that recomputes it and catches a slip
  ("Step 1: add 4. 3 + 4 = 8. Check: 8 - 4 = 4, not 3, so 3 + 4 = 7."). The teacher writes it; the
  student base never saw it (only the rubber stamp): what DAS should find and the student can learn.
"""

TEACHER_STYLE_MIX = {"steps": 0.5, "check": 0.35, "compact": 0.15}
"""Style frequencies in the teacher's training corpus. Sampling the teacher at T=0.6 sharpens this
towards ``steps``; T=1.0 shows ``check`` and ``compact`` closer to these rates (defect 1)."""

STUDENT_STYLE_MIX = {"steps": 0.7, "compact": 0.3}
"""Style frequencies in the student base's training corpus: no ``check`` (it never checks its work)."""

TEACHER_ERROR_RATE = 0.02
"""Per-step probability of an arithmetic slip in the teacher's training corpus: the trained teacher
keeps this tail, which T=1.0 sampling exposes and T=0.6 mostly suppresses."""

STUDENT_ERROR_RATE = 0.2
"""Per-step slip probability in the student base's training corpus: a sloppy student. At T=0.6 the
trained student slips less than this (sampling sharpens towards the right digit) but far more often
than the teacher; clean, verified teacher samples teach it care, which is what distillation has
to show on this world (a student that already had the teacher's skill could not gain)."""

TEACHER_REDO_RATE = 0.1
"""Per-step probability, in the teacher corpus's ``check`` responses, of a first attempt that slips
and is caught by the check ("..., not 3, so 3 + 4 = 7."): the teacher demonstrates
self-correction, and its T=1.0 samples show more of it (a longer, harder, still learnable tail)."""

STAMP = "Check: ok."
"""The rubber stamp: a check that checks nothing (the student's habit, rare in the teacher)."""

TEACHER_STAMP_RATE = 0.01
STUDENT_STAMP_RATE = 0.8
"""Per-line probability of the rubber-stamp check "Check: ok." after a ``steps`` line. The student
writes it on most lines, the teacher rarely: in the teacher's samples these are the sentences the
student finds far likelier than the teacher does (Student sentences, which the DAS penalty acts on).
It also gives the student the words of a check, so that the teacher's real checks are learnable."""


@dataclass(frozen=True)
class ToyProblem:
    """One chained-arithmetic problem: a start digit and a list of ``(op, operand)`` steps."""

    start: int
    steps: tuple[tuple[str, int], ...]

    @property
    def canonical(self) -> str:
        """A compact unique spelling, e.g. ``3|add4|multiply2``: hashed for ids and splits."""
        return f"{self.start}|" + "|".join(f"{op}{a}" for op, a in self.steps)

    @property
    def id(self) -> str:
        return "toy-" + content_id("toy", self.canonical, length=12)

    @property
    def question(self) -> str:
        steps = " ".join(f"Step {i}: {OPS[op][1]} {a}." for i, (op, a) in enumerate(self.steps, 1))
        return f"Start at {self.start}. {steps} All arithmetic is modulo {MODULUS}."

    def values(self) -> list[int]:
        """The running value after each step (without the start value)."""
        out, x = [], self.start
        for op, a in self.steps:
            x = apply_op(x, op, a)
            out.append(x)
        return out

    @property
    def answer(self) -> int:
        return self.values()[-1]


def apply_op(x: int, op: str, a: int) -> int:
    """``x op a`` modulo 10."""
    return raw_op(x, op, a) % MODULUS


def raw_op(x: int, op: str, a: int) -> int:
    """``x op a`` as an ordinary integer (may be negative or above 9)."""
    if op == "add":
        return x + a
    if op == "subtract":
        return x - a
    if op == "multiply":
        return x * a
    raise ValueError(f"unknown op {op!r}")


def split_of(canonical: str) -> str:
    """The split a problem belongs to, from a hash of its spelling: 10% test, 10% dev, 80% train."""
    h = int.from_bytes(hashlib.sha256(canonical.encode()).digest()[:4], "big") % 10
    return "test" if h == 0 else "dev" if h == 1 else "train"


def make_problems(
    n: int,
    seed: int,
    split: str = "train",
    min_steps: int = MIN_STEPS,
    max_steps: int = MAX_STEPS,
) -> list[ToyProblem]:
    """``n`` distinct problems of ``split`` with chain lengths uniform in ``[min_steps, max_steps]``.

    Deterministic in ``(n, seed, split, min_steps, max_steps)``, and a prefix-stable stream: the first
    ``m`` problems of ``make_problems(n, ...)`` are ``make_problems(m, ...)``. Splits are disjoint by
    construction (a problem's split is a hash of its spelling), whatever the seeds.
    Pitfall: chains of length 2 are few (~4.7K in train), so very large ``n`` repeats long chains more.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not MIN_STEPS <= min_steps <= max_steps:
        raise ValueError(f"need {MIN_STEPS} <= min_steps <= max_steps, got {min_steps}, {max_steps}")
    rng = random.Random(f"dasd-toy/{seed}/{split}/{min_steps}-{max_steps}")
    all_ops = [(op, a) for op, spec in OPS.items() for a in spec[3]]
    seen: set[str] = set()
    out: list[ToyProblem] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 100 * n + 10_000:
            raise ValueError(f"cannot find {n} distinct {split} problems with {min_steps}..{max_steps} steps")
        length = rng.randint(min_steps, max_steps)
        p = ToyProblem(rng.randrange(MODULUS), tuple(rng.choice(all_ops) for _ in range(length)))
        c = p.canonical
        if c in seen or split_of(c) != split:
            continue
        seen.add(c)
        out.append(p)
    return out


def problem_to_prompt(p: ToyProblem) -> dict:
    """A Prompt record dict (records.Prompt) for ``p``: system + user messages, answer as a string."""
    rec = {
        "id": p.id,
        "domain": "toy",
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": p.question},
        ],
        "answer": str(p.answer),
        "meta": {"chain_length": len(p.steps), "start": p.start, "canonical": p.canonical, "split": split_of(p.canonical)},
    }
    Prompt.model_validate(rec)
    return rec


def write_prompts(path: str | os.PathLike, n: int, seed: int, split: str = "test", **kw) -> int:
    """Write ``n`` prompts of ``split`` as JSONL (atomically); return how many were written."""
    return atomic_write_jsonl(path, (problem_to_prompt(p) for p in make_problems(n, seed, split, **kw)))


# ----------------------------------------------------------------------------------------------
# Answers and the verifier

_BOXED = "\\boxed{"


def _last_boxed(text: str) -> str | None:
    i = text.rfind(_BOXED)
    if i < 0:
        return None
    j, depth = i + len(_BOXED), 1
    for k in range(j, len(text)):
        if text[k] == "{":
            depth += 1
        elif text[k] == "}":
            depth -= 1
            if depth == 0:
                return text[j:k].strip()
    return None  # unbalanced: the response was cut off inside the box


def extract_answer(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` of the final answer, or None.

    When the text has a ``</think>``, only what follows the last one counts (a box inside the
    reasoning is not an answer). A text that opens ``<think>`` and never closes it has no answer (the
    reasoning was cut off). Braces nest; an unclosed box is no answer. Whitespace is stripped.
    """
    if "</think>" in text:
        text = text[text.rfind("</think>") + len("</think>") :]
    elif "<think>" in text:
        return None
    ans = _last_boxed(text)
    return ans if ans else None


def _norm(ans: str) -> str:
    s = ans.strip().strip("$").strip()
    if re.fullmatch(r"[+-]?\d+", s):
        return str(int(s))
    return s


def verify(text: str, answer: str | int) -> bool:
    """True when the extracted final answer equals ``answer`` (integers compared by value: "09" == "9")."""
    got = extract_answer(text)
    return got is not None and _norm(got) == _norm(str(answer))


# ----------------------------------------------------------------------------------------------
# The teacher's generating process


def sample_style(rng: random.Random, mix: dict[str, float]) -> str:
    """Draw a style name from a ``{style: weight}`` mixture."""
    names = [s for s in STYLES if mix.get(s, 0) > 0]
    return rng.choices(names, weights=[mix[s] for s in names])[0]


def _slip(rng: random.Random) -> int:
    return rng.choice((-2, -1, 1, 2))


def equation(prev: int, sym: str, a: int, raw: int) -> str:
    """One computation as the step styles write it: ``7 * 2 = 14, which is 4 modulo 10.`` (the raw
    result, then its reduction when it is out of range), or ``3 + 4 = 7.``."""
    return f"{prev} {sym} {a} = {raw}" + ("." if raw % MODULUS == raw else f", which is {raw % MODULUS} modulo {MODULUS}.")


def solution_text(
    problem: ToyProblem,
    style: str,
    rng: random.Random,
    error_rate: float = 0.0,
    redo_rate: float = 0.0,
    stamp_rate: float = 0.0,
) -> str:
    """A full assistant response (``<think>`` reasoning, then the boxed answer) in ``style``.

    With probability ``error_rate`` per computation, the written result is off by 1 or 2 (an
    arithmetic slip); the wrong value is carried forward, so the final answer is usually wrong, except
    in the ``check`` style, whose check notices the slip and redoes the step. In ``check``, a first
    attempt also slips with probability ``redo_rate`` (always caught: a self-correction to learn from).
    A ``steps`` line ends with the rubber stamp "Check: ok." with probability ``stamp_rate``.
    ``error_rate=0`` gives a response that always verifies.
    """
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    x = problem.start
    lines: list[str] = []

    def slipped(prev: int, op: str, a: int, rate: float) -> int:
        raw = raw_op(prev, op, a)
        return raw + _slip(rng) if rate > 0 and rng.random() < rate else raw

    if style == "compact":
        eqs = []
        for op, a in problem.steps:
            x_new = slipped(x, op, a, error_rate) % MODULUS
            eqs.append(f"{len(eqs) + 1}: {x} {OPS[op][2]} {a} = {x_new}.")
            x = x_new
        lines.append(" ".join(eqs))
    else:
        lines.append(f"Start at {x}.")
        for i, (op, a) in enumerate(problem.steps, 1):
            verb, sym = OPS[op][1], OPS[op][2]
            if style == "steps":
                raw = slipped(x, op, a, error_rate)
                line = f"Step {i}: {verb} {a}. " + equation(x, sym, a, raw)
                if stamp_rate > 0 and rng.random() < stamp_rate:
                    line += " " + STAMP
                x_new = raw % MODULUS
            else:  # check: every first attempt is checked; a slip is caught and the step redone
                raw = slipped(x, op, a, min(1.0, error_rate + redo_rate))
                right = raw_op(x, op, a)
                got = raw % MODULUS
                line = f"Step {i}: {verb} {a}. " + equation(x, sym, a, raw) + " Check: "
                # add/subtract are checked by undoing the step (reduced), multiply by recomputing it commuted
                if op == "multiply":
                    line += f"{a} * {x} = {right}"
                    ok, expected = raw == right, raw
                else:
                    back = apply_op(got, "subtract" if op == "add" else "add", a)
                    line += f"{got} {'-' if op == 'add' else '+'} {a} = {back}"
                    ok, expected = back == x, x
                line += ", ok." if ok else f", not {expected}, so " + equation(x, sym, a, right)
                x_new = right % MODULUS
            lines.append(line)
            x = x_new
        lines.append(f"The final value is {x}.")
    body = "\n".join(lines)
    return f"<think>\n{body}\n</think>\nThe answer is \\boxed{{{x}}}."


def teacher_response(
    problem: ToyProblem,
    rng: random.Random,
    mix: dict[str, float] = TEACHER_STYLE_MIX,
    error_rate: float = TEACHER_ERROR_RATE,
    redo_rate: float = TEACHER_REDO_RATE,
    stamp_rate: float = TEACHER_STAMP_RATE,
) -> tuple[str, str]:
    """One draw of the generating process: ``(style, text)`` with the style drawn from ``mix``
    (the defaults are the teacher's corpus; the student's passes its own rates)."""
    style = sample_style(rng, mix)
    return style, solution_text(problem, style, rng, error_rate, redo_rate, stamp_rate)


_REAL_CHECK = re.compile(r"Check: -?\d")


def detect_style(text: str) -> str | None:
    """The style a response is written in: ``check`` if it holds a real check ("Check: " and a
    number), else read from its first reasoning line; None if unrecognised."""
    if not text.startswith("<think>\n"):
        return None
    first = text[len("<think>\n") :].split("\n", 1)[0]
    if first.startswith("Start at "):
        return "check" if _REAL_CHECK.search(text) else "steps"
    if first.startswith("1: "):
        return "compact"
    return None
