"""Can the toy student learn each teacher style, and does the check style fix its slips?

    HF_HUB_OFFLINE=1 python benchmarks/style_learnability.py [--examples 300] [--epochs 8] [--lr 2e-3] \
        [--styles steps check compact] [--problems 200] [--redo-rate R] [--no-base] [--seed 0]

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
"""

from __future__ import annotations

import argparse
import os
import random
import re
from collections import Counter

os.environ.setdefault("HF_HUB_OFFLINE", "1")

STEP = re.compile(r"^Step (\d+): ([a-z ]+?) (\d+)\. (-?\d+) ([-+*]) (\d+) = (-?\d+)(?:, which is (-?\d+) modulo 10)?\.(.*)$")
CHECK = re.compile(r"^ Check: (-?\d+) ([-+*]) (-?\d+) = (-?\d+)(, ok\.|, not (-?\d+), so (-?\d+) ([-+*]) (\d+) = (-?\d+)(?:, which is (-?\d+) modulo 10)?\.)$")
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
                redo = int(c[10])
                row["check"] = "caught" if redo == right else "bad redo"
        rows.append(row)
    return rows


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
    ap.add_argument("--no-base", action="store_true", help="skip measuring the untuned student base")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    redo = world.TEACHER_REDO_RATE if a.redo_rate is None else a.redo_rate
    torch.set_num_threads(1)
    student = SHIPPED_DIR / "student"
    train = world.make_problems(a.examples, a.seed, "train")
    test = world.make_problems(a.problems, a.seed, "test")
    print(f"[{a.examples} examples per style, {a.epochs} epochs, lr {a.lr:g}, batch {a.batch_size}; "
          f"{a.problems} test problems x 1 sample; check redo rate {redo:g}; seed {a.seed}]")
    print("style | T | accuracy | in style | first-attempt slips/step | checks: confirmed, caught, bad redo, "
          "missed, false alarm, unreadable | check arithmetic wrong")
    arms = [] if a.no_base else [("base", None)]
    arms += [(s, s) for s in a.styles]
    for name, style in arms:
        tok = AutoTokenizer.from_pretrained(str(student))
        model = AutoModelForCausalLM.from_pretrained(str(student), dtype=torch.float32)
        if style is not None:
            rng = random.Random(a.seed)
            pairs = [(p, world.solution_text(p, style, rng, world.TEACHER_ERROR_RATE,
                                             redo if style == "check" else 0.0,
                                             world.TEACHER_STAMP_RATE if style == "steps" else 0.0)) for p in train]
            torch.manual_seed(a.seed)
            finetune(model, tok, pairs, a.epochs, a.lr, a.batch_size, a.seed)
        for temp in a.temperatures:
            acc, texts = evaluate_accuracy(model, test, temp, 800, seed=a.seed, tokenizer=tok, return_texts=True)
            styles = Counter(world.detect_style(t) or "none" for t in texts)
            steps = [r for t in texts for r in read_steps(t)]
            slips = sum(r["slip"] for r in steps) / max(1, len(steps))
            checks = Counter(r["check"] for r in steps if r["check"])
            n_checks = sum(checks.values())
            kinds = ("confirmed", "caught", "bad redo", "missed", "false alarm", "unreadable")
            shares = ", ".join(f"{checks[k] / n_checks:.2f}" for k in kinds) if n_checks else "-"
            wrong = [r["check_arith_wrong"] for r in steps if "check_arith_wrong" in r]
            in_style = f"{styles[style] / len(texts):.2f}" if style else ", ".join(f"{k} {v}" for k, v in styles.most_common())
            print(f"{name} | {temp} | {acc:.3f} | {in_style} | {slips:.3f} ({len(steps)} steps) | "
                  f"{shares} (n={n_checks}) | {sum(wrong) / len(wrong) if wrong else 0:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
