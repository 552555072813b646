"""Accuracy by solution style of trained ablation arms: what a student learned to write, and how well.

    HF_HUB_OFFLINE=1 python benchmarks/ablation_styles.py [--out runs/ablation-paper] [--seed 0] \
        [--arms rs_low das_low rs_high das_high] [--problems 200] [--temperature 1.0]

For each single-stage arm of one ablation seed (``OUT/seed-S/arms/ARM/train/single/final``), one
sample per held-out toy problem (``dasd.toy.measure.evaluate_accuracy``, seeded), read back by style
(``dasd.toy.world.detect_style``): how many responses of each style and their accuracy, how many
show a caught slip (", not "), and the mean length. Run after ``benchmarks/ablation.py``.
"""

from __future__ import annotations

import argparse
import os
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv: list[str] | None = None) -> int:
    from dasd.toy import world
    from dasd.toy.measure import evaluate_accuracy

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/ablation-paper", help="the ablation's --out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arms", nargs="+", default=["rs_low", "das_low", "rs_high", "das_high"])
    ap.add_argument("--problems", type=int, default=200, help="held-out toy test problems")
    ap.add_argument("--temperature", type=float, default=1.0)
    a = ap.parse_args(argv)
    problems = world.make_problems(a.problems, 0, "test")
    print(f"arm | accuracy | per style: responses (accuracy) | caught slips | mean chars   "
          f"[{a.problems} problems, T={a.temperature}, seed {a.seed}]")
    for arm in a.arms:
        model = Path(a.out) / f"seed-{a.seed}" / "arms" / arm / "train" / "single" / "final"
        if not model.is_dir():
            raise SystemExit(f"{model}: no such trained arm (run benchmarks/ablation.py first)")
        acc, texts = evaluate_accuracy(model, problems, a.temperature, 640, seed=1, return_texts=True)
        by: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for p, t in zip(problems, texts):
            row = by[world.detect_style(t) or "none"]
            row[0] += 1
            row[1] += world.verify(t, str(p.answer))
        styles = ", ".join(f"{s} {n} ({ok / n:.2f})" for s, (n, ok) in sorted(by.items()))
        caught = sum(", not " in t for t in texts)
        print(f"{arm} | {acc:.3f} | {styles} | {caught} | {sum(map(len, texts)) / len(texts):.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
