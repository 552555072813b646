"""Sentence segmenter throughput on long chain-of-thought-like text (one core).

    .venv/bin/python benchmarks/segment_speed.py [--mb 8] [--repeats 3]

Builds a deterministic multi-MB text that looks like long CoT (prose with decimals, enumerations,
abbreviations, ellipses, inline and display LaTeX, aligned environments, code fences, CJK lines,
"Wait, ..." self-corrections), segments it, and prints MB/s (UTF-8 megabytes per CPU
second of this process, best of ``--repeats``; CPU time, not wall time, so that other jobs on a
shared machine do not distort it), the number of sentences, and the ratio to a baseline measured in the same run (a
plain ``str.splitlines``, the cheapest possible pass over the same text) and to the 20 MB/s target.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from dasd.text.sentences import segment  # noqa: E402

_OPENERS = ["Let me", "Now", "So", "Wait,", "Hmm,", "Alternatively,", "Then", "Therefore", "Next,", "Check:"]
_VERBS = ["compute", "note that", "recall", "verify", "substitute", "simplify", "consider", "expand"]
_NOUNS = ["the sum", "the remainder", "the area", "each term", "the constraint", "the derivative", "f(x)"]


def _sentence(rng: random.Random) -> str:
    kind = rng.random()
    a, b = rng.randint(1, 999), rng.randint(1, 99)
    if kind < 0.25:
        return f"{rng.choice(_OPENERS)} {rng.choice(_VERBS)} {rng.choice(_NOUNS)}: ${a} \\cdot {b} = {a * b}$."
    if kind < 0.4:
        return f"{rng.choice(_OPENERS)} the value is {a}.{b} approx., i.e. about {a}, e.g. for n = {b}."
    if kind < 0.5:
        return f"Hmm... {rng.choice(_VERBS)} {rng.choice(_NOUNS)} again, since {a / b:.4f} is not an integer?"
    if kind < 0.6:
        return f"So \\(x_{b}\\) satisfies \\[ x^2 - {a}x + {b} = 0. \\] Dr. Smith's trick gives it!"
    return (
        f"{rng.choice(_OPENERS)} {rng.choice(_VERBS)} {rng.choice(_NOUNS)} with {a} and {b}, "
        f"which gives {a + b} (see Fig. 2) etc. and we continue."
    )


def _paragraph(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.08:
        rows = "\n".join(f"    total += {rng.randint(1, 9)} * i  # step {i}." for i in range(rng.randint(2, 6)))
        return f"```python\ntotal = 0\nfor i in range(10):\n{rows}\nprint(total)\n```"
    if kind < 0.16:
        items = "\n".join(f"{i}. {_sentence(rng)}" for i in range(1, rng.randint(3, 6)))
        return items
    if kind < 0.22:
        return "$$\n\\sum_{k=1}^{n} k = \\frac{n(n+1)}{2}. \n$$"
    if kind < 0.26:
        return "\\begin{aligned} a &= 1. \\\\ b &= 2. \\end{aligned}"
    if kind < 0.3:
        return "我们先计算。然后验证结果！这样对吗？"
    return " ".join(_sentence(rng) for _ in range(rng.randint(2, 7)))


def build_text(mb: float, seed: int = 0) -> str:
    """A deterministic CoT-like text of about ``mb`` UTF-8 megabytes."""
    rng = random.Random(seed)
    parts: list[str] = ["<think>\n"]
    size = 0
    while size < mb * 1e6:
        p = _paragraph(rng)
        parts.append(p)
        parts.append("\n\n")
        size += len(p.encode("utf-8")) + 2
    parts.append("</think>\n\nThe answer is $\\boxed{42}$.")
    return "".join(parts)


def _best(fn, text: str, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        fn(text)
        best = min(best, time.process_time() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=8.0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    text = build_text(args.mb)
    mb = len(text.encode("utf-8")) / 1e6
    n_sent = len(segment(text))
    t_seg = _best(segment, text, args.repeats)
    t_base = _best(str.splitlines, text, args.repeats)
    speed = mb / t_seg
    print(f"text: {mb:.1f} MB, {len(text):,} chars, {n_sent:,} sentences ({len(text) / n_sent:.0f} chars each)")
    print(f"segment: {speed:.1f} MB/s (best of {args.repeats})")
    print(f"ratio to str.splitlines on the same text: {t_base / t_seg:.3f}")
    print(f"ratio to the 20 MB/s target: {speed / 20:.2f}")


if __name__ == "__main__":
    main()
