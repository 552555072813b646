"""`dasd filter`: normalise teacher delimiters and drop unusable responses, with a funnel per pool.

Reads ``RUN/sample/pool-<pool>``; writes ``RUN/filter/kept-<pool>`` (normalised samples) and
``RUN/filter/rejects`` (each dropped sample with ``rule``, ``reason`` and ``where``). The rules and
their thresholds are in ``dasd.text.filters`` (docs/filters.md). Length is counted with the
**student's** tokenizer. With ``filter.require_correct``, responses to prompts that carry a
reference (an answer, choices or tests: ``rules.mixing.has_reference``) are graded (``dasd.grading``:
math, multiple choice, code in the sandbox) and wrong ones dropped. Samples stream through in
shard order; a kept sample is written as a reference to its sample row (no copy of its token
arrays) unless normalisation rewrote it. A reject records the rule, the reason, where the sample
is (shard and row) and the start of its text. A finished filter with the same settings and the
same sample pools is not redone; one run again with other ``filter`` settings (or another teacher or
student tokenizer) drops its outputs and judges every sample again.

Each kept and rejected record carries ``input_digest``: what its verdict was made from
(``judged_input``: the sample's text, teacher signal and the other fields the rules read, and with
``require_correct`` the prompt's reference; not its import key). A sample whose verdict is on disk
with its digest as it is now is counted in the funnel and not judged again: an interrupted run
resumes so, and when a sample pool was written again (imported again), its kept rows whose sample
came back unchanged are re-linked to the new rows and its rejects kept, naming where the sample is
now (``runs.drop_if_inputs_rewritten`` with ``made_from``); only new or changed samples are judged.
The manifest's ``judged`` says how many samples of each pool the run judged, counting those an
interrupted attempt of it (begun with the same settings and inputs) judged before it was killed, so
a resumed run records an uninterrupted one's; each pool's verdicts are on disk before the next pool
is judged, so a run killed in one judges none of the pools before it again. When `dasd sample`
updated the run's prompts (a reference answer corrected under the same id and messages), filter
with ``require_correct`` judges that prompt's samples again, and only those: the prompts output is
then an input its verdicts are made from (``also_made_from``), so the kept outputs are re-linked
without the samples whose digest changed and the rejects keep only the others; a sample the new
answer passes is kept, one it fails rejected. A kept output that still holds a sample the rules
now drop (a filter of an earlier dasd, which did not record the shards it read) is made again,
with one warning. A record that cannot be filtered (``id``, ``prompt_id`` or
``text`` missing or not a string) is quarantined under rule ``malformed``.
"""

from __future__ import annotations

import copy
import hashlib
import json

import numpy as np

from dasd.errors import DasdError
from dasd.grading.grade import is_correct
from dasd.log import logger
from dasd.columnar import REF
from dasd.records import content_id
from dasd.rules.mixing import has_reference
from dasd.idset import IdSet
from dasd.runs import (INPUT_DIGEST, KEPT, PROMPTS, SAMPLE_POOL, RunPrompts, begin_unless_up_to_date, existing_run, input_digests,
                       model_versions, output, pools, resolve_model)
from dasd.store import RunStore, read_jsonl_shard, shard_paths
from dasd.text.filters import Drop, Funnel, apply_filters

STAGE = "filter"
log = logger(STAGE)


def student_token_counter(cfg):
    """``count_tokens(text)`` for the ``length`` rule, with the student's tokenizer (no weights).

    A text of ``b`` UTF-8 bytes has at most ``b + 1`` tokens (a token covers at least one byte with
    byte-level BPE or byte fallback; at most one prefix marker is inserted). When that bound is
    within ``filter.max_student_tokens`` the text cannot be too long, so the bound is returned
    without tokenising (the rule's verdict is the same); the tokenizer is loaded on the first text
    that needs it.
    """
    tok = None
    limit = cfg.filter.max_student_tokens

    def count(text: str) -> int:
        nonlocal tok
        bound = len(text.encode("utf-8")) + 1
        if limit is not None and bound <= limit:
            return bound
        if tok is None:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(resolve_model(cfg.student.tokenizer or cfg.student.model))
        return len(tok.encode(text, add_special_tokens=False))

    return count


def malformed(sample: dict) -> str | None:
    """Why a sample record cannot be filtered (a field missing or of the wrong type), or None."""
    for field in ("id", "prompt_id", "text"):
        if not isinstance(sample.get(field), str):
            got = "missing" if field not in sample else f"a {type(sample[field]).__name__}, not a string"
            return f"field {field!r}: {got}"
    return None


# The sample fields filter's rules and normalisation read (``text.filters.apply_filters``), besides
# the teacher signal; ``judged_input`` digests them.
JUDGED_FIELDS = ("id", "prompt_id", "text", "reasoning_content", "reasoning", "tool_calls", "function_call",
                 "finish_reason")


def judged_input(sample: dict, prompt: dict | None = None) -> str:
    """What filter's verdict on a sample (and the kept record it writes) is made from, as a digest
    (BLAKE2b-128, 32 hex digits): the sample's ``JUDGED_FIELDS`` and its whole teacher signal (token
    ids, offsets, log-probs, mode, tokens) and, with ``filter.require_correct``, the reference the
    answer is graded against (``prompt``'s ``answer``, ``choices`` and ``tests``; None when not
    graded). Not its ``import_key``, ``source_id`` or other metadata: a pool imported again gives the
    same digests to the same records. Stored on each kept and rejected record (``runs.INPUT_DIGEST``):
    a record whose sample has the same digest now is not judged again. Any record can be digested
    (a malformed one too)."""
    teacher = sample.get("teacher") if isinstance(sample.get("teacher"), dict) else {}
    head = [[sample.get(f) for f in JUDGED_FIELDS], sorted((k, v) for k, v in teacher.items() if not isinstance(v, np.ndarray)),
            None if prompt is None else [prompt.get("answer"), prompt.get("choices"), prompt.get("tests")]]
    h = hashlib.blake2b(json.dumps(head, ensure_ascii=False, default=repr).encode("utf-8", "surrogatepass"), digest_size=16)
    for k in sorted(k for k, v in teacher.items() if isinstance(v, np.ndarray)):
        a = np.ascontiguousarray(teacher[k])
        h.update(json.dumps([k, a.dtype.str, a.shape]).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _where(store: RunStore, shard: str, row: int) -> str:
    """Where a sample is, as a reject names it: its shard file and row."""
    return f"{store.root / 'sample' / shard} row {row}"


def _verdict_shards(store: RunStore) -> list[str]:
    """The file names of the shards of filter's kept outputs and rejects on disk."""
    return sorted(p.name for n in store.outputs(STAGE) if n.startswith(KEPT + "-") or n == "rejects"
                  for p in shard_paths(store.root / STAGE, n))


def _shards_before(store: RunStore) -> set[str]:
    """The shards of verdicts (``_verdict_shards``) that were on disk when this run of the stage
    began: its settings and inputs (``config_hash``, ``inputs``) recorded with them in the manifest
    (``judging``) the first time it began; a run interrupted and begun again with the same ones is
    the same run, and the verdicts in the other shards were made by it (the manifest's ``judged``)."""
    info = store.stage_info(STAGE)
    run = [info.get("config_hash"), info.get("inputs")]
    judging = info.get("judging")
    if not (isinstance(judging, dict) and judging.get("run") == run and isinstance(judging.get("before"), list)):
        info["judging"] = judging = {"run": run, "before": _verdict_shards(store)}
        store.save_manifest()
    return set(judging["before"])


def run_filter(cfg, store: RunStore | None = None) -> dict:
    """Filter every sample pool; return the funnel (also in the manifest)."""
    store = store or existing_run(cfg.run_dir, STAGE)
    fc = cfg.filter
    stage_cfg = {**fc.model_dump(mode="json"), "models": model_versions(cfg, "teacher", "student_tokenizer")}
    if fc.require_correct:  # a filter of an earlier dasd graded only prompts with an answer: its verdicts are made again
        stage_cfg["graded"] = "answer, choices, tests"
    prompts: RunPrompts | None = None  # read when first needed: not for a stage that is up to date

    def made_from(sample: dict) -> str:
        nonlocal prompts
        if not fc.require_correct:
            return judged_input(sample)
        prompts = prompts or RunPrompts(store)
        return judged_input(sample, prompts.get(sample.get("prompt_id"), {}))

    def relocated(reject: dict, shard: str, row: int) -> dict:
        where = _where(store, shard, row)
        return {**reject, "where": where if reject.get("rule") == "malformed" else f"{where} sample {reject['id']}"}

    # a sample pool written again (imported again) keeps the verdicts of the samples that came back unchanged
    done = begin_unless_up_to_date(store, STAGE, stage_cfg, ("sample",), extra=cfg.student.tokenizer or cfg.student.model,
                                   outputs=(KEPT + "-", "rejects"), made_from=made_from, relocated=relocated,
                                   also_made_from=(f"sample/{PROMPTS}",) if fc.require_correct else ())
    if done is not None:
        return done
    prompts = prompts or RunPrompts(store)
    count_tokens = student_token_counter(cfg) if fc.max_student_tokens is not None else None

    def correct(sample: dict) -> bool:
        p = prompts.get(sample["prompt_id"], {})
        if not has_reference(p):  # nothing to grade against: kept
            return True
        try:
            return is_correct(p, sample["text"])
        except ValueError as err:  # the prompt's reference cannot be graded (bad tests, an answer that is no choice)
            raise DasdError(f"filter.require_correct: cannot grade prompt {p.get('id')!r}: {err}") from None

    shards_before = _shards_before(store)
    rejected: dict[tuple, IdSet] = {}  # (pool, rule) -> the digests of the samples quarantined under it
    rejected_now: dict[str, IdSet] = {}  # pool -> those of them quarantined by this run (interrupted since)
    seen = IdSet()  # each id once, the first, as ``RunStore.read`` gives them
    for path in shard_paths(store.root / STAGE, "rejects"):
        for r in read_jsonl_shard(path):
            if (r.get("id") is None or seen.add(r["id"])) and INPUT_DIGEST in r:
                rejected.setdefault((r.get("pool"), r.get("rule")), IdSet()).add(r[INPUT_DIGEST])
                if path.name not in shards_before:
                    rejected_now.setdefault(r.get("pool"), IdSet()).add(r[INPUT_DIGEST])

    def judge(pool: str, funnel: Funnel, rejects) -> tuple[int, int]:
        """Filter ``pool`` into ``kept-<pool>`` and the rejects: a sample whose verdict is on disk made
        from it as it is now (its ``judged_input``) keeps it and is counted, not judged again (an
        interrupted run resumed, a pool imported again); return how many samples were judged and how
        many of them the kept output holds that the rules drop now. Judged: by this run, or by an
        interrupted attempt of it (a verdict in a shard written since it began, ``_shards_before``),
        so a resumed run counts what an uninterrupted one does."""
        judged = stale = 0
        kept_digests = input_digests(store, STAGE, output(KEPT, pool))
        kept_now = input_digests(store, STAGE, output(KEPT, pool), leave_out=shards_before)
        quarantined_now = rejected_now.get(pool, IdSet())
        quarantined = {rule: ids for (p, rule), ids in rejected.items() if p == pool}
        with store.writer(STAGE, output(KEPT, pool), shard_size=256) as kept:
            for s in store.read("sample", output(SAMPLE_POOL, pool)):
                digest = made_from(s)
                if digest in kept_digests:
                    funnel.add(pool, None)
                    judged += digest in kept_now
                    continue
                rule = next((rule for rule, ids in quarantined.items() if digest in ids), None)
                if rule is not None:
                    funnel.add(pool, Drop(rule))
                    judged += digest in quarantined_now
                    stale += s.get("id") in kept
                    continue
                judged += 1
                ref = s.get(REF)
                where = _where(store, ref.shard, ref.row) if ref else f"{store.root / 'sample'} pool-{pool}"
                bad = malformed(s)
                if bad is not None:  # hand-edited or imported records: quarantined, never a traceback
                    funnel.add(pool, Drop("malformed", bad))
                    rid = str(s.get("id") or content_id("malformed", pool, sorted(s), repr(s.get("text"))[:2000]))
                    rejects.add({"id": rid, "pool": pool, "rule": "malformed", "reason": bad,
                                 "where": where, "text": repr(s.get("text"))[:2000], INPUT_DIGEST: digest})
                    continue
                out, drop = apply_filters(s, fc, count_tokens, correct if fc.require_correct else None)
                funnel.add(pool, drop)
                if out is not None:
                    kept.add({**out, INPUT_DIGEST: digest})
                else:
                    stale += s["id"] in kept
                    rejects.add({"id": s["id"], "pool": pool, "rule": drop.rule, "reason": str(drop),
                                 "where": f"{where} sample {s['id']}", "text": (s.get("text") or "")[:2000],
                                 INPUT_DIGEST: digest})
        return judged, stale

    funnel = Funnel()
    judged = {}
    with store.writer(STAGE, "rejects") as rejects:
        for pool in pools(store, "sample", SAMPLE_POOL):
            before = copy.deepcopy(funnel)
            judged[pool], stale = judge(pool, funnel, rejects)
            if stale:  # kept under a reference answer corrected since (`dasd sample` updated the run's prompts)
                log.warning(f"{pool}: {stale} sample(s) kept by an earlier run are dropped by the rules now (a prompt's "
                            f"reference answer changed since): {output(KEPT, pool)} is made again")
                store.remove_output(STAGE, output(KEPT, pool))
                funnel = before
                judged[pool], _ = judge(pool, funnel, rejects)
            rejects.flush()  # the pool's verdicts on disk, all of them: a run killed in the next judges none again
            n = funnel.to_dict().get(pool, {}).get("in", 0)
            log.info(f"{pool}: {judged[pool]} of {n} sample(s) judged by this run"
                     + (f" (the verdicts on the other {n - judged[pool]}, whose input is unchanged, kept)" if n > judged[pool] else ""))
    log.info(f"funnel\n{funnel.format()}")
    counts = funnel.to_dict()
    store.stage_info(STAGE).pop("judging", None)
    store.end_stage(STAGE, counts, judged=judged)
    return counts
