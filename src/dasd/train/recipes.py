"""Ready-made training recipes: the paper's (DASD-4B) and a CPU-sized demo.

The paper's values (docs/method.md#the-training-recipe): full fine-tune of Qwen3-4B-Instruct-2507,
DeepSpeed ZeRO-3, bf16, context 65,536 with packing, lr 5e-5 cosine to 1e-5, warmup 0.1, Adam
betas (0.9, 0.95), eps 1e-8, weight decay 0.1, clip 1.0, 6 epochs, global batch 64. Stage 1 on the
low-temperature DAS set, stage 2 on the high-temperature DAS set from stage 1's checkpoint with the
same config, stage 3 (mixed policy, student prefix unmasked, with stage-2 examples replayed in the
paper's ratio: 7.7K mixed with 20K off-policy samples) when that data exists. The paper says
only "a few extra steps" for stage 3; we use one epoch at a constant learning rate equal to the
schedule's final one, without warmup: stage 3 continues where stage 2 ended instead of restarting
the schedule (our choice, documented in docs/training.md: on the toy demo a restart at the peak lr
on 24 mixed examples cost 6 points, 81.0% -> 75.0%, while the continuation kept 82.0%).
Global batch 64 counts packed sequences, as LLaMA-Factory's packing does.
"""

from __future__ import annotations

from dasd.train.config import StageConfig, TrainConfig

PAPER_BASE_MODEL = "Qwen/Qwen3-4B-Instruct-2507"
PAPER_SYSTEM_PROMPT = "You are a helpful assistant."

PAPER_HYPERPARAMETERS = {
    "context": 65536,
    "packing": True,
    "micro_batch": 1,
    "global_batch": 64,
    "epochs": 6.0,
    "lr": 5e-5,
    "min_lr": 1e-5,
    "warmup_ratio": 0.1,
    "betas": (0.9, 0.95),
    "eps": 1e-8,
    "weight_decay": 0.1,
    "clip": 1.0,
    "bf16": True,
    "gradient_checkpointing": True,
    "attn_implementation": "flash_attention_2",
    "mask_prefix": False,
}


def paper_stages(low: str = "das_low", high: str = "das_high", mixed: str = "mixed+replay", mixed_epochs: float = 1.0) -> list[StageConfig]:
    """The paper's schedule: low-T DAS, then high-T DAS from it, then (optional) mixed policy with
    off-policy replay (``mixed+replay``, the paper's Table 5 run) at a constant learning rate equal
    to ``min_lr`` (``constant_at_min_lr``: restarting the schedule hurts on a small mixed set)."""
    return [
        StageConfig(name="stage1_low", data=low, init="base"),
        StageConfig(name="stage2_high", data=high, init="previous"),
        StageConfig(name="stage3_mixed", data=mixed, init="previous", epochs=mixed_epochs, optional=True,
                    constant_at_min_lr=True),
    ]


def paper_recipe(base_model: str = PAPER_BASE_MODEL, **overrides) -> TrainConfig:
    """The paper's recipe as a ``TrainConfig`` (run with configs/accelerate/zero3.yaml)."""
    values = {**PAPER_HYPERPARAMETERS, "base_model": base_model, "stages": paper_stages(), "save_every": 500}
    values.update(overrides)
    return TrainConfig.model_validate(values)


def demo_recipe(base_model: str, **overrides) -> TrainConfig:
    """The same schedule sized for a CPU and a tiny model: fp32, short context, higher lr, few epochs."""
    values = {
        "base_model": base_model,
        "stages": paper_stages(mixed_epochs=1.0),
        "context": 1024,
        "micro_batch": 1,
        "grad_accum": 4,
        "epochs": 2.0,
        "lr": 1e-3,
        "min_lr": 1e-4,
        "warmup_ratio": 0.1,
        "bf16": False,
        "gradient_checkpointing": False,
        "attn_implementation": "sdpa",
        "save_every": 50,
    }
    values.update(overrides)
    return TrainConfig.model_validate(values)
