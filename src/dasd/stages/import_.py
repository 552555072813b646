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
  assistant ``reasoning_content`` field is kept and folded into ``<think>`` by ``dasd filter``).

Sources are local files, ``save_to_disk`` folders or ``hf:`` hub data sets, streamed
(``dasd.sources``). Imported responses land in ``RUN/sample/pool-T<temperature>`` like sampled
ones, so every later stage treats them the same. Unusable records are quarantined in
``RUN/sample/rejects-*`` with where (file:line) and reason.
"""

from __future__ import annotations

from dasd.errors import ConfigError
from dasd.jsonl import BadLine
from dasd.log import logger
from dasd.prompts import to_prompt
from dasd.records import content_id
from dasd.rules.importing import ImportConfig, parse_chat
from dasd.rules.released import Aligned, Mismatch, align_row, check_teacher_tokenizer, parse_row, resolve_logprob_mode
from dasd.runs import PROMPTS, SAMPLE_POOL, output, pool_name, resolve_model
from dasd.sources import KeyedRows, iter_rows
from dasd.store import RunStore

STAGE = "sample"  # imported responses land in the sample stage's pools
log = logger("import")
MAX_LOGGED_MISMATCHES = 5


def _teacher_tokenizer(cfg):
    from transformers import AutoTokenizer

    name = resolve_model(cfg.teacher.tokenizer or cfg.teacher.model)
    try:
        tok = AutoTokenizer.from_pretrained(name)
    except Exception as e:
        raise ConfigError(f"teacher.tokenizer {name!r} cannot be loaded to align imported token ids ({e})") from e
    check_teacher_tokenizer(tok)
    return tok


def run_import(cfg, store: RunStore | None = None) -> dict:
    """Import ``cfg.import_.source`` into ``RUN/sample``; return counts."""
    ic: ImportConfig = cfg.import_
    if not ic.source:
        raise ConfigError("dasd import needs import.source (a JSONL or Parquet file, a datasets folder or hf:<repo>)")
    store = store or RunStore(cfg.run_dir)
    store.begin_stage("import", ic.model_dump(mode="json"))
    index = KeyedRows(ic.logprobs, "sample_uuid") if ic.logprobs else None
    tokenizer = _teacher_tokenizer(cfg) if index is not None else None
    mode = resolve_logprob_mode(ic.logprob_mode, ic.temperature, ic.top_p)
    rejects: list[dict] = list(index.bad) if index else []
    counts = {"read": 0, "imported": 0, "rejected": 0, "with_logprobs": 0, "logprobs_missing": 0, "logprobs_mismatched": 0}
    seen_uuids: set[str] = set()
    pool = pool_name(ic.temperature)
    with store.writer(STAGE, PROMPTS) as pw, store.writer(STAGE, output(SAMPLE_POOL, pool), shard_size=256) as sw:
        for where, raw in iter_rows(ic.source):
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
                    uuid = str(raw.get("id") or content_id("chat", raw.get("messages")))
                prompt = to_prompt(praw, cfg.data.system_prompt)
            except ValueError as e:
                rejects.append({"where": where, "reason": str(e), "raw": str(raw)[:2000]})
                continue
            if uuid in seen_uuids:
                rejects.append({"where": where, "reason": f"duplicate id {uuid!r}", "raw": str(raw)[:2000]})
                continue
            seen_uuids.add(uuid)
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
                        log.warning(f"{where}: log-probs do not fit the text: {got.reason}")
                elif isinstance(got, Aligned):
                    counts["with_logprobs"] += 1
                    teacher = got.teacher(mode)
                    extra = {**extra, "teacher_covers": teacher.pop("covers")}  # the columnar teacher signal holds arrays only
            pw.add(prompt)
            sw.add(
                {
                    "id": content_id("import", ic.model, uuid), "source_id": uuid, "prompt_id": prompt["id"],
                    "model": ic.model, "temperature": ic.temperature, "top_p": ic.top_p, "seed": 0, "index": 0,
                    "text": text, "finish_reason": raw.get("finish_reason") or "stop", "teacher": teacher, **extra,
                }
            )
            counts["imported"] += 1
    if index is not None:
        orphans = set(index.keys()) - seen_uuids
        for uuid in sorted(orphans):
            rejects.append({"where": f"{ic.logprobs}", "reason": f"log-prob row for unknown sample_uuid {uuid!r}"})
        counts["logprob_orphans"] = len(orphans)
    counts["rejected"] = len(rejects)
    if rejects:
        store.write_rejects(STAGE, rejects)
    store.end_stage("import", counts)
    log.info(
        f"{counts['imported']} responses into pool {pool} ({counts['with_logprobs']} with teacher log-probs as "
        f"{mode}, {counts['logprobs_missing']} missing, {counts['logprobs_mismatched']} mismatched); "
        f"{counts['rejected']} rejected"
    )
    return counts
