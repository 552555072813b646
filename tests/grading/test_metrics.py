"""Metrics: pass@k equals its definition on small cases; avg@k, maj@k, bootstrap, tables."""

from __future__ import annotations

import itertools

import pytest

from dasd.grading.metrics import avg_at_k, bootstrap_ci, format_table, maj_at_k, majority_correct, pass_at_k, summarize


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 8])
def test_pass_at_k_equals_subset_enumeration(n):
    """pass@k = P(a uniformly random k-subset of the n samples holds a correct one), exactly."""
    for c in range(n + 1):
        samples = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(range(n), k))
            brute = sum(any(samples[i] for i in s) for s in subsets) / len(subsets)
            assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12)


def test_pass_at_1_is_mean_and_edges():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(5, 0, 5) == 0.0 and pass_at_k(5, 1, 5) == 1.0
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


def test_avg_and_maj():
    correct = [[True, False, True, True], [False, False, False, False], [True, True, True, True]]
    assert avg_at_k(correct) == pytest.approx((0.75 + 0 + 1) / 3)
    assert avg_at_k(correct, k=2) == pytest.approx((0.5 + 0 + 1) / 3)
    # equivalent correct answers vote together: "1/2" and "0.5" beat one "0.3"
    assert majority_correct([("1/2", True), ("0.3", False), ("0.5", True)]) is True
    assert majority_correct([("7", False), ("7", False), ("3", True)]) is False
    assert majority_correct([("3", True), ("7", False)]) is True  # tie -> first seen
    assert majority_correct([(None, False), (None, False)]) is False
    answers = [[("3", True), ("3", True), ("4", False)], [("4", False), ("4", False), ("3", True)]]
    assert maj_at_k(answers) == 0.5
    assert maj_at_k(answers, k=1) == 0.5


def test_bootstrap_ci_brackets_the_mean_and_is_seeded():
    vals = [1.0] * 30 + [0.0] * 70
    lo, hi = bootstrap_ci(vals, n_boot=500, seed=1)
    assert lo < 0.3 < hi and 0.0 <= lo and hi <= 1.0
    assert (lo, hi) == bootstrap_ci(vals, n_boot=500, seed=1)
    assert bootstrap_ci([0.5] * 10) == (0.5, 0.5)


def test_summarize_per_benchmark_and_domain():
    res = []
    for b, dom, pid, corr in [("aime24", "math", "a1", [1, 1, 0, 0]), ("aime24", "math", "a2", [0, 0, 0, 0]),
                              ("aime25", "math", "b1", [1, 1, 1, 1]), ("gpqa", "science", "g1", [1, 0, 1, 0])]:
        for j, c in enumerate(corr):
            res.append({"problem_id": pid, "sample_index": j, "correct": bool(c), "extracted": "x" if c else "y",
                        "benchmark": b, "domain": dom})
    rows = summarize(res, n_boot=200)
    by = {(r["kind"], r["name"]): r for r in rows}
    assert by[("benchmark", "aime24")]["avg@k"] == pytest.approx(0.25)
    assert by[("benchmark", "aime24")]["pass@k"] == pytest.approx(0.5)
    assert by[("domain", "math")]["problems"] == 3
    assert by[("domain", "math")]["avg@k"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert by[("all", "all")]["samples"] == 16 and by[("all", "all")]["k"] == 4
    assert by[("benchmark", "gpqa")]["maj@k"] == 1.0  # tie 2-2 goes to the first seen (correct)
    table = format_table(rows)
    assert "aime24" in table and "25.0" in table and len(table.splitlines()) == len(rows) + 2
    # read once as a stream, the response texts left out: the same rows
    texts = ({**r, "text": "a long response " * 100, "detail": {"x": 1}} for r in reversed(res))
    assert summarize(texts, n_boot=200) == summarize(list(reversed(res)), n_boot=200)


def _results(spec):
    return [{"benchmark": b, "domain": "math", "problem_id": pid, "sample_index": j, "correct": bool(c),
             "extracted": "x" if c else "y"} for b, pid, corr in spec for j, c in enumerate(corr)]


def test_benchmarks_sharing_problem_ids_stay_apart_in_the_domain_and_all_rows():
    """Two benchmarks whose files number their problems alike (ids 1, 2): four problems, not two."""
    rows = summarize(_results([("a", "1", [1, 0, 0]), ("a", "2", [1, 1, 0]),
                               ("b", "1", [0, 0, 0]), ("b", "2", [1, 1, 1])]), n_boot=50)
    by = {(r["kind"], r["name"]): r for r in rows}
    for key in (("domain", "math"), ("all", "all")):
        r = by[key]
        assert (r["problems"], r["samples"], r["k"]) == (4, 12, 3)
        assert r["avg@k"] == pytest.approx((1 / 3 + 2 / 3 + 0 + 1) / 4)
        assert r["pass@k"] == pytest.approx(3 / 4)  # n = k = 3: solved when any sample is correct
        assert r["maj@k"] == pytest.approx(2 / 4)  # a/1 and b/1 lose the vote to "y"


def test_summary_pass_at_k_by_hand_with_unequal_sample_counts():
    """k is the fewest samples of a problem (2); pass@k uses all n samples of each problem
    (1 - C(n-c, k) / C(n, k)), avg@k and maj@k the first k."""
    rows = summarize(_results([("a", "p", [0, 1, 1, 0]), ("a", "q", [1, 0])]), n_boot=50)
    r = next(x for x in rows if x["kind"] == "all")
    assert r["k"] == 2 and r["samples"] == 6
    assert r["pass@k"] == pytest.approx(((1 - 1 / 6) + 1) / 2)  # p: 1 - C(2,2)/C(4,2); q: n - c < k
    assert r["pass@1"] == pytest.approx((2 / 4 + 1 / 2) / 2)
    assert r["avg@k"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert r["maj@k"] == pytest.approx(1 / 2)  # p: "y" then correct, a tie to the first seen; q: correct first


def test_the_all_row_uses_each_benchmarks_own_k_when_benchmarks_differ_in_k():
    """AIME-like sampled 4 times, GPQA-like once: the "all" (and the shared domain) row averages each
    problem over its benchmark's k samples, not over one sample of every problem; its k is "mixed".
    By hand: aime a1 2/4 correct, a2 4/4; gpqa g1 0/1, g2 1/1."""
    res = _results([("aime", "a1", [0, 0, 1, 1]), ("aime", "a2", [1, 1, 1, 1])])
    res += [{**r, "domain": "math"} for r in _results([("gpqa", "g1", [0]), ("gpqa", "g2", [1])])]
    rows = summarize(res, n_boot=50)
    by = {(r["kind"], r["name"]): r for r in rows}
    assert by[("benchmark", "aime")]["k"] == 4 and by[("benchmark", "aime")]["avg@k"] == pytest.approx(3 / 4)
    assert by[("benchmark", "gpqa")]["k"] == 1 and by[("benchmark", "gpqa")]["avg@k"] == pytest.approx(1 / 2)
    for key in (("domain", "math"), ("all", "all")):
        r = by[key]
        assert (r["problems"], r["samples"], r["k"]) == (4, 10, "mixed")
        # the old k = 1 for every problem gave (0 + 1 + 0 + 1) / 4 = 0.5
        assert r["avg@k"] == pytest.approx((2 / 4 + 4 / 4 + 0 + 1) / 4)
        assert r["pass@k"] == pytest.approx((1 + 1 + 0 + 1) / 4)  # a1: 1 - C(2,4)/C(4,4) = 1
        assert r["maj@k"] == pytest.approx((0 + 1 + 0 + 1) / 4)  # a1: a 2-2 tie goes to "y", seen first
        assert r["pass@1"] == pytest.approx((2 / 4 + 1 + 0 + 1) / 4)
    assert "mixed" in format_table(rows).splitlines()[-1]
    from dasd.grading.metrics import accuracy_table
    line = accuracy_table({"m": rows}, ["m"]).splitlines()[1]
    assert line.split()[-2:] == ["mixed", "4"] and line.split()[1:2] + line.split()[-3:-2] == ["62.5%", "75.0%"]
