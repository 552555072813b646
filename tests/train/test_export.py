"""LLaMA-Factory export: data files, dataset_info.json, DeepSpeed configs and stage YAMLs, read back."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from dasd.errors import ConfigError
from dasd.runs import resolve_model
from dasd.train.data import load_examples, prepare
from dasd.train.export_llamafactory import export
from dasd.train.recipes import paper_recipe
from dasd.train.schedule import lr_at

from .conftest import make_pool

TOY_STUDENT = resolve_model("toy:student")  # a real tokenizer with a chat template (shipped)


def read_stage(out: Path, name: str) -> dict:
    return yaml.safe_load((out / f"{name}.yaml").read_text())


def test_paper_recipe_exports_two_stages_chained(tmp_path):
    low, high = make_pool(5), make_pool(7, seed=1)
    summary = export(paper_recipe(), tmp_path, {"das_low": low, "das_high": high}, tokenizer=TOY_STUDENT)
    assert [s["name"] for s in summary["stages"]] == ["stage1_low", "stage2_high"]  # no mixed data: skipped
    info = json.loads((tmp_path / "dataset_info.json").read_text())
    assert set(info) == {"dasd_das_low", "dasd_das_high"}
    assert info["dasd_das_low"]["formatting"] == "sharegpt"
    rows = [json.loads(x) for x in (tmp_path / info["dasd_das_high"]["file_name"]).read_text().splitlines()]
    assert [r["messages"] for r in rows] == [r["messages"] for r in high]

    s1, s2 = read_stage(tmp_path, "stage1_low"), read_stage(tmp_path, "stage2_high")
    assert s1["model_name_or_path"] == "Qwen/Qwen3-4B-Instruct-2507"  # a hub name stays a hub name
    assert s2["model_name_or_path"] == s1["output_dir"]
    for s in (s1, s2):
        assert s["learning_rate"] == 5e-5 and s["lr_scheduler_kwargs"] == {"min_lr": 1e-5}
        assert (s["adam_beta1"], s["adam_beta2"], s["adam_epsilon"]) == (0.9, 0.95, 1e-8)
        assert s["warmup_ratio"] == 0.1 and s["weight_decay"] == 0.1 and s["max_grad_norm"] == 1.0
        assert s["num_train_epochs"] == 6.0 and s["cutoff_len"] == 65537 and s["bf16"] is True  # packs <= 65536
        assert s["packing"] is True and s["neat_packing"] is True
        assert s["per_device_train_batch_size"] * s["gradient_accumulation_steps"] * 8 == 64
        # LLaMA-Factory checkpoints unless disable_gradient_checkpointing; it has no gradient_checkpointing switch
        assert s["disable_gradient_checkpointing"] is False and "gradient_checkpointing" not in s
        assert s["report_to"] == "none" and s["flash_attn"] == "fa2"
        ds = Path(s["deepspeed"])  # the default: ZeRO-3, written beside the YAMLs, named by absolute path
        assert ds.is_absolute() and ds == (tmp_path / "deepspeed" / "ds_z3.json").resolve()
    z3 = json.loads(ds.read_text())
    assert z3["zero_optimization"]["stage"] == 3 and z3["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"]
    assert z3["train_micro_batch_size_per_gpu"] == "auto" and z3["bf16"] == {"enabled": "auto"}


def test_toy_alias_becomes_the_model_directory(tmp_path):
    cfg = paper_recipe(base_model="toy:student", gradient_checkpointing=False)
    cfg = cfg.model_copy(update={"stages": [cfg.stages[0], cfg.stages[1].model_copy(update={"init": "toy:teacher"})]})
    export(cfg, tmp_path, {"das_low": make_pool(3), "das_high": make_pool(3)})  # tokenizer: the base model's
    s1, s2 = read_stage(tmp_path, "stage1_low"), read_stage(tmp_path, "stage2_high")
    assert s1["model_name_or_path"] == str(Path(TOY_STUDENT).resolve())
    assert (Path(s1["model_name_or_path"]) / "config.json").is_file()
    assert s2["model_name_or_path"] == str(Path(resolve_model("toy:teacher")).resolve())
    assert s1["disable_gradient_checkpointing"] is True


@pytest.mark.parametrize("choice", ["none", "zero2", "zero3", "path", "missing-path"])
def test_deepspeed_choice(tmp_path, choice):
    own = tmp_path / "my_ds.json"
    own.write_text('{"zero_optimization": {"stage": 1}}')
    arg = {"path": str(own), "missing-path": "/cluster/ds/z3.json"}.get(choice, choice)
    out = tmp_path / "out"
    summary = export(paper_recipe(), out, {"das_low": make_pool(2), "das_high": make_pool(2)}, deepspeed=arg,
                     report_to="tensorboard", tokenizer=TOY_STUDENT)
    s1 = read_stage(out, "stage1_low")
    assert s1["report_to"] == "tensorboard"
    if choice == "none":
        assert "deepspeed" not in s1 and not (out / "deepspeed").exists() and summary["deepspeed"] is None
    elif choice in ("zero2", "zero3"):
        stage = int(choice[-1])
        assert json.loads(Path(s1["deepspeed"]).read_text())["zero_optimization"]["stage"] == stage
    elif choice == "path":
        assert s1["deepspeed"] == str(own.resolve())
    else:
        assert s1["deepspeed"] == "/cluster/ds/z3.json"  # a path on the training machines, named as given


def test_bad_deepspeed_choice_writes_nothing(tmp_path):
    with pytest.raises(ConfigError, match="zero2, zero3"):
        export(paper_recipe(), tmp_path, {"das_low": make_pool(2), "das_high": make_pool(2)}, deepspeed="zero4",
               tokenizer=TOY_STUDENT)
    assert not any(tmp_path.iterdir())


def test_over_length_examples_are_dropped_as_dasd_drops_them(tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(TOY_STUDENT)
    low, high = make_pool(12), make_pool(9, seed=2)
    items = load_examples("das_low", {"das_low": low})
    context = sorted(prepare(tok, [it], 10**6, False, False).n_tokens for it in items)[6]
    cfg = paper_recipe(base_model="toy:student", context=context)
    summary = export(cfg, tmp_path, {"das_low": low, "das_high": high}, tokenizer=tok)
    trainer_low = prepare(tok, items, context, False, True)  # what dasd's trainer keeps
    trainer_high = prepare(tok, load_examples("das_high", {"das_high": high}), context, False, True)
    st = {s["name"]: s for s in summary["stages"]}
    assert st["stage1_low"]["dropped_over_context"] == trainer_low.dropped["over_context"] > 0
    assert st["stage1_low"]["examples"] == trainer_low.n_examples == 12 - trainer_low.dropped["over_context"]
    assert st["stage2_high"]["dropped_over_context"] == trainer_high.dropped["over_context"]
    info = json.loads((tmp_path / "dataset_info.json").read_text())
    rows = [json.loads(x)["messages"] for x in (tmp_path / info["dasd_das_low"]["file_name"]).read_text().splitlines()]
    kept = [ex["messages"] for _, ex in items if prepare(tok, [(_, ex)], 10**6, False, False).n_tokens <= context]
    assert rows == kept and read_stage(tmp_path, "stage1_low")["cutoff_len"] == context + 1


@pytest.mark.parametrize("gpus", [6, 128])
def test_a_global_batch_the_gpus_cannot_split_is_refused_not_rounded(tmp_path, gpus):
    """64 sequences on 6 GPUs were exported as 10 accumulation steps (60 a step), on 128 as 1 (128):
    another recipe than the one dasd trains, which refuses such a split."""
    data = {"das_low": make_pool(2), "das_high": make_pool(2)}
    with pytest.raises(ConfigError) as err:
        export(paper_recipe(), tmp_path, data, gpus=gpus, tokenizer=TOY_STUDENT)
    assert str(err.value) == (f"train.global_batch on {gpus} GPUs: global_batch 64 is not a multiple of "
                              f"micro_batch x processes = 1 x {gpus}")
    assert not any(tmp_path.iterdir())
    export(paper_recipe(), tmp_path, data, gpus=16, tokenizer=TOY_STUDENT)
    assert read_stage(tmp_path, "stage1_low")["gradient_accumulation_steps"] == 4


def test_masked_prefix_cannot_be_exported(tmp_path):
    cfg = paper_recipe(mask_prefix=True)
    with pytest.raises(ConfigError, match="mask_prefix"):
        export(cfg, tmp_path, {"das_low": make_pool(3), "das_high": make_pool(3)}, tokenizer=TOY_STUDENT)
    assert not any(tmp_path.iterdir())


def test_the_documented_warmup_difference():
    """The HF Trainer's schedule (LLaMA-Factory's) starts at 0; dasd's first step already trains at lr/W."""
    import torch
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    total, lr, min_lr, ratio = 100, 5e-5, 1e-5, 0.1
    warm = math.ceil(ratio * total)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = get_cosine_with_min_lr_schedule_with_warmup(opt, warm, total, min_lr=min_lr)
    hf = []
    for _ in range(total):
        hf.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    ours = [lr_at(s, total, lr, min_lr, ratio) for s in range(total)]
    assert hf[0] == 0.0 and ours[0] == pytest.approx(lr / warm)
    assert hf[1:warm + 1] == pytest.approx(ours[:warm])  # the same ramp, one step later
    assert ours[-1] == pytest.approx(min_lr) and hf[-1] > min_lr


def test_a_stage_with_no_example_within_the_context_is_refused_as_dasd_train_refuses_it(tmp_path):
    """Every example of a stage longer than train.context: one line naming the stage and why, and
    no empty data set for LLaMA-Factory to fail on (dasd's trainer refuses the same stage)."""
    cfg = paper_recipe().model_copy(update={"context": 16})
    with pytest.raises(ConfigError) as err:
        export(cfg, tmp_path, {"das_low": make_pool(3), "das_high": make_pool(3)}, tokenizer=TOY_STUDENT)
    assert str(err.value) == ("stage 'stage1_low' (data 'das_low'): no training example to export: all 3 examples "
                              "are longer than the context (16 tokens)")
    assert not (tmp_path / "data" / "dasd_das_low.jsonl").exists()
