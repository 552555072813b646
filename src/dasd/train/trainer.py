"""Staged SFT: run the stages of a ``TrainConfig`` with accelerate (CPU, DDP, DeepSpeed, FSDP).

Run commands::

    dasd train --config configs/demo.yaml                        # the CLI (one process)
    python -m dasd.train --config cfg.yaml --out runs/x/train    # the same, without the CLI
    accelerate launch --config_file configs/accelerate/zero3.yaml -m dasd.train --config cfg.yaml --out DIR

Per stage, under ``<out>/<stage>/``: ``checkpoints/step-NNNNNN/`` (model, optimizer, RNG,
scheduler, data position), ``final/`` (ordinary transformers model + tokenizer), ``curve.jsonl``
(one line a step: loss, lr, tokens, tokens/s, grad norm), ``done.json`` (the stage's result).
Re-running skips finished stages and resumes an interrupted one from its last checkpoint; a stage
whose config, data or process count changed since its outputs were written is an error (use a new
output directory).

One optimizer step consumes ``micro_batch x grad_accum x processes`` packed sequences, in an order
fixed by ``(seed, epoch)``. Its loss is the sum of token losses over the global batch divided by
the number of loss tokens of the global batch (known on every process without communication, since
every process holds the packing plan); each micro-batch's backward uses that global denominator, so
1 process x 2 accumulations and 2 processes x 1 give the same gradients.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dasd.errors import ConfigError, DasdError
from dasd.jsonl import atomic_write_json, atomic_write_jsonl, dumps
from dasd.train.config import StageConfig, TrainConfig
from dasd.train.data import Piece, StageData, load_examples, prepare
from dasd.train.encode import IGNORE
from dasd.train.loss import LossModel, liger_available
from dasd.train.packing import collate
from dasd.train.schedule import make_optimizer, make_scheduler

StepHook = Callable[[dict[str, Any]], None]


def _fingerprint(cfg: TrainConfig, stage: StageConfig, init: str, sd: StageData, processes: int) -> str:
    """What a stage's outputs depend on; a resume or skip with a different one is refused."""
    recipe = cfg.model_dump(exclude={"stages", "save_every", "keep_checkpoints", "log_every", "tensorboard"})
    blob = json.dumps([recipe, stage.model_dump(), str(init), sd.key, processes], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _use_cpu() -> bool:
    """CPU runs: forced by ACCELERATE_USE_CPU, or no CUDA device. Multi-process CPU runs then use gloo
    (accelerate only sets up torch.distributed on CPU when told it is a CPU run)."""
    import os

    return os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or not torch.cuda.is_available()


def _make_accelerator(cfg: TrainConfig):
    from accelerate import Accelerator

    cpu = _use_cpu()
    if cfg.bf16 and cpu:
        print("[train] bf16 requested on a CPU run: training in float32 instead", flush=True)
    acc = Accelerator(gradient_accumulation_steps=cfg.grad_accum,
                      mixed_precision="bf16" if cfg.bf16 and not cpu else "no", cpu=cpu)
    ds = acc.state.deepspeed_plugin
    if ds is not None:  # no accelerate DataLoader: DeepSpeed needs these explicitly
        ds.deepspeed_config["train_micro_batch_size_per_gpu"] = cfg.micro_batch
        ds.deepspeed_config["gradient_accumulation_steps"] = cfg.grad_accum
        ds.deepspeed_config["gradient_clipping"] = cfg.clip
    return acc


class _Plan:
    """Which packed sequences each step, process and micro-step uses."""

    def __init__(self, sd: StageData, cfg: TrainConfig, processes: int, seed: int):
        self.sd, self.cfg, self.P, self.seed = sd, cfg, processes, seed
        self.G = cfg.micro_batch * cfg.grad_accum * processes
        self.steps_per_epoch = math.ceil(len(sd.sequences) / self.G)
        self._perm: tuple[int, list[int]] | None = None

    def order(self, epoch: int) -> list[int]:
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = (epoch, torch.randperm(len(self.sd.sequences), generator=g).tolist())
        return self._perm[1]

    def rows(self, step: int) -> list[list[int] | None]:
        """The global batch of ``step``: ``G`` sequences (``None`` = loss-free filler at an epoch's end)."""
        epoch, k = divmod(step, self.steps_per_epoch)
        ids = self.order(epoch)[k * self.G : (k + 1) * self.G]
        seqs: list[list[int] | None] = [self.sd.sequences[i] for i in ids]
        return seqs + [None] * (self.G - len(seqs))

    def local(self, rows: list, rank: int, micro: int) -> list:
        mb = self.cfg.micro_batch
        start = (micro * self.P + rank) * mb
        return rows[start : start + mb]


def _curve_read(path: Path, upto: int) -> list[dict]:
    out = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                break  # a line cut by a crash: everything after it is redone
            if rec.get("step", 0) > upto:
                break
            out.append(rec)
    return out


def _latest_checkpoint(ckdir: Path) -> Path | None:
    done = sorted(p for p in ckdir.glob("step-*") if (p / "trainer_state.json").is_file()) if ckdir.is_dir() else []
    return done[-1] if done else None


def _save_checkpoint(acc, model, scheduler, stage_dir: Path, step: int, fp: str, keep: int) -> None:
    ckdir = stage_dir / "checkpoints"
    final = ckdir / f"step-{step:06d}"
    tmp = ckdir / f".step-{step:06d}.tmp"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    acc.save_state(output_dir=str(tmp))
    if acc.is_main_process:
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        atomic_write_json(tmp / "trainer_state.json", {"step": step, "fingerprint": fp})
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in sorted(p for p in ckdir.glob("step-*") if p.is_dir())[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()


def _save_final(acc, model, tokenizer, stage_dir: Path) -> Path:
    final, tmp = stage_dir / "final", stage_dir / ".final.tmp"
    state = acc.get_state_dict(model)
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        lm = acc.unwrap_model(model).lm
        sd = {k[len("lm."):]: v for k, v in state.items() if k.startswith("lm.")}
        lm.save_pretrained(str(tmp), state_dict=sd)
        tokenizer.save_pretrained(str(tmp))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    acc.wait_for_everyone()
    return final


def _tb_writer(cfg: TrainConfig, stage_dir: Path, acc):
    if not (cfg.tensorboard and acc.is_main_process):
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(stage_dir / "tb"))


def _filler(pad_id: int) -> Piece:
    return Piece(np.array([pad_id], dtype=np.int32), np.array([IGNORE], dtype=np.int32))


def _run_stage(cfg: TrainConfig, idx: int, stage: StageConfig, init: str, stage_dir: Path, items, acc,
               on_step: StepHook | None) -> dict:
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hp = cfg.for_stage(stage)
    tokenizer = AutoTokenizer.from_pretrained(init)
    if tokenizer.chat_template is None:
        raise ConfigError(f"stage {stage.name!r}: the tokenizer of {init} has no chat template")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    sd = prepare(tokenizer, items, cfg.context, hp["mask_prefix"], cfg.packing, cache_dir=stage_dir / "tokens",
                 is_main=acc.is_main_process, barrier=acc.wait_for_everyone)
    lengths = sd.lengths
    P, rank = acc.num_processes, acc.process_index
    plan = _Plan(sd, cfg, P, cfg.seed + idx)
    total = hp["max_steps"] or max(1, math.ceil(hp["epochs"] * plan.steps_per_epoch))
    fp = _fingerprint(cfg, stage, init, sd, P)

    done_path = stage_dir / "done.json"
    if done_path.is_file():
        done = json.loads(done_path.read_text(encoding="utf-8"))
        if done.get("fingerprint") != fp:
            raise ConfigError(f"{stage_dir}: stage {stage.name!r} was finished with a different config, data or "
                              "process count; use a new output directory")
        acc.print(f"[train] stage {stage.name}: already finished ({done['steps']} steps), skipped")
        return done

    set_seed(cfg.seed + idx)
    lm = AutoModelForCausalLM.from_pretrained(init, dtype=torch.float32, attn_implementation=cfg.attn_implementation)
    if cfg.gradient_checkpointing:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lm.config.use_cache = False
    use_liger = cfg.liger == "on" or (cfg.liger == "auto" and torch.cuda.is_available() and liger_available())
    ds = acc.state.deepspeed_plugin
    if use_liger and ds is not None and ds.zero_stage == 3:
        # ZeRO-3 partitions lm_head's weight outside the module's own forward; Liger reads the raw
        # weight, so under ZeRO-3 the chunked path (which calls the module) is used instead.
        acc.print("[train] ZeRO-3: Liger fused CE disabled, using chunked cross-entropy")
        use_liger = False
    model = LossModel(lm, chunk=cfg.loss_chunk, use_liger=use_liger)
    optimizer = make_optimizer(model, hp["lr"], cfg.betas, cfg.eps, cfg.weight_decay)
    scheduler = make_scheduler(optimizer, total, hp["lr"], hp["min_lr"], hp["warmup_ratio"])
    model, optimizer = acc.prepare(model, optimizer)

    start = 0
    ck = _latest_checkpoint(stage_dir / "checkpoints")
    curve_path = stage_dir / "curve.jsonl"
    if ck is not None:
        state = json.loads((ck / "trainer_state.json").read_text(encoding="utf-8"))
        if state.get("fingerprint") != fp:
            raise ConfigError(f"{ck}: checkpoint of a different config, data or process count; use a new output directory")
        acc.load_state(str(ck))
        scheduler.load_state_dict(torch.load(ck / "scheduler.pt", weights_only=False))
        start = state["step"]
        acc.print(f"[train] stage {stage.name}: resuming from {ck.name}")
    if acc.is_main_process:
        stage_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_jsonl(curve_path, _curve_read(curve_path, start))
    acc.wait_for_everyone()

    n_seq = len(sd.sequences)
    acc.print(f"[train] stage {stage.name}: {sd.n_examples} examples ({sd.dropped['over_context']} over context "
              f"dropped), {sd.n_tokens} tokens in {n_seq} sequences (fill {sd.n_tokens / (n_seq * cfg.context):.1%} of "
              f"{cfg.context}), {total} steps of {plan.G} sequences, {P} process(es) "
              f"({acc.distributed_type.value}), init {init}")
    tb = _tb_writer(cfg, stage_dir, acc)
    bar = tqdm(total=total, initial=start, desc=f"train {stage.name}", disable=not acc.is_main_process, dynamic_ncols=True)
    model.train()
    loss_val = float("nan")
    pad_total = [0, 0]  # padding tokens, all tokens fed this run (fillers count as padding)
    t_stage = time.perf_counter()
    for step in range(start, total):
        t0 = time.perf_counter()
        rows = plan.rows(step)
        real = [r for r in rows if r is not None]
        n_loss = int(sum(int(sd.n_loss[i]) for r in real for i in r))
        n_tok = int(sum(int(lengths[i]) for r in real for i in r))
        lr_used = optimizer.param_groups[0]["lr"]
        local_sum = torch.zeros((), device=acc.device)
        n_pad_local = n_all_local = 0
        grad_norm = None
        for micro in range(cfg.grad_accum):
            local_rows = plan.local(rows, rank, micro)
            mine = [[sd.piece(i) for i in r] if r is not None else [_filler(pad_id)] for r in local_rows]
            batch = {k: v.to(acc.device) for k, v in collate(mine, pad_id).items()}
            n_pad_local += batch["input_ids"].numel() - int(sum(int(lengths[i]) for r in local_rows if r is not None for i in r))
            n_all_local += batch["input_ids"].numel()
            with acc.accumulate(model):
                s, _ = model(**batch)
                acc.backward(s * (P * cfg.grad_accum) / max(n_loss, 1))
                local_sum += s.detach().float()
                if acc.sync_gradients:
                    if cfg.clip > 0:
                        gn = acc.clip_grad_norm_(model.parameters(), cfg.clip)
                        grad_norm = float(gn) if gn is not None else None
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        loss_val = float(acc.reduce(local_sum, reduction="sum")) / max(n_loss, 1)
        pad_all = acc.reduce(torch.tensor([n_pad_local, n_all_local], device=acc.device), reduction="sum").tolist()
        pad_total[0] += pad_all[0]
        pad_total[1] += pad_all[1]
        dt = time.perf_counter() - t0
        rec = {"step": step + 1, "epoch": round((step + 1) / plan.steps_per_epoch, 4), "loss": loss_val, "lr": lr_used,
               "tokens": n_tok, "loss_tokens": n_loss, "tokens_per_s": n_tok / dt if dt > 0 else None,
               "grad_norm": grad_norm, "padding": pad_all[0] / max(pad_all[1], 1), "elapsed_s": round(time.perf_counter() - t_stage, 3)}
        rec["eta_s"] = round(rec["elapsed_s"] / (step + 1 - start) * (total - step - 1), 1)
        if acc.is_main_process:
            with curve_path.open("a", encoding="utf-8") as fh:
                fh.write(dumps(rec) + "\n")
            if tb is not None:
                for k in ("loss", "lr", "tokens_per_s", "grad_norm"):
                    if rec[k] is not None:
                        tb.add_scalar(f"{stage.name}/{k}", rec[k], step + 1)
        bar.update(1)
        if (step + 1) % cfg.log_every == 0:
            bar.set_postfix(loss=f"{loss_val:.4f}", lr=f"{lr_used:.2e}", tok_s=f"{rec['tokens_per_s'] or 0:.0f}")
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < total:
            _save_checkpoint(acc, model, scheduler, stage_dir, step + 1, fp, cfg.keep_checkpoints)
        if on_step is not None:
            on_step({"stage": stage.name, **rec})
    bar.close()
    _save_checkpoint(acc, model, scheduler, stage_dir, total, fp, cfg.keep_checkpoints)
    final = _save_final(acc, model, tokenizer, stage_dir)
    if tb is not None:
        tb.close()
    result = {"name": stage.name, "final": str(final), "steps": total, "final_loss": loss_val,
              "curve": str(curve_path), "examples": sd.n_examples, "sequences": n_seq, "tokens": sd.n_tokens,
              "dropped": sd.dropped, "init": str(init), "fingerprint": fp,
              "padding_share": pad_total[0] / max(pad_total[1], 1)}
    if acc.is_main_process:
        curve = _curve_read(curve_path, total)
        if curve:
            result["final_loss"] = curve[-1]["loss"]
        atomic_write_json(done_path, result)
    acc.wait_for_everyone()
    acc.print(f"[train] stage {stage.name}: done, {total} steps, final loss {result['final_loss']:.4f}, "
              f"{time.perf_counter() - t_stage:.1f}s, model in {final}")
    acc.free_memory()
    del model, optimizer
    return result


def run_training(cfg: TrainConfig, out_dir: Path, data: dict[str, list[dict]] | None = None,
                 on_step: StepHook | None = None) -> list[dict]:
    """Run every stage of ``cfg`` in order; return one result dict per stage that ran or was finished.

    ``data`` maps pool names (a stage's ``data``) to lists of training examples; a stage whose
    ``data`` is not a key is read from that path as chat JSONL. ``on_step(metrics)`` is called on
    every process after each optimizer step (progress hooks; an exception there stops training as
    a crash would, the next run resumes from the last checkpoint). Result keys: ``name``, ``final``
    (model directory), ``steps``, ``final_loss``, ``curve`` (JSONL path), ``examples``,
    ``sequences``, ``tokens``, ``dropped``, ``init``. Optional stages without data are skipped.
    """
    from accelerate import PartialState

    out_dir = Path(out_dir)
    try:
        cfg = cfg.resolve_batch(PartialState(cpu=_use_cpu()).num_processes)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    acc = _make_accelerator(cfg)
    results: list[dict] = []
    previous: str | None = None
    for idx, stage in enumerate(cfg.stages):
        items = load_examples(stage.data, data)
        if items is None:
            if stage.optional:
                acc.print(f"[train] stage {stage.name}: data {stage.data!r} not found, optional stage skipped")
                continue
            raise ConfigError(f"stage {stage.name!r}: data {stage.data!r} is neither a named pool nor an existing file")
        if stage.init == "base":
            init = cfg.base_model
        elif stage.init == "previous":
            if previous is None:
                raise DasdError(f"stage {stage.name!r}: init 'previous' but no previous stage has run")
            init = previous
        else:
            init = stage.init
        res = _run_stage(cfg, idx, stage, init, out_dir / stage.name, items, acc, on_step)
        results.append(res)
        previous = res["final"]
    return results
