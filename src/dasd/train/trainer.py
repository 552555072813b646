"""Staged SFT: run the stages of a ``TrainConfig`` with accelerate (CPU, DDP, DeepSpeed, FSDP).

Run commands::

    dasd train --config configs/demo.yaml                        # the CLI (one process)
    python -m dasd.train --config cfg.yaml --out runs/x/train    # the same, without the CLI
    accelerate launch --config_file configs/accelerate/zero3.yaml -m dasd.train --config cfg.yaml --out DIR

Per stage, under ``<out>/<stage>/``: ``checkpoints/step-NNNNNN/`` (model, optimizer, RNG,
scheduler, data position), ``final/`` (ordinary transformers model + tokenizer), ``curve.jsonl``
(one line a step: loss, lr, tokens, tokens/s, grad norm), ``done.json`` (the stage's result), and
``final/README.md`` (the model card, ``card.py``). Re-running skips finished stages and resumes an
interrupted one from its last checkpoint, on any process count that keeps the global batch (DDP);
a stage whose config, data or global batch changed since its outputs were written is an error (use
a new output directory). Only the main process writes files (besides each process's share of the
token cache and its RNG state in checkpoints); trackers (``report_to``) get the per-step metrics.
Each such write ends where all processes meet (``ranks.fail_together``): when it fails on one
process, every process stops at once with one line, none waits for ``dist_timeout_s``. Any other
failure on one process (out of memory in a step, an ``on_step`` hook) reaches the others through
the process group's store (``ranks.stop_together``): they log one line naming it and exit.

One optimizer step consumes ``micro_batch x grad_accum x processes`` packed sequences, in an order
fixed by ``(seed + stage index, epoch)``. Its loss is the sum of token losses over the global batch divided by
the number of loss tokens of the global batch (known on every process without communication, since
every process holds the packing plan); each micro-batch's backward uses that global denominator, so
1 process x 2 accumulations and 2 processes x 1 give the same gradients.

Layout, in the shape of torchtune's recipes: ``run_training`` resolves each stage's data and init
model and runs a ``StageTrainer`` (``setup_data``, ``setup_model``, ``setup_optimizer``,
``load_checkpoint``, ``train`` / ``train_step``, ``save_checkpoint``, ``finish``); ``plan.py`` says
which packed sequences each step uses; ``checkpoint.py`` reads and writes the stage's files.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import torch

from dasd.errors import ConfigError, DasdError
from dasd.log import logger, progress
from dasd.runs import model_version
from dasd.train import card as model_card
from dasd.train import checkpoint as ckpt
from dasd.train.config import StageConfig, TrainConfig
from dasd.train.data import load_examples, prepare
from dasd.train.loss import LossModel, liger_available
from dasd.train.packing import collate
from dasd.train.plan import Plan
from dasd.train.ranks import fail_together, first_true, stop_together
from dasd.train.schedule import make_optimizer, make_scheduler

StepHook = Callable[[dict[str, Any]], None]

_log = logger("train")


def _use_cpu() -> bool:
    """CPU runs: forced by ACCELERATE_USE_CPU, or no CUDA device. Multi-process CPU runs then use gloo
    (accelerate only sets up torch.distributed on CPU when told it is a CPU run)."""
    return os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or not torch.cuda.is_available()


def process_state(cfg: TrainConfig):
    """accelerate's process state (starts torch.distributed under a launcher, with ``dist_timeout_s``
    as the longest wait at a barrier). The first call in a process decides the timeout."""
    from accelerate import PartialState

    return PartialState(cpu=_use_cpu(), timeout=timedelta(seconds=cfg.dist_timeout_s))


def tracker_names(cfg: TrainConfig) -> list[str]:
    """``report_to`` checked: ConfigError naming a tracker whose package is not installed."""
    for name in cfg.report_to:
        if importlib.util.find_spec(name) is None:
            raise ConfigError(f"train.report_to: {name} is not installed (pip install {name}), or drop it from report_to")
    return list(dict.fromkeys(cfg.report_to))


def _make_accelerator(cfg: TrainConfig, out_dir: Path):
    from accelerate import Accelerator

    cpu = _use_cpu()
    process_state(cfg)
    trackers = tracker_names(cfg)
    acc = Accelerator(gradient_accumulation_steps=cfg.grad_accum,
                      mixed_precision="bf16" if cfg.bf16 and not cpu else "no", cpu=cpu,
                      log_with=trackers or None, project_dir=str(out_dir / "tb") if trackers else None)
    if cfg.bf16 and cpu and acc.is_main_process:
        _log.info("bf16 requested on a CPU run: training in float32 instead")
    ds = acc.state.deepspeed_plugin
    if ds is not None:  # no accelerate DataLoader: DeepSpeed needs these explicitly
        ds.deepspeed_config["train_micro_batch_size_per_gpu"] = cfg.micro_batch
        ds.deepspeed_config["gradient_accumulation_steps"] = cfg.grad_accum
        ds.deepspeed_config["gradient_clipping"] = cfg.clip
    return acc


def liger_choice(setting: str, zero3: bool) -> tuple[bool, str | None]:
    """Whether the loss uses Liger's fused cross-entropy (``setting`` = ``TrainConfig.liger``), and a
    note to log when a requested Liger is turned off. ``auto`` = on when CUDA and liger-kernel are there."""
    use = setting == "on" or (setting == "auto" and torch.cuda.is_available() and liger_available())
    if use and zero3:
        # ZeRO-3 partitions lm_head's weight outside the module's own forward; Liger reads the raw
        # weight, so under ZeRO-3 the chunked path (which calls the module) is used instead.
        return False, "ZeRO-3: Liger fused CE disabled, using chunked cross-entropy"
    return use, None


def _tracker_config(cfg: TrainConfig) -> dict:
    """The recipe as flat scalars (what TensorBoard's hparams and the other trackers accept)."""
    flat = cfg.model_dump(mode="json", exclude={"stages", "push_to_hub", "report_to"})
    flat = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flat.items()}
    flat["stages"] = ",".join(s.name for s in cfg.stages)
    return flat


class StageTrainer:
    """One stage's training, in the shape of a torchtune recipe.

    ``run(items)`` = ``setup_data`` -> (finished already? return its result) -> ``setup_model`` ->
    ``setup_optimizer`` -> ``load_checkpoint`` -> ``train`` -> ``finish``. Each step is one method;
    all processes call them in the same order (several contain barriers).
    """

    def __init__(self, cfg: TrainConfig, idx: int, stage: StageConfig, init: str, stage_dir: Path, acc,
                 on_step: StepHook | None = None, log_offset: int = 0, data_note: str | None = None):
        self.cfg, self.stage, self.init, self.dir, self.acc, self.on_step = cfg, stage, init, stage_dir, acc, on_step
        self.log_offset = log_offset  # tracker steps continue across stages (wandb needs them increasing)
        self.data_note = data_note
        self.first_true = partial(first_true, acc)  # for ``fail_together``: a block one process does alone
        self.hp = cfg.for_stage(stage)
        self.seed = cfg.seed + idx
        self.curve_path = stage_dir / "curve.jsonl"
        self.last_loss = float("nan")
        self.pad_total = [0, 0]  # padding tokens, all tokens fed in the stage (fillers count as padding; kept in checkpoints)
        self.t_stage = time.perf_counter()

    def _info(self, msg: str) -> None:
        if self.acc.is_main_process:
            _log.info(msg)

    def run(self, items: list) -> dict:
        """Train the stage on ``items`` (or skip it when finished with the same fingerprint); its result."""
        self.setup_data(items)
        done = ckpt.read_done(self.dir, self.fp, self.stage.name, self.init_version, also=self.fp_by_path)
        if done is not None:
            self._info(f"stage {self.stage.name}: already finished ({done['steps']} steps), skipped")
            return done
        with fail_together(self.first_true, "start the trackers (train.report_to)"):
            start_trackers(self.acc, self.cfg, self.dir.parent)
        self.setup_model()
        self.setup_optimizer()
        self.train(self.load_checkpoint())
        return self.finish()

    def setup_data(self, items: list) -> None:
        """Tokenizer, tokenised and packed data (cached under ``tokens/``), plan, step count, the init
        model's version and the fingerprint."""
        from transformers import AutoTokenizer

        cfg, acc = self.cfg, self.acc
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.init)
        except (OSError, ValueError) as err:  # not a model directory, or a hub id that is not there (offline)
            raise self._init_error("a tokenizer", err) from None
        if self.tokenizer.chat_template is None:
            raise ConfigError(f"stage {self.stage.name!r}: the tokenizer of {self.init} has no chat template")
        tok = self.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.sd = prepare(tok, items, cfg.context, self.hp["mask_prefix"], cfg.packing, cache_dir=self.dir / "tokens",
                          rank=acc.process_index, world=acc.num_processes, first_true=self.first_true,
                          source=f"stage {self.stage.name!r} (data {self.stage.data!r})")
        self.plan = Plan(self.sd, cfg, acc.num_processes, self.seed)
        self.total = self.plan.total_steps(self.hp["epochs"], self.hp["max_steps"])
        self.init_version = model_version(str(self.init))
        self.fp = ckpt.fingerprint(cfg, self.stage, self.init, self.sd, acc.num_processes, self.dir, self.init_version)
        self.fp_by_path = ckpt.path_fingerprint(cfg, self.stage, self.init, self.sd, acc.num_processes, self.dir)

    def _init_error(self, what: str, err: Exception) -> ConfigError:
        """One line: which model could not be loaded, the config key that named it, and why."""
        key = {"base": "train.base_model", "previous": "the previous stage's final model"}.get(
            self.stage.init, f"train.stages {self.stage.name!r} init")
        why = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if self.init.startswith(("/", ".", "~")) and not Path(self.init).is_dir():
            why = "no such directory"  # transformers would say it is not a valid hub id
        return ConfigError(f"stage {self.stage.name!r}: cannot load {what} from {self.init!r} ({key}): {why}")

    def setup_model(self) -> None:
        """Seed, load the init model in float32, and wrap it in the loss (Liger or chunked cross-entropy)."""
        from accelerate.utils import set_seed
        from transformers import AutoModelForCausalLM

        cfg = self.cfg
        set_seed(self.seed)
        try:
            lm = AutoModelForCausalLM.from_pretrained(self.init, dtype=torch.float32,
                                                      attn_implementation=cfg.attn_implementation)
        except OSError as err:  # a tokenizer without the weights
            raise self._init_error("the model", err) from None
        if cfg.gradient_checkpointing:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        lm.config.use_cache = False
        ds = self.acc.state.deepspeed_plugin
        use_liger, note = liger_choice(cfg.liger, zero3=ds is not None and ds.zero_stage == 3)
        if note:
            self._info(note)
        self.tied = bool(getattr(lm.config, "tie_word_embeddings", False))
        self.model = LossModel(lm, chunk=cfg.loss_chunk, use_liger=use_liger)

    def setup_optimizer(self) -> None:
        """A fresh AdamW and warmup + cosine schedule for this stage; model and optimizer prepared by accelerate."""
        hp = self.hp
        optimizer = make_optimizer(self.model, hp["lr"], self.cfg.betas, self.cfg.eps, self.cfg.weight_decay)
        self.scheduler = make_scheduler(optimizer, self.total, hp["lr"], hp["min_lr"], hp["warmup_ratio"])
        self.model, self.optimizer = self.acc.prepare(self.model, optimizer)

    def load_checkpoint(self) -> int:
        """Resume from the latest checkpoint (its step; 0 without one) and cut the curve to that step."""
        start = 0
        ck = ckpt.latest_checkpoint(self.dir / "checkpoints")
        if ck is not None:
            start = ckpt.load_checkpoint(self.acc, self.scheduler, ck, self.fp, self.plan.G, also=self.fp_by_path,
                                         init_version=self.init_version)
            # the padding of the steps before it, so that padding_share covers the whole stage, as uninterrupted
            self.pad_total = list(ckpt.trainer_state(ck).get("padding_tokens", [0, 0]))
            self._info(f"stage {self.stage.name}: resuming from {ck.name}")
        with fail_together(self.first_true, f"cut the curve back to step {start} ({self.curve_path})"):
            if self.acc.is_main_process:
                self.dir.mkdir(parents=True, exist_ok=True)
                ckpt.truncate_curve(self.curve_path, start)
        return start

    def save_checkpoint(self, step: int) -> None:
        """Checkpoint the state after ``step`` optimizer steps (all processes)."""
        ckpt.save_checkpoint(self.acc, self.scheduler, self.dir, step, self.fp, self.cfg.keep_checkpoints, self.plan.G,
                             tied=self.tied,
                             extra={"padding_tokens": self.pad_total, "init_version": self.init_version})

    def _announce(self) -> None:
        sd, cfg, acc = self.sd, self.cfg, self.acc
        n_seq = len(sd.sequences)
        self._info(f"stage {self.stage.name}: {sd.n_examples} examples ({sd.dropped['over_context']} over context "
                   f"dropped), {sd.n_tokens} tokens in {n_seq} sequences (fill {sd.n_tokens / (n_seq * cfg.context):.1%} "
                   f"of {cfg.context}), {self.total} steps of {self.plan.G} sequences, {acc.num_processes} process(es) "
                   f"({acc.distributed_type.value}), init {self.init}")

    def data_counts(self) -> dict:
        """The stage's data counts (logged to the trackers, kept in ``done.json`` and the model card)."""
        sd = self.sd
        return {"examples": sd.n_examples, "sequences": len(sd.sequences), "tokens": sd.n_tokens,
                "loss_tokens": int(sd.n_loss.sum()), "dropped_over_context": int(sd.dropped.get("over_context", 0))}

    def train(self, start: int) -> None:
        """Optimizer steps ``start`` .. the stage's total: curve line, trackers, progress, checkpoints, hook."""
        cfg, total, acc, name = self.cfg, self.total, self.acc, self.stage.name
        self._announce()
        acc.log({f"{name}/data/{k}": v for k, v in self.data_counts().items()}, step=self.log_offset + start)
        self.model.train()
        self.t_stage = time.perf_counter()
        with progress(total, f"train {self.stage.name}", "step", initial=start, enabled=self.acc.is_main_process) as bar:
            for step in range(start, total):
                rec = self.train_step(step)
                rec["elapsed_s"] = round(time.perf_counter() - self.t_stage, 3)
                rec["eta_s"] = round(rec["elapsed_s"] / (step + 1 - start) * (total - step - 1), 1)
                with fail_together(self.first_true, f"log step {step + 1} ({self.curve_path}, train.report_to)"):
                    if acc.is_main_process:  # acc.log too logs on the main process only
                        ckpt.append_curve(self.curve_path, rec)
                        acc.log({f"{name}/{k}": rec[k] for k in ("loss", "lr", "tokens_per_s", "grad_norm")
                                 if rec[k] is not None}, step=self.log_offset + step + 1)
                if (step + 1) % cfg.log_every == 0:
                    bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}",
                                    tok_s=f"{rec['tokens_per_s'] or 0:.0f}")
                bar.update(1)
                if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < total:
                    self.save_checkpoint(step + 1)
                if self.on_step is not None:
                    self.on_step({"stage": self.stage.name, **rec})
        self.save_checkpoint(total)

    def train_step(self, step: int) -> dict:
        """One optimizer step on the global batch of ``step``; its curve record (stage timing not yet added).

        Each micro-batch's backward divides by the global batch's loss-token count, so the step's
        gradient is that of the global mean token loss whatever the split over processes and micro-steps.
        """
        acc, plan = self.acc, self.plan
        t0 = time.perf_counter()
        rows = plan.rows(step)
        n_loss, n_tok = plan.loss_tokens(rows), plan.tokens(rows)
        lr_used = self.optimizer.param_groups[0]["lr"]
        local_sum = torch.zeros((), device=acc.device)
        pad = [0, 0]  # padding tokens, all tokens fed by this process
        grad_norm = None
        for micro in range(self.cfg.grad_accum):
            local_rows = plan.local(rows, acc.process_index, micro)
            batch = {k: v.to(acc.device) for k, v in collate(plan.pieces(local_rows, self.pad_id), self.pad_id).items()}
            pad[0] += batch["input_ids"].numel() - plan.tokens(local_rows)
            pad[1] += batch["input_ids"].numel()
            loss_sum, gn = self._micro_step(batch, n_loss)
            local_sum += loss_sum
            if gn is not None:
                grad_norm = gn
        self.scheduler.step()
        self.last_loss = float(acc.reduce(local_sum, reduction="sum")) / max(n_loss, 1)
        pad_all = acc.reduce(torch.tensor(pad, device=acc.device), reduction="sum").tolist()
        self.pad_total[0] += pad_all[0]
        self.pad_total[1] += pad_all[1]
        dt = time.perf_counter() - t0
        return {"step": step + 1, "epoch": round((step + 1) / plan.steps_per_epoch, 4), "loss": self.last_loss,
                "lr": lr_used, "tokens": n_tok, "loss_tokens": n_loss, "tokens_per_s": n_tok / dt if dt > 0 else None,
                "grad_norm": grad_norm, "padding": pad_all[0] / max(pad_all[1], 1)}

    def _micro_step(self, batch: dict, n_loss: int) -> tuple[torch.Tensor, float | None]:
        """Forward and backward of one micro-batch; on the step's last one also clip and step the
        optimizer. Its summed token loss and the grad norm (None unless clipped here)."""
        acc, cfg = self.acc, self.cfg
        grad_norm = None
        with acc.accumulate(self.model):
            s, _ = self.model(**batch)
            acc.backward(s * (acc.num_processes * cfg.grad_accum) / max(n_loss, 1))
            loss_sum = s.detach().float()
            if acc.sync_gradients:
                if cfg.clip > 0:
                    gn = acc.clip_grad_norm_(self.model.parameters(), cfg.clip)
                    grad_norm = float(gn) if gn is not None else None
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        return loss_sum, grad_norm

    def recipe(self) -> dict:
        """The stage's effective recipe (for ``done.json`` and the model card)."""
        cfg = self.cfg
        return {**self.hp, "steps": self.total, "global_batch": self.plan.G, "context": cfg.context,
                "packing": cfg.packing, "weight_decay": cfg.weight_decay, "betas": list(cfg.betas), "clip": cfg.clip,
                "warmup": "linear", "schedule": "constant" if self.stage.constant_at_min_lr else "cosine",
                "bf16": cfg.bf16, "seed": self.seed, "processes": self.acc.num_processes}

    def finish(self) -> dict:
        """Save the final model (in the training dtype) and its model card, push it when asked, write
        ``done.json``, free the model and optimizer; the stage's result."""
        acc, sd = self.acc, self.sd
        final = ckpt.save_final(acc, self.model, self.tokenizer, self.dir, ckpt.final_dtype(self.cfg.bf16, _use_cpu()))
        result = {"name": self.stage.name, "final": str(final), "steps": self.total, "final_loss": self.last_loss,
                  "curve": str(self.curve_path), "examples": sd.n_examples, "sequences": len(sd.sequences),
                  "tokens": sd.n_tokens, "dropped": sd.dropped, "init": str(self.init), "fingerprint": self.fp,
                  "init_version": self.init_version,
                  "padding_share": self.pad_total[0] / max(self.pad_total[1], 1), "base_model": self.cfg.base_model,
                  "data": self.stage.data, "data_note": self.data_note, "data_counts": self.data_counts(),
                  "recipe": self.recipe()}
        with fail_together(self.first_true, f"finish stage {self.stage.name!r} (its model card, Hub upload or "
                                            f"{self.dir / 'done.json'})"):
            if acc.is_main_process:
                curve = ckpt.read_curve(self.curve_path, self.total)
                if curve:
                    result["final_loss"] = curve[-1]["loss"]
                model_card.write_card(self.dir, result)
                if self.stage.name in self.cfg.pushed_stages():
                    result["pushed_to"] = model_card.push(final, self.cfg.push_to_hub, self.stage.name)
                ckpt.write_done(self.dir, result)
        self._info(f"stage {self.stage.name}: done, {self.total} steps, final loss {result['final_loss']:.4f}, "
                   f"{time.perf_counter() - self.t_stage:.1f}s, model in {final}")
        acc.free_memory()
        self.model = self.optimizer = self.scheduler = None
        return result


def _stage_init(cfg: TrainConfig, stage: StageConfig, previous: str | None) -> str:
    """The model a stage starts from: the base model, the previous stage's final model, or a path."""
    if stage.init == "base":
        return cfg.base_model
    if stage.init == "previous":
        if previous is None:
            raise DasdError(f"stage {stage.name!r}: init 'previous' but no previous stage has run")
        return previous
    return stage.init


def run_training(cfg: TrainConfig, out_dir: Path, data: dict[str, list[dict]] | None = None,
                 on_step: StepHook | None = None, data_notes: dict[str, str] | None = None) -> list[dict]:
    """Run every stage of ``cfg`` in order; return one result dict per stage that ran or was finished.

    ``data`` maps pool names (a stage's ``data``) to lists of training examples; a stage whose
    ``data`` is not a key is read from that path as chat JSONL. ``on_step(metrics)`` is called on
    every process after each optimizer step (progress hooks; an exception there stops training as
    a crash would, on every process (``ranks.stop_together``), the next run resumes from the last
    checkpoint). Result keys: ``name``, ``final``
    (model directory), ``steps``, ``final_loss``, ``curve`` (JSONL path), ``examples``,
    ``sequences``, ``tokens``, ``dropped``, ``init``, ``data_counts``, ``recipe``. Optional stages
    without data are skipped. ``data_notes`` maps a stage's ``data`` to a description for the model
    card (e.g. ``low`` -> ``T=0.6 teacher samples, DAS-selected``).
    """
    out_dir = Path(out_dir)
    try:
        cfg = cfg.resolve_batch(process_state(cfg).num_processes)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    acc = _make_accelerator(cfg, out_dir)
    try:
        with stop_together(acc, "training"):  # a failure on one process, in a step or a hook, stops them all
            return _run_stages(cfg, out_dir, acc, data, on_step, data_notes or {})
    finally:
        for tracker in acc.trackers:  # not acc.end_training(): that also ends torch.distributed
            tracker.finish()
        acc.trackers = []


def start_trackers(acc, cfg: TrainConfig, out_dir: Path) -> None:
    """Start the ``report_to`` trackers, once, when a stage is about to train: a run whose stages
    are all finished starts none (a TensorBoard tracker would add an empty event file every time)."""
    if cfg.report_to and not acc.trackers:
        acc.init_trackers("dasd", config=_tracker_config(cfg),
                          init_kwargs={t: {"name": out_dir.parent.name or "train"} for t in ("wandb", "trackio")})


def _run_stages(cfg: TrainConfig, out_dir: Path, acc, data, on_step, data_notes: dict[str, str]) -> list[dict]:
    results: list[dict] = []
    previous: str | None = None
    offset = 0
    for idx, stage in enumerate(cfg.stages):
        items = load_examples(stage.data, data)
        if items is None:
            if stage.optional:
                if acc.is_main_process:
                    _log.info(f"stage {stage.name}: data {stage.data!r} not found, optional stage skipped")
                continue
            raise ConfigError(f"stage {stage.name!r}: data {stage.data!r} is neither a named pool nor an existing file")
        res = StageTrainer(cfg, idx, stage, _stage_init(cfg, stage, previous), out_dir / stage.name, acc, on_step,
                           log_offset=offset, data_note=data_notes.get(stage.data)).run(items)
        results.append(res)
        previous = res["final"]
        offset += res["steps"]
    return results
