"""benchmarks/ablation.py end to end on two tiny random models (one seed, a handful of prompts):
every arm is trained by the real trainer and measured, the table has every arm with finite numbers,
and a re-run resumes from what is on disk. No claim about effects: the models are random.

The teacher is a random tiny Llama *nudged* towards its end-of-turn token (every token embedding
gets a constant in dimension 0, the favoured tokens a larger one, which the tied lm head turns into
a higher logit), so that its responses finish within a few dozen tokens; the student (another
vocabulary) is nudged towards sentence ends, so its mixed-policy rollouts have places to cut.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from ablation_lib import (  # noqa: E402
    ARMS, NATURALNESS_ARMS, PAPER_TABLES, REPLAY_ARMS, AblationPlan, aggregate, arm_data, eligible_prompts,
    halfwidth_seeds, markdown, paired, paper_tables, power_markdown, power_table, relative_path, replay_data,
    reproduces, run_ablation, seed_config, seeds_needed, t_cdf, t_interval, t_quantile, teacher_shares,
)

CORPUS = [
    "<think>\nStart at 5. 5 - 2 = 3.\nCheck: 3 is right.\n</think>\nSo \\boxed{3}.",
    "<think>\nLet me think. First, 12 / 4 = 3.\nThen 3 + 9 = 12.\n</think>\nThe answer is \\boxed{12}.",
    "Compute 3 + 4 then times 2. 3 + 4 = 7. 7 * 2 = 14. The answer is \\boxed{14}.",
]


def _plan(tmp_path: Path, nudged_lm) -> AblationPlan:
    teacher = nudged_lm(tmp_path / "teacher", CORPUS * 30, 400, 4, {"<|im_end|>"}, 1.3)
    student = nudged_lm(tmp_path / "student", list(reversed(CORPUS)) * 20, 330, 3, {"\n", "."}, 1.6)
    overrides = [
        f"teacher.model={teacher}", f"student.model={student}", "data.toy.n_train=4", "sample.k=3",
        "sample.max_tokens=40", "filter.require_structure=false", "filter.drop_cutoff=false",
        "filter.require_correct=false", "filter.max_student_tokens=null",
        "filter.repetition.enabled=false", "train.context=512", "train.micro_batch=2", "train.epochs=1",
        "train.lr=1e-3", "train.min_lr=1e-4",
        # The mix stage keeps only student rollouts cut off at length_multiple x the teacher's length; at
        # the default 1.5 a tiny student that happens to finish early leaves no mixed example at all
        # (the mixed and replay arms are then skipped), so the cap is set below the teacher's length.
        "mix.length_multiple=0.6",
        # Sample ids hash the teacher's name, here a path under pytest's numbered temp folder, so the draws
        # change from run to run; with 40 continuation tokens some folders (e.g. pytest-549) left the one
        # cut rollout's teacher continuation unfinished and no mixed example at all. 80 lets it finish.
        "mix.max_continuation_tokens=80", "mix.require_structure=false", "mix.require_correct=false",
        "mix.repetition.enabled=false", "eval.benchmarks=[{name: toy, format: toy, limit: 3}]",
        "eval.protocol={name: mini, temperature: 1.0, n: 2, max_tokens: 24}",
    ]
    return AblationPlan(config=None, seeds=[0], out=str(tmp_path / "abl"), overrides=overrides, log=lambda *_: None)


def _cands(n_prompts: int, k: int) -> dict[str, list[dict]]:
    """Scored-candidate stand-ins (only the fields selection reads), DAS score = a known number."""
    pools = {}
    for pool, temp in (("low", 0.6), ("high", 1.0)):
        pools[pool] = [{"id": f"{pool}-p{p}-{i}", "prompt_id": f"p{p}", "temperature": temp,
                        "das": {"score": (i * 7 + p) % k / k, "frac_teacher": i / k}} for p in range(n_prompts) for i in range(k)]
    pools["high"] = [c for c in pools["high"] if not (c["prompt_id"] == "p0" and c["id"].endswith(("-1", "-2", "-3")))]
    return pools


def test_t_interval_matches_the_textbook_value():
    m, lo, hi = t_interval([1.0, 2.0, 3.0])  # mean 2, sd 1, t(0.975, 2) = 4.3027
    assert m == 2.0 and hi - m == pytest.approx(4.3027 / 3**0.5, abs=1e-4) and m - lo == pytest.approx(hi - m)
    m, lo, hi = t_interval([0.5])
    assert m == 0.5 and math.isnan(lo) and math.isnan(hi)


# Two-sided 95% Student t quantiles t(0.975, df) for df = 1..30, as printed in textbook tables.
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042]


def test_t_quantiles_match_the_textbook_table():
    for df, t in enumerate(T975, start=1):
        assert round(t_quantile(0.975, df), 3) == t, df
    # One-sided 80% (the power quantile) and 99.5%, from the same tables; the normal limit.
    for p, df, t in ((0.8, 1, 1.376), (0.8, 5, 0.920), (0.8, 10, 0.879), (0.8, 30, 0.854), (0.995, 10, 3.169),
                     (0.9, 4, 1.533), (0.975, 60, 2.000), (0.975, 120, 1.980)):
        assert round(t_quantile(p, df), 3) == t, (p, df)
    assert t_quantile(0.975, 1e9) == pytest.approx(1.959964, abs=1e-5)
    assert t_quantile(0.2, 10) == pytest.approx(-t_quantile(0.8, 10))
    assert t_cdf(0.0, 3) == 0.5 and t_cdf(t_quantile(0.9, 7), 7) == pytest.approx(0.9, abs=1e-12)
    with pytest.raises(ValueError):
        t_quantile(1.0, 3)


def test_seeds_needed_and_halfwidth_seeds_match_hand_computed_values():
    # Paired t-test, alpha 0.05 two-sided, 80% power: effect size 0.5 SD needs 34 pairs, 1 SD needs 10
    # (the standard tables, e.g. G*Power's exact noncentral-t answer for d = 0.5 and d = 1).
    assert seeds_needed(sd=4.0, effect=2.0) == 34
    assert seeds_needed(sd=2.0, effect=2.0) == 10
    # By hand, sd 1, effect 2: n=4: (3.182 + 0.978)^2 / 4 = 4.33 > 4; n=5: (2.776 + 0.941)^2 / 4 = 3.45 <= 5.
    assert seeds_needed(sd=1.0, effect=2.0) == 5
    for sd, effect in ((3.3, 2.0), (7.0, 1.0), (0.4, 2.0)):  # the smallest n that meets the inequality
        n = seeds_needed(sd, effect)
        lhs = lambda k: (t_quantile(0.975, k - 1) + t_quantile(0.8, k - 1)) ** 2 * sd**2 / effect**2  # noqa: E731
        assert lhs(n) <= n and (n == 2 or lhs(n - 1) > n - 1)
    assert seeds_needed(sd=4.0, effect=2.0, power=0.9) > 34 and seeds_needed(sd=4.0, effect=2.0, alpha=0.01) > 34
    assert seeds_needed(0.0, 2.0) == 2 and seeds_needed(None, 2.0) is None
    # 95% CI half-width t(0.975, n-1) sd / sqrt(n): sd 2, h 2: n=6 gives 2.571 * 2 / 2.449 = 2.10, n=7 1.85.
    assert halfwidth_seeds(sd=2.0, h=2.0) == 7
    # sd 5, h 2: n=26 gives 2.060 * 5 / 5.099 = 2.02, n=27 2.056 * 5 / 5.196 = 1.98.
    assert halfwidth_seeds(sd=5.0, h=2.0) == 27
    # The same n seeds with that SD give an interval of at most h, one fewer a wider one.
    xs = [5.0 * (i % 2 * 2 - 1) for i in range(27)]
    sd = float(__import__("statistics").stdev(xs))
    n = halfwidth_seeds(sd, 2.0)
    half = lambda k: t_quantile(0.975, k - 1) * sd / k**0.5  # noqa: E731
    assert half(n) <= 2.0 < half(n - 1)
    m, lo, hi = t_interval([x / 10 for x in range(n)])
    assert hi - m == pytest.approx(half(n) * __import__("statistics").stdev([x / 10 for x in range(n)]) / sd)
    with pytest.raises(ValueError):
        seeds_needed(1.0, 0.0)
    with pytest.raises(ValueError):
        halfwidth_seeds(1.0, -1.0)


def test_seeds_needed_gives_the_power_asked_for_in_a_simulated_paired_t_test():
    """100,000 simulated paired experiments with a true difference of one SD: the two-sided t-test at
    alpha 0.05 rejects in >= 80% of them with seeds_needed's 10 seeds, clearly less with 9."""
    import numpy as np

    n = seeds_needed(sd=1.0, effect=1.0)
    rng = np.random.default_rng(0)

    def power(k: int) -> float:
        x = rng.normal(1.0, 1.0, (100_000, k))
        t = x.mean(1) / (x.std(1, ddof=1) / np.sqrt(k))
        return float((np.abs(t) > t_quantile(0.975, k - 1)).mean())

    assert n == 10 and power(n) >= 0.795 and power(n - 1) < 0.77


def test_reproduces_classifies_the_interval_against_the_papers_direction():
    assert reproduces((1.0, 0.5, 1.5), 1) == "yes"
    assert reproduces((-1.0, -1.5, -0.5), 1) == "opposite"
    assert reproduces((0.2, -0.1, 0.5), 1) == "not resolved"
    assert reproduces((0.2, 0.0, 0.4), 1) == "not resolved"  # touching 0 does not exclude it
    assert reproduces((-1.0, -1.5, -0.5), -1) == "yes" and reproduces((1.0, 0.5, 1.5), -1) == "opposite"
    assert reproduces((1.0, math.nan, math.nan), 1) == "not resolved"  # one seed: no interval
    assert reproduces(None, 1) == "not resolved"
    assert reproduces((1.0, 0.5, 1.5), None) == "-"


# Per-seed offsets (accuracy points) for the synthetic results below: mean 0, SD 1.2748; and its mirror.
NOISE = [0.0, 1.5, -1.5, 1.0, -1.0]
MIRROR = [-x for x in NOISE]


def _synthetic_per_seed(arms: dict[str, float], noisy: dict[str, list[float]]) -> dict[int, dict[str, dict]]:
    """Five seeds of every arm in ``arms`` (accuracy in points), the arms in ``noisy`` moved by their offsets."""
    return {s: {a: {"accuracy": (v + (noisy[a][s] if a in noisy else 0.0)) / 100, "kl": 10.0, "kl_per_token": 0.1,
                    "examples": 8, "steps": 4} for a, v in arms.items()} for s in range(5)}


def test_paper_tables_rows_verdicts_and_power_from_per_seed_results():
    arms = {"rs_low": 70.0, "rs_high": 73.0, "rs_low_high": 73.5, "rs_high_high": 73.0, "das_low": 68.0, "das_high": 73.2,
            "das_low_high": 75.0, "mixed_unmasked": 76.0, "mixed_masked": 72.0, "mixed_replay": 74.0,
            "mixed_masked_replay": 74.0}
    per_seed = _synthetic_per_seed(arms, noisy={"rs_high": NOISE, "das_high": NOISE, "rs_low_high": MIRROR})
    tables = paper_tables(per_seed)
    assert [t["title"] for t in tables] == [title for title, _ in PAPER_TABLES]
    rows = {(r["a"], r["b"]): r for t in tables for r in t["rows"]}
    assert [(r["a"], r["b"]) for r in tables[0]["rows"]] == [
        ("rs_high", "rs_low"), ("rs_low_high", "rs_high"), ("rs_low_high", "rs_low"), ("rs_low_high", "rs_high_high")]
    assert [(r["a"], r["b"]) for r in tables[1]["rows"]] == [
        ("das_low", "rs_low"), ("das_high", "rs_high"), ("das_low_high", "rs_low_high")]  # no naturalness arms ran
    assert [(r["a"], r["b"]) for r in tables[2]["rows"]] == [
        ("mixed_unmasked", "mixed_masked"), ("mixed_replay", "mixed_masked_replay"), ("mixed_replay", "mixed_unmasked")]
    # rs_high - rs_low = 3 + NOISE: mean 3, SD 1.27, 95% CI 3 +- 2.776 * 1.27 / sqrt 5 = [1.4, 4.6].
    m, lo, hi = rows["rs_high", "rs_low"]["accuracy"]
    assert m == pytest.approx(0.03) and lo == pytest.approx(0.03 - 2.776 * 0.012748 / 5**0.5, abs=1e-5)
    assert rows["rs_high", "rs_low"]["seeds"] == 5 and rows["rs_high", "rs_low"]["reproduces"] == "yes"
    assert rows["das_low", "rs_low"]["reproduces"] == "opposite"  # -2 in every seed
    assert rows["rs_low_high", "rs_high"]["reproduces"] == "not resolved"  # +0.5 - 2 NOISE
    assert rows["rs_low_high", "rs_low"]["reproduces"] == "yes"  # +3.5 + MIRROR
    assert rows["das_low_high", "rs_low_high"]["reproduces"] == "not resolved"  # +1.5 - MIRROR
    assert rows["das_high", "rs_high"]["reproduces"] == "yes"  # +0.2 in every seed (both noisy alike): zero width
    assert rows["rs_low_high", "rs_high_high"]["reproduces"] == "-" and rows["rs_low_high", "rs_high_high"]["direction"] is None
    assert rows["mixed_unmasked", "mixed_masked"]["reproduces"] == "yes"
    assert rows["mixed_replay", "mixed_masked_replay"]["reproduces"] == "not resolved"  # exactly 0
    assert rows["mixed_replay", "mixed_unmasked"]["reproduces"] == "opposite"

    pw = power_table(per_seed, effect=2.0, halfwidth=2.0)
    prow = {(r["a"], r["b"]): r for r in pw["rows"]}
    assert list(prow) == list(rows)
    sd = prow["rs_high", "rs_low"]["sd"]
    assert sd == pytest.approx(1.2748, abs=1e-4)
    # By hand: n=5: (2.776 + 0.941)^2 x 1.2748^2 / 2^2 = 5.6 > 5; n=6: (2.571 + 0.920)^2 x 0.406 = 4.95 <= 6.
    assert prow["rs_high", "rs_low"]["detect"] == seeds_needed(sd, 2.0) == 6
    # n=4: 3.182 x 1.2748 / 2 = 2.03 > 2; n=5: 2.776 x 1.2748 / 2.236 = 1.58.
    assert prow["rs_high", "rs_low"]["interval"] == halfwidth_seeds(sd, 2.0) == 5
    assert prow["das_low", "rs_low"]["sd"] == pytest.approx(0.0, abs=1e-9) and prow["das_low", "rs_low"]["detect"] == 2
    assert pw["seeds"] == 5 and pw["pooled_sd"] == pytest.approx(
        math.sqrt(sum(r["sd"] ** 2 for r in pw["rows"]) / len(pw["rows"])))

    md = markdown(aggregate(per_seed), paired(per_seed), {}, {"protocol": "the paper's (T=1.0)"}, tables, pw)
    for title, _ in PAPER_TABLES:
        assert f"{title} (accuracy points" in md
    assert "| rs_high - rs_low | 3.0 [1.4, 4.6] | 5 | +1.4 / +4.2 (50K T=1.0 vs 50K T=0.6) | + | yes |" in md
    assert "| das_low - rs_low | -2.0 [-2.0, -2.0] | 5 | +1.6 / +2.3 (50K each at T=0.6) | + | opposite |" in md
    assert "| rs_low_high - rs_high_high |" in md and "| none | - |" in md
    assert "| mixed_replay - mixed_masked_replay | 0.0 [0.0, 0.0] | 5 | +2.5 / +2.5 (7.7K mixed + 20K off-policy) | + | not resolved |" in md
    assert "| rs_high - rs_low | 5 | 1.27 | 6 | 5 | no (1 short) | yes |" in md
    assert "This run had 5 seeds: enough to detect a 2-point effect with 80% power on" in md
    assert "| mixed_masked_replay |" in md and "80.8 / 72.3 (7.7K mixed + 20K off-policy)" in md
    assert md.rstrip().endswith("Setup: protocol the paper's (T=1.0)")
    assert "Ceiling:" not in md  # no teacher measured
    ref = _synthetic_per_seed({"teacher": 80.0, "student": 50.0, "rs_low": 70.0, "das_low": 72.5}, noisy={})
    assert "Ceiling: teacher 80.0%, best trained arm das_low 72.5% (7.5 points below;" in markdown(aggregate(ref), [], {}, {})
    # Naturalness rows join Table 3 when those arms ran; one seed leaves every verdict unresolved.
    one = _synthetic_per_seed({**arms, "gnat_high": 70.0, "lnat_low_high": 71.0}, noisy={})
    one = {0: one[0]}
    t3 = paper_tables(one)[1]["rows"]
    assert [(r["a"], r["b"]) for r in t3][3:] == [("das_high", "gnat_high"), ("das_low_high", "lnat_low_high")]
    assert {r["reproduces"] for r in t3} == {"not resolved"}
    pw1 = power_table(one)
    assert all(r["sd"] is None and r["detect"] is None for r in pw1["rows"])
    assert "the power analysis needs at least 2 seeds" in power_markdown(pw1)


def test_power_only_reads_a_results_json(tmp_path, capsys):
    import ablation

    per_seed = _synthetic_per_seed({"rs_low": 70.0, "rs_high": 73.0}, noisy={"rs_high": NOISE})
    path = tmp_path / "ablation.json"
    path.write_text(json.dumps(ablation._jsonable({"per_seed": per_seed, "info": {"seeds": [0, 1, 2, 3, 4]}})), encoding="utf-8")
    assert ablation.main(["--power-only", str(path), "--effect", "1", "--halfwidth", "3"]) == 0
    out = capsys.readouterr().out
    sd = 1.2748
    assert f"| rs_high - rs_low | 5 | 1.27 | {seeds_needed(sd, 1.0)} | {halfwidth_seeds(sd, 3.0)} |" in out
    assert "seeds to detect 1 points (80% power)" in out and "±3-point 95% CI" in out
    path.write_text("{not json", encoding="utf-8")
    assert ablation.main(["--power-only", str(path)]) == 2
    assert str(path) in capsys.readouterr().err


def test_paper_protocol_sets_the_eval_protocol_and_nothing_else():
    quick = ["eval.protocol={name: demo, temperature: 0.6, top_p: 0.95, n: 4, max_tokens: 320}", "eval.protocol.n=2"]
    base = seed_config(AblationPlan(overrides=quick), 3)
    paper = seed_config(AblationPlan(overrides=quick, paper_protocol=True), 3)
    p = paper.eval.protocol
    assert (p.name, p.temperature, p.top_p, p.n, p.max_tokens, p.seed) == ("paper", 1.0, 1.0, 16, 320, 3)
    assert seed_config(AblationPlan(overrides=quick, paper_protocol=True, samples=8), 3).eval.protocol.n == 8
    assert seed_config(AblationPlan(overrides=quick, samples=8), 3).eval.protocol.temperature == 0.6
    assert paper.model_dump(exclude={"eval"}) == base.model_dump(exclude={"eval"})
    assert base.eval.protocol.temperature == 0.6 and base.eval.protocol.n == 2
    with pytest.raises(ValueError):
        seed_config(AblationPlan(samples=0), 3)


def test_training_prompts_of_a_toy_and_of_a_file_config(tmp_path):
    from ablation_lib import training_prompts

    from dasd.config import load_config

    assert training_prompts(load_config(None, ["data.toy.n_train=24"])) == 24
    (tmp_path / "p.jsonl").write_text('{"prompt": "1 + 1?", "answer": "2"}\n', encoding="utf-8")
    assert training_prompts(load_config(None, [f"data.prompts={tmp_path / 'p.jsonl'}", "data.limit=600"])) == \
        f"600 of {tmp_path / 'p.jsonl'}"
    assert training_prompts(load_config(None, [f"data.prompts={tmp_path / 'p.jsonl'}"])).startswith("all of ")


def test_an_unknown_arm_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown arm.*das_lo.*the arms are rs_low"):
        AblationPlan(arms=["das_lo", "rs_low"])
    assert AblationPlan(arms=["rs_low"]).wants("rs_low") and not AblationPlan(arms=["rs_low"]).wants("das_low")
    assert AblationPlan().wants("mixed_masked")
    # The temperature-order control is trained only when named.
    assert not AblationPlan().wants("das_high_low") and AblationPlan(arms=["das_high_low"]).wants("das_high_low")


def test_arms_have_equal_budgets_and_the_right_selections():
    pools = _cands(5, 4)
    prompts = eligible_prompts(pools, 2)
    assert prompts == ["p1", "p2", "p3", "p4"]  # p0 has a single T_high candidate left
    arms = arm_data(pools, prompts, per_prompt=2, seed=3)
    assert list(arms) == [*(a for a in ARMS if not a.startswith("mixed")), "das_high_low"]
    # The order control: das_low_high's very stages, T_high first.
    assert arms["das_high_low"] == arms["das_low_high"][::-1]
    for name, stages in arms.items():
        assert sum(len(s) for s in stages) == 8, name
        assert len(stages) == (1 if name in ("rs_low", "rs_high", "das_low", "das_high") else 2), name
    by_score = lambda xs: sorted((x["prompt_id"], x["das"]["score"]) for x in xs)  # noqa: E731
    for pool in ("low", "high"):  # DAS keeps each prompt's two best scores
        best = [(p, s) for p in prompts for s in sorted((c["das"]["score"] for c in pools[pool] if c["prompt_id"] == p), reverse=True)[:2]]
        assert by_score(arms[f"das_{pool}"][0]) == sorted(best)
    assert by_score(arms["das_low_high"][0]) == sorted((p, s) for p, s in by_score(arms["das_low"][0]) if s == max(
        x["das"]["score"] for x in pools["low"] if x["prompt_id"] == p))
    # The control splits rs_high's very examples into two stages, one per prompt in each.
    hh = arms["rs_high_high"]
    assert sorted(x["id"] for x in hh[0] + hh[1]) == sorted(x["id"] for x in arms["rs_high"][0])
    assert sorted(x["prompt_id"] for x in hh[0]) == sorted(x["prompt_id"] for x in hh[1]) == prompts
    # Random selection is seeded: another seed draws differently somewhere, the same seed identically.
    assert arm_data(pools, prompts, 2, 3)["rs_low"] == arms["rs_low"]
    assert any(arm_data(pools, prompts, 2, s)["rs_low"] != arms["rs_low"] for s in range(4, 10))


def _with_naturalness(pools: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """Give every candidate a known global and local naturalness (different rankings from DAS's)."""
    out = {}
    for pool, cands in pools.items():
        out[pool] = [{**c, "naturalness": {"global": -((i * 3) % 5) / 5, "local": -((i * 2) % 7) / 7}}
                     for i, c in enumerate(cands)]
    return out


def test_naturalness_arms_keep_the_budget_and_the_most_natural():
    pools = _with_naturalness(_cands(5, 4))
    prompts = eligible_prompts(pools, 2)
    arms = arm_data(pools, prompts, per_prompt=2, seed=3, naturalness=True)
    assert set(NATURALNESS_ARMS) <= set(arms) and set(arm_data(pools, prompts, 2, 3)) & set(NATURALNESS_ARMS) == set()
    for name in NATURALNESS_ARMS:
        assert sum(len(s) for s in arms[name]) == 8, name
        assert len(arms[name]) == (1 if name.endswith("_high") and "low" not in name else 2), name
    for tag, key in (("gnat", "global"), ("lnat", "local")):
        for p in prompts:
            best = sorted((c["naturalness"][key] for c in pools["high"] if c["prompt_id"] == p), reverse=True)[:2]
            got = sorted((c["naturalness"][key] for c in arms[f"{tag}_high"][0] if c["prompt_id"] == p), reverse=True)
            assert got == best, (tag, p)
    shares = teacher_shares(pools, prompts, 2, 3, naturalness=True)
    assert set(shares["low"]) == {"all", "random", "das", "global_naturalness", "local_naturalness"}
    agg = {pool: {k: (v, v, v) if v is not None else None for k, v in e.items()} | {"seeds": 1} for pool, e in shares.items()}
    table = markdown({}, [], agg, {})
    assert "| pool | all candidates | random-selected | DAS-selected | global-naturalness-selected | local-naturalness-selected | seeds |" in table


def test_replay_arm_data_is_the_pipelines_draw():
    from dasd.rules.mixing import ReplayConfig, replay_examples

    mixed = [{"id": f"m{i}", "messages": [], "prefix_chars": 4} for i in range(3)]
    off = [{"id": f"o{i}", "messages": [], "prefix_chars": 0} for i in range(20)]
    data = replay_data(mixed, off, 20 / 7.7, seed=2)
    assert data == replay_examples(mixed, off, ReplayConfig(ratio=20 / 7.7, seed=2))[0]
    assert data[:3] == mixed and len(data) == 3 + 8 and len({e["id"] for e in data}) == 11


def test_results_record_paths_relative_to_the_repository():
    root = Path(__file__).resolve().parents[1]
    assert relative_path(root / "src" / "dasd" / "data" / "toy" / "teacher") == "src/dasd/data/toy/teacher"
    assert relative_path("/elsewhere/model") == "/elsewhere/model"
    import re

    for f in (root / "benchmarks" / "results").glob("ablation*"):
        text = f.read_text(encoding="utf-8")
        assert str(root) not in text and not re.search(r"(?<![\w.])/(work|home|tmp|Users|root)/", text), f.name


def test_aggregate_and_paired_differences():
    per_seed = {s: {"rs_low": {"accuracy": 0.5 + 0.1 * s, "kl": 2.0, "kl_per_token": 0.1, "examples": 8, "steps": 4},
                    "das_low": {"accuracy": 0.6 + 0.1 * s, "kl": 1.0 + s, "kl_per_token": 0.05, "examples": 8, "steps": 4}}
                for s in range(3)}
    agg = aggregate(per_seed)
    assert list(agg) == ["rs_low", "das_low"]
    assert agg["rs_low"]["accuracy"][0] == pytest.approx(0.6) and agg["rs_low"]["seeds"] == 3
    diff = next(r for r in paired(per_seed) if r["a"] == "das_low")
    m, lo, hi = diff["accuracy"]  # the same +0.1 in every seed: a zero-width interval
    assert m == pytest.approx(0.1) and lo == pytest.approx(0.1) and hi == pytest.approx(0.1)
    assert diff["kl"][0] == pytest.approx(0.0)


@pytest.mark.slow
def test_every_arm_is_trained_and_measured_and_a_rerun_resumes(tmp_path, nudged_lm):
    plan = _plan(tmp_path, nudged_lm)
    rep = run_ablation(plan)
    arms = rep["per_seed"][0]
    assert set(arms) == {"student", "teacher", *ARMS}
    single = {a: arms[a] for a in ARMS if not a.startswith("mixed")}
    # Equal budget: every stages-1/2 arm trains on the same number of examples for the same steps.
    assert len({m["examples"] for m in single.values()}) == 1 and len({m["steps"] for m in single.values()}) == 1
    assert arms["mixed_masked"]["steps"] == arms["mixed_unmasked"]["steps"] >= 1
    for label, m in arms.items():
        assert 0.0 <= m["accuracy"] <= 1.0, label
        assert math.isfinite(m["kl"]) and math.isfinite(m["kl_per_token"]), label
    # The teacher's KL to itself is exactly zero (same text, same engine, same scores).
    assert arms["teacher"]["kl"] == pytest.approx(0.0, abs=1e-6)
    for label in ("student", "teacher", *ARMS):
        row = next(line for line in rep["markdown"].splitlines() if line.startswith(f"| {label} |"))
        assert "nan" not in row and "n/a" not in row
    assert "| low |" in rep["markdown"] and "| high |" in rep["markdown"]
    # The arm models are distinct trainings: low->high has two stages, the others one.
    root = Path(plan.out) / "seed-0" / "arms"
    assert (root / "das_low_high" / "train" / "stage2" / "final" / "config.json").is_file()
    assert (root / "rs_low" / "train" / "single" / "final" / "config.json").is_file()
    # Re-running finds everything on disk: same numbers, nothing re-measured.
    stamps = {p: p.stat().st_mtime_ns for p in root.glob("*/metrics.json")}
    again = run_ablation(plan)
    assert again["per_seed"][0] == arms
    assert {p: p.stat().st_mtime_ns for p in root.glob("*/metrics.json")} == stamps


@pytest.mark.slow
def test_script_writes_the_table_and_json(tmp_path, nudged_lm):
    import ablation

    plan = _plan(tmp_path, nudged_lm)
    out = tmp_path / "results" / "ablation.md"
    arms = ["rs_low", "das_low", "rs_high"]  # --arms: only these are trained (the mixed ones would need das_low_high)
    args = ["--seeds", "0", "--out", plan.out, "--results", str(out), "--no-references",
            "--paper-protocol", "--samples", "3", "--arms", *arms, "--set", *plan.overrides]
    assert ablation.main(args) == 0
    text = out.read_text(encoding="utf-8")
    assert text.startswith("# Ablation: the paper's comparisons with configs/demo.yaml\n")
    assert "training prompts 4," in text
    assert "protocol the paper's (T=1.0, top_p 1.0, 3 samples per held-out problem, avg@3)" in text
    assert "eval protocol T=1.0 top_p=1.0 n=3 max_tokens=24" in text
    assert "Table 1: temperature schedule vs single temperature (RS)" in text and "Table 5" not in text
    for arm in arms:
        assert f"| {arm} |" in text
    assert "| das_high |" not in text and not (Path(plan.out) / "seed-0" / "arms" / "das_high").exists()
    data = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    assert set(data["aggregate"]) == set(arms)


@pytest.mark.slow
def test_optional_arms_naturalness_and_replay(tmp_path, nudged_lm):
    """The naturalness-baseline arms train at the stages-1/2 budget; mixed_replay trains on the mixed
    examples plus the replayed das_low_high T_high examples (more steps than mixed_unmasked), and
    mixed_masked_replay on the same examples with the student prefix masked (the replayed ones whole).
    Measured under the paper protocol (T=1.0, top_p 1.0, here 2 samples per problem)."""
    from dataclasses import replace

    plan = replace(_plan(tmp_path, nudged_lm), naturalness=True, replay=2.0, references=False, paper_protocol=True,
                   samples=2)
    rep = run_ablation(plan)
    arms = rep["per_seed"][0]
    assert set(NATURALNESS_ARMS) <= set(arms) and set(REPLAY_ARMS) <= set(arms)
    single = [a for a in (*ARMS, *NATURALNESS_ARMS) if not a.startswith("mixed")]
    assert len({arms[a]["examples"] for a in single}) == 1 and len({arms[a]["steps"] for a in single}) == 1
    mixed_n = arms["mixed_unmasked"]["examples"]
    assert arms["mixed_replay"]["examples"] == mixed_n + min(2 * mixed_n, arms["das_low_high"]["examples"] // 2)
    assert arms["mixed_replay"]["steps"] > arms["mixed_unmasked"]["steps"]
    from dasd.store import RunStore

    pool = list(RunStore.open(Path(plan.out) / "seed-0" / "pool").read("score", "pool-T1"))
    assert pool and all(c["naturalness"]["local"] is not None for c in pool)
    assert "| high | " in rep["markdown"] and "local-naturalness-selected" in rep["markdown"]
    assert {r["a"] for r in rep["paired"]} >= {"mixed_replay", "lnat_low_high"}
    # The masked replay arm: the same examples and steps, the mask on; the loss tokens it loses are
    # exactly the student prefixes of the mixed examples (what mixed_masked loses against
    # mixed_unmasked), so the replayed examples (no prefix) are trained whole.
    assert arms["mixed_masked_replay"]["examples"] == arms["mixed_replay"]["examples"]
    assert arms["mixed_masked_replay"]["steps"] == arms["mixed_replay"]["steps"]
    root = Path(plan.out) / "seed-0" / "arms"
    done = {a: json.loads((root / a / "train" / "stage3_mixed" / "done.json").read_text(encoding="utf-8"))
            for a in ("mixed_unmasked", "mixed_masked", "mixed_replay", "mixed_masked_replay")}
    assert [done[a]["recipe"]["mask_prefix"] for a in done] == [False, True, False, True]
    loss = {a: d["data_counts"]["loss_tokens"] for a, d in done.items()}
    assert loss["mixed_unmasked"] > loss["mixed_masked"]
    assert loss["mixed_replay"] - loss["mixed_masked_replay"] == loss["mixed_unmasked"] - loss["mixed_masked"]
    assert any(r["a"] == "mixed_replay" and r["b"] == "mixed_masked_replay" for r in rep["paired"])
    t5 = next(t for t in rep["tables"] if t["title"].startswith("Table 5"))
    assert [(r["a"], r["b"]) for r in t5["rows"]] == [
        ("mixed_unmasked", "mixed_masked"), ("mixed_replay", "mixed_masked_replay"), ("mixed_replay", "mixed_unmasked")]
    assert "| mixed_replay - mixed_masked_replay |" in rep["markdown"] and "Power (paired accuracy" in rep["markdown"]
    assert "protocol the paper's (T=1.0, top_p 1.0, 2 samples per held-out problem, avg@2)" in rep["markdown"]
    assert json.loads((root / "rs_low" / "metrics.json").read_text(encoding="utf-8"))["key"]["protocol"]["name"] == "paper"


def test_styles_script_reads_back_each_arms_responses_by_style(tmp_path, tiny_lm_dir, capsys):
    """ablation_styles.py measures each arm's final model and prints one line per arm whose style
    counts add up to the problems asked for; a missing arm is one clear line."""
    import shutil

    import ablation_styles

    for arm in ("rs_high", "das_high"):
        shutil.copytree(tiny_lm_dir, tmp_path / "seed-3" / "arms" / arm / "train" / "single" / "final")
    assert ablation_styles.main(["--out", str(tmp_path), "--seed", "3", "--arms", "rs_high", "das_high", "--problems", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("arm | accuracy") and [ln.split(" | ")[0] for ln in lines[1:]] == ["rs_high", "das_high"]
    for ln in lines[1:]:
        counts = [int(part.split()[1]) for part in ln.split(" | ")[2].split(", ")]
        assert sum(counts) == 3
    with pytest.raises(SystemExit, match="no such trained arm"):
        ablation_styles.main(["--out", str(tmp_path), "--seed", "3", "--arms", "rs_low", "--problems", "3"])


def test_seeds_draw_their_own_toy_prompts_unless_told_to_keep_the_configs():
    """By default a seed draws its toy prompts with the seed; ``same_prompts`` keeps the config's
    ``data.toy.seed`` (configs/column.yaml's 1) and still varies every other random knob."""
    column = str(Path(__file__).resolve().parents[1] / "configs" / "column.yaml")
    drawn = seed_config(AblationPlan(config=column), 3)
    kept = seed_config(AblationPlan(config=column, same_prompts=True), 3)
    assert drawn.data.toy.seed == 3 and kept.data.toy.seed == 1
    assert kept.sample.seed == drawn.sample.seed == kept.train.seed == 3
    assert kept.model_dump(exclude={"data"}) == drawn.model_dump(exclude={"data"})


def test_the_held_out_override_keeps_the_configs_toy_world():
    """``--test N`` / ``--quick`` evaluate on the config's own world: the column world's benchmark on
    configs/column.yaml (a chain-world benchmark there is refused at load), the chain world's on the demo's."""
    import ablation

    from dasd.config import load_config

    root = Path(__file__).resolve().parents[1] / "configs"
    for config, world, name in ((root / "column.yaml", "column", "column"), (root / "demo.yaml", "chain", "toy")):
        over = ablation.toy_benchmark(str(config), 7)
        [bench] = load_config(str(config), [over]).eval.benchmarks
        assert (bench.name, bench.format, bench.world, bench.limit) == (name, "toy", world, 7)


def test_earlier_results_pool_into_this_runs_seeds_and_are_refused_when_measured_otherwise(tmp_path, capsys):
    import ablation
    from ablation_lib import contrast, load_earlier, pool_earlier

    from dasd.errors import InputError

    info = {"protocol": "the paper's (T=1.0, top_p 1.0, 4 samples per held-out problem, avg@4)", "k": 6,
            "eval protocol": "T=1.0 top_p=1.0 n=4 max_tokens=96", "held-out problems": 200,
            "teacher": "toy:column-teacher (weights sha256 236892bbc1)", "student": "x (weights sha256 5c16c543c7)"}
    earlier = _synthetic_per_seed({"das_low_high": 34.0, "das_high_low": 29.0, "rs_low": 18.0}, noisy={"das_high_low": NOISE})
    theirs = {**info, "teacher": "DIR/teacher (weights sha256 236892bbc1)"}  # the same weights under another path
    path = tmp_path / "earlier.json"
    path.write_text(json.dumps(ablation._jsonable({"per_seed": earlier, "info": theirs})), encoding="utf-8")
    mine = {4: {"das_low_high": {"accuracy": 0.50, "kl": 1.0}, "das_high_low": {"accuracy": 0.40, "kl": 1.0}},
            7: {"das_low_high": {"accuracy": 0.36, "kl": 1.0}, "das_high_low": {"accuracy": 0.30, "kl": 1.0}}}
    pooled = pool_earlier(mine, load_earlier(info, [str(path)]))
    assert list(pooled) == [0, 1, 2, 3, 4, 7]
    assert pooled[4]["das_low_high"]["accuracy"] == 0.50  # this run's measurement wins over the earlier one
    assert pooled[4]["rs_low"] == earlier[4]["rs_low"]  # an arm not run here comes from the earlier run
    diffs = [(34.0 - 29.0 - NOISE[s]) / 100 for s in range(4)] + [0.10, 0.06]
    row = contrast(pooled, "das_low_high", "das_high_low")
    assert row["seeds"] == 6 and row["accuracy_diffs"] == pytest.approx(diffs)
    assert row["accuracy"] == pytest.approx(t_interval(diffs))
    for key, other in [("eval protocol", "T=1.0 top_p=1.0 n=16 max_tokens=96"), ("held-out problems", 100),
                       ("student", "x (weights sha256 0000000000)")]:
        path.write_text(json.dumps({"per_seed": {}, "info": {**info, key: other}}), encoding="utf-8")
        with pytest.raises(InputError, match=f"{path}: its {key!r}|{path}: its {key} is"):
            load_earlier(info, [str(path)])
    # from the command line: refused in one line before any seed is run
    path.write_text(json.dumps({"per_seed": {}, "info": {"eval protocol": "T=0.6 top_p=0.95 n=99 max_tokens=1"}}),
                    encoding="utf-8")
    assert ablation.main(["--with", str(path), "--out", str(tmp_path / "abl"), "--results", str(tmp_path / "r.md")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: its 'eval protocol' is") and not (tmp_path / "abl").exists()
