"""`dasd import`: bring existing teacher responses into a run, without sampling.

Two layouts (``import.format``):

- ``dasd``: the released DASD data set (``Alibaba-Apsara/Superior-Reasoning-SFT-gpt-oss-120b``;
  docs/released-data.md): rows ``uuid``, ``input``, ``output`` (``<think>`` reasoning ``</think>``
  answer), ``domain``, ``meta`` (a JSON string); one config per temperature (stage1 = T 0.6, stage2
  = T 1.0: set ``import.temperature``). Its ``-Logprob`` companion (``sample_uuid``, ``token_ids``,
  ``logprobs``) is joined **by id**, never by position, and aligned to the reasoning body (and the
  final answer when the ids carry the harmony final channel) by ``dasd.rules.released``. A response
  whose companion row is missing, or whose ids fit neither shape, is imported without teacher
  log-probs (``logprob_mode: missing``, the reason in ``teacher_mismatch``) and counted; ``dasd score`` can
  re-score it with the teacher. ``import.logprob_mode`` declares what the released log-probs are.
- ``chat``: plain chat JSONL: ``messages`` whose last turn is the assistant's response (an
  assistant ``reasoning_content`` field is kept and folded into ``<think>`` by ``dasd filter``);
  the row's other fields go to the prompt (``rules.importing.parse_chat``).

Sources are local files, ``save_to_disk`` folders or ``hf:`` hub data sets, streamed
(``dasd.sources``). Imported responses land in ``RUN/sample/pool-T<temperature>`` like sampled
ones, so every later stage treats them the same; a response's id names its teacher, its pool and
its row's id (``imported_id``). Unusable records are quarantined in ``RUN/sample/rejects-*`` with
where (file:line) and reason.

One import per pool: what an import depends on (``import_config``: the ``import`` settings, the
system prompt, the sources by the sha256 of their whole content, ``source_version``, kept by each
file's stat in ``RUN/sample/import-digests.json`` so an unchanged file is not read again, and with
``import.logprobs`` the teacher tokenizer that aligns them, by ``runs.model_version``) is kept per
pool in the manifest (``stages.import.pools``) and on every imported record and reject
(``import_key``). Importing into a pool again with the same key while its shards are all there
does nothing; any change (or shards gone, e.g. dropped by `dasd sample` for another teacher)
removes that pool's imported shards and rejects of another key first and imports again into new
shard files (records sampled into the same pool stay); the companion, the tokenizer and the source
are opened before that, so a mistyped path fails with the earlier import in place (on a run
directory with no run yet, before the directory is made: a failed import leaves no run folder).
Shards of an interrupted import with the same key are kept and resumed: their rows are not looked
up or aligned again. Shards an earlier dasd imported under ids without the pool are kept while the pool is up to date and no other pool holds their ids;
otherwise they count as another key's. Removed shards are removed through the store
(``RunStore.remove_shards``), so the new ones get new names even after a kill in between; later
stages see the removed shards and drop what they made from them (``runs.drop_if_inputs_rewritten``).
Prompts written by an earlier import stay in ``RUN/sample/prompts`` (a prompt no sample refers to
is not used). A row whose prompt id the run keeps with other messages (a chat row's own ``id``,
from an earlier import or from ``data.prompts``) is quarantined: its response would be joined to
the other text. A prompt the run keeps with the same messages and another ``answer``, ``choices``,
``tests`` or ``domain`` (a reference answer corrected in the source; ``meta`` then comes with them)
has its record replaced as `dasd sample` does (``prompt_edits.EditedPrompts``: one warning; the prompts of the
source's first rows are staged in a temp file, ``prompt_edits.StagedPrompts``, and written once the
rows are read, before the import ends, so a killed import does it on its next run), and `dasd
filter` judges the responses of every pool again. The run keeps one record of a prompt, from its
first row in the source: a later row of it (several responses to one question) with another
``answer``, ``choices`` or ``tests`` (``REFERENCE``: what its responses are graded against) is
quarantined and counted (``disagreeing``); one that differs only in ``domain`` or ``meta`` (a chat
row's own ``model`` or ``usage``) is imported under the first row's record. Likewise a prompt the
run keeps (from another pool's import, or ``data.prompts``) that differs only in ``meta`` keeps the
run's record (counted in one line): meta is not graded against, and a chat row's own fields describe
its response, so importing a second pool does not make every pool judged again.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from dasd import columnar
from dasd.errors import ConfigError, InputError
from dasd.idset import IdSet
from dasd.jsonl import BadLine
from dasd.log import logger
from dasd.prompt_edits import EditedPrompts, StagedPrompts
from dasd.prompts import to_prompt
from dasd.records import content_id
from dasd.rules.importing import ImportConfig, finish_reason, parse_chat
from dasd.rules.released import Aligned, Mismatch, align_row, check_teacher_tokenizer, parse_row, resolve_logprob_mode
from dasd.runs import PROMPTS, SAMPLE_POOL, FileDigests, model_versions, output, pool_name, pools, resolve_model
from dasd.sources import HubSource, KeyedRows, iter_rows, parse_source
from dasd.store import MANIFEST, RunStore, config_hash, shard_paths

STAGE = "sample"  # imported responses land in the sample stage's pools
log = logger("import")
MAX_LOGGED_MISMATCHES = 5
DIGESTS = "import-digests.json"  # in RUN/sample: the sha256 of the sources' files by their stat (runs.FileDigests)


def _teacher_tokenizer(cfg):
    """The teacher tokenizer that aligns imported token ids: ``teacher.tokenizer``, else
    ``teacher.model``'s; a ``ConfigError`` (one line) names the key that was set and its path."""
    from transformers import AutoTokenizer

    key = "teacher.tokenizer" if cfg.teacher.tokenizer else "teacher.model"
    given = cfg.teacher.tokenizer or cfg.teacher.model
    name = resolve_model(given)
    try:
        tok = AutoTokenizer.from_pretrained(name)
    except Exception as e:  # transformers raises OSError/ValueError variously, some over several lines
        where = given if name == given else f"{given} ({name})"
        raise ConfigError(f"{key}: cannot load a tokenizer from {where!r} to align the imported token ids "
                          f"(import.logprobs): {' '.join(str(e).split())}") from None
    check_teacher_tokenizer(tok)
    return tok


def _open_inputs(cfg):
    """The companion (indexed by ``sample_uuid``; None without ``import.logprobs``), the teacher
    tokenizer that aligns it (None without it) and the source's rows (its first read: an empty or
    unreadable source is an ``InputError`` now). A mistyped path fails here, before the stage changes
    anything."""
    ic: ImportConfig = cfg.import_
    index = KeyedRows(ic.logprobs, "sample_uuid") if ic.logprobs else None
    tokenizer = _teacher_tokenizer(cfg) if index is not None else None
    rows = iter_rows(ic.source)
    return index, tokenizer, itertools.chain([next(rows)], rows)


def source_version(spec: str, digests: FileDigests | None = None) -> str:
    """What the rows under a source spec are, by content: a local file by the sha256 of its whole
    content (``sha256:<hex>``, as ``sha256sum`` prints it), a local folder (``save_to_disk``, or a
    hub-like folder after ``hf:``) by its files' relative names and sha256, a hub data set by its spec
    (pin ``#<revision>``: an unpinned hub data set that changes upstream is not noticed). The path's
    spelling does not count. Files are read through ``digests`` (``runs.FileDigests``: a file whose
    stat is unchanged since it was last read is not read again)."""
    digests = digests or FileDigests()
    src = parse_source(spec)
    hub = isinstance(src, HubSource)
    path = Path(src.repo) if hub else src.path
    if hub and not path.is_dir():
        return src.spec()
    which = [src.config, src.split, src.revision] if hub else []
    if path.is_file():  # not hub: an ``hf:`` path is a folder
        return f"sha256:{digests.digest(path)}"
    if path.is_dir():
        files = sorted(f.relative_to(path) for f in path.rglob("*") if f.is_file())
        files = [f for f in files if not any(part.startswith(".") for part in f.parts)]  # caches, locks
        return config_hash([which, [[f.as_posix(), digests.digest(path / f)] for f in files]])
    return f"missing:{spec}"  # reading it fails with its own clear error


def import_config(cfg, digests: FileDigests | None = None) -> dict:
    """What an import's records depend on (module docstring); its hash is the ``import_key``.
    ``digests``: how the sources' files are hashed (``source_version``)."""
    ic: ImportConfig = cfg.import_
    tok = {}
    if ic.logprobs:  # a local tokenizer counts by its files, a hub one by its name
        tok["models"] = model_versions(cfg, "teacher_tokenizer")
        if not tok["models"]["teacher_tokenizer"]:
            tok["teacher_tokenizer"] = cfg.teacher.tokenizer or cfg.teacher.model
    sources = {"source": source_version(ic.source, digests), "logprobs": ic.logprobs and source_version(ic.logprobs, digests)}
    return {**ic.model_dump(mode="json", exclude={"source", "logprobs"}), "system_prompt": cfg.data.system_prompt,
            "sources": sources, **tok}


def imported_id(model: str, pool: str, uuid: str) -> str:
    """The id of an imported response: its teacher, its pool and its row's id. The pool counts: the
    release's two temperatures may hold the same uuid, and later stages join and resume by id."""
    return content_id("import", model, pool, uuid)


def _import_key(path: Path) -> str | None:
    """The ``import_key`` of the records of a pool shard; None for sampled records. ``"legacy"`` for
    records of an earlier dasd: imported before keys were kept (``source_id`` only), or under ids
    that do not name the pool (``content_id("import", model, uuid)``); they are never resumed."""
    if path.suffix != ".parquet":
        return None  # a run of the JSONL-only store: the pool's writer names `dasd convert`
    shard = pq.ParquetFile(path)
    if shard.metadata.num_row_groups == 0:
        return None
    first = shard.read_row_group(0, columns=["id", "model", "extra"]).slice(0, 1).to_pylist()
    if not first:
        return None
    meta = json.loads(first[0]["extra"]) if first[0]["extra"] else {}
    if "source_id" not in meta:
        return None
    if "import_key" not in meta or first[0]["id"] == content_id("import", first[0]["model"], meta["source_id"]):
        return "legacy"
    return meta["import_key"]


def imported_shards(store: RunStore, pool: str) -> dict[Path, str]:
    """The shards of ``sample/pool-<pool>`` written by `dasd import`, with their ``import_key`` (a
    shard holds the records of one writer: an import's or a sampling run's)."""
    keys = {p: _import_key(p) for p in shard_paths(store.root / STAGE, output(SAMPLE_POOL, pool))}
    return {p: k for p, k in keys.items() if k is not None}


def _shared_ids(store: RunStore, pool: str, shards: list[Path]) -> int:
    """How many record ids of ``shards`` (of ``pool``) another pool of ``RUN/sample`` holds too."""
    ids: set[str] = set()
    for path in shards:
        ids.update(columnar.read_table(path, columnar.KINDS["sample"], ["id"])["id"].to_pylist())
    others = [o for o in pools(store, STAGE, SAMPLE_POOL) if o != pool] if ids else []
    return len(ids & set().union(*(store.ids(STAGE, output(SAMPLE_POOL, o)) for o in others)))


def _compact(teacher: dict) -> dict:
    """The teacher signal with numpy arrays, as records read from the store hold it: a shard's
    records are buffered before they are written, and Python lists of a long response take about
    200 bytes a token (256 responses of 10K tokens: 0.5 GB), these 16."""
    return {**teacher, "token_ids": np.asarray(teacher["token_ids"], np.int32),
            "offsets": np.asarray(teacher["offsets"], np.int32).reshape(-1, 2),
            "logprobs": np.asarray(teacher["logprobs"], np.float32)}


def _outcomes(shards: list[Path]) -> dict[str, str]:
    """Record id -> which count it went to (``with_logprobs``, ``logprobs_mismatched`` or
    ``logprobs_missing``), for the records of an import's shards already on disk."""
    out: dict[str, str] = {}
    for path in shards:
        t = columnar.read_table(path, columnar.KINDS["sample"], ["id", "teacher_logprob_mode", "extra"])
        for rid, mode, extra in zip(*(t[c].to_pylist() for c in ("id", "teacher_logprob_mode", "extra"))):
            if mode != "missing":
                out[rid] = "with_logprobs"
            else:
                out[rid] = "logprobs_mismatched" if "teacher_mismatch" in json.loads(extra or "{}") else "logprobs_missing"
    return out


REFERENCE = ("answer", "choices", "tests")  # what a prompt's responses are graded against (``dasd.grading``)


class _FirstRows:
    """The reference fields (``REFERENCE``) of the first row of each prompt of a source, held as
    digests (``dasd.idset.IdSet``: about 20 bytes a prompt and field) to tell the later rows of a
    prompt (several responses to one question) that disagree with it."""

    def __init__(self):
        self.ids = IdSet()
        self.refs = IdSet()

    def differ(self, prompt: dict) -> list[str] | None:
        """None for the first row of ``prompt``'s id (its reference fields are kept); else the
        reference fields in which ``prompt`` differs from that row's (empty: none)."""
        keys = {f: content_id(prompt["id"], f, prompt.get(f)) for f in REFERENCE}
        if self.ids.add(prompt["id"]):
            self.refs.update(keys.values())
            return None
        return [f for f, k in keys.items() if k not in self.refs]


def run_import(cfg, store: RunStore | None = None) -> dict:
    """Import ``cfg.import_.source`` into ``RUN/sample``, unless the pool holds this import already
    (module docstring); return counts."""
    ic: ImportConfig = cfg.import_
    if not ic.source:
        raise ConfigError("dasd import needs import.source (a JSONL or Parquet file, a datasets folder or hf:<repo>)")
    # no run there yet (nothing can be up to date): the inputs are opened before the run directory is
    # made, so a mistyped path leaves no run folder behind
    inputs = _open_inputs(cfg) if store is None and not (Path(cfg.run_dir) / MANIFEST).is_file() else None
    store = store or RunStore(cfg.run_dir)
    pool = pool_name(ic.temperature)
    digests = FileDigests(store.root / STAGE / DIGESTS)
    stage_cfg = import_config(cfg, digests)
    digests.save()
    key = config_hash(stage_cfg)
    done = (store.stage_info("import").get("pools") or {}).get(pool) or {}
    mine = imported_shards(store, pool)
    if done.get("import_key") == key and sorted([p.name, p.stat().st_size] for p in mine) == done.get("shards"):
        shared = _shared_ids(store, pool, [p for p, k in mine.items() if k == "legacy"])
        if not shared:
            log.info(f"pool {pool}: up to date (the same sources, settings and teacher tokenizer); nothing to do")
            return done["counts"]
        log.warning(f"pool {pool}: {shared} of its records, imported by an earlier dasd under ids that do not name "
                    "the pool, have the ids of another pool's records (later stages would count each such id once); "
                    "importing it again under ids that name the pool")
    # open the companion, the tokenizer and the source before removing anything: a path mistyped
    # fails here and leaves the pool's earlier import in place
    index, tokenizer, rows = inputs or _open_inputs(cfg)
    mode = resolve_logprob_mode(ic.logprob_mode, ic.temperature, ic.top_p)
    store.begin_stage("import", stage_cfg)  # from here until it ends, later stages refuse to read the pools
    stale = [p for p, k in mine.items() if k != key]
    old_ids = sum(k == "legacy" for k in mine.values())
    # the store numbers the new shards after the removed ones (even if this run is killed before it
    # writes one), so later stages see that the pool changed
    store.remove_shards(STAGE, output(SAMPLE_POOL, pool), stale)
    gone = store.drop_records(STAGE, "rejects", lambda r: r.get("import_pool") == pool and r.get("import_key") != key)
    if old_ids:
        log.info(f"pool {pool}: {old_ids} shard(s) imported by an earlier dasd, whose ids do not name the pool, "
                 "removed; importing them again under ids that do")
    if len(stale) > old_ids or gone:
        log.info(f"pool {pool}: {len(stale) - old_ids} shard(s) and {gone} reject(s) of an earlier import with other "
                 "sources, settings or teacher tokenizer removed; importing again")
    resumed = _outcomes([p for p, k in mine.items() if k == key])
    rejects: list[dict] = list(index.bad) if index else []
    n_companion_bad = len(rejects)  # the source's own rejects follow
    counts = {"read": 0, "imported": 0, "rejected": 0, "disagreeing": 0, "with_logprobs": 0, "logprobs_missing": 0,
              "logprobs_mismatched": 0}
    seen_uuids = IdSet()  # as digests (``dasd.idset``): a Python set of 448K uuids is tens of MB
    quarantined = IdSet()  # uuids of rows quarantined for their own fields: their log-prob rows are no orphans
    # the run's prompts: an id kept with other messages is not joined to this row's; one kept with
    # other reference fields or domain is replaced; one that differs only in meta (a chat row's own
    # usage or model, another pool's) is kept as it is
    edits = EditedPrompts(store, log, ignore=("meta",))
    firsts = _FirstRows()
    disagreeing: dict | None = None  # the first row quarantined for disagreeing with its prompt's first row
    with StagedPrompts(store.root) as staged:  # the first rows of the prompts whose kept record changes
        with store.writer(STAGE, PROMPTS) as pw, store.writer(STAGE, output(SAMPLE_POOL, pool), shard_size=256) as sw:
            for where, raw in rows:
                counts["read"] += 1
                if isinstance(raw, BadLine):
                    rejects.append(raw.to_record())
                    continue
                row = None
                try:
                    if ic.format == "dasd":
                        row = parse_row(raw)
                        praw, text, uuid, extra = row.prompt, row.output, row.uuid, {}
                    else:
                        praw, text, extra = parse_chat(raw)
                    prompt = to_prompt(praw, cfg.data.system_prompt)
                    if ic.format == "chat":  # the row's own id (as the prompt's: checked, as a string; 0 too), else its hash
                        uuid = prompt["id"] if raw.get("id") is not None else content_id("chat", raw.get("messages"))
                    finish = finish_reason(raw)
                except ValueError as e:
                    rejects.append({"where": where, "reason": str(e), "raw": str(raw)[:2000]})
                    if isinstance(raw.get("uuid"), str):
                        quarantined.add(raw["uuid"])
                    continue
                if uuid in seen_uuids:
                    rejects.append({"where": where, "reason": f"duplicate id {uuid!r}", "raw": str(raw)[:2000]})
                    continue
                seen_uuids.add(uuid)
                if edits.other_messages(prompt):
                    rejects.append({"where": where, "raw": str(raw)[:2000], "reason": (
                        f"prompt id {prompt['id']!r} is in the run with other messages ({store.root / STAGE}/prompts-*): "
                        "this response would be joined to that text; give the row another id")})
                    continue
                differ = firsts.differ(prompt)
                if differ is None:  # the prompt's first row: its record is the one the run keeps
                    edits.check(prompt)
                    if prompt["id"] in edits.changed:
                        staged.add(prompt)
                elif differ:
                    rejects.append({"where": where, "raw": str(raw)[:2000], "reason": (
                        f"prompt {prompt['id']!r}: another {' and '.join(differ)} than an earlier row of it in this "
                        f"source (here {differ[0]} {prompt.get(differ[0])!r:.60}); the run keeps one record of a "
                        "prompt and grades all its responses against it: make the prompt's rows agree")})
                    disagreeing = disagreeing or rejects[-1]
                    counts["disagreeing"] += 1
                    quarantined.add(uuid)
                    continue
                rid = imported_id(ic.model, pool, uuid)
                if rid in resumed:  # on disk from an interrupted run of this import: not read or aligned again
                    pw.add(prompt)
                    counts["imported"] += 1
                    if index is not None and row is not None:
                        counts[resumed[rid]] += 1
                    continue
                teacher = {"offsets": [], "logprobs": [], "logprob_mode": "missing"}
                if index is not None and row is not None:
                    hit = index.get(uuid)
                    got = align_row(row, hit[1] if hit else None, tokenizer)
                    if got is None:
                        counts["logprobs_missing"] += 1
                    elif isinstance(got, Mismatch):
                        counts["logprobs_mismatched"] += 1
                        extra = {**extra, "teacher_mismatch": got.reason}
                        if counts["logprobs_mismatched"] <= MAX_LOGGED_MISMATCHES:
                            log.warning(f"{where}: its log-probs ({hit[0]}) do not fit the text: {got.reason}")
                    elif isinstance(got, Aligned):
                        counts["with_logprobs"] += 1
                        teacher = _compact(got.teacher(mode))
                        extra = {**extra, "teacher_covers": teacher.pop("covers")}  # the columnar teacher signal holds arrays only
                pw.add(prompt)
                sw.add(
                    {
                        "id": rid, "source_id": uuid, "prompt_id": prompt["id"],
                        "model": ic.model, "temperature": ic.temperature, "top_p": ic.top_p, "seed": 0, "index": 0,
                        "text": text, "finish_reason": finish, "teacher": teacher, **extra,
                        "import_key": key,
                    }
                )
                counts["imported"] += 1
        edits.update(staged, ic.source)
    if edits.kept_as_is:
        log.info(f"{edits.kept_as_is} prompt(s) of the source differ from the run's record only in meta (e.g. a chat "
                 "row's own usage or model): the run keeps its records")
    if disagreeing is not None:
        log.warning(f"{counts['disagreeing']} row(s) quarantined for disagreeing with an earlier row of their prompt "
                    f"(e.g. {disagreeing['where']}: {disagreeing['reason']}); see {store.root / STAGE}/rejects-*.jsonl")
    if index is not None:
        orphans = sorted(u for u in index.keys() if u not in seen_uuids and u not in quarantined)
        for uuid in orphans:
            rejects.append({"where": index.where(uuid), "reason": f"log-prob row for unknown sample_uuid {uuid!r}"})
        counts["logprob_orphans"] = len(orphans)
        counts["logprob_rows_rejected"] = n_companion_bad + len(orphans)
    counts["rejected"] = len(rejects) - counts.get("logprob_rows_rejected", 0)  # rows of the source: read = imported + rejected
    if rejects:
        store.write_rejects(STAGE, [{**r, "import_pool": pool, "import_key": key} for r in rejects])
    if counts["read"] and not counts["imported"]:  # the stage stays unfinished: later stages refuse the pool
        example = rejects[n_companion_bad]  # every row read was rejected: its first one
        raise InputError(f"{ic.source}: every one of its {counts['read']} row(s) was rejected with import.format "
                         f"{ic.format!r} (the first, {example.get('where', '?')}: {example.get('reason', '?')}); "
                         f"see {store.root / STAGE}/rejects-*.jsonl")
    shards = sorted([p.name, p.stat().st_size] for p in imported_shards(store, pool))
    by_pool = {**(store.stage_info("import").get("pools") or {}), pool: {"import_key": key, "shards": shards, "counts": counts}}
    store.end_stage("import", counts, pools=by_pool)
    signal = (f"{counts['with_logprobs']} with teacher log-probs as {mode}, {counts['logprobs_missing']} missing, "
              f"{counts['logprobs_mismatched']} mismatched" if ic.logprobs else "no teacher log-probs: dasd score "
              "re-scores them with the teacher unless score.rescore_teacher=never")
    bad_lp = (f"; {counts['logprob_rows_rejected']} log-prob row(s) rejected ({counts['logprob_orphans']} for no "
              "response)" if counts.get("logprob_rows_rejected") else "")
    log.info(f"{counts['imported']} responses into pool {pool} ({signal}); {counts['rejected']} rejected{bad_lp}")
    return counts
