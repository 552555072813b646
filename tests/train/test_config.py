"""TrainConfig validation at load, the paper's recipe values, and the `python -m dasd.train` entry point."""

from __future__ import annotations

import json
from pathlib import Path

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

    capsys.readouterr()
    cfg["train"]["micro_bach"] = 2
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["--config", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "o2")]) == 2
    line = yaml.safe_dump(cfg).splitlines().index("  micro_bach: 2") + 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'bad.yaml'}:{line}: unknown key 'train.micro_bach' (allowed here: ")
    assert err.endswith("did you mean 'micro_batch'?\n") and err.count("\n") == 1
    assert not (tmp_path / "o2").exists()

    text = yaml.safe_dump({**cfg["train"], "context": 4})  # the keys alone, no train: section
    (tmp_path / "keys.yaml").write_text(text)
    at = {line.partition(":")[0]: i for i, line in enumerate(text.splitlines(), 1)}
    assert main(["--config", str(tmp_path / "keys.yaml"), "--out", str(tmp_path / "o2")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: {tmp_path / 'keys.yaml'}:{at['context']}: context: Input should be greater than or equal to 8 (got 4)",
        f"{tmp_path / 'keys.yaml'}:{at['micro_bach']}: unknown key 'micro_bach' (allowed here: "
        + ", ".join(TrainConfig.model_fields) + "); did you mean 'micro_batch'?"]


SHIPPED = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("name", ["demo.yaml", "dasd-4b.yaml"])
def test_module_entry_point_reads_a_pipeline_configs_train_section_as_dasd_train_does(name, tmp_path, capsys):
    """`python -m dasd.train --config configs/demo.yaml` stopped at 'base_model required' (the dasd-4b
    config at 'stages required'): it read the train section without the defaults a run gives it. It
    takes the train section as `dasd train` does (base_model from student.model, the paper's stages),
    a `toy:` model resolved to its directory; the paper's stages read the run's named pools, which
    exist only in a run, so it stops in one line before anything starts, saying to use `dasd train`."""
    from dasd.config import load_config
    from dasd.runs import resolve_model
    from dasd.toy.build import default_toy_dir
    from dasd.train.__main__ import load_config as load_train_config

    path = SHIPPED / name
    run = load_config(path)
    cfg = load_train_config(path)
    assert cfg == run.train.model_copy(update={"base_model": resolve_model(run.train.base_model)})
    assert [(s.name, s.data, s.init, s.optional) for s in cfg.stages] == [
        ("stage1_low", "low", "base", False), ("stage2_high", "high", "previous", False),
        ("stage3_mixed", "mixed+replay", "previous", True)]
    if name == "demo.yaml":
        assert cfg.base_model == str(default_toy_dir("chain") / "student")
        assert (cfg.context, cfg.epochs, cfg.lr, cfg.save_every) == (1024, 8, 2e-3, 25)
    else:
        assert cfg.base_model == "Qwen/Qwen3-4B-Instruct-2507"
        assert (cfg.context, cfg.global_batch, cfg.lr, cfg.bf16, cfg.save_every) == (65536, 64, 5e-5, True, 500)

    assert main(["--config", str(path), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == (
        f"error: {path}: stage 'stage1_low': data 'low' is not a file; here a stage's data is a chat JSONL path "
        "(named pools such as 'low', 'high', 'mixed' exist only in a pipeline run: `dasd train -c CONFIG` trains "
        "on them)\n")
    assert not (tmp_path / "out").exists()


def test_module_entry_point_trains_the_demo_configs_recipe_on_jsonl_stages(tmp_path, capsys):
    """The demo config with its stages pointed at a JSONL file trains the toy student it names
    (`toy:student`) with the demo's recipe, one step."""
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in make_pool(4)))
    cfg = yaml.safe_load((SHIPPED / "demo.yaml").read_text())
    cfg["train"].update(report_to=[], stages=[{"name": "s1", "data": str(data), "init": "base", "max_steps": 1}])
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["--config", str(tmp_path / "demo.yaml"), "--out", str(tmp_path / "out")]) == 0
    done = json.loads((tmp_path / "out" / "s1" / "done.json").read_text())
    assert (done["steps"], done["examples"], done["recipe"]["context"], done["recipe"]["lr"]) == (1, 4, 1024, 2e-3)
    student = json.loads((Path(done["base_model"]) / "config.json").read_text())
    final = json.loads((tmp_path / "out" / "s1" / "final" / "config.json").read_text())
    assert (final["hidden_size"], final["num_hidden_layers"]) == (student["hidden_size"], student["num_hidden_layers"])
    assert Path(done["base_model"]).name == "student"
    assert capsys.readouterr().out.startswith("s1: 1 steps, final loss ")


def test_mixed_stage_continues_where_stage_two_ends():
    """Stage 3 runs at a constant lr equal to min_lr, the lr stage 2's cosine ends on; stages 1-2 use
    the full schedule. A run config without `train.stages` gets the same, from its own min_lr."""

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
