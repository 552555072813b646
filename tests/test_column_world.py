"""benchmarks/column_world.py: what the column world's ablation arms picked and learnt is measured
on the right models (each arm's last stage) and the right candidates (the ablation's own selection)."""

from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from dasd.toy.column import make_sum_problems, response, style_of  # noqa: E402


def test_arm_styles_measures_each_arms_last_stage(tmp_path, tiny_lm_dir):
    """``styles`` finds every arm's final model (the last stage of a two-stage arm), skips an arm that
    has none, and writes one entry per arm and seed with the style shares and per-style accuracy."""
    import shutil

    from column_world import arm_styles

    arms = tmp_path / "abl" / "seed-0" / "arms"
    shutil.copytree(tiny_lm_dir, arms / "rs_low" / "train" / "single" / "final")
    shutil.copytree(tiny_lm_dir, arms / "das_low_high" / "train" / "stage2" / "final")
    (arms / "das_low_high" / "train" / "stage1").mkdir()  # no final: the later stage is the arm's model
    (arms / "das_high" / "train" / "single").mkdir(parents=True)  # unfinished arm
    lines: list[str] = []
    out = arm_styles(tmp_path / "abl", [0], problems=3, log=lines.append)
    assert set(out) == {"rs_low", "das_low_high"} and len(lines) == 2
    for arm in out.values():
        m = arm[0]
        assert 0.0 <= m["accuracy"] <= 1.0 and 0.0 <= m["column_share"] <= 1.0
        # A random model writes no column lines: no column answer, so no column accuracy.
        assert m["column_share"] == 0.0 and m["column_accuracy"] is None


def test_column_shares_count_the_selected_styles():
    """DAS keeps the best-scored candidates, random sampling a seeded draw; the shares count the column
    answers among them, on the prompts with enough candidates in both pools only."""
    from column_world import column_shares

    rng = random.Random(0)
    pools: dict[str, list[dict]] = {"low": [], "high": []}
    problems = make_sum_problems(20, 0, "train")
    for pool in pools:
        for i, p in enumerate(problems):
            for j, style in enumerate(("column", "oneshot", "oneshot", "oneshot")):
                # The column answer scores highest, as DAS scores it when the student never saw columns.
                pools[pool].append({"id": f"{pool}-{i}-{j}", "prompt_id": f"p{i}", "text": response(p, style, rng, 0.0),
                                    "das": {"score": 1.0 if style == "column" else 0.1 * j}})
    pools["high"] = [c for c in pools["high"] if c["prompt_id"] != "p0"]  # p0: not eligible
    shares = column_shares(pools, 2, 0)
    assert shares["low"]["all"] == shares["high"]["all"] == 0.25
    assert shares["low"]["das"] == shares["high"]["das"] == 0.5  # the column answer and the best one-shot one
    from ablation_lib import select

    picked = select(pools["low"], [f"p{i}" for i in range(1, 20)], "random", 2, 0)
    assert shares["low"]["random"] == round(sum(style_of(c["text"]) == "column" for c in picked) / len(picked), 4)


def test_merge_styles_keeps_what_was_not_measured_again():
    from column_world import merge_styles

    first = merge_styles(None, {0: {"low": {"das": 0.5}}}, {"rs_low": {0: {"accuracy": 0.2}}, "das_low": {0: {"accuracy": 0.3}}})
    assert first == {"selections": {"0": {"low": {"das": 0.5}}},
                     "arms": {"rs_low": {"0": {"accuracy": 0.2}}, "das_low": {"0": {"accuracy": 0.3}}}}
    second = merge_styles(first, {1: {"low": {"das": 0.4}}}, {"rs_low": {0: {"accuracy": 0.25}, 1: {"accuracy": 0.1}}})
    assert second["selections"] == {"0": {"low": {"das": 0.5}}, "1": {"low": {"das": 0.4}}}
    assert second["arms"] == {"rs_low": {"0": {"accuracy": 0.25}, "1": {"accuracy": 0.1}}, "das_low": {"0": {"accuracy": 0.3}}}
    assert first["arms"]["rs_low"]["0"]["accuracy"] == 0.2  # the old content is not changed in place
