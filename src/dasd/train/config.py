"""Training configs: one ``TrainConfig`` (the recipe) holding a list of ``StageConfig`` (the schedule).

A stage trains on one data set for a number of epochs or steps, starting from the base model, the
previous stage's final model, or a path. Stage fields left ``None`` inherit the recipe's value.

Batch unit: a **packed sequence** of at most ``context`` tokens. The global batch of one optimizer
step is ``micro_batch x grad_accum x processes`` packed sequences; the loss of a step is the mean
over every loss-carrying token of the global batch (see ``docs/training.md``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from dasd.configbase import Seed, StrictModel


class StageConfig(StrictModel):
    """One training stage of the schedule."""

    name: str = Field(description="Stage name; its outputs go to <out>/<name>/. Letters, digits, '-', '_' only.")
    data: str = Field(
        description="A named pool (a key of the data dict; a pipeline run passes 'low', 'high', 'T<temp>', "
        "'mixed' and 'mixed+replay', see dasd.runs.named_pools) or a path to a chat JSONL of training examples "
        "(messages + optional prefix_chars)."
    )
    init: str = Field(
        default="previous",
        description="Starting weights: 'base' (TrainConfig.base_model), 'previous' (the previous stage's "
        "final model) or a path to a transformers model directory.",
    )
    epochs: float | None = Field(default=None, gt=0, description="Passes over the stage's data (fractions allowed); "
                                 "None inherits TrainConfig.epochs. Ignored when max_steps is set.")
    max_steps: int | None = Field(default=None, ge=1, description="Exact number of optimizer steps; overrides epochs.")
    optional: bool = Field(default=False, description="Skip the stage (with a notice) when its data does not "
                           "exist, e.g. the mixed-policy stage before `dasd mix` has run.")
    lr: float | None = Field(default=None, gt=0, description="Peak learning rate override.")
    min_lr: float | None = Field(default=None, ge=0, description="Final learning rate of the cosine override.")
    warmup_ratio: float | None = Field(default=None, ge=0, lt=1, description="Warmup fraction override.")
    mask_prefix: bool | None = Field(default=None, description="Override of TrainConfig.mask_prefix (ablation).")
    constant_at_min_lr: bool = Field(
        default=False,
        description="Train at a constant learning rate equal to min_lr (the stage's or TrainConfig's), without "
        "warmup: the stage continues where the previous stage's cosine ended (the mixed-policy stage's few extra "
        "steps). With min_lr 0 the stage uses its full schedule instead (a constant rate must be > 0).",
    )

    @field_validator("name")
    @classmethod
    def _name_is_a_dir_name(cls, v: str) -> str:
        if not v or not all(c.isalnum() or c in "-_" for c in v):
            raise ValueError(f"stage name {v!r} must be non-empty and use only letters, digits, '-' and '_'")
        return v


class PushConfig(StrictModel):
    """Where ``train.push_to_hub`` uploads final models (with ``huggingface_hub``; a token from ``hf auth login`` or HF_TOKEN)."""

    repo_id: str = Field(description="Hub repository, e.g. 'me/dasd-4b'. With several stages pushed it must contain "
                         "'{stage}' (replaced by the stage name).")
    private: bool = Field(default=True, description="Create the repository as private (when it does not exist yet).")
    stages: list[str] | None = Field(default=None, min_length=1, description="Stages whose final model is pushed; "
                                     "None: the last stage of the schedule only.")

    @model_validator(mode="after")
    def _check(self) -> "PushConfig":
        if "/" not in self.repo_id.replace("{stage}", "x"):
            raise ValueError(f"push_to_hub.repo_id {self.repo_id!r} must be 'owner/name'")
        if self.stages is not None and len(self.stages) > 1 and "{stage}" not in self.repo_id:
            raise ValueError("push_to_hub: several stages pushed need '{stage}' in repo_id")
        return self

    def repo_for(self, stage: str) -> str:
        return self.repo_id.replace("{stage}", stage)


class TrainConfig(StrictModel):
    """The SFT recipe: model, optimiser, schedule, batch geometry, checkpointing and the stage list."""

    base_model: str = Field(min_length=1, pattern=r"\S", description="Path (or hub id when online) of the student base model in transformers format.")
    stages: list[StageConfig] = Field(min_length=1, description="Stages run in order.")
    context: int = Field(default=65536, ge=8, description="Max tokens of one packed sequence; longer examples are dropped (counted).")
    packing: bool = Field(default=True, description="Pack several examples per sequence (attention kept inside each); "
                          "False puts one example per sequence (for ablations and equivalence tests).")
    micro_batch: int = Field(default=1, ge=1, description="Packed sequences per process per forward pass.")
    grad_accum: int = Field(default=1, ge=1, description="Micro-batches accumulated per optimizer step (ignored when global_batch is set).")
    global_batch: int | None = Field(default=None, ge=1, description="Packed sequences per optimizer step; when set, "
                                     "grad_accum = global_batch / (micro_batch x processes), which must divide exactly.")
    epochs: float = Field(default=1.0, gt=0, description="Default passes over each stage's data.")
    lr: float = Field(default=5e-5, gt=0, description="Peak learning rate (after warmup).")
    min_lr: float = Field(default=1e-5, ge=0, description="Learning rate at the end of the cosine decay.")
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1, description="Fraction of a stage's steps with linear warmup.")
    betas: tuple[float, float] = Field(default=(0.9, 0.95), description="AdamW betas.")
    eps: float = Field(default=1e-8, gt=0, description="AdamW epsilon.")
    weight_decay: float = Field(default=0.1, ge=0, description="AdamW decoupled weight decay (not on biases and norm weights).")
    clip: float = Field(default=1.0, ge=0, description="Max global gradient norm; 0 disables clipping.")
    seed: Seed = Field(default=0, description="Seed of weights-independent randomness: data order per epoch, torch RNG.")
    save_every: int = Field(default=0, ge=0, description="Checkpoint every N optimizer steps (0: only at each stage's end).")
    keep_checkpoints: int = Field(default=2, ge=1, description="How many step checkpoints to keep per stage.")
    mask_prefix: bool = Field(default=False, description="Mask the student-written prefix of mixed-policy examples "
                              "(the paper's ablation; default False = trained unmasked, as the paper recommends).")
    bf16: bool = Field(default=False, description="bf16 mixed precision (GPU). Keep False on CPU.")
    gradient_checkpointing: bool = Field(default=False, description="Recompute activations in backward (GPU, long context). Keep False on CPU.")
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2", "flash_attention_3"] = Field(
        default="sdpa", description="Attention kernel; all honour packed position ids (varlen on flash).")
    loss_chunk: int = Field(default=4096, ge=1, description="Positions per cross-entropy chunk (bounds logits memory).")
    liger: Literal["auto", "on", "off"] = Field(default="auto", description="Liger fused linear+CE kernel: 'auto' "
                                                "uses it on CUDA when liger-kernel is installed.")
    log_every: int = Field(default=1, ge=1, description="Print/log metrics every N steps (curve.jsonl gets every step).")
    report_to: list[Literal["tensorboard", "wandb", "trackio"]] = Field(
        default_factory=lambda: ["tensorboard"],
        description="Experiment trackers (through accelerate): any of tensorboard (event files under <out>/tb/dasd/), "
        "wandb, trackio; 'none' or [] for none. They get loss, lr, grad norm and tokens/s per step and each stage's "
        "data counts. wandb and trackio must be installed (not in the pins).")
    push_to_hub: PushConfig | None = Field(default=None, description="Opt-in: upload final models and their model "
                                           "cards to the Hugging Face Hub (None: no upload).")
    dist_timeout_s: int = Field(default=3600, ge=60, description="How long a process waits for the others at a "
                                "barrier (its tokenising share, a checkpoint save) before the run fails.")

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data):
        if isinstance(data, dict) and "tensorboard" in data:
            raise ValueError("train.tensorboard was replaced by train.report_to (e.g. report_to: [tensorboard] or none)")
        if isinstance(data, dict) and isinstance(data.get("report_to"), str):
            v = data["report_to"].strip()
            data = {**data, "report_to": [] if v in ("", "none") else [x.strip() for x in v.split(",")]}
        return data

    @field_validator("liger", mode="before")
    @classmethod
    def _liger_from_yaml_bool(cls, v):
        # YAML reads unquoted on/off (`liger: on`, `train.liger=on`) as booleans
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        names = [s.name for s in self.stages]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"stage names must be unique, repeated: {sorted(dup)}")
        if self.stages[0].init == "previous":
            raise ValueError(f"stage {self.stages[0].name!r} is the first stage: init must be 'base' or a path, not 'previous'")
        for b in self.betas:
            if not 0 <= b < 1:
                raise ValueError(f"betas must be in [0, 1), got {self.betas}")
        for s in self.stages:
            if s.constant_at_min_lr and (s.lr is not None or s.warmup_ratio is not None):
                raise ValueError(f"stage {s.name!r}: constant_at_min_lr trains at min_lr without warmup; "
                                 "do not also set its lr or warmup_ratio")
            lr = s.lr if s.lr is not None else self.lr
            mn = s.min_lr if s.min_lr is not None else self.min_lr
            if mn > lr:
                raise ValueError(f"stage {s.name!r}: min_lr {mn} is above lr {lr}")
        if self.push_to_hub is not None and self.push_to_hub.stages is not None:
            unknown = sorted(set(self.push_to_hub.stages) - set(names))
            if unknown:
                raise ValueError(f"push_to_hub.stages: no stage named {unknown}; stages: {names}")
        return self

    def pushed_stages(self) -> list[str]:
        """The stages whose final model ``push_to_hub`` uploads (none when it is not set)."""
        if self.push_to_hub is None:
            return []
        return self.push_to_hub.stages if self.push_to_hub.stages is not None else [self.stages[-1].name]

    def resolve_batch(self, processes: int) -> "TrainConfig":
        """A copy with ``grad_accum`` derived from ``global_batch`` for ``processes`` processes."""
        if self.global_batch is None:
            return self
        per_step = self.micro_batch * processes
        if self.global_batch % per_step:
            raise ValueError(f"global_batch {self.global_batch} is not a multiple of micro_batch x processes = "
                             f"{self.micro_batch} x {processes}")
        return self.model_copy(update={"grad_accum": self.global_batch // per_step})

    def for_stage(self, stage: StageConfig) -> dict:
        """The effective hyper-parameters of ``stage`` (its overrides applied)."""
        pick = lambda name: getattr(stage, name) if getattr(stage, name) is not None else getattr(self, name)  # noqa: E731
        hp = {
            "lr": pick("lr"),
            "min_lr": pick("min_lr"),
            "warmup_ratio": pick("warmup_ratio"),
            "mask_prefix": pick("mask_prefix"),
            "epochs": pick("epochs"),
            "max_steps": stage.max_steps,
        }
        if stage.constant_at_min_lr and hp["min_lr"] > 0:
            hp.update(lr=hp["min_lr"], warmup_ratio=0.0)
        return hp
