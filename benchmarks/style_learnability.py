"""Can the toy student learn each teacher style, and does the check style fix its slips?

    HF_HUB_OFFLINE=1 python benchmarks/style_learnability.py [--examples 300] [--epochs 8] [--lr 2e-3] \
        [--styles steps check compact] [--problems 200] [--redo-rate R] [--check-form world|diff] \
        [--teacher] [--no-base] [--student DIR] [--seed 0]

For each style, a copy of the shipped student base is fine-tuned (``dasd.toy.checks.finetune``, the
world checks' recipe) on ``--examples`` responses drawn from the teacher's generating process in that
style alone (``world.solution_text`` with the teacher corpus's slip, redo and stamp rates, train-split
problems), then sampled once per held-out test problem at T=0.6 and T=1.0. Printed per style and
temperature: accuracy, the share of responses written in the trained style, and, per reasoning step,
the first-attempt slip rate. For ``check`` responses each check is read back: ``confirmed`` (right
step, "ok"), ``caught`` (slip, "not ... so" and a right redo), ``bad redo`` (slip caught, redo wrong),
``missed`` (slip, "ok"), ``false alarm`` (right step, "not"), and the share of checks whose own
arithmetic is wrong. This is the toy world's design requirement that what DAS prefers (the real
checks) is something the student *can* learn and that fixes its errors (docs/toy-world.md),
measured without any selection.

Per step are also counted the operation copied wrong from the question (``copy``) and the value
carried wrong from the previous step (``carry``), and accuracy is printed by chain length (2..7).
``--teacher`` adds the shipped teacher itself (no fine-tune): whether its own checks catch its slips.
``--check-form diff`` trains ``check`` on a candidate form that is not the world's (``diff_check_text``):
the check writes the difference of the two values it compares, and the verdict follows from it
("Check: 8 - 4 = 4, off by 4 - 3 = 1, so 3 + 4 = 7."), so no comparison is left to a single token.
"""

from __future__ import annotations

import argparse
import os
import random
import re
from collections import Counter

os.environ.setdefault("HF_HUB_OFFLINE", "1")

STEP = re.compile(r"^Step (\d+): ([a-z ]+?) (\d+)\. (-?\d+) ([-+*]) (\d+) = (-?\d+)(?:, which is (-?\d+) modulo 10)?\.(.*)$")
CHECK = re.compile(r"^ Check: (-?\d+) ([-+*]) (-?\d+) = (-?\d+)(?:, which is -?\d+ modulo 10)?(?:, off by -?\d+ - -?\d+ = -?\d+)?"
                   r"(, ok\.|(?:, not -?\d+)?, so (-?\d+) ([-+*]) (\d+) = (-?\d+)(?:, which is (-?\d+) modulo 10)?\.)$")
SYM_OP = {"+": "add", "-": "subtract", "*": "multiply"}


def read_steps(text: str) -> list[dict]:
    """The numbered step lines of a ``steps``/``check`` response: per step, whether the first attempt
    is right (by its own written operands), and for a check its verdict and whether it was right."""
    from dasd.toy import world

    rows = []
    for line in text.split("\n"):
        m = STEP.match(line)
        if not m:
            continue
        x, sym, a, raw = int(m[4]), m[5], int(m[6]), int(m[7])
        op = SYM_OP[sym]
        right = world.raw_op(x, op, a)
        row = {"slip": raw != right, "check": None}
        c = CHECK.match(m[9]) if m[9].startswith(" Check: ") and m[9] != " " + world.STAMP else None
        if m[9].startswith(" Check: ") and m[9] != " " + world.STAMP and c is None:
            row["check"] = "unreadable"
        elif c is not None:
            cx, csym, ca, cres = int(c[1]), c[2], int(c[3]), int(c[4])
            row["check_arith_wrong"] = world.raw_op(cx, SYM_OP[csym], ca) % 10 != cres % 10
            if c[5] == ", ok.":
                row["check"] = "missed" if row["slip"] else "confirmed"
            elif not row["slip"]:
                row["check"] = "false alarm"
            else:
                redo = int(c[9])
                row["check"] = "caught" if redo == right else "bad redo"
        rows.append(row)
    return rows


def read_tracking(problem, text: str) -> tuple[int, int]:
    """``(copy, carry)``: of the numbered step lines of a ``steps``/``check`` response, how many name
    another operation than the question's step of that number, and how many start from another value
    than the one the previous line ended with (after a redo: the redone value)."""
    from dasd.toy import world

    copy = carry = 0
    x = problem.start
    for line in text.split("\n"):
        m = STEP.match(line)
        if not m:
            continue
        k = int(m[1])
        if not 1 <= k <= len(problem.steps) or (m[2], int(m[3])) != (world.OPS[problem.steps[k - 1][0]][1], problem.steps[k - 1][1]):
            copy += 1
        if int(m[4]) != x:
            carry += 1
        c = CHECK.match(m[9]) if m[9].startswith(" Check: ") else None
        x = int(c[10] if c[10] is not None else c[9]) if c is not None and c[5] != ", ok." else int(m[8] or m[7])
    return copy, carry


def diff_check_text(problem, rng: random.Random, error_rate: float, redo_rate: float) -> str:
    """A candidate ``check`` form (not the world's): the check writes the difference of the two values
    it compares and the verdict follows from it (zero: "ok"; else the step is redone). The slips
    (``error_rate`` plus the demonstrated ``redo_rate``) are those of ``world.solution_text``."""
    from dasd.toy import world

    m, equation = world.MODULUS, world.equation
    x, lines = problem.start, [f"Start at {problem.start}."]
    for i, (op, a) in enumerate(problem.steps, 1):
        verb, sym = world.OPS[op][1], world.OPS[op][2]
        right = world.raw_op(x, op, a)
        raw = right + world._slip(rng) if rng.random() < min(1.0, error_rate + redo_rate) else right
        got = raw % m
        line = f"Step {i}: {verb} {a}. " + equation(x, sym, a, raw) + " Check: "
        if op == "multiply":  # recomputed commuted, compared modulo 10
            line += f"{a} * {x} = {right}" + ("" if right < m else f", which is {right % m} modulo {m}")
            line += f", off by {got} - {right % m} = {got - right % m}"
            ok = got == right % m
        else:  # undone, compared with the value the step started from
            back = world.apply_op(got, "subtract" if op == "add" else "add", a)
            line += f"{got} {'-' if op == 'add' else '+'} {a} = {back}, off by {back} - {x} = {back - x}"
            ok = back == x
        lines.append(line + (", ok." if ok else ", so " + equation(x, sym, a, right)))
        x = right % m
    body = "\n".join([*lines, f"The final value is {x}."])
    return f"<think>\n{body}\n</think>\nThe answer is \\boxed{{{x}}}."


def main(argv: list[str] | None = None) -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dasd.toy import world
    from dasd.toy.build import SHIPPED_DIR
    from dasd.toy.checks import finetune
    from dasd.toy.measure import evaluate_accuracy

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=300, help="fine-tuning responses per style")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--styles", nargs="+", default=["steps", "check", "compact"], choices=list(world.STYLES))
    ap.add_argument("--problems", type=int, default=200, help="held-out test problems")
    ap.add_argument("--temperatures", type=float, nargs="+", default=[0.6, 1.0])
    ap.add_argument("--redo-rate", type=float, default=None,
                    help="first-attempt slip rate of the check style on top of the slip rate (default: the "
                         "teacher corpus's world.TEACHER_REDO_RATE)")
    ap.add_argument("--check-form", choices=["world", "diff"], default="world",
                    help="the check style's form: the world's, or the candidate diff_check_text")
    ap.add_argument("--teacher", action="store_true", help="also measure the shipped teacher itself (no fine-tune)")
    ap.add_argument("--no-base", action="store_true", help="skip measuring the untuned student base")
    ap.add_argument("--student", default=None, help="the student base to fine-tune (default: the shipped one)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    redo = world.TEACHER_REDO_RATE if a.redo_rate is None else a.redo_rate
    torch.set_num_threads(1)
    student = a.student or SHIPPED_DIR / "student"
    train = world.make_problems(a.examples, a.seed, "train")
    test = world.make_problems(a.problems, a.seed, "test")
    print(f"[{a.examples} examples per style, {a.epochs} epochs, lr {a.lr:g}, batch {a.batch_size}; "
          f"{a.problems} test problems x 1 sample; check redo rate {redo:g}, form {a.check_form}; seed {a.seed}]")
    print("style | T | accuracy | by chain length 2..7 | in style | per step: first-attempt slips, copy, carry | checks: "
          "confirmed, caught, bad redo, missed, false alarm, unreadable | check arithmetic wrong")
    arms = [("teacher", None)] if a.teacher else []
    arms += [] if a.no_base else [("base", None)]
    arms += [(s, s) for s in a.styles]
    for name, style in arms:
        path = SHIPPED_DIR / "teacher" if name == "teacher" else student
        tok = AutoTokenizer.from_pretrained(str(path))
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
        if style is not None:
            rng = random.Random(a.seed)
            if style == "check" and a.check_form == "diff":
                pairs = [(p, diff_check_text(p, rng, world.TEACHER_ERROR_RATE, redo)) for p in train]
            else:
                pairs = [(p, world.solution_text(p, style, rng, world.TEACHER_ERROR_RATE,
                                                 redo if style == "check" else 0.0,
                                                 world.TEACHER_STAMP_RATE if style == "steps" else 0.0)) for p in train]
            torch.manual_seed(a.seed)
            finetune(model, tok, pairs, a.epochs, a.lr, a.batch_size, a.seed)
        for temp in a.temperatures:
            acc, texts = evaluate_accuracy(model, test, temp, 800, seed=a.seed, tokenizer=tok, return_texts=True)
            styles = Counter(world.detect_style(t) or "none" for t in texts)
            by_len, right_by_len = Counter(len(p.steps) for p in test), Counter()
            for p, t in zip(test, texts):
                right_by_len[len(p.steps)] += world.verify(t, p.answer)
            lengths = " / ".join(f"{right_by_len[n] / by_len[n]:.2f}" for n in sorted(by_len))
            copy, carry = (sum(x) for x in zip(*(read_tracking(p, t) for p, t in zip(test, texts))))
            steps = [r for t in texts for r in read_steps(t)]
            slips = sum(r["slip"] for r in steps) / max(1, len(steps))
            checks = Counter(r["check"] for r in steps if r["check"])
            n_checks = sum(checks.values())
            kinds = ("confirmed", "caught", "bad redo", "missed", "false alarm", "unreadable")
            shares = ", ".join(f"{checks[k] / n_checks:.2f}" for k in kinds) if n_checks else "-"
            wrong = [r["check_arith_wrong"] for r in steps if "check_arith_wrong" in r]
            in_style = f"{styles[style] / len(texts):.2f}" if style else ", ".join(f"{k} {v}" for k, v in styles.most_common())
            per_step = f"{slips:.3f}, {copy / max(1, len(steps)):.3f}, {carry / max(1, len(steps)):.3f} ({len(steps)} steps)"
            print(f"{name} | {temp} | {acc:.3f} | {lengths} | {in_style} | {per_step} | "
                  f"{shares} (n={n_checks}) | {sum(wrong) / len(wrong) if wrong else 0:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
