"""TrainConfig validation at load, the paper's recipe values, and the `python -m dasd.train` entry point."""

from __future__ import annotations

import json

import pytest
import yaml
from pydantic import ValidationError

from dasd.train.__main__ import main
from dasd.train.config import TrainConfig
from dasd.train.recipes import paper_recipe
from dasd.train.schedule import lr_at

from .conftest import make_pool


def test_paper_recipe_values():
    c = paper_recipe()
    assert c.base_model == "Qwen/Qwen3-4B-Instruct-2507"
    assert (c.lr, c.min_lr, c.warmup_ratio, c.betas, c.eps) == (5e-5, 1e-5, 0.1, (0.9, 0.95), 1e-8)
    assert (c.weight_decay, c.clip, c.epochs, c.global_batch, c.context, c.bf16) == (0.1, 1.0, 6.0, 64, 65536, True)
    assert [(s.name, s.init, s.optional) for s in c.stages] == [
        ("stage1_low", "base", False), ("stage2_high", "previous", False), ("stage3_mixed", "previous", True)]
    assert c.resolve_batch(8).grad_accum == 8 and c.resolve_batch(16).grad_accum == 4
    with pytest.raises(ValueError, match="global_batch 64"):
        c.resolve_batch(3)


@pytest.mark.parametrize("bad, msg", [
    ({"stages": [{"name": "a", "data": "x", "init": "previous"}]}, "first stage"),
    ({"min_lr": 1e-3, "lr": 1e-4}, "min_lr"),
    ({"stages": [{"name": "a b", "data": "x", "init": "base"}]}, "letters, digits"),
    ({"stages": [{"name": "a", "data": "x", "init": "base"}, {"name": "a", "data": "y"}]}, "unique"),
    ({"lerning_rate": 1e-4}, "Extra inputs"),
    # a stage's own epochs: 0 or negative once trained one step silently (total_steps' floor of 1)
    ({"stages": [{"name": "a", "data": "x", "init": "base", "epochs": 0}]}, r"stages\.0\.epochs"),
    ({"stages": [{"name": "a", "data": "x", "init": "base", "epochs": -2}]}, r"stages\.0\.epochs"),
])
def test_invalid_configs_are_rejected_at_load(bad, msg):
    values = {"base_model": "m", "stages": [{"name": "a", "data": "x", "init": "base"}], **bad}
    with pytest.raises(ValidationError, match=msg):
        TrainConfig.model_validate(values)


def test_schedule_warmup_then_cosine_to_min_lr():
    lrs = [lr_at(s, 20, 5e-5, 1e-5, 0.1) for s in range(20)]
    assert lrs[0] == pytest.approx(2.5e-5) and lrs[1] == pytest.approx(5e-5)
    assert lrs[2] == pytest.approx(5e-5) and lrs[-1] == pytest.approx(1e-5)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:]))


def test_module_entry_point_runs_a_train_section_and_reports_bad_configs(tiny_lm_dir, tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in make_pool(4)))
    cfg = {"train": {"base_model": tiny_lm_dir, "context": 256, "report_to": "none",
                     "stages": [{"name": "only", "data": str(data), "init": "base", "max_steps": 1}]}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "only" / "final" / "config.json").is_file()

    cfg["train"]["micro_bach"] = 2
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["--config", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "o2")]) == 2
    assert "bad.yaml: field 'micro_bach'" in capsys.readouterr().err


def test_mixed_stage_continues_where_stage_two_ends():
    """Stage 3 runs at a constant lr equal to min_lr, the lr stage 2's cosine ends on; stages 1-2 use
    the full schedule. A run config without `train.stages` gets the same, from its own min_lr."""
    from pathlib import Path

    from dasd.config import load_config

    demo = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
    c = paper_recipe()
    s1, s2, s3 = (c.for_stage(s) for s in c.stages)
    assert (s1["lr"], s1["warmup_ratio"]) == (s2["lr"], s2["warmup_ratio"]) == (5e-5, 0.1)
    assert (s3["lr"], s3["min_lr"], s3["warmup_ratio"]) == (1e-5, 1e-5, 0.0)
    total = 40
    assert lr_at(total - 1, total, s2["lr"], s2["min_lr"], s2["warmup_ratio"]) == pytest.approx(1e-5)
    assert {lr_at(k, 7, s3["lr"], s3["min_lr"], s3["warmup_ratio"]) for k in range(7)} == {1e-5}
    assert paper_recipe(min_lr=2e-5).for_stage(paper_recipe(min_lr=2e-5).stages[2])["lr"] == 2e-5

    def tail_lr(overrides):
        t = load_config(demo, overrides).train
        return t.for_stage(t.stages[2])["lr"]

    assert tail_lr(["train.min_lr=1e-5"]) == 1e-5
    assert tail_lr([]) == 2e-4  # the demo's min_lr
    restart = load_config(demo, ["train.min_lr=0"]).train
    assert restart.for_stage(restart.stages[2])["lr"] == restart.lr  # min_lr 0: the full schedule again
    with pytest.raises(ValidationError, match="constant_at_min_lr"):
        TrainConfig(base_model="m", stages=[{"name": "a", "data": "x", "init": "base", "constant_at_min_lr": True,
                                              "lr": 1e-4}])
