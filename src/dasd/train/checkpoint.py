"""What a stage writes under ``<out>/<stage>/`` and reads back to resume or skip.

- ``checkpoints/step-NNNNNN/``: accelerate ``save_state`` (model, optimizer, RNG states),
  ``scheduler.pt`` and ``trainer_state.json`` (``step`` = data position, ``fingerprint``); written
  to ``.step-NNNNNN.tmp`` and renamed into place, so a directory with ``trainer_state.json`` is complete.
- ``curve.jsonl``: one line per optimizer step; a line cut by a crash ends it.
- ``final/``: the stage's model in ordinary transformers format, plus the tokenizer.
- ``done.json``: the stage's result; its presence marks the stage finished.

The fingerprint is what a stage's outputs depend on (recipe, stage, init model, data key, process
count); resuming or skipping with a different one is refused.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch

from dasd.errors import ConfigError
from dasd.jsonl import atomic_write_json, atomic_write_jsonl, dumps
from dasd.train.config import StageConfig, TrainConfig
from dasd.train.data import StageData

# Settings that change neither the model nor the data order: changing them keeps a resume valid.
FREE_SETTINGS = {"stages", "save_every", "keep_checkpoints", "log_every", "tensorboard"}


def fingerprint(cfg: TrainConfig, stage: StageConfig, init: str, sd: StageData, processes: int) -> str:
    """What a stage's outputs depend on; a resume or skip with a different one is refused."""
    recipe = cfg.model_dump(exclude=FREE_SETTINGS)
    blob = json.dumps([recipe, stage.model_dump(), str(init), sd.key, processes], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def read_curve(path: Path, upto: int) -> list[dict]:
    """The curve's records up to step ``upto``; a line cut by a crash ends it (what follows is redone)."""
    out = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                break
            if rec.get("step", 0) > upto:
                break
            out.append(rec)
    return out


def truncate_curve(path: Path, upto: int) -> None:
    """Rewrite the curve with its records up to step ``upto`` only (the start of a resumed run)."""
    atomic_write_jsonl(path, read_curve(path, upto))


def append_curve(path: Path, rec: dict) -> None:
    """Add one step's record to the curve."""
    with path.open("a", encoding="utf-8") as fh:
        fh.write(dumps(rec) + "\n")


def read_done(stage_dir: Path, fp: str, name: str) -> dict | None:
    """The result of the finished stage in ``stage_dir``, or None; ConfigError if it was run with another fingerprint."""
    path = stage_dir / "done.json"
    if not path.is_file():
        return None
    done = json.loads(path.read_text(encoding="utf-8"))
    if done.get("fingerprint") != fp:
        raise ConfigError(f"{stage_dir}: stage {name!r} was finished with a different config, data or "
                          "process count; use a new output directory")
    return done


def write_done(stage_dir: Path, result: dict) -> None:
    """Mark the stage finished with its result."""
    atomic_write_json(stage_dir / "done.json", result)


def latest_checkpoint(ckdir: Path) -> Path | None:
    """The complete checkpoint of the highest step under ``ckdir``, or None."""
    done = sorted(p for p in ckdir.glob("step-*") if (p / "trainer_state.json").is_file()) if ckdir.is_dir() else []
    return done[-1] if done else None


def save_checkpoint(acc, scheduler, stage_dir: Path, step: int, fp: str, keep: int) -> None:
    """Write ``checkpoints/step-<step>/`` (all processes take part) and keep the last ``keep``."""
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


def load_checkpoint(acc, scheduler, ck: Path, fp: str) -> int:
    """Restore model, optimizer, RNG and scheduler from ``ck``; its step. ConfigError if ``ck`` has another fingerprint."""
    state = json.loads((ck / "trainer_state.json").read_text(encoding="utf-8"))
    if state.get("fingerprint") != fp:
        raise ConfigError(f"{ck}: checkpoint of a different config, data or process count; use a new output directory")
    acc.load_state(str(ck))
    scheduler.load_state_dict(torch.load(ck / "scheduler.pt", weights_only=False))
    return state["step"]


def save_final(acc, model, tokenizer, stage_dir: Path) -> Path:
    """Write the trained decoder (without the loss wrapper) and the tokenizer to ``final/``; its path."""
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
