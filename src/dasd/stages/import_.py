"""`dasd import`: bring existing teacher responses into a run, without sampling.

Two layouts:

- ``dasd``: the released DASD data set (``Alibaba-Apsara/Superior-Reasoning-SFT-gpt-oss-120b``):
  fields ``uuid``, ``input`` (the question: a string or a chat list), ``output`` (the response),
  ``domain``, ``meta``; one file per config (stage1 = T 0.6, stage2 = T 1.0: set ``import.temperature``).
  Its ``-Logprob`` companion (``sample_uuid``, ``token_ids``, ``logprobs``) is joined **by id**,
  never by position. A response whose log-prob row is missing, or whose token ids do not decode to
  its text with the teacher tokenizer, is imported without teacher log-probs
  (``logprob_mode: missing``) and counted; ``dasd score`` can re-score it with the teacher.
- ``chat``: plain chat JSONL: ``messages`` whose last turn is the assistant's response (an
  assistant ``reasoning_content`` field is kept and folded into ``<think>`` by ``dasd filter``).

Imported responses land in ``RUN/sample/pool-T<temperature>`` like sampled ones, so every later
stage treats them the same. Unusable records are quarantined in ``RUN/sample/rejects-*`` with
file:line and reason.
"""

from __future__ import annotations

import json
from pathlib import Path

from dasd.errors import ConfigError, InputError
from dasd.jsonl import BadLine, finite
from dasd.log import logger
from dasd.prompts import _iter_raw, to_prompt
from dasd.records import content_id
from dasd.rules.importing import ImportConfig, parse_chat, parse_dasd
from dasd.runs import PROMPTS, SAMPLE_POOL, output, pool_name, resolve_model
from dasd.store import RunStore

STAGE = "sample"  # imported responses land in the sample stage's pools


class _LogprobIndex:
    """Companion rows by ``sample_uuid``: JSONL is indexed by byte offset (not held in memory)."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: dict[str, dict] = {}
        self.offsets: dict[str, tuple[int, int]] = {}
        self.bad: list[dict] = []
        if not path.is_file():
            raise InputError(f"{path}: log-prob file not found")
        if path.suffix == ".parquet":
            for where, row in _iter_raw(path):
                self._add_row(where, row)
            return
        with path.open("rb") as fh:
            lineno = 0
            while True:
                pos = fh.tell()
                line = fh.readline()
                if not line:
                    break
                lineno += 1
                if not line.strip():
                    continue
                try:
                    uuid = json.loads(line).get("sample_uuid")
                except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
                    self.bad.append({"where": f"{path}:{lineno}", "reason": f"log-prob row is not a JSON object: {e}"})
                    continue
                if not isinstance(uuid, str):
                    self.bad.append({"where": f"{path}:{lineno}", "reason": "log-prob row has no string 'sample_uuid'"})
                elif uuid in self.offsets:
                    self.bad.append({"where": f"{path}:{lineno}", "reason": f"duplicate sample_uuid {uuid!r}"})
                else:
                    self.offsets[uuid] = (pos, lineno)

    def _add_row(self, where: str, row: dict) -> None:
        uuid = row.get("sample_uuid")
        if not isinstance(uuid, str):
            self.bad.append({"where": where, "reason": "log-prob row has no string 'sample_uuid'"})
        elif uuid in self.rows:
            self.bad.append({"where": where, "reason": f"duplicate sample_uuid {uuid!r}"})
        else:
            self.rows[uuid] = row

    def ids(self) -> set[str]:
        return set(self.rows) | set(self.offsets)

    def get(self, uuid: str) -> dict | None:
        if uuid in self.rows:
            return self.rows[uuid]
        if uuid not in self.offsets:
            return None
        with self.path.open("rb") as fh:
            fh.seek(self.offsets[uuid][0])
            return json.loads(fh.readline())


def run_import(cfg, store: RunStore | None = None) -> dict:
    """Import ``cfg.import_.source`` into ``RUN/sample``; return counts."""
    ic: ImportConfig = cfg.import_
    if not ic.source:
        raise ConfigError("dasd import needs import.source (a JSONL or Parquet file of responses)")
    store = store or RunStore(cfg.run_dir)
    store.begin_stage("import", ic.model_dump(mode="json"))
    src = Path(ic.source)
    if not src.exists():
        raise InputError(f"{src}: import source not found")
    index = _LogprobIndex(Path(ic.logprobs)) if ic.logprobs else None
    tokenizer = None
    if index is not None:
        from transformers import AutoTokenizer

        name = resolve_model(cfg.teacher.tokenizer or cfg.teacher.model)
        try:
            tokenizer = AutoTokenizer.from_pretrained(name)
        except Exception as e:
            raise ConfigError(f"teacher.tokenizer {name!r} cannot be loaded to align imported token ids ({e})") from e
    rejects: list[dict] = list(index.bad) if index else []
    counts = {"read": 0, "imported": 0, "rejected": 0, "with_logprobs": 0, "logprobs_missing": 0, "logprobs_mismatched": 0}
    seen_uuids: set[str] = set()
    pool = pool_name(ic.temperature)
    with store.writer(STAGE, PROMPTS) as pw, store.writer(STAGE, output(SAMPLE_POOL, pool), shard_size=256) as sw:
        for where, raw in _iter_raw(src):
            counts["read"] += 1
            if isinstance(raw, BadLine):
                rejects.append(raw.to_record())
                continue
            try:
                if ic.format == "dasd":
                    praw, text, uuid = parse_dasd(raw)
                    extra = {}
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
            if index is not None:
                row = index.get(uuid)
                if row is None:
                    counts["logprobs_missing"] += 1
                else:
                    teacher = _align(row, text, tokenizer, where, counts) or teacher
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
        orphans = index.ids() - seen_uuids
        for uuid in sorted(orphans):
            rejects.append({"where": f"{ic.logprobs}", "reason": f"log-prob row for unknown sample_uuid {uuid!r}"})
        counts["logprob_orphans"] = len(orphans)
    counts["rejected"] = len(rejects)
    if rejects:
        store.write_rejects(STAGE, rejects)
    store.end_stage("import", counts)
    logger("import").info(
        f"{counts['imported']} responses into pool {pool} ({counts['with_logprobs']} with teacher log-probs, "
        f"{counts['logprobs_missing']} missing, {counts['logprobs_mismatched']} mismatched); {counts['rejected']} rejected"
    )
    return counts


def _align(row: dict, text: str, tokenizer, where: str, counts: dict) -> dict | None:
    """Teacher signal from a companion row, or None (counted as mismatched) if ids don't fit the text."""
    from dasd.engines.offsets import token_offsets
    from dasd.errors import DasdError

    ids, lps = row.get("token_ids"), row.get("logprobs")
    if not isinstance(ids, list) or not isinstance(lps, list) or len(ids) != len(lps) or not finite(lps):
        counts["logprobs_mismatched"] += 1
        return None
    try:
        offsets = token_offsets(tokenizer, ids, text)
    except DasdError:
        counts["logprobs_mismatched"] += 1
        return None
    counts["with_logprobs"] += 1
    return {"token_ids": ids, "offsets": [list(o) for o in offsets], "logprobs": [float(x) for x in lps], "logprob_mode": "raw"}
