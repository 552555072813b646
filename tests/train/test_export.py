"""LLaMA-Factory export: data files, dataset_info.json and stage YAMLs equivalent to the recipe."""

from __future__ import annotations

import json

import pytest
import yaml

from dasd.errors import ConfigError
from dasd.train.export_llamafactory import export
from dasd.train.recipes import paper_recipe

from .conftest import make_pool


def test_paper_recipe_exports_two_stages_chained(tmp_path):
    low, high = make_pool(5), make_pool(7, seed=1)
    summary = export(paper_recipe(), tmp_path, {"das_low": low, "das_high": high})
    assert [s["name"] for s in summary["stages"]] == ["stage1_low", "stage2_high"]  # no mixed data: skipped
    info = json.loads((tmp_path / "dataset_info.json").read_text())
    assert set(info) == {"dasd_das_low", "dasd_das_high"}
    assert info["dasd_das_low"]["formatting"] == "sharegpt"
    rows = [json.loads(x) for x in (tmp_path / info["dasd_das_high"]["file_name"]).read_text().splitlines()]
    assert [r["messages"] for r in rows] == [r["messages"] for r in high]

    s1 = yaml.safe_load((tmp_path / "stage1_low.yaml").read_text())
    s2 = yaml.safe_load((tmp_path / "stage2_high.yaml").read_text())
    assert s1["model_name_or_path"] == "Qwen/Qwen3-4B-Instruct-2507"
    assert s2["model_name_or_path"] == s1["output_dir"]
    for s in (s1, s2):
        assert s["learning_rate"] == 5e-5 and s["lr_scheduler_kwargs"] == {"min_lr": 1e-5}
        assert (s["adam_beta1"], s["adam_beta2"], s["adam_epsilon"]) == (0.9, 0.95, 1e-8)
        assert s["warmup_ratio"] == 0.1 and s["weight_decay"] == 0.1 and s["max_grad_norm"] == 1.0
        assert s["num_train_epochs"] == 6.0 and s["cutoff_len"] == 65536 and s["bf16"] is True
        assert s["packing"] is True and s["neat_packing"] is True
        assert s["per_device_train_batch_size"] * s["gradient_accumulation_steps"] * 8 == 64
        assert s["deepspeed"].endswith("ds_z3_config.json")


def test_masked_prefix_cannot_be_exported(tmp_path):
    cfg = paper_recipe(mask_prefix=True)
    with pytest.raises(ConfigError, match="mask_prefix"):
        export(cfg, tmp_path, {"das_low": make_pool(3), "das_high": make_pool(3)})
    assert not (tmp_path / "dataset_info.json").exists()
