"""What a run directory holds, as several stages share it: output names, pools, the run's prompts,
trained models and the engines that open them. The directory itself (shards, manifest) is
``dasd.store``; each stage driver in ``dasd.stages`` reads and writes through these helpers.

Output names inside ``RUN/<stage>/``:

- ``sample/prompts``: the run's prompts; ``sample/pool-T<temp>``: teacher samples per temperature;
- ``filter/kept-<pool>``; ``score/pool-<pool>``;
- ``select/selected-<pool>``, ``select/rejected-<pool>``, ``select/train-<pool>`` (training examples);
- ``mix/rollouts``, ``mix/examples``; ``eval/results-<label>``; ``analyze/responses``.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import math
import os
import re
import struct
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from dasd.columnar import KINDS, OUTPUTS, REF, kind_of, read_table, upstream_output
from dasd.engines.base import EngineStats
from dasd.engines.config import EngineConfig, speed_settings, transport_settings
from dasd.errors import ConfigError, DasdError, InputError
from dasd.idset import IdSet
from dasd.jsonl import BadLine, atomic_write_json, parse_line
from dasd.log import logger
from dasd.prompts import iter_prompts, toy_prompts
from dasd.rules.das import ScoreConfig
from dasd.rules.mixing import replay_examples
from dasd.rules.sampling import SampleConfig, pool_name
from dasd.store import RunStore, config_hash, shard_paths

# Output name prefixes (an output is ``<prefix>-<pool>``; see the module docstring).
SAMPLE_POOL = "pool"
KEPT = "kept"
SCORED = "pool"
SELECTED = "selected"
REJECTED = "rejected"
TRAIN = "train"
PROMPTS = "prompts"
MIX_EXAMPLES = "examples"
MIX_ROLLOUTS = "rollouts"
# The named pools made of mixed-policy examples (a stage reading one is the mixed-policy stage).
MIXED_POOLS = ("mixed", "mixed+replay")


def output(prefix: str, pool: str) -> str:
    """The output name of ``pool`` under ``prefix``, e.g. ``output(KEPT, "T0.6") == "kept-T0.6"``."""
    return f"{prefix}-{pool}"


def pool_temperature(pool: str) -> float:
    """The temperature a pool name stands for (``T0.6`` -> 0.6); ``inf`` for a name that is not one."""
    try:
        return float(pool[1:]) if pool.startswith("T") else math.inf
    except ValueError:
        return math.inf


def pools(store: RunStore, stage: str, prefix: str) -> list[str]:
    """Pool names (e.g. ``T0.6``) of a stage's outputs called ``<prefix>-<pool>``."""
    return [o[len(prefix) + 1 :] for o in store.outputs(stage) if o.startswith(prefix + "-")]


def results_name(label: str) -> str:
    """The run-store output holding a model label's evaluation results."""
    return "results-" + re.sub(r"[^A-Za-z0-9_.=+\-]", "_", label)


# -- the run's prompts ------------------------------------------------------------------------------


def training_prompts(cfg, store: RunStore, stage: str = "sample") -> list[dict]:
    """The prompts of the run (toy train split or a file); bad records go to ``stage/rejects``."""
    rejects: list[dict] = []
    prompts = list(iter_training_prompts(cfg, rejects))
    _keep_rejects(cfg, store, stage, rejects, bool(prompts))
    return prompts


def training_prompt_ids(cfg, store: RunStore, stage: str = "sample", each: Callable[[dict], None] | None = None) -> list[str]:
    """The ids of ``training_prompts``, in order, read as a stream (no prompt is held; ``each`` is
    called with every prompt as it is read); bad records go to ``stage/rejects`` and the same errors
    are raised."""
    rejects: list[dict] = []
    ids = []
    for p in iter_training_prompts(cfg, rejects):
        if each is not None:
            each(p)
        ids.append(p["id"])
    _keep_rejects(cfg, store, stage, rejects, bool(ids))
    return ids


def iter_training_prompts(cfg, rejects: list[dict] | None = None) -> Iterator[dict]:
    """``training_prompts`` as a stream, its rejects appended to ``rejects`` (none are written)."""
    d = cfg.data
    if d.prompts == "toy":
        prompts = toy_prompts(d.toy.n_train, d.toy.seed, "train", d.system_prompt, d.toy.world)
        yield from prompts[: d.limit] if d.limit else prompts
        return
    yield from iter_prompts(d.prompts, d.system_prompt, d.limit, rejects)


def _keep_rejects(cfg, store: RunStore, stage: str, rejects: list[dict], any_prompt: bool) -> None:
    d = cfg.data
    if rejects:
        store.write_rejects(stage, rejects)
        logger(stage).info(f"{len(rejects)} prompt record(s) rejected; see {store.root / stage}/rejects-*.jsonl")
        if not any_prompt:
            raise InputError(f"{d.prompts}: every prompt record was rejected ({len(rejects)}; the first, "
                             f"{rejects[0].get('where', '?')}: {rejects[0].get('reason', '?')}); "
                             f"see {store.root / stage}/rejects-*.jsonl")


def load_run_prompts(store: RunStore) -> dict[str, dict]:
    """The run's prompts by id, every one held in memory: for toy-sized runs (the ablation) and for
    comparing with ``RunPrompts``, which the stages use."""
    return {p["id"]: p for p in store.read("sample", PROMPTS)}


class RunPrompts:
    """The run's prompts (``sample/prompts``) by id, read from the run when asked for: how filter,
    score, select and mix join a response to its question (``prompts[pid]``, ``prompts.get(pid)``,
    ``pid in prompts``).

    Only an index is held: per prompt, a 64-bit hash of its id and where its line starts (shard,
    byte offset), 16 bytes in two numpy arrays (448K prompts: 7 MB; holding every prompt, as
    ``load_run_prompts`` does, is 1-2 GB at the paper's scale). Building it reads the shards once.
    A lookup reads one line (ids that share a hash are told apart by the id read); the last
    ``cache`` prompts looked up are kept, as responses come in prompt order (a prompt's k
    responses in a row), and each is the same object while it stays there. An id written twice
    gives its first record, as ``RunStore.read`` does; a line that is not a JSON object, or a
    prompt without a string ``id``, is a ``DasdError`` naming file and line.
    """

    def __init__(self, store: RunStore, cache: int = 16):
        import numpy as np

        self._paths = shard_paths(store.root / "sample", PROMPTS)
        self._cache: OrderedDict[str, dict] = OrderedDict()
        self._cache_size = cache
        hashes, where = array("q"), array("q")
        for k, path in enumerate(self._paths):
            for at, lineno, rec in self._lines(path):
                if not isinstance(rec.get("id"), str):
                    raise DasdError(f"{path}:{lineno}: corrupt run file (a prompt without a string 'id')")
                hashes.append(hash(rec["id"]))
                where.append(k << _OFFSET_BITS | at)
        h = np.frombuffer(hashes, dtype=np.int64) if hashes else np.zeros(0, np.int64)
        order = np.argsort(h, kind="stable")  # stable: the first of an id written twice comes first
        self._hashes = h[order]
        self._where = (np.frombuffer(where, dtype=np.int64) if where else np.zeros(0, np.int64))[order]

    @staticmethod
    def _lines(path: Path):
        """``(byte offset, line number, record)`` of each record of a JSONL shard."""
        with path.open("rb") as fh:
            at = 0
            for lineno, line in enumerate(fh, 1):
                start, at = at, at + len(line)
                if lineno == 1 and line.startswith(codecs.BOM_UTF8):
                    line, start = line[len(codecs.BOM_UTF8):], start + len(codecs.BOM_UTF8)
                rec = _record(line, path, lineno)
                if rec is not None:
                    yield start, lineno, rec

    def _read(self, where: int) -> dict:
        path = self._paths[where >> _OFFSET_BITS]
        with path.open("rb") as fh:
            fh.seek(where & ((1 << _OFFSET_BITS) - 1))
            return _record(fh.readline(), path, None) or {}

    def get(self, prompt_id: str, default=None):
        """The prompt with id ``prompt_id``, else ``default``."""
        rec = self._cache.get(prompt_id)
        if rec is not None:
            self._cache.move_to_end(prompt_id)
            return rec
        if not isinstance(prompt_id, str):
            return default
        h = hash(prompt_id)
        i = int(self._hashes.searchsorted(h))
        while i < len(self._hashes) and self._hashes[i] == h:
            rec = self._read(int(self._where[i]))
            if rec.get("id") == prompt_id:
                self._cache[prompt_id] = rec
                if len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
                return rec
            i += 1
        return default

    def other_messages(self, prompt: dict) -> bool:
        """Whether the run keeps ``prompt``'s id with other messages (an edited prompt: its samples
        answer the kept text, and later stages join responses to it)."""
        kept = self.get(prompt["id"])
        return kept is not None and kept.get("messages") != prompt["messages"]

    def __getitem__(self, prompt_id: str) -> dict:
        rec = self.get(prompt_id)
        if rec is None:
            raise KeyError(prompt_id)
        return rec

    def __contains__(self, prompt_id: object) -> bool:
        return isinstance(prompt_id, str) and self.get(prompt_id) is not None


_OFFSET_BITS = 40  # RunPrompts: a line's byte offset in its shard (shards are far below 1 TB)


def _record(line: bytes, path: Path, lineno: int | None) -> dict | None:
    """One line of a run's JSONL shard as a record (None: blank); ``DasdError`` naming the file (and
    line) if it is not one (``jsonl.parse_line``, as ``store.read_jsonl_shard`` reads whole shards)."""
    rec = parse_line(line, str(path), lineno or 0)
    if isinstance(rec, BadLine):
        raise DasdError(f"{rec.where() if lineno else path}: corrupt run file ({rec.reason})")
    return rec


# -- models and engines -----------------------------------------------------------------------------


def resolve_model(model: str) -> str:
    """``toy:teacher`` / ``toy:student`` name the chain world's built-in models, ``toy:column-teacher``
    / ``toy:column-student`` the column world's; anything else is kept."""
    if model.startswith("toy:"):
        from dasd.toy import TOY_MODELS
        from dasd.toy.build import default_toy_dir

        if model not in TOY_MODELS:
            raise ConfigError(f"model {model!r}: the toy models are {', '.join(map(repr, TOY_MODELS))}")
        world_name, role = TOY_MODELS[model]
        return str(default_toy_dir(world_name) / role)
    return model


def record_faults(store: RunStore, stage: str, engines) -> dict:
    """Add what ``engines`` counted since they were last recorded (those that count: ``stats``, an
    ``EngineStats``, as the openai engine keeps) to the stage's manifest entry and log it; return
    the entry's ``faults``.

    ``faults``: ``retries``, ``by_kind`` (429, 5xx, timeout, connection, malformed), ``seconds_lost``
    (failed attempts and backoff), ``nonfinite`` (answers with NaN/infinite log-probs) and
    ``requests``, summed over the engines and over the calls of one stage run (``RunStore.begin_stage``
    clears them: a new run of the stage starts from zero).
    """
    info = store.manifest["stages"].setdefault(stage, {})
    faults = info.get("faults") or {"requests": 0, "retries": 0, "by_kind": {}, "seconds_lost": 0.0, "nonfinite": 0}
    added = 0
    for eng in engines:
        stats = getattr(eng, "stats", None)
        if not isinstance(stats, EngineStats):
            continue
        new = stats.take()
        faults["requests"] += new.get("requests", 0)
        faults["retries"] += new.get("retries", 0)
        faults["nonfinite"] += new.get("nonfinite", 0)
        faults["seconds_lost"] = round(faults["seconds_lost"] + new.get("retry_seconds", 0.0), 3)
        for k, v in new.items():
            if k.startswith("retry:") and v:
                faults["by_kind"][k[6:]] = faults["by_kind"].get(k[6:], 0) + v
        added += new.get("retries", 0) + new.get("nonfinite", 0)
    info["faults"] = faults
    store.save_manifest()
    if added:
        kinds = ", ".join(f"{k}: {v}" for k, v in sorted(faults["by_kind"].items())) or "none"
        logger(stage).info(f"{faults['retries']} retries of {faults['requests']} requests ({kinds}), "
                           f"{faults['seconds_lost']:.1f}s lost to them, {faults['nonfinite']} answer(s) with "
                           "non-finite log-probs")
    return faults


@contextmanager
def faults_kept(store: RunStore, stage: str, engines: Callable[[], Iterable]) -> Iterator[None]:
    """Around a stage's work: when it fails (a DasdError, Ctrl-C, anything), what ``engines()`` (the
    engines as they are then; a stage opens them lazily) counted is recorded (``record_faults``)
    before the error goes on, so the retries and seconds lost before a failure reach the manifest.
    A failure to record them is logged and does not replace the stage's own error."""
    try:
        yield
    except BaseException:
        try:
            record_faults(store, stage, engines())
        except Exception as err:  # noqa: BLE001 - the stage's own error is the one to report
            logger(stage).warning(f"could not record the engines' faults: {type(err).__name__}: {err}")
        raise


def open_engine(cfg: EngineConfig):
    """Build the engine a config names (``toy:`` models resolved)."""
    from dasd.engines import make_engine

    return make_engine(cfg.model_copy(update={"model": resolve_model(cfg.model)}))


def training_not_current(stage_dir: Path) -> str | None:
    """Why the training stage in ``stage_dir`` (``RUN/train/<stage>``) has a folder but no current
    result, in one line, or None (finished and current, or never begun). Not current: it began
    training and has no ``done.json`` (trained again after its folder was deleted, or killed, also
    between writing ``final/`` and ``done.json``), or it was trained from another stage's model of
    this training folder that has been trained again since (its ``init_version`` is no longer that
    model's ``model_version``)."""
    stage_dir = Path(stage_dir)
    name = stage_dir.name
    done = stage_dir / "done.json"
    if not done.is_file():
        if any((stage_dir / part).exists() for part in ("checkpoints", "curve.jsonl", "final")):
            return (f"stage {name!r} is being trained (it began and has not finished: no {done}): run `dasd train` "
                    "to finish it")
        return None
    try:
        rec = json.loads(done.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        return f"{done}: not readable ({err}): run `dasd train` to finish the stage again"
    init, version = rec.get("init"), rec.get("init_version")
    if isinstance(init, str) and version is not None:
        path = Path(os.path.normpath(stage_dir / init))  # a stage of this training folder: ../<stage>/final
        if path.name == "final" and path.parent.parent == Path(os.path.normpath(stage_dir.parent)) \
                and model_version(str(path)) != version:
            return (f"stage {name!r} was trained from {path.parent.name!r} before that stage was trained again, so "
                    f"its model is not the current one: delete {stage_dir} and run `dasd train` to train it again")
    return None


def final_model(store: RunStore, stage_name: str) -> str | None:
    """The final model directory of a finished training stage, or None when it has not begun
    training; a ``DasdError`` naming the stage (``training_not_current``) when it began and has not
    finished or was trained from an earlier version of a stage before it: its old ``final/``, or a
    ``final/`` written just before the crash, is never served as the stage's model."""
    stage_dir = Path(store.root) / "train" / stage_name
    why = training_not_current(stage_dir)
    if why is not None:
        raise DasdError(f"{store.root}: {why}")
    p = stage_dir / "final"
    return str(p) if (p / "config.json").is_file() and (stage_dir / "done.json").is_file() else None


def model_key(store: RunStore, model: str) -> str:
    """How records name a model: a model inside the run as ``run:<path relative to the run>`` (so a
    moved or copied run keeps its ids), any other as given."""
    p = Path(model).absolute()
    root = Path(store.root).absolute()
    return f"run:{p.relative_to(root).as_posix()}" if p.is_relative_to(root) else model


def latest_student(cfg, store: RunStore, before: str | None = None) -> tuple[str, str]:
    """(label, model dir) of the newest trained student (stages before ``before``), else the base; a
    ``DasdError`` (``final_model``) when one of those stages is being trained or is out of date, since
    the newest student is then not known."""
    latest = ("student", cfg.student.model)
    for st in cfg.train.stages:
        if st.name == before:
            break
        path = final_model(store, st.name)
        if path:
            latest = (st.name, path)
    return latest


def trained_model(cfg, stage: str, path: str) -> EngineConfig:
    """The student's engine settings loading training stage ``stage``'s final model at ``path``
    (``final_model``), as eval, analyze and mix open it: its load errors name the stage (with the
    path they give), not ``student.model``, which names the base model; ``stage`` ``student`` is
    ``student.model`` itself (``latest_student`` before any stage is trained). A trained model is
    loaded with the tokenizer saved beside it, the one it was trained with (``train.base_model``'s,
    whose chat template its examples were rendered with), not ``student.tokenizer``, which names the
    tokenizer the base student is scored with."""
    if stage == "student":
        return cfg.student.model_copy(update={"model": path})
    return cfg.student.model_copy(update={"model": path, "tokenizer": None}).model_named(f"training stage {stage!r}")


def model_for(cfg, store: RunStore, label: str):
    """The engine config of a model label, or None when that model does not exist yet.

    Labels: ``teacher``, ``student`` (the base), a training stage name (its final model in this
    run; a ``DasdError`` when that stage is being trained or is out of date, ``final_model``), or a
    model directory (loaded with the student's settings and its own tokenizer, or
    ``student.tokenizer`` when it has none).
    """
    if label == "teacher":
        return cfg.teacher
    if label == "student":
        return cfg.student
    if label in {s.name for s in cfg.train.stages}:
        path = final_model(store, label)
        return trained_model(cfg, label, path) if path else None
    path = Path(resolve_model(label))
    if path.is_dir():  # with its own tokenizer when it has one (a checkpoint of weights only: the student's)
        own = any((path / name).is_file() for name in ("tokenizer_config.json", "tokenizer.json"))
        return cfg.student.model_copy(update={"model": label, **({"tokenizer": None} if own else {})}).model_named(
            f"eval.models {label!r}")
    raise ConfigError(f"eval.models: {label!r} is not teacher, student, a training stage name or a model directory")


MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf", ".json", ".model", ".jinja")


BLOCK = 64 * 1024
BLOCKS = 32


def file_digest(path: Path) -> str:
    """sha256 of a file's size and content; a file over ``BLOCKS`` x ``BLOCK`` bytes is sampled:
    ``BLOCKS`` blocks of ``BLOCK`` bytes evenly spaced from its first byte to its last (2 MiB read
    from a checkpoint shard of any size): for model files (``model_version``); import sources are
    hashed whole (``FileDigests``)."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= BLOCKS * BLOCK:
            h.update(f.read())
        else:
            for i in range(BLOCKS):
                f.seek((size - BLOCK) * i // (BLOCKS - 1))
                h.update(f.read(BLOCK))
    return h.hexdigest()


HASH_BLOCK = 1 << 20  # ``file_sha256`` reads a file 1 MiB at a time
RACY_NS = 2_000_000_000  # ``FileDigests`` keeps no digest of a file modified this close to its reading


def file_sha256(path: Path) -> str:
    """sha256 of a file's full content, hex (as ``sha256sum`` prints it), read in ``HASH_BLOCK``
    blocks: memory stays flat whatever the size."""
    h = hashlib.sha256()
    buf = bytearray(HASH_BLOCK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


class FileDigests:
    """``file_sha256`` of files, kept in a JSON file (``path``; None: kept in memory only) by each
    file's stat: absolute path, size, ``mtime_ns`` and inode, so an unchanged file is not read again
    (as git's index and DVC do). Any change of the stat (an edit, a ``touch``, a copy to another path
    or machine) reads the file again; the same content gives the same digest wherever it lies.
    A file modified less than ``RACY_NS`` before it was read is read again next time (git's "racily
    clean" rule: an edit within the same tick of the filesystem's clock may leave the stat as it was).
    Pitfall: an edit in place that deliberately restores the file's size and ``mtime_ns`` (``touch
    -d``, ``os.utime``) is not seen. The JSON file is a cache: one that cannot be read is started
    afresh; ``save`` writes it atomically."""

    def __init__(self, path: Path | None = None):
        self.path = path
        self._entries: dict = {}
        self._changed = False
        if path is not None and path.is_file():
            try:
                entries = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                logger("runs").warning(f"{path}: unreadable digest cache ({e}); the files are read again")
            else:
                self._entries = entries if isinstance(entries, dict) else {}

    def digest(self, file: Path) -> str:
        """``file_sha256`` of ``file``, from the cache while its stat is the one it was read with."""
        key = str(Path(file).resolve())
        st = os.stat(key)
        stat = [st.st_size, st.st_mtime_ns, st.st_ino]
        entry = self._entries.get(key)
        if isinstance(entry, dict) and entry.get("stat") == stat and isinstance(entry.get("sha256"), str):
            return entry["sha256"]
        began = time.time_ns()
        digest = file_sha256(Path(key))
        if st.st_mtime_ns < began - RACY_NS:
            self._entries[key] = {"stat": stat, "sha256": digest}
        else:
            self._entries.pop(key, None)
        self._changed = True
        return digest

    def save(self) -> None:
        """Write the cache (when a file was read since it was loaded)."""
        if self.path is not None and self._changed:
            atomic_write_json(self.path, self._entries)
            self._changed = False


def model_version(model: str) -> str:
    """A short hash that changes when the model under a path changes, for telling whether stored
    results still belong to it. A training stage's ``final`` model: the hash of the stage's
    ``done.json`` (its fingerprint, steps and final loss: a retrained stage gets another; a copied or
    moved run keeps it). Another local directory: the names, sizes and contents (``file_digest``) of
    its weight, config and tokenizer files, so a copy, a re-install or a new download of the same
    files keeps the version. Anything else (a hub id, a served name): ``""``.
    Pitfall: large files are sampled, so a change confined to a few bytes between the sampled
    blocks of a shard over 2 MiB is not seen (a retrained or replaced model changes every block);
    use a new run directory after such an edit."""
    p = Path(resolve_model(model))
    done = p.parent / "done.json"
    if p.name == "final" and done.is_file():
        return config_hash(done.read_text(encoding="utf-8"))[:16]
    if not p.is_dir():
        return ""
    files = [[f.name, file_digest(f)] for f in sorted(p.iterdir()) if f.is_file() and f.suffix in MODEL_FILE_SUFFIXES]
    return config_hash(files)[:16]


def model_identity(store: RunStore, mcfg, legacy: bool = False) -> dict:
    """What a model is, for results stored under its label: the engine kind, its ``model_version``,
    tokenizer, dtype and GGUF file, and, for a model without a version (a hub id, a served name), its
    name. A model known by its files is not named by its path: the same files under another spelling
    are the same model. ``legacy``: the identity as earlier versions wrote it (the name always, as
    ``model_key``), so their stored results are still recognised. Throughput knobs (batch sizes,
    concurrency) are not part of it."""
    path = resolve_model(mcfg.model)
    version = model_version(path)
    return {"kind": mcfg.kind, "model": model_key(store, path) if legacy or not version else "", "version": version,
            "tokenizer": mcfg.tokenizer, "dtype": mcfg.dtype, "gguf_file": mcfg.gguf_file}


def model_versions(cfg, *roles: str) -> dict[str, str]:
    """``model_version`` of the run's models by role: ``teacher``, ``student``, ``teacher_tokenizer``
    and ``student_tokenizer`` (``<side>.tokenizer``, else that side's model). A stage keeps them in
    its manifest config (key ``models``), so a finished stage is redone when one of them changes,
    and the stages that read its outputs see another config hash (``RunStore.fingerprint``)."""
    paths = {"teacher": cfg.teacher.model, "student": cfg.student.model,
             "teacher_tokenizer": cfg.teacher.tokenizer or cfg.teacher.model,
             "student_tokenizer": cfg.student.tokenizer or cfg.student.model}
    return {role: model_version(paths[role]) for role in roles}


def model_names(config: dict) -> dict[str, str]:
    """The names of the models a stage's manifest ``config`` holds an engine section for
    (``ENGINE_SECTIONS``), by the roles of ``model_versions``: ``teacher`` / ``student`` (its
    ``model``) and ``teacher_tokenizer`` / ``student_tokenizer`` (its ``tokenizer``, else its
    ``model``). What tells two models without a version apart (``drop_if_models_changed``)."""
    out = {}
    for side in ENGINE_SECTIONS:
        section = config.get(side)
        if isinstance(section, dict) and isinstance(section.get("model"), str):
            out[side] = section["model"]
            out[f"{side}_tokenizer"] = section.get("tokenizer") or section["model"]
    return out


def name_as_before(name: str, version: str, before_name: str | None, before_version: str | None) -> str:
    """How a stage's ids name a model: as it was named when the stage last ran with the same model
    (the same non-empty ``model_version``), else ``name``. Ids hash the model's name, so without
    this a path spelled another way (relative vs absolute, a copy of the same files) would give the
    stored records new ids and the stage would make them all again beside the old ones. A stage
    recorded before model versions were (``before_version`` None) keeps its name for the same
    directory spelled another way (the same one on disk now); a copy of it is another model then."""
    if not (before_name and version):
        return name
    if before_version == version or before_version is None and _same_dir(before_name, name):
        return before_name
    return name


def _same_dir(a: str, b: str) -> bool:
    """Whether model names ``a`` and ``b`` are the same directory on disk (``os.path.samefile``)."""
    try:
        return Path(resolve_model(a)).is_dir() and os.path.samefile(resolve_model(a), resolve_model(b))
    except (OSError, ConfigError):
        return False


def _without(config: dict, keys: Iterable[str]) -> dict:
    """A copy of JSON data ``config`` without the dotted ``keys`` (those it has)."""
    out = json.loads(json.dumps(config, default=str))
    for key in keys:
        *path, last = key.split(".")
        node = out
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return out


def engine_identity(engine: dict) -> dict:
    """A dumped engine config (``EngineConfig.model_dump``) as a stage records it: without its
    transport-only settings (``engines.config.transport_settings``: server addresses, API key
    variable, concurrency, timeouts, retries and backoff, Ray), which change how requests travel and
    not what comes back, nor its speed-only ones (``engines.config.speed_settings``: batch sizes, the
    log-prob chunk, vLLM's memory share, data parallelism and CUDA graphs), which change how fast. A
    stage's config and the hashes of what it made then stay the same when a farm of servers gets new
    addresses or more concurrency, or a batch size is tuned, so nothing is redone; the settings that
    change results (model, tokenizer, dtype, ``max_model_len``, ``logprob_mode``, ``extra_body``,
    ``tensor_parallel_size``, ...) stay in."""
    return _without(engine, (*transport_settings(), *speed_settings()))


# The keys of a stage's manifest config that hold an engine config (``engine_identity``), and those
# that hold a stage's own settings, with the model that marks its speed-only ones (``stage_identity``).
ENGINE_SECTIONS = ("teacher", "student")
STAGE_SECTIONS = {"sample": SampleConfig, "score": ScoreConfig}


def stage_identity(config: dict) -> dict:
    """A stage's manifest ``config`` as it is recorded and hashed: its engine sections as
    ``engine_identity`` gives them, and its own settings (``STAGE_SECTIONS``: ``sample``, ``score``)
    without their speed-only ones (``sample.batch_prompts``, ``score.batch``)."""
    return {k: engine_identity(v) if k in ENGINE_SECTIONS and isinstance(v, dict) else
            _without(v, speed_settings(STAGE_SECTIONS[k])) if k in STAGE_SECTIONS and isinstance(v, dict) else v
            for k, v in config.items()}


def with_settings_left_out(config: dict) -> bool:
    """Whether a stage's manifest ``config`` records transport-only or speed-only settings (an
    earlier dasd did: ``stage_identity`` leaves them out)."""
    return stage_identity(config) != config


def as_recorded(store: RunStore, stage: str, config: dict) -> dict:
    """``config``, or the config ``stage`` last began with when that one differs from it only by the
    transport-only and speed-only settings an earlier dasd recorded (``stage_identity``): the stage's
    recorded config and hash are kept, so neither it nor the stages that fingerprint it
    (``RunStore.fingerprint``) are redone by the change of dasd, nor by a new server address,
    concurrency or batch size afterwards."""
    before = store.stage_info(stage).get("config")
    if not isinstance(before, dict) or not with_settings_left_out(before):
        return config
    return before if config_hash(stage_identity(before)) == config_hash(config) else config


def teacher_as_hashed_before(store: RunStore, cfg) -> list[dict]:
    """The teacher config whole, as an earlier dasd hashed it into a stage's inputs and verdicts
    (with its transport or speed settings): as configured now, and as `dasd sample` recorded it
    (kept by ``as_recorded`` while only such settings change)."""
    out = [cfg.teacher.model_dump(mode="json")]
    recorded = (store.stage_info("sample").get("config") or {}).get("teacher")
    if isinstance(recorded, dict) and recorded != engine_identity(recorded):
        out.append(recorded)
    return out


def recorded_extra(store: RunStore, stage: str, reads: tuple[str, ...], extras: list):
    """The first of ``extras`` with which ``RunStore.fingerprint`` of ``reads`` is the one ``stage``
    recorded when it began (an earlier dasd's ``extra``), else the first: what a stage that hashed
    engine settings into its inputs passes to ``begin_unless_up_to_date``."""
    recorded = store.stage_info(stage).get("inputs")
    if recorded is not None:
        for extra in extras:
            if store.fingerprint(reads, extra=extra) == recorded:
                return extra
    return extras[0]


def drop_if_models_changed(store: RunStore, stage: str, models: dict[str, str], prefixes: tuple[str, ...],
                           names: dict[str, str] | None = None) -> int:
    """Delete ``stage``'s outputs whose names start with one of ``prefixes`` when the stage last
    began with other model versions (``models``, from ``model_versions``) than now: its records were
    made by models that have changed since, so none of them is resumed or reused. With ``names``
    (``model_names`` of the stage's config now), a model that has no version now nor had one then
    (a served name, a hub id) changed when its name did (the recorded config's ``model_names``): a
    student served under another name is another student. A stage whose manifest entry has no
    versions (run before they were recorded) keeps its outputs. Return how many outputs were removed."""
    recorded = store.stage_info(stage).get("config") or {}
    before = recorded.get("models")
    if before is None:
        return 0
    now, was = names or {}, model_names(recorded) if names else {}
    changed = ", ".join(sorted(k for k in set(before) | set(models) if before.get(k) != models.get(k)
                               or (not models.get(k) and k in was and k in now and was[k] != now[k])))
    if not changed:
        return 0
    store.mark_unfinished(stage)  # a kill before the stage begins again leaves it unfinished
    removed = store.remove_outputs(stage, prefixes)
    logger(stage).info(f"the {changed} model changed since this stage last ran: its {len(removed)} stored output(s) "
                       f"dropped, made again")
    return len(removed)


# Settings in a stage's manifest config (dotted paths) whose change resumes the stage instead of
# dropping its outputs (``drop_if_settings_changed``): those that change how a model is reached or
# run, not the records it writes (the speed-only ones are not in the config: ``stage_identity``).
# ``models`` (the model versions, ``drop_if_models_changed``) stands for the model and tokenizer names; score's
# ``local_naturalness`` is handled by the score stage itself. Score's ``das`` settings type the
# sentences, which select and the report type again from the stored log-probs under the current
# settings (``rules.das.retype``): changing ``das.tau`` re-ranks without a new student pass. A
# student ``max_model_len`` changes only which responses are too long: those rejects are judged again
# (score's ``judged``), the scores stand.
RESUMED_SETTINGS: dict[str, tuple[str, ...]] = {
    "score": ("models", "local_naturalness", "das", "score.local_naturalness", "student.model", "student.tokenizer",
              "student.device", "student.max_model_len", "student.openai", "student.vllm", "student.ray"),
}


def _changed_settings(before, now, path: str = "") -> list[str]:
    """Dotted paths of the settings that differ between two configs; a key that only one of them
    has (a setting added or removed by another dasd version) is not a change."""
    if not (isinstance(before, dict) and isinstance(now, dict)):
        return [] if before == now else [path]
    return [c for k in sorted(set(before) & set(now))
            for c in _changed_settings(before[k], now[k], f"{path}.{k}" if path else k)]


def drop_if_settings_changed(store: RunStore, stage: str, config: dict, prefixes: tuple[str, ...]) -> int:
    """Delete ``stage``'s outputs named by ``prefixes`` when a setting of its ``config`` that shapes
    its records (any but ``RESUMED_SETTINGS`` and ``models``) differs from the one it last began with:
    resuming by id would keep the records made under the old setting (the samples an old filter
    kept, student scores of another ``score.local_window``) beside new ones, and later stages would use them.
    Return how many outputs were removed."""
    before = store.stage_info(stage).get("config")
    skip = ("models", *RESUMED_SETTINGS.get(stage, ()))
    changed = [c for c in _changed_settings(before, config) if not any(c == k or c.startswith(k + ".") for k in skip)]
    if before is None or not changed or not prefixes:
        return 0
    store.mark_unfinished(stage)  # a kill before the stage begins again leaves it unfinished
    names = store.remove_outputs(stage, prefixes)
    logger(stage).info(f"{', '.join(changed)} changed since this stage last ran: its {len(names)} stored output(s) "
                       "dropped, made again")
    return len(names)


def read_shards(store: RunStore, stages: tuple[str, ...]) -> dict[str, list]:
    """What a stage reads of ``stages``, compactly: ``[n, hash]`` of the shard files
    (``RunStore.shard_files``) of each output later stages read records from (all but ``rejects``),
    by ``<stage>/<output>``. New shards are numbered after the old ones, so an output that only grew
    still has the same first ``n`` (``_lost``)."""
    out = {}
    for st in stages:
        for name in store.outputs(st):
            if name != "rejects":
                files = store.shard_files(st, name)
                out[f"{st}/{name}"] = [len(files), config_hash(files)]
    return out


def _lost(store: RunStore, before: dict[str, list]) -> set[str]:
    """The outputs (``<stage>/<output>``) of ``before`` (``read_shards``) that lost a shard since."""
    lost = set()
    for out, (n, h) in before.items():
        files = store.shard_files(*out.split("/", 1))
        if len(files) < n or config_hash(files[:n]) != h:
            lost.add(out)
    return lost


def _chain(stage: str, name: str) -> list[str]:
    """``<stage>/<output>`` of the outputs whose rows the rows of ``name`` refer to, nearest first."""
    out = []
    kind = kind_of(stage, name)
    while kind is not None and kind.upstream is not None:
        stage, name = upstream_output(kind, name)
        out.append(f"{stage}/{name}")
        kind = kind_of(stage, name)
    return out


# The field where a stage that keeps records across a rewrite of its input (``made_from`` of
# ``drop_if_inputs_rewritten``) stores what each record was made from.
INPUT_DIGEST = "input_digest"


def drop_if_inputs_rewritten(store: RunStore, stage: str, reads: tuple[str, ...], prefixes: tuple[str, ...],
                             made_from: Callable[[dict], str] | None = None,
                             relocated: Callable[[dict, str, int], dict] | None = None,
                             also_made_from: tuple[str, ...] = ()) -> int:
    """Delete ``stage``'s outputs named by ``prefixes`` that may hold what was made from input
    records that are gone: an output of ``reads`` lost a shard it had when the stage last began
    (removed, or rewritten under another size: an import redone, a pool dropped, a filter that made
    its kept output again), and resuming by id would keep those records, and references to rows
    that no longer exist. A columnar output goes when an output its rows refer to (directly or
    through others) lost a shard; any other (``rejects``) when any input did. Inputs that only grew
    drop nothing (the stage resumes), nor do they for a stage that began before its shards were
    recorded. Return how many outputs were removed (or, with ``made_from``, gone through).

    ``made_from(input record)``: a digest (128 bits, 32 hex digits) of what the stage makes of an
    input record, its id included (``score``: the
    prompt's messages, the text and the teacher signal; ``filter``: the fields its rules read), which
    the stage stores on each record of those outputs under ``INPUT_DIGEST``. Then a record whose
    input record is still there with the same digest is kept and only the others are dropped
    (``_keep_unchanged``), so only new or changed inputs are made again. ``relocated(record, shard,
    row)``: a kept record of a JSONL output (``rejects``) as it is to be written now that its input
    is at ``(shard file name, row)`` (filter's rejects name where their sample is); None: as it is.
    ``also_made_from``: the outputs (``<stage>/<output>``) that ``made_from`` reads besides a
    columnar output's own rows (filter with ``require_correct``: ``sample/prompts``, whose reference
    answers its verdicts are graded against): one of them losing a shard goes through the columnar
    outputs too, so a kept record made against a prompt record replaced since is dropped, not kept
    under its old digest."""
    before = store.stage_info(stage).get("read")
    lost = _lost(store, {k: v for k, v in (before or {}).items() if k.split("/", 1)[0] in reads})
    if not lost:
        return 0
    store.mark_unfinished(stage)  # a kill before the stage begins again leaves it unfinished

    def made_from_lost(name: str) -> bool:
        return bool(lost & {*_chain(stage, name), *also_made_from}) if kind_of(stage, name) else True

    if made_from is not None:
        return _keep_unchanged(store, stage, prefixes, made_from_lost, made_from, lost, relocated)
    names = store.remove_outputs(stage, prefixes, made_from_lost)
    logger(stage).info(f"{', '.join(sorted(lost))} lost records since this stage last ran: its {len(names)} output(s) "
                       "made from them dropped, made again")
    return len(names)


def _keep_unchanged(store: RunStore, stage: str, prefixes: tuple[str, ...], made_from_lost: Callable[[str], bool],
                    made_from: Callable[[dict], str], lost: set[str],
                    relocated: Callable[[dict, str, int], dict] | None = None) -> int:
    """``drop_if_inputs_rewritten`` with ``made_from``: each output it would drop keeps the records
    whose ``INPUT_DIGEST`` is ``made_from`` of a record of the stage's input now (the outputs its
    columnar outputs refer to, ``columnar.upstream_output``; a columnar output's own upstream
    output): a columnar output is written again referring to those records' rows
    (``RunStore.relink``: what was made is copied, nothing is made again), another (``rejects``)
    keeps them (``RunStore.drop_records``; written as ``relocated`` gives them, when given). The
    rest, and records without a digest (made by an earlier dasd), are dropped. Both write the kept records before the old shards go, and happen
    before the stage begins, so a run killed in between does it again. Memory: 24 bytes per input
    record (``_Rows``); the records are streamed."""
    names = [n for n in store.outputs(stage) if n.startswith(prefixes) and made_from_lost(n)]
    ups = sorted({up for (st, _), k in OUTPUTS.items() if st == stage and (up := KINDS[k].upstream)})
    rows = {(up, o): _Rows(store, up, o, made_from) for up, prefix in ups for o in store.outputs(up)
            if o.startswith(prefix + "-")} if names else {}
    kept = dropped = 0
    for name in names:
        kind = kind_of(stage, name)
        if kind is not None:
            index = rows.get(upstream_output(kind, name))
            k, d = store.relink(stage, name, lambda r, index=index: index.get(r.get(INPUT_DIGEST)) if index else None)
        else:
            def at(r):  # where the record's input is now, else None
                return next((w for x in rows.values() if (w := x.get(r.get(INPUT_DIGEST)))), None)

            if relocated is None:
                d = store.drop_records(stage, name, lambda r: at(r) is None)
                k = sum(1 for _ in store.read(stage, name))
            else:  # every record written again (read from the old shards, which go after the new one is written)
                n = sum(1 for _ in store.read(stage, name))
                store.drop_records(stage, name, lambda r: True, add=(relocated(r, *w) for r in store.read(stage, name)
                                                                     if (w := at(r)) is not None))
                k = sum(1 for _ in store.read(stage, name))
                d = n - k
        kept, dropped = kept + k, dropped + d
    logger(stage).info(f"{', '.join(sorted(lost))} lost records since this stage last ran: its {len(names)} output(s) "
                       f"made from them keep the {kept} record(s) whose input is there unchanged; {dropped} dropped, "
                       "made again where their input is still there")
    return len(names)


class _Rows:
    """Where each record of one columnar output is (its shard file name and row), by ``made_from``
    of the record (``drop_if_inputs_rewritten``; a 128-bit digest in 32 hex digits): the digests as
    two int64 arrays, sorted by the first half (as ``IdSet`` holds ids), and the positions, 24 bytes
    a record. Built by reading the output once."""

    def __init__(self, store: RunStore, stage: str, name: str, made_from: Callable[[dict], str]):
        import numpy as np

        self.shards: list[str] = []
        hi, lo, where = array("q"), array("q"), array("q")
        for rec in store.read(stage, name):
            ref = rec[REF]
            if not self.shards or self.shards[-1] != ref.shard:
                self.shards.append(ref.shard)
            a, b = struct.unpack("<qq", bytes.fromhex(made_from(rec)))
            hi.append(a)
            lo.append(b)
            where.append((len(self.shards) - 1) << _OFFSET_BITS | ref.row)
        h = np.array(hi, dtype=np.int64)
        order = np.argsort(h, kind="stable")
        self._hi, self._lo, self._where = h[order], np.array(lo, dtype=np.int64)[order], np.array(where, dtype=np.int64)[order]

    def get(self, key) -> tuple[str, int] | None:
        """``(shard file name, row)`` of a record whose ``made_from`` is ``key``, else None."""
        try:  # a record's digest as stored: anything but 32 hex digits is no input's
            a, b = struct.unpack("<qq", bytes.fromhex(key))
        except (TypeError, ValueError, struct.error):
            return None
        i = int(self._hi.searchsorted(a))
        while i < len(self._hi) and self._hi[i] == a:
            if self._lo[i] == b:
                w = int(self._where[i])
                return self.shards[w >> _OFFSET_BITS], w & ((1 << _OFFSET_BITS) - 1)
            i += 1
        return None


def input_digests(store: RunStore, stage: str, name: str, leave_out: Collection[str] = ()) -> IdSet:
    """The ``INPUT_DIGEST`` of each record of columnar output ``name`` of ``stage`` that has one
    (records of an earlier dasd have none), as an ``IdSet``: a stage that keeps its records of
    unchanged inputs skips an input whose digest (``made_from``) is in it, since what it made of that
    input is there. Read from the shards' ``extra`` column alone (nothing joined), but those whose
    file names are in ``leave_out`` (filter: the shards on disk when this run of it began)."""
    kind = kind_of(stage, name)
    if kind is None:
        raise ValueError(f"{stage}/{name}: input_digests reads a columnar output only")
    digests = IdSet()
    for path in shard_paths(store.root / stage, name):
        if path.name in leave_out:
            continue
        if path.suffix != ".parquet":
            continue  # a JSONL shard of an earlier dasd: no digests (reading it is refused with its own error)
        for extra in read_table(path, kind, ["extra"])["extra"].to_pylist():
            d = json.loads(extra).get(INPUT_DIGEST) if extra else None
            if d is not None:
                digests.add(d)
    return digests


REWRITTEN, GREW, NEW = "written again", "grew", "is new"  # how an output a stage read changed (``changes_since``)


def changes_since(store: RunStore, stage: str) -> list[tuple[str, str]]:
    """What changed, since ``stage`` last began, in the outputs it read (``read_shards`` recorded by
    ``begin_unless_up_to_date``): ``(<stage>/<output>, how)``, sorted, ``how`` one of ``REWRITTEN`` (it
    lost a shard: ``_lost``), ``GREW`` (more shards) or ``NEW`` (an output of a stage it read that it
    did not read). Empty when nothing did, or for a stage that has not run or recorded no shards."""
    before = store.stage_info(stage).get("read") or {}
    lost = _lost(store, before)
    now = read_shards(store, tuple(sorted({k.split("/", 1)[0] for k in before})))
    out = []
    for name in sorted(set(before) | set(now)):
        if name in lost:
            out.append((name, REWRITTEN))
        elif name not in before:
            out.append((name, NEW))
        elif now.get(name, before[name])[0] > before[name][0]:
            out.append((name, GREW))
    return out


def changed_since(store: RunStore, stage: str) -> list[str]:
    """``changes_since`` in words: ``sample/pool-T1 grew``, ``... written again``, ``... is new``."""
    return [f"{name} {how}" for name, how in changes_since(store, stage)]


def require_current(store: RunStore, stages: tuple[str, ...], by: str) -> None:
    """Refuse (``DasdError``, one line) to let stage ``by`` read the outputs of a finished stage
    whose own inputs changed since it ran (``changed_since``): e.g. `dasd score` after a pool was
    sampled further or imported again and before `dasd filter` (filter's kept rows would leave the
    new samples unscored, or refer to rows that are gone), `dasd select` after `dasd filter` and
    before `dasd score`. `dasd run` runs the stages in order, so it never meets this."""
    for stage in stages:
        if unfinished(store, stage):
            continue  # ``require_finished`` says so
        changed = changed_since(store, stage)
        if changed:
            raise DasdError(f"{store.root}: `dasd {stage}`'s output is older than what it read "
                            f"({'; '.join(changed)} since it ran), so `dasd {by}` would read out-of-date "
                            f"records; run `dasd {stage}`, then `dasd {by}`")


def begin_unless_up_to_date(store: RunStore, stage: str, config: dict, reads: tuple[str, ...], extra=None,
                            outputs: tuple[str, ...] = (), made_from: Callable[[dict], str] | None = None,
                            relocated: Callable[[dict, str, int], dict] | None = None,
                            also_made_from: tuple[str, ...] = ()) -> dict | None:
    """Begin ``stage``, which derives its outputs from those of the stages it ``reads``, unless it is
    up to date; then return its manifest counts (and log one line), else None.

    Refused (``require_finished``) when a stage it reads, or ``import`` (which writes into ``sample``),
    began and did not finish, (``require_ran``) when a stage it reads has not run here, and
    (``require_current``) when one's own inputs changed since it ran. Up to date: finished with this ``config`` on inputs with the same
    ``RunStore.fingerprint`` (of ``reads`` and ``extra``). Otherwise its outputs named by the
    prefixes ``outputs`` are dropped first when ``config["models"]`` (``model_versions``) differs
    from the one the stage last began with (``drop_if_models_changed``), when an input lost
    records since (``drop_if_inputs_rewritten``, which keeps the records of inputs still there
    unchanged when the stage gives ``made_from``, written as ``relocated`` gives them; ``also_made_from``
    names what else ``made_from`` reads), or when a
    setting that shapes its records did (``drop_if_settings_changed``); then ``RunStore.begin_stage``, recording the
    shards read (``read_shards``). Every drop is done before the stage begins with the new
    ``config``, so a run killed in between drops again when it is run again; the stage is marked
    unfinished before the first drop (``RunStore.mark_unfinished``), so meanwhile later stages do
    not take what is left of its outputs as finished.
    """
    require_finished(store, (*reads, "import"), stage)
    require_ran(store, reads, stage)
    require_current(store, reads, stage)
    inputs = store.fingerprint(reads, extra=extra)
    if store.up_to_date(stage, config, inputs):
        logger(stage).info(f"up to date (same settings, models and {' and '.join(reads)} outputs); nothing to do")
        return store.stage_info(stage)["counts"]
    if "models" in config:
        drop_if_models_changed(store, stage, config["models"], outputs, model_names(config))
    drop_if_settings_changed(store, stage, config, outputs)
    drop_if_inputs_rewritten(store, stage, reads, outputs, made_from, relocated, also_made_from)
    store.begin_stage(stage, config, inputs=inputs, read=read_shards(store, reads))
    return None


def unfinished(store: RunStore, stage: str) -> bool:
    """True when ``stage`` began in this run and did not finish (interrupted, or failed)."""
    info = store.stage_info(stage)
    return bool(info) and not info.get("complete")


def existing_run(run_dir, by: str) -> RunStore:
    """The run directory a stage that reads earlier stages' outputs (``by``) writes to, opened to
    write; refused before anything is created when it does not exist or is empty (a failed command
    leaves no run directory behind: ``require_run``)."""
    require_run(run_dir, by)
    return RunStore(run_dir)


def require_run(run_dir, by: str, needs: str = "nothing to read", instead: str = "") -> None:
    """Refuse (``DasdError``, one line) to let command ``by`` start where there is no run: ``run_dir``
    does not exist or is an empty directory (a mistyped ``run_dir``). The line says what ``by``
    ``needs`` and what to run first (or do ``instead``); nothing is created."""
    path = Path(run_dir)
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        raise DasdError(f"{run_dir}: no dasd run here, so `dasd {by}` has {needs}; run `dasd sample` "
                        f"(or `dasd import`) first, or `dasd run` for the whole pipeline{instead}")


def require_finished(store: RunStore, stages: tuple[str, ...] | str, by: str) -> None:
    """Refuse to let stage ``by`` read the outputs of a stage that began and did not finish.

    An interrupted stage leaves complete shards of a partial output; a later stage reading them
    would silently work on part of the data. A stage with no manifest entry (outputs written by
    other means) is not refused.
    """
    for stage in (stages,) if isinstance(stages, str) else stages:
        if unfinished(store, stage):
            started = store.stage_info(stage).get("started", "?")
            raise DasdError(f"{store.root}: stage {stage!r} began at {started} and did not finish, so its outputs are "
                            f"partial; run `dasd {stage}` (or `dasd run`) to finish it before `dasd {by}`")


def require_ran(store: RunStore, stages: tuple[str, ...], by: str) -> None:
    """Refuse to let stage ``by`` run before a stage it reads: one with neither a manifest entry nor
    outputs in this run (``import`` counts for ``sample``, whose pools it writes). Without this, a
    stage run out of order on a fresh run directory would read nothing and finish "complete"."""
    for stage in stages:
        ran = store.stage_info(stage) or store.outputs(stage) or (stage == "sample" and store.stage_info("import"))
        if not ran:
            raise DasdError(f"{store.root}: stage {stage!r} has not run in this run directory, so `dasd {by}` has "
                            f"nothing to read; run `dasd {stage}` first (or `dasd run` for the whole pipeline)")


# ``mix`` settings that do not change what `dasd mix` writes
MIX_FREE_SETTINGS = ("replay", "batch_questions")


def mix_not_current(cfg, store: RunStore) -> str | None:
    """Why the stored mixed-policy examples cannot feed training now, or None when they can: `dasd
    mix` must have finished with the config's ``mix`` section (settings that do not change its
    outputs, ``MIX_FREE_SETTINGS``, aside), with the student it would use now (the newest trained
    before the mixed stage, by ``model_version``: rollouts of a retrained or deleted stage are another
    policy's), with the same teacher, and on the run's prompt records as they are now (a reference
    answer corrected since by `dasd sample` replaces its record: `dasd mix` judges that question's
    continuation again) and selected responses (`dasd select` run again since with other settings
    replaces them: `dasd mix` asks again the questions whose response, which sets the student's cap,
    changed). Models are compared where `dasd mix` recorded them as ``NAME@VERSION`` (by version; one
    without a version, a served name or a hub id, by name); a mix
    made through the library with bare names, or by a dasd that did not record the prompts it read,
    is taken as it is."""
    info = store.stage_info("mix")
    if not info.get("complete"):
        return "`dasd mix` has not finished"
    ran = info.get("config") or {}
    done, want = ran.get("mix") or {}, cfg.mix.model_dump()
    if config_hash({k: v for k, v in done.items() if k not in MIX_FREE_SETTINGS}) \
            != config_hash({k: v for k, v in want.items() if k not in MIX_FREE_SETTINGS}):
        return "`dasd mix` ran with other mix settings"
    mixed = [s.name for s in cfg.train.stages if s.data in MIXED_POOLS]
    try:
        label, path = latest_student(cfg, store, before=mixed[0] if mixed else None)
    except DasdError as err:  # a stage before the mixed one is being trained: its rollouts are not the student's
        return f"the student it would use is not known ({err})"
    for role, model, who in (("student", path, label), ("teacher", cfg.teacher.model, "the teacher")):
        name, at, version = str(ran.get(role) or "").rpartition("@")
        if at and (version != model_version(model) or (not version and name != str(model))):  # no version: by name
            return f"`dasd mix` ran with another {role} than {who} as it is now (retrained or replaced since)"
    read = info.get("read") or {}
    if _lost(store, {k: v for k, v in read.items() if k == f"sample/{PROMPTS}"}):
        return "`dasd mix` judged against prompt records the run has replaced since (a reference answer corrected)"
    if _lost(store, {k: v for k, v in read.items() if k.startswith(f"select/{SELECTED}-")}):
        return ("`dasd select` wrote its selections again since `dasd mix` ran (a selected response sets the student's "
                "cap; `dasd mix` asks again only the questions whose response changed)")
    return None


def scoring_tokenizer_warnings(cfg, tcfg=None) -> list[str]:
    """One line per tokenizer that a stage trained on the run's pools (not a JSONL path) uses and that
    tokenises otherwise than the one the student was scored with (``train.encode.scoring_tokenizer_warning``),
    e.g. ``student.model`` a vLLM-served name with its own tokenizer and ``train.base_model`` a local
    path. Both are loaded as the score engine and the trainer load them; nothing is compared when they
    are the same name (``base_model`` defaults to ``student.model``), or when one cannot be loaded here
    (a hub id offline). ``tcfg``: the train section to check (default ``cfg.train``). `dasd score`
    warns before it scores (the costly pass), `dasd train` again before it trains."""
    from transformers import AutoTokenizer

    from dasd.train.encode import scoring_tokenizer_warning

    tcfg = tcfg or cfg.train
    tcfg = tcfg.model_copy(update={"base_model": resolve_model(tcfg.base_model)})
    st = cfg.student
    scored_name = resolve_model(st.tokenizer or st.model)
    gguf = {"gguf_file": st.gguf_file} if st.gguf_file and st.tokenizer is None and st.kind == "hf" else {}
    trained: dict[str, str] = {}  # tokenizer name -> the config key that names it
    previous = tcfg.base_model
    for s in tcfg.stages:
        init = {"base": tcfg.base_model, "previous": previous}.get(s.init) or resolve_model(s.init)
        previous = init  # a stage's final model keeps the tokenizer it was trained with
        if not Path(s.data).exists():
            trained.setdefault(init, "train.base_model" if init == tcfg.base_model else f"train.stages {s.name!r} init")
    out: list[str] = []
    scored = None
    for name, key in trained.items():
        if name == scored_name:
            continue
        try:
            scored = scored or AutoTokenizer.from_pretrained(scored_name, trust_remote_code=st.trust_remote_code, **gguf)
            tok = AutoTokenizer.from_pretrained(name)
        except Exception as err:  # noqa: BLE001 - transformers raises OSError/ValueError/ImportError variously
            logger("train").debug(f"tokenizers of {scored_name!r} and {name!r} not compared: {err}")
            continue
        warning = scoring_tokenizer_warning(scored, scored_name, tok, name, key)
        if warning:
            out.append(warning)
    return out


class StoredRecords:
    """The records of one stored output, read from the run on every pass (``for r in ...``): training
    data that is iterated, never held (448K selected examples are tens of GB of text)."""

    def __init__(self, store: RunStore, stage: str, name: str):
        self.store, self.stage, self.name = store, stage, name

    def __iter__(self):
        return iter(self.store.read(self.stage, self.name))


def named_pools(cfg, store: RunStore) -> dict[str, StoredRecords | list[dict]]:
    """The training data a stage's ``data`` may name: ``T<temp>``, ``low``, ``high``, ``mixed``,
    ``mixed+replay``. The selected pools are ``StoredRecords`` (read again on each pass); the
    mixed-policy sets, as small as ``mix.n_questions``, are lists.

    ``low`` / ``high``: the selected examples of the lowest / highest temperature pool (`dasd select`
    must have finished, on the scores as they are: ``require_current``); ``mixed``: the mixed-policy examples, only once `dasd mix` has finished
    with the current ``mix`` config and the student and teacher it would use now
    (``mix_not_current``; an interrupted mix never feeds training); ``mixed+replay``:
    those plus off-policy examples of ``mix.replay.source`` (``dasd.rules.mixing.replay_examples``).
    """
    require_finished(store, "select", "train")
    require_current(store, ("select",), "train")
    data: dict[str, StoredRecords | list[dict]] = {}
    for pool in pools(store, "select", TRAIN):
        data[pool] = StoredRecords(store, "select", output(TRAIN, pool))
    temps = sorted(cfg.sample.temperatures)
    for alias, temp in (("low", temps[0]), ("high", temps[-1])):
        if pool_name(temp) in data:
            data[alias] = data[pool_name(temp)]
    stale = mix_not_current(cfg, store)
    if stale is None:
        mixed = list(store.read("mix", MIX_EXAMPLES))
        if mixed:  # a mix that kept nothing: an optional mixed stage is skipped, as before the mix
            data["mixed"] = mixed
            _add_replay(cfg, data)
    elif store.stage_info("mix"):
        logger("train").info(f"mixed-policy data not used: {stale}; run `dasd mix` to make it again")
    return data


def _add_replay(cfg, data: dict[str, StoredRecords | list[dict]]) -> None:
    """``data["mixed+replay"]``: the mixed examples and the replayed ones (logged with the counts)."""
    rc = cfg.mix.replay
    if rc.source not in data:
        logger("train").warning(f"mix.replay.source {rc.source!r} is not a selected pool here "
                                f"(have: {', '.join(sorted(data))}); no mixed+replay data")
        return
    data["mixed+replay"], n = replay_examples(data["mixed"], data[rc.source], rc)
    msg = f"mixed+replay: {n['mixed']} mixed-policy + {n['replay']} off-policy examples from {rc.source!r}"
    if n["replay"] < n["requested"]:
        msg += f" (ratio {rc.ratio:g} asked for {n['requested']}; the pool has {n['available']})"
    logger("train").info(msg)
