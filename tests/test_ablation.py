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
    ARMS, NATURALNESS_ARMS, AblationPlan, aggregate, arm_data, eligible_prompts, markdown, paired, relative_path,
    replay_data, run_ablation, t_interval, teacher_shares,
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
        "mix.max_continuation_tokens=40", "mix.require_structure=false", "mix.require_correct=false",
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
    m, lo, hi = t_interval([1.0, 2.0, 3.0])  # mean 2, sd 1, t(0.975, 2) = 4.303
    assert m == 2.0 and hi - m == pytest.approx(4.303 / 3**0.5) and m - lo == pytest.approx(hi - m)
    m, lo, hi = t_interval([0.5])
    assert m == 0.5 and math.isnan(lo) and math.isnan(hi)


def test_arms_have_equal_budgets_and_the_right_selections():
    pools = _cands(5, 4)
    prompts = eligible_prompts(pools, 2)
    assert prompts == ["p1", "p2", "p3", "p4"]  # p0 has a single T_high candidate left
    arms = arm_data(pools, prompts, per_prompt=2, seed=3)
    assert list(arms) == [a for a in ARMS if not a.startswith("mixed")]
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
    args = ["--seeds", "0", "--out", plan.out, "--results", str(out), "--no-mixed", "--no-references", "--set", *plan.overrides]
    assert ablation.main(args) == 0
    text = out.read_text(encoding="utf-8")
    single = [a for a in ARMS if not a.startswith("mixed")]
    for arm in single:
        assert f"| {arm} |" in text
    data = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    assert set(data["aggregate"]) == set(single)


@pytest.mark.slow
def test_optional_arms_naturalness_and_replay(tmp_path, nudged_lm):
    """The naturalness-baseline arms train at the stages-1/2 budget; mixed_replay trains on the mixed
    examples plus the replayed das_low_high T_high examples (more steps than mixed_unmasked)."""
    from dataclasses import replace

    plan = replace(_plan(tmp_path, nudged_lm), naturalness=True, replay=2.0, references=False)
    rep = run_ablation(plan)
    arms = rep["per_seed"][0]
    assert set(NATURALNESS_ARMS) <= set(arms) and "mixed_replay" in arms
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
