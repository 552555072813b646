"""Metrics over graded samples: avg@k, unbiased pass@k, maj@k, bootstrap intervals, summary tables.

Definitions (per problem with n graded samples, c of them correct; a benchmark score is the mean
over its problems):

- **avg@k** (the paper's headline metric): the fraction of the first k samples that are correct.
- **pass@k**: the unbiased estimator of "at least one of k samples is correct" from n >= k samples,
  ``1 - C(n-c, k) / C(n, k)`` (Chen et al. 2021).
- **maj@k**: majority vote over the first k samples' extracted answers (no answer = no vote); the
  problem counts as solved when the winning answer is correct. Correct answers all vote together
  (they are all equivalent to the reference: "1/2" and "0.5" are one vote); wrong answers vote by
  their exact string. Ties go to the answer seen first.
- **CI**: percentile bootstrap over problems (resample problems with replacement, ``n_boot`` times,
  fixed seed), 95% by default.
- **cut off**: samples that stopped at the token limit (``finish_reason`` "length"): their answers
  were never written, so they are graded wrong; a large share means the protocol's ``max_tokens``
  is too short for the model, not that the model is wrong.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with ``n`` samples of which ``c`` are correct (needs k <= n)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def avg_at_k(correct: Sequence[Sequence[bool]], k: int | None = None) -> float:
    """Mean over problems of the fraction correct among each problem's first ``k`` samples (all if None)."""
    if not correct:
        raise ValueError("avg_at_k of no problems")
    per = []
    for samples in correct:
        s = list(samples)[:k] if k else list(samples)
        if not s:
            raise ValueError("avg_at_k: a problem has no samples")
        per.append(sum(map(bool, s)) / len(s))
    return sum(per) / len(per)


def majority_correct(answers: Sequence[tuple[str | None, bool]]) -> bool:
    """True when the majority answer among ``(extracted, correct)`` pairs is a correct one."""
    votes: dict[str, int] = {}
    first: dict[str, int] = {}
    truth: dict[str, bool] = {}
    for i, (ans, ok) in enumerate(answers):
        if ans is None:
            continue
        key = "\x00correct" if ok else " ".join(str(ans).split())
        votes[key] = votes.get(key, 0) + 1
        first.setdefault(key, i)
        truth[key] = bool(ok)
    if not votes:
        return False
    best = max(votes, key=lambda a: (votes[a], -first[a]))
    return truth[best]


def maj_at_k(answers: Sequence[Sequence[tuple[str | None, bool]]], k: int | None = None) -> float:
    """Fraction of problems whose majority answer over the first ``k`` samples is correct."""
    if not answers:
        raise ValueError("maj_at_k of no problems")
    return sum(majority_correct(list(a)[:k] if k else list(a)) for a in answers) / len(answers)


def bootstrap_ci(values: Sequence[float], stat: Callable[[Sequence[float]], float] | None = None,
                 n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat`` (default: mean) over ``values`` (one per problem)."""
    vals = list(values)
    if not vals:
        raise ValueError("bootstrap_ci of no values")
    stat = stat or (lambda v: sum(v) / len(v))
    rng = random.Random(seed)
    n = len(vals)
    boots = sorted(stat([vals[rng.randrange(n)] for _ in range(n)]) for _ in range(n_boot))
    lo = boots[int(math.floor(alpha / 2 * (n_boot - 1)))]
    hi = boots[int(math.ceil((1 - alpha / 2) * (n_boot - 1)))]
    return lo, hi


def _benchmark(r: dict[str, Any]) -> str:
    return r.get("benchmark") or r.get("domain") or "unknown"


def _group_rows(name: str, kind: str, results: list[dict[str, Any]], n_boot: int,
                k_of: dict[str, int]) -> dict[str, Any]:
    # a problem is (benchmark, id): two benchmarks may use the same ids (files numbered 0, 1, ...)
    by_problem: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        by_problem[(_benchmark(r), r["problem_id"])].append(r)
    samples = [sorted(rs, key=lambda r: r.get("sample_index", 0)) for rs in by_problem.values()]
    ks = [k_of[bench] for bench, _ in by_problem]  # each problem's k: its benchmark's
    correct = [[bool(r["correct"]) for r in s] for s in samples]
    per_avg = [sum(c[:k]) / k for c, k in zip(correct, ks)]
    per_pass = [pass_at_k(len(c), sum(c), k) for c, k in zip(correct, ks)]
    per_maj = [float(majority_correct([(r.get("extracted"), bool(r["correct"])) for r in s[:k]]))
               for s, k in zip(samples, ks)]
    return {
        "name": name,
        "kind": kind,
        "problems": len(samples),
        "samples": sum(len(s) for s in samples),
        "k": ks[0] if len(set(ks)) == 1 else MIXED_K,
        "avg@k": sum(per_avg) / len(per_avg),
        "avg@k_ci": list(bootstrap_ci(per_avg, n_boot=n_boot)),
        "pass@1": sum(pass_at_k(len(c), sum(c), 1) for c in correct) / len(correct),
        "pass@k": sum(per_pass) / len(per_pass),
        "pass@k_ci": list(bootstrap_ci(per_pass, n_boot=n_boot)),
        "maj@k": sum(per_maj) / len(per_maj),
        "no_answer": sum(r.get("extracted") is None for s in samples for r in s) / sum(len(s) for s in samples),
        "cut_off": cut_off(r for s in samples for r in s),
    }


def cut_off(results: Iterable[dict[str, Any]]) -> int | None:
    """How many results stopped at the token limit (``finish_reason`` "length"); None when none of
    them records how it ended (responses given to `dasd grade` without it)."""
    known = cut = 0
    for r in results:
        if r.get("finish_reason") is not None:
            known += 1
            cut += r["finish_reason"] == "length"
    return cut if known else None


MIXED_K = "mixed"  # the k of a summary row whose benchmarks were sampled a different number of times
SUMMARY_FIELDS = ("benchmark", "domain", "problem_id", "sample_index", "correct", "extracted", "finish_reason")


def summarize(results: Iterable[dict[str, Any]], n_boot: int = 1000) -> list[dict[str, Any]]:
    """Table rows: one per benchmark, then one per domain, then "all" (EvalResult dicts in).

    A result's benchmark is ``result["benchmark"]`` (falling back to its domain), its domain
    ``result["domain"]`` (falling back to "unknown"). A benchmark's ``k`` is the smallest number of
    samples any of its problems has; avg@k, pass@k and maj@k of a problem use its benchmark's k (the
    first k samples by ``sample_index``), in every row, so a domain or "all" row is the mean over its
    problems of what their benchmark rows count: AIME at k = 16 beside GPQA at k = 1 gives an "all"
    avg@k of each AIME problem's mean over its 16 samples and each GPQA problem's one sample, not of
    one sample of every problem. Such a row's ``k`` is ``MIXED_K`` ("mixed") when its benchmarks' k
    differ. ``no_answer`` is a share of all its samples, ``cut_off`` a count of them (``cut_off()``).
    A problem is a (benchmark, problem_id) pair: benchmarks that share ids stay apart in the domain
    and "all" rows. ``results`` is read once (a stream such as ``RunStore.read`` will do) and only the
    ``SUMMARY_FIELDS`` of each are kept, never the response texts.
    """
    results = [{k: r[k] for k in SUMMARY_FIELDS if k in r} for r in results]
    if not results:
        return []
    per_problem: dict[tuple[str, str], int] = defaultdict(int)
    for r in results:
        per_problem[(_benchmark(r), r["problem_id"])] += 1
    k_of: dict[str, int] = {}
    for (bench, _), n in per_problem.items():
        k_of[bench] = min(n, k_of.get(bench, n))
    rows = []
    for kind, key in (("benchmark", _benchmark),
                      ("domain", lambda r: r.get("domain") or "unknown")):
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in results:
            groups[key(r)].append(r)
        rows += [_group_rows(name, kind, rs, n_boot, k_of) for name, rs in sorted(groups.items())]
    rows.append(_group_rows("all", "all", results, n_boot, k_of))
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of ``summarize`` rows (scores in percent, 95% CI in brackets; cut off: the
    percent of samples that stopped at the token limit, "-" when the results do not say)."""
    head = ["kind", "name", "problems", "samples", "k", "avg@k [95% CI]", "pass@1", "pass@k", "maj@k", "no answer",
            "cut off"]
    body = []
    for r in rows:
        lo, hi = r["avg@k_ci"]
        body.append([r["kind"], r["name"], str(r["problems"]), str(r["samples"]), str(r["k"]),
                     f"{100 * r['avg@k']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]", f"{100 * r['pass@1']:.1f}",
                     f"{100 * r['pass@k']:.1f}", f"{100 * r['maj@k']:.1f}", f"{100 * r['no_answer']:.1f}",
                     "-" if r.get("cut_off") is None else f"{100 * r['cut_off'] / r['samples']:.1f}"])
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    lines = [fmt(head), fmt(["-" * w for w in widths])] + [fmt(b) for b in body]
    return "\n".join(lines)


def accuracy_table(summary: dict[str, list[dict]], order: list[str]) -> str:
    """The demo's closing table: avg@k with 95% CI of each model (overall row)."""
    lines = [f"{'model':16s} {'avg@k':>7s} {'95% CI':>15s} {'pass@k':>7s} {'k':>3s} {'problems':>8s}"]
    for label in order:
        rows = summary.get(label)
        if not rows:
            lines.append(f"{label:16s} {'(not run)':>7s}")
            continue
        r = next(x for x in rows if x["kind"] == "all")
        lo, hi = r["avg@k_ci"]
        lines.append(f"{label:16s} {100 * r['avg@k']:6.1f}% [{100 * lo:5.1f}, {100 * hi:5.1f}] {100 * r['pass@k']:6.1f}% {r['k']!s:>3s} {r['problems']:8d}")
    return "\n".join(lines)
