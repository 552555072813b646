"""``dasd export llamafactory``: training data and stage configs for teams that train with LLaMA-Factory.

Writes, under ``out_dir``::

    data/dasd_<pool>.jsonl  one {"messages": [...]} a line (LLaMA-Factory "sharegpt" format, OpenAI-style tags)
    dataset_info.json       the data sets, registered with their columns and role tags
    deepspeed/ds_z<N>.json  the DeepSpeed config the stage YAMLs name (deepspeed="zero2" or "zero3")
    <stage>.yaml            one LLaMA-Factory SFT config per stage, equivalent to our TrainConfig

Equivalences (checked against LLaMA-Factory 0.9.5): packing with ``neat_packing: true`` (no
cross-example attention) and ``cutoff_len`` = context + 1 (LLaMA-Factory packs up to ``cutoff_len - 1``
tokens; without packing ``cutoff_len`` = context), global batch = per_device_train_batch_size x
gradient_accumulation_steps x GPUs (packed sequences), ``cosine_with_min_lr``; each stage after the
first starts from the previous stage's ``output_dir``. ``model_name_or_path`` is a real model: dasd's
``toy:`` aliases become their directories, local directories absolute paths, hub names stay.
Gradient checkpointing is LLaMA-Factory's ``disable_gradient_checkpointing`` (it checkpoints unless
told not to). Examples longer than ``context`` tokens (the student's chat template, counted as dasd's
trainer counts them) are left out of the data files and counted, as dasd's trainer drops them;
LLaMA-Factory would truncate them to ``cutoff_len`` instead.

Not expressible there: masking only the student prefix of a mixed-policy example (LLaMA-Factory masks
whole turns), so ``mask_prefix`` is refused; unmasked (the default) needs nothing. Differences that
remain: the HF Trainer's warmup starts at learning rate 0 (step ``i`` of ``W`` warmup steps uses
``lr x i/W``) where dasd's starts at ``lr/W`` (``lr x (i+1)/W``), and its cosine ends one step short of
``min_lr``; over a stage of thousands of steps both differ only in the first and last steps.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import yaml

from dasd.errors import ConfigError
from dasd.jsonl import atomic_open, atomic_write_json, atomic_write_jsonl
from dasd.log import logger, progress
from dasd.train.config import TrainConfig
from dasd.train.data import Examples, batches, load_examples, why_no_example

log = logger("export")

DEEPSPEED_CHOICES = ("none", "zero2", "zero3")

_DS_COMMON = {
    "train_batch_size": "auto",
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "zero_allow_untested_optimizer": True,
    "bf16": {"enabled": "auto"},
    "fp16": {"enabled": "auto"},
}
# DeepSpeed ZeRO settings as in LLaMA-Factory's examples/deepspeed; "auto" is filled in by the HF Trainer.
DEEPSPEED_CONFIGS = {
    "zero2": {**_DS_COMMON, "zero_optimization": {
        "stage": 2, "allgather_partitions": True, "allgather_bucket_size": 5e8, "overlap_comm": False,
        "reduce_scatter": True, "reduce_bucket_size": 5e8, "contiguous_gradients": True}},
    "zero3": {**_DS_COMMON, "zero_optimization": {
        "stage": 3, "overlap_comm": False, "contiguous_gradients": True, "sub_group_size": 1e9,
        "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto",
        "stage3_param_persistence_threshold": "auto", "stage3_max_live_parameters": 1e9,
        "stage3_max_reuse_distance": 1e9, "stage3_gather_16bit_weights_on_model_save": True}},
}


def model_path(name: str) -> str:
    """What LLaMA-Factory can load for a dasd model name: toy aliases resolved, local dirs absolute."""
    from dasd.runs import resolve_model

    resolved = resolve_model(name)
    p = Path(resolved)
    return str(p.resolve()) if p.is_dir() else resolved


def _deepspeed(choice: str | None, out_dir: Path) -> tuple[str | None, dict | None]:
    """(the path the stage YAMLs name, the config to write there or None)."""
    if choice is None or choice == "none":
        return None, None
    if choice in DEEPSPEED_CONFIGS:
        return str((out_dir / "deepspeed" / f"ds_z{choice[-1]}.json").resolve()), DEEPSPEED_CONFIGS[choice]
    if not choice.endswith(".json"):
        raise ConfigError(f"deepspeed {choice!r}: expected one of {', '.join(DEEPSPEED_CHOICES)} or a .json path")
    if not Path(choice).is_file():
        log.warning(f"deepspeed config {choice} is not a file here; the stage YAMLs name it as given")
        return choice, None
    return str(Path(choice).resolve()), None


def _within_context(tokenizer, items: Examples, context: int, name: str, dropped: list[int]) -> Iterator[dict]:
    """The examples of ``items`` that fit in ``context`` tokens, as they are read (``dropped[0]``
    counts those that do not); nothing is held beyond one tokenizer batch."""
    from dasd.train.encode import encode_batch

    bar = progress(len(items), f"length check {name}", "ex")
    for chunk in batches(items):
        for (_, ex), (ids, *_rest) in zip(chunk, encode_batch(tokenizer, [ex for _, ex in chunk], False,
                                                              [w for w, _ in chunk])):
            if len(ids) > context:
                dropped[0] += 1
            else:
                yield ex
        bar.update(len(chunk))
    bar.close()


def _stage_yaml(cfg: TrainConfig, hp: dict, model: str, dataset: str, dataset_dir: str, output_dir: str,
                template: str, gpus: int, deepspeed: str | None, report_to: str) -> dict:
    y = {
        "model_name_or_path": model,
        "trust_remote_code": True,
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "full",
        "dataset": dataset,
        "dataset_dir": dataset_dir,
        "template": template,
        # LLaMA-Factory packs at most cutoff_len - 1 tokens (hparams/data_args.py: "cutoff_len -= 1" when
        # packing), so context + 1 packs what dasd packs; without packing cutoff_len is the example cap.
        "cutoff_len": cfg.context + 1 if cfg.packing else cfg.context,
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
        "gradient_accumulation_steps": cfg.resolve_batch(gpus).grad_accum,
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
        "disable_gradient_checkpointing": not cfg.gradient_checkpointing,
        "seed": cfg.seed,
        "report_to": report_to,
    }
    if hp["max_steps"]:
        y["max_steps"] = hp["max_steps"]
    else:
        y["num_train_epochs"] = float(hp["epochs"])
    if cfg.attn_implementation.startswith("flash"):
        y["flash_attn"] = "fa3" if cfg.attn_implementation == "flash_attention_3" else "fa2"
    if deepspeed:
        y["deepspeed"] = deepspeed
    return y


def export(cfg: TrainConfig, out_dir: Path, data: dict[str, list[dict]] | None = None, template: str = "qwen3_nothink",
           gpus: int = 8, deepspeed: str | None = "zero3", report_to: str = "none", saves_dir: str = "saves/dasd",
           tokenizer=None) -> dict:
    """Write LLaMA-Factory data files, ``dataset_info.json`` and one YAML per stage; return a summary.

    ``data`` maps pool names to examples (as for ``run_training``); a stage whose data is a path is
    read from that JSONL. Optional stages without data are left out. ``gpus`` sets the gradient
    accumulation that reaches ``global_batch``; ``template`` is LLaMA-Factory's chat template name
    for the student (``qwen3_nothink`` for Qwen3-*-Instruct-2507); ``deepspeed`` is ``none``,
    ``zero2`` or ``zero3`` (a config written beside the YAMLs) or the path of a DeepSpeed JSON as
    LLaMA-Factory will see it; ``report_to`` is the HF Trainer's (``none``, ``tensorboard``,
    ``wandb``, ...). ``tokenizer`` (a tokenizer or its directory) counts example lengths (default: the base model's). The summary's
    stages carry ``examples`` (written) and ``dropped_over_context``.
    """
    out_dir = Path(out_dir)
    if gpus < 1:
        raise ConfigError(f"gpus must be >= 1, got {gpus}")
    try:  # dasd refuses a global batch that does not split evenly; rounding it here would train another one
        cfg.resolve_batch(gpus)
    except ValueError as e:
        raise ConfigError(f"train.global_batch on {gpus} GPUs: {e}") from None
    base = model_path(cfg.base_model)
    ds_path, ds_config = _deepspeed(deepspeed, out_dir)
    todo = []  # everything is checked before anything is written
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
        todo.append((stage, hp, items))
    if tokenizer is None or isinstance(tokenizer, (str, Path)):
        from transformers import AutoTokenizer

        source = str(tokenizer or base)
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot load the tokenizer {source} that counts example lengths ({e})") from None

    info: dict[str, dict] = {}
    written: dict[str, str] = {}
    by_source: dict[str, str] = {}
    stages_out = []
    previous = None
    for stage, hp, items in todo:
        if stage.data in by_source:
            name = by_source[stage.data]
        else:
            stem = "dasd_" + "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(stage.data).stem)
            name, k = stem, 1
            while name in written:
                k += 1
                name = f"{stem}_{k}"
            by_source[stage.data] = name
        if name not in written:
            rel, over = f"data/{name}.jsonl", [0]
            kept = _within_context(tokenizer, items, cfg.context, name, over)
            n = atomic_write_jsonl(out_dir / rel, ({"messages": ex["messages"]} for ex in kept))
            dropped = over[0]
            if n == 0:  # as dasd's trainer refuses such a stage: LLaMA-Factory would fail on an empty data set
                (out_dir / rel).unlink()
                raise ConfigError(f"stage {stage.name!r} (data {stage.data!r}): no training example to export: "
                                  f"{why_no_example(dropped, cfg.context)}")
            if dropped:
                log.info(f"{name}: {dropped} of {len(items)} examples are longer than {cfg.context} tokens, left out")
            written[name] = rel
            info[name] = {
                "file_name": rel,
                "formatting": "sharegpt",
                "columns": {"messages": "messages"},
                "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                         "assistant_tag": "assistant", "system_tag": "system"},
                "num_examples": n,
                "dropped": dropped,
            }
        if stage.init == "base":
            init = base
        elif stage.init == "previous":
            init = previous
        else:
            init = model_path(stage.init)
        output_dir = f"{saves_dir}/{stage.name}"
        y = _stage_yaml(cfg, hp, init, name, str(out_dir.resolve()), output_dir, template, gpus, ds_path, report_to)
        with atomic_open(out_dir / f"{stage.name}.yaml") as fh:
            fh.write(f"# {stage.name}: exported by dasd; run with `llamafactory-cli train {stage.name}.yaml`\n")
            yaml.safe_dump(y, fh, sort_keys=False)
        stages_out.append({"name": stage.name, "yaml": str(out_dir / f"{stage.name}.yaml"), "dataset": name,
                           "examples": info[name]["num_examples"], "dropped_over_context": info[name]["dropped"],
                           "init": init})
        previous = output_dir
    if ds_config is not None:
        atomic_write_json(Path(ds_path), ds_config)
    for v in info.values():
        v.pop("num_examples", None)
        v.pop("dropped", None)
    atomic_write_json(out_dir / "dataset_info.json", info)
    return {"out_dir": str(out_dir), "datasets": written, "deepspeed": ds_path, "stages": stages_out}
