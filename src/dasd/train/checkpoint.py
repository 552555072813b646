"""What a stage writes under ``<out>/<stage>/`` and reads back to resume or skip.

- ``checkpoints/step-NNNNNN/``: accelerate ``save_state`` (model, optimizer, RNG states),
  ``scheduler.pt`` and ``trainer_state.json`` (``step`` = data position, ``fingerprint``); written
  to ``.step-NNNNNN.tmp`` and renamed into place, so a directory with ``trainer_state.json`` is complete.
  A save that fails (a full disk, a file-size limit) removes its temp folder and is one line naming
  the checkpoint and the cause (``save_error``); the checkpoints before it are kept, and a resume
  starts from the last of them. A temp folder left by a killed save is removed at the next save.
- ``curve.jsonl``: one line per optimizer step; a line cut by a crash ends it.
- ``final/``: the stage's model in ordinary transformers format, plus the tokenizer.
- ``done.json``: the stage's result; its presence marks the stage finished.

Every file of a checkpoint and of ``final/`` gets the mode a plain ``open`` gives (0666 less the
umask, ``umask_files``): safetensors writes its weights 0600 whatever the umask, so a model trained
on a shared filesystem could not be read by the group (an eval job or a server under another account).

The fingerprint is what a stage's outputs depend on (recipe, stage, init model, data key, global
batch); resuming or skipping with a different one is refused. The init model counts by what it is
(``init_key``): a model of this training folder by its path relative to the stage folder, another
local directory by its contents (``runs.model_version``, so another spelling of its path, from
another working directory or after a move, is the same model), a hub id as given. The process count is not in it: the
same global batch split over another number of processes gives the same steps, so a DDP (or
single-process) checkpoint resumes on another process count; DeepSpeed and FSDP checkpoints hold
per-process shards and are refused with a one-line reason.

Paths inside the training folder are kept relative to the stage folder (``done.json``'s ``final``,
``curve`` and ``init``, and such an init model in the fingerprint), so a run directory can be moved
or copied: a copy resumes and trains from its own models, never the original's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import torch

from dasd.errors import ConfigError, DasdError, DiskFullError, OutputError
from dasd.jsonl import DISK_FULL, atomic_write_json, atomic_write_jsonl, current_umask, dumps
from dasd.train.config import StageConfig, TrainConfig
from dasd.train.data import StageData
from dasd.train.ranks import fail_together, first_true

# Settings that change neither the model nor the data order: changing them keeps a resume valid.
FREE_SETTINGS = {"stages", "save_every", "keep_checkpoints", "log_every", "report_to", "push_to_hub", "dist_timeout_s"}
# How the global batch is split (per process, per micro-step): it changes no step's gradient.
SPLIT_SETTINGS = {"micro_batch", "grad_accum", "global_batch"}
# Distributed types whose checkpoint is one full copy of model and optimizer (any process count can load it).
FULL_STATE_TYPES = {"NO", "MULTI_CPU", "MULTI_GPU", "MULTI_XPU", "MULTI_NPU", "MULTI_MLU", "MULTI_SDAA", "MULTI_MUSA",
                    "MULTI_HPU"}


# Keys of a stage's result that hold paths (relative to the stage folder in done.json).
PATH_KEYS = ("final", "curve", "init")


def relative(path: str | Path, stage_dir: Path) -> str:
    """``path`` relative to ``stage_dir`` when it lies in the same training folder (``final``,
    ``../stage1_low/final``), else as given (a base model elsewhere)."""
    p, here = Path(path).absolute(), Path(stage_dir).absolute()
    return os.path.relpath(p, here) if p.is_relative_to(here.parent) else str(path)


def absolute(path: str, stage_dir: Path) -> str:
    """The inverse of ``relative``: a path stored relative to ``stage_dir`` as a usable path, spelled
    as a freshly trained stage spells it (relative to the working directory when ``stage_dir`` is),
    so that a skipped stage hands the next one the same init path, hence the same fingerprint."""
    return path if Path(path).is_absolute() else os.path.normpath(Path(stage_dir) / path)


def init_key(init: str, stage_dir: Path | None = None, init_version: str = "") -> str:
    """How the fingerprint names the init model: with ``stage_dir``, a model inside the training
    folder by its path relative to the stage folder (``relative``: moving the run keeps it); another
    one with an ``init_version`` (``runs.model_version`` of a local directory) by that version, so
    its path's spelling does not count; anything else (a hub id) as given."""
    if stage_dir is not None and Path(init).absolute().is_relative_to(Path(stage_dir).absolute().parent):
        return relative(init, stage_dir)
    return f"version:{init_version}" if init_version else str(init)


def fingerprint(cfg: TrainConfig, stage: StageConfig, init: str, sd: StageData, processes: int,
                stage_dir: Path | None = None, init_version: str = "") -> str:
    """What a stage's outputs depend on (the global batch, not its split over ``processes``). The
    init model counts once, as ``init_key`` names it, not also by how ``base_model`` or the stage's
    ``init`` spell its path."""
    recipe = cfg.model_dump(exclude=FREE_SETTINGS | SPLIT_SETTINGS | {"base_model"})
    global_batch = cfg.micro_batch * cfg.grad_accum * processes
    key = init_key(init, stage_dir, init_version)
    blob = json.dumps([recipe, stage.model_dump(exclude={"init"}), key, sd.key, global_batch], sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def path_fingerprint(cfg: TrainConfig, stage: StageConfig, init: str, sd: StageData, processes: int,
                     stage_dir: Path) -> str:
    """The fingerprint stages finished before ``fingerprint`` named the init model by ``init_key``
    carry (the init path as spelled, ``base_model`` and the stage's ``init`` in it); ``read_done`` and
    ``load_checkpoint`` accept it, so such a run is not refused."""
    recipe = cfg.model_dump(exclude=FREE_SETTINGS | SPLIT_SETTINGS)
    global_batch = cfg.micro_batch * cfg.grad_accum * processes
    blob = json.dumps([recipe, stage.model_dump(), relative(init, stage_dir), sd.key, global_batch], sort_keys=True,
                      default=str)
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


def read_done(stage_dir: Path, fp: str, name: str, init_version: str | None = None,
              also: str | None = None) -> dict | None:
    """The result of the finished stage in ``stage_dir``, or None; ConfigError if it was trained from
    another version of its init model (``init_version``, ``runs.model_version``; a stage finished
    before versions were recorded is accepted), or with another fingerprint than ``fp`` (or ``also``:
    ``path_fingerprint``, that of a stage finished by an earlier dasd)."""
    path = stage_dir / "done.json"
    if not path.is_file():
        return None
    done = json.loads(path.read_text(encoding="utf-8"))
    if init_version is not None and done.get("init_version") not in (None, init_version):
        raise ConfigError(f"{stage_dir}: stage {name!r} was trained from another version of its init model "
                          f"({done.get('init')}: it has changed since); delete {stage_dir} to train the stage again, "
                          "or use a new output directory")
    if done.get("fingerprint") not in (fp, also or fp):
        raise ConfigError(f"{stage_dir}: stage {name!r} was finished with a different config, data or "
                          f"global batch; delete {stage_dir} to train the stage again, or set the config back, or use a new "
                          "output directory")
    return {**done, **{k: absolute(done[k], stage_dir) for k in PATH_KEYS if isinstance(done.get(k), str)}}


def write_done(stage_dir: Path, result: dict) -> None:
    """Mark the stage finished with its result (paths stored relative to ``stage_dir``)."""
    atomic_write_json(stage_dir / "done.json",
                      {**result, **{k: relative(result[k], stage_dir) for k in PATH_KEYS if k in result}})


def latest_checkpoint(ckdir: Path) -> Path | None:
    """The complete checkpoint of the highest step under ``ckdir``, or None."""
    done = sorted(p for p in ckdir.glob("step-*") if (p / "trainer_state.json").is_file()) if ckdir.is_dir() else []
    return done[-1] if done else None


def geometry(acc, global_batch: int) -> dict:
    """How a checkpoint was written: process count, distributed type, global batch (in ``trainer_state.json``)."""
    return {"processes": acc.num_processes, "distributed_type": acc.distributed_type.value, "global_batch": global_batch}


def check_geometry(ck: Path, state: dict, now: dict, fp_matches: bool) -> None:
    """ConfigError (one line naming both process counts) when checkpoint ``ck`` cannot resume on ``now``."""
    was = {k: state.get(k, now[k]) for k in now}  # checkpoints written before these keys existed: same as now
    if was["processes"] == now["processes"] and fp_matches:
        return
    if was["global_batch"] != now["global_batch"]:
        raise ConfigError(f"{ck}: written by {was['processes']} process(es) with a global batch of {was['global_batch']} "
                          f"sequences, this run has {now['processes']} with {now['global_batch']}: set train.global_batch: "
                          f"{was['global_batch']} to resume, or use a new output directory")
    if was["processes"] != now["processes"] and not {was["distributed_type"], now["distributed_type"]} <= FULL_STATE_TYPES:
        raise ConfigError(f"{ck}: written by {was['processes']} process(es) ({was['distributed_type']}), this run has "
                          f"{now['processes']} ({now['distributed_type']}): sharded DeepSpeed/FSDP checkpoints resume only "
                          f"on {was['processes']} processes")


@contextmanager
def _quiet_tied_weights(tied: bool):
    """Silence accelerate's "Removed shared tensor {'lm.lm_head.weight'} while saving" during
    ``save_state`` when the model ties its output embedding to its input one (``tied``): the copy it
    drops is the tied one and loading restores the tie (resumed == uninterrupted is tested), so the
    warning, printed at every checkpoint, says nothing. Untied models keep the warning."""
    log = logging.getLogger("accelerate.utils.other")
    level = log.level
    if tied:
        log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


# A failed write as safetensors (its Rust I/O error: "... No space left on device (os error 28)") and
# torch.save's zip writer ("[enforce fail at inline_container.cc:...]", "PytorchStreamWriter failed
# writing file ...", "basic_ios::clear: iostream error") report it; neither is an OSError.
_OS_ERROR_IN_TEXT = re.compile(r"\(os error (\d+)\)")
_TORCH_WRITER = re.compile(r"inline_container|PytorchStreamWriter|iostream error")


def save_error(path: Path, what: str, err: BaseException, resume: str) -> DasdError | None:
    """The one-line error of writing ``what`` to ``path`` that failed with ``err`` (a full disk, a
    file-size limit, a read-only or vanished folder), once nothing of it is left: the path, the cause
    as the system gave it, the space left there and where a resume starts (``resume``); None when
    ``err`` is not a failed write (a bug, an interrupt: let it through as it is)."""
    from safetensors import SafetensorError

    if isinstance(err, DasdError) and isinstance(err.__cause__, OSError):  # atomic_write_json's, on our temp file
        err = err.__cause__
    code = err.errno if isinstance(err, OSError) else None
    if isinstance(err, SafetensorError):
        m = _OS_ERROR_IN_TEXT.search(str(err))
        code = int(m.group(1)) if m else None
    elif not isinstance(err, OSError) and not (isinstance(err, RuntimeError) and _TORCH_WRITER.search(str(err))):
        return None
    cause = os.strerror(code) if code else f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}"
    where = next((p for p in (path, *path.parents) if p.exists()), None)
    room = f"; {shutil.disk_usage(where).free / 2**20:.1f} MiB free there" if where is not None else ""
    full = code in DISK_FULL
    todo = "free some space and re-run the same command" if full or not code else "re-run the same command once it can be written"
    return (DiskFullError if full else OutputError)(
        f"{path}: cannot write {what} ({cause}{room}); nothing of it is left, a resume starts from {resume}: {todo}")


def umask_files(folder: Path) -> None:
    """Give every file under ``folder`` the mode a plain ``open`` gives (0666 less the umask), as
    dasd's own files have; safetensors writes 0600 whatever the umask."""
    mode = 0o666 & ~current_umask()
    for f in folder.rglob("*"):
        if f.is_file() and not f.is_symlink():
            f.chmod(mode)


def save_checkpoint(acc, scheduler, stage_dir: Path, step: int, fp: str, keep: int, global_batch: int = 0,
                    tied: bool = False, extra: dict | None = None) -> None:
    """Write ``checkpoints/step-<step>/`` (all processes take part) and keep the last ``keep``;
    ``tied``: the model ties its output embedding to its input one (``_quiet_tied_weights``);
    ``extra``: more of the trainer's state for ``trainer_state.json`` (read back by ``trainer_state``).
    A write that fails leaves no part of this checkpoint (``save_error``: one line, what is kept), and
    stops every process at once (``ranks.fail_together``), not only the one whose write failed."""
    ckdir = stage_dir / "checkpoints"
    final = ckdir / f"step-{step:06d}"
    tmp = ckdir / f".step-{step:06d}.tmp"
    together = partial(fail_together, partial(first_true, acc), f"write the checkpoint of step {step} ({final})")
    try:
        with together():
            if acc.is_main_process:
                for stale in ckdir.glob(".step-*.tmp"):  # this one's leftover, or one of a save that was killed
                    shutil.rmtree(stale, ignore_errors=True)
                tmp.mkdir(parents=True)
        with together(), _quiet_tied_weights(tied):  # every process's RNG state is in ``tmp`` before it is renamed
            acc.save_state(output_dir=str(tmp))
        with together():
            if acc.is_main_process:
                torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
                atomic_write_json(tmp / "trainer_state.json", {"step": step, "fingerprint": fp,
                                                               **geometry(acc, global_batch), **(extra or {})})
                umask_files(tmp)  # every process's files are in ``tmp`` by now
                shutil.rmtree(final, ignore_errors=True)
                tmp.rename(final)
                for old in sorted(p for p in ckdir.glob("step-*") if p.is_dir())[:-keep]:
                    shutil.rmtree(old, ignore_errors=True)
    except BaseException as err:
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        last = latest_checkpoint(ckdir)
        failed = save_error(final, f"the checkpoint of step {step}", err,
                            last.name if last is not None else "the stage's first step (no checkpoint before it)")
        if failed is None:
            raise
        raise failed from err


def trainer_state(ck: Path) -> dict:
    """The ``trainer_state.json`` of checkpoint ``ck``: ``step``, ``fingerprint``, its geometry and ``extra``."""
    return json.loads((ck / "trainer_state.json").read_text(encoding="utf-8"))


def load_checkpoint(acc, scheduler, ck: Path, fp: str, global_batch: int = 0, also: str | None = None,
                    init_version: str | None = None) -> int:
    """Restore model, optimizer, RNG and scheduler from ``ck``; its step. ConfigError if ``ck`` has another
    fingerprint than ``fp`` (or ``also``, as in ``read_done``), was trained from another version of its
    init model (``init_version``, as in ``read_done``: the previous stage retrained since, whose path
    the fingerprint holds), or was written by another process count in a way this run cannot load
    (``check_geometry``). RNG states of processes the checkpoint did not have are left as seeded
    (accelerate logs it)."""
    state = trainer_state(ck)
    matches = state.get("fingerprint") in (fp, also or fp)
    check_geometry(ck, state, geometry(acc, global_batch), matches)
    if not matches:
        raise ConfigError(f"{ck}: checkpoint of a different config or data; delete {ck.parent.parent} to train the "
                          "stage again, or set the config back, or use a new output directory")
    if init_version is not None and state.get("init_version") not in (None, init_version):
        raise ConfigError(f"{ck}: checkpoint trained from another version of its init model (it has changed "
                          f"since); delete {ck.parent.parent} to train the stage again, or use a new output directory")
    acc.load_state(str(ck))
    scheduler.load_state_dict(torch.load(ck / "scheduler.pt", weights_only=False))
    return state["step"]


def final_dtype(bf16: bool, cpu: bool) -> torch.dtype:
    """The dtype final models are saved in: the training dtype (bf16 on GPU with ``bf16``; float32 on CPU)."""
    return torch.bfloat16 if bf16 and not cpu else torch.float32


def save_final(acc, model, tokenizer, stage_dir: Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write the trained decoder (without the loss wrapper, floating tensors in ``dtype``) and the tokenizer
    to ``final/``; its path. A write that fails leaves no part of it (``save_error``) and stops every
    process at once (``ranks.fail_together``)."""
    final, tmp = stage_dir / "final", stage_dir / ".final.tmp"
    state = acc.get_state_dict(model)
    try:
        with fail_together(partial(first_true, acc), f"write the stage's final model ({final})"):
            if acc.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
                lm = acc.unwrap_model(model).lm
                sd = {k[len("lm."):]: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()
                      if k.startswith("lm.")}
                lm.save_pretrained(str(tmp), state_dict=sd)
                config = json.loads((tmp / "config.json").read_text(encoding="utf-8"))
                config["dtype"] = str(dtype).removeprefix("torch.")  # save_pretrained writes the in-memory model's dtype
                atomic_write_json(tmp / "config.json", config)
                tokenizer.save_pretrained(str(tmp))
                umask_files(tmp)
                shutil.rmtree(final, ignore_errors=True)
                tmp.rename(final)
    except BaseException as err:
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        failed = save_error(final, "the stage's final model", err, "the stage's last checkpoint")
        if failed is None:
            raise
        raise failed from err
    return final
