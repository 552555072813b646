"""``dasd export llamafactory``: training data and stage configs for teams that train with LLaMA-Factory.

Writes, under ``out_dir``::

    data/<pool>.jsonl       one {"messages": [...]} a line (LLaMA-Factory "sharegpt" format, OpenAI-style tags)
    dataset_info.json       the data sets, registered with their columns and role tags
    <stage>.yaml            one LLaMA-Factory SFT config per stage, equivalent to our TrainConfig

Equivalences: packing with ``neat_packing: true`` (no cross-example attention), ``cutoff_len`` =
context, global batch = per_device_train_batch_size x gradient_accumulation_steps x GPUs (packed
sequences), ``cosine_with_min_lr``; each stage after the first starts from the previous stage's
``output_dir``. Not expressible there: masking only the student prefix of a mixed-policy example
(LLaMA-Factory masks whole turns), so ``mask_prefix`` is refused; unmasked (the default) needs nothing.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from dasd.errors import ConfigError
from dasd.jsonl import atomic_open, atomic_write_json, atomic_write_jsonl
from dasd.train.config import TrainConfig
from dasd.train.data import load_examples


def _stage_yaml(cfg: TrainConfig, stage, hp: dict, model_path: str, dataset: str, dataset_dir: str,
                output_dir: str, template: str, gpus: int, deepspeed: str | None) -> dict:
    per_step = cfg.micro_batch * gpus
    ga = cfg.grad_accum if cfg.global_batch is None else max(1, cfg.global_batch // per_step)
    y = {
        "model_name_or_path": model_path,
        "trust_remote_code": True,
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "full",
        "dataset": dataset,
        "dataset_dir": dataset_dir,
        "template": template,
        "cutoff_len": cfg.context,
        "packing": cfg.packing,
        "neat_packing": cfg.packing,
        "overwrite_cache": True,
        "preprocessing_num_workers": 16,
        "output_dir": output_dir,
        "logging_steps": 1,
        "save_steps": cfg.save_every or 500,
        "plot_loss": True,
        "overwrite_output_dir": True,
        "per_device_train_batch_size": cfg.micro_batch,
        "gradient_accumulation_steps": ga,
        "learning_rate": hp["lr"],
        "lr_scheduler_type": "cosine_with_min_lr",
        "lr_scheduler_kwargs": {"min_lr": hp["min_lr"]},
        "warmup_ratio": hp["warmup_ratio"],
        "adam_beta1": cfg.betas[0],
        "adam_beta2": cfg.betas[1],
        "adam_epsilon": cfg.eps,
        "weight_decay": cfg.weight_decay,
        "max_grad_norm": cfg.clip,
        "bf16": cfg.bf16,
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "seed": cfg.seed,
        "report_to": "none",
    }
    if hp["max_steps"]:
        y["max_steps"] = hp["max_steps"]
    else:
        y["num_train_epochs"] = float(hp["epochs"])
    if cfg.attn_implementation.startswith("flash"):
        y["flash_attn"] = "fa2"
    if deepspeed:
        y["deepspeed"] = deepspeed
    return y


def export(cfg: TrainConfig, out_dir: Path, data: dict[str, list[dict]] | None = None, template: str = "qwen3_nothink",
           gpus: int = 8, deepspeed: str | None = "examples/deepspeed/ds_z3_config.json",
           saves_dir: str = "saves/dasd") -> dict:
    """Write LLaMA-Factory data files, ``dataset_info.json`` and one YAML per stage; return a summary.

    ``data`` maps pool names to examples (as for ``run_training``); a stage whose data is a path is
    read from that JSONL. Optional stages without data are left out. ``gpus`` sets the
    gradient accumulation that reaches ``global_batch``; ``template`` is LLaMA-Factory's chat
    template name for the student (``qwen3_nothink`` for Qwen3-*-Instruct-2507); ``deepspeed`` the
    ZeRO-3 JSON path as LLaMA-Factory sees it (None: no DeepSpeed).
    """
    out_dir = Path(out_dir)
    info: dict[str, dict] = {}
    written: dict[str, str] = {}
    by_source: dict[str, str] = {}
    stages_out = []
    previous = None
    for stage in cfg.stages:
        hp = cfg.for_stage(stage)
        items = load_examples(stage.data, data)
        if items is None:
            if stage.optional:
                continue
            raise ConfigError(f"stage {stage.name!r}: data {stage.data!r} is neither a named pool nor an existing file")
        if hp["mask_prefix"] and any(ex["prefix_chars"] for _, ex in items):
            raise ConfigError(f"stage {stage.name!r}: mask_prefix cannot be expressed in LLaMA-Factory "
                              "(it masks whole turns only); export with mask_prefix false")
        if stage.data in by_source:
            name = by_source[stage.data]
        else:
            base = "dasd_" + "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(stage.data).stem)
            name, k = base, 1
            while name in written:
                k += 1
                name = f"{base}_{k}"
            by_source[stage.data] = name
        if name not in written:
            rel = f"data/{name}.jsonl"
            n = atomic_write_jsonl(out_dir / rel, ({"messages": ex["messages"]} for _, ex in items))
            written[name] = rel
            info[name] = {
                "file_name": rel,
                "formatting": "sharegpt",
                "columns": {"messages": "messages"},
                "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                         "assistant_tag": "assistant", "system_tag": "system"},
                "num_examples": n,
            }
        if stage.init == "base":
            model_path = cfg.base_model
        elif stage.init == "previous":
            model_path = previous
        else:
            model_path = stage.init
        output_dir = f"{saves_dir}/{stage.name}"
        y = _stage_yaml(cfg, stage, hp, model_path, name, str(out_dir.resolve()), output_dir, template, gpus, deepspeed)
        with atomic_open(out_dir / f"{stage.name}.yaml") as fh:
            fh.write(f"# {stage.name}: exported by dasd; run with `llamafactory-cli train {stage.name}.yaml`\n")
            yaml.safe_dump(y, fh, sort_keys=False)
        stages_out.append({"name": stage.name, "yaml": str(out_dir / f"{stage.name}.yaml"), "dataset": name,
                           "examples": info[name]["num_examples"], "init": model_path})
        previous = output_dir
    for v in info.values():
        v.pop("num_examples", None)
    atomic_write_json(out_dir / "dataset_info.json", info)
    return {"out_dir": str(out_dir), "datasets": written, "stages": stages_out}
