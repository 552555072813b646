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
same sample pools is not redone; an interrupted one re-applies the rules and skips what it wrote; one
run again with other ``filter`` settings drops its outputs and makes them again. When `dasd sample`
updated the run's prompts (a reference answer corrected under the same id and messages), filter
judges every sample again: its rejects are made again (``runs.drop_if_inputs_rewritten``: the
prompts lost their old shards), a sample the new answer passes is added to the kept ones, and a pool
whose kept output holds a sample the rules now drop has that output made again (one warning). A record that cannot be
filtered (``id``, ``prompt_id`` or ``text`` missing or not a string) is quarantined under rule
``malformed``.
"""

from __future__ import annotations

import copy

from dasd.errors import DasdError
from dasd.grading.grade import is_correct
from dasd.log import logger
from dasd.columnar import REF
from dasd.records import content_id
from dasd.rules.mixing import has_reference
from dasd.runs import (KEPT, SAMPLE_POOL, RunPrompts, begin_unless_up_to_date, existing_run, model_versions, output, pools,
                       resolve_model)
from dasd.store import RunStore
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


def run_filter(cfg, store: RunStore | None = None) -> dict:
    """Filter every sample pool; return the funnel (also in the manifest)."""
    store = store or existing_run(cfg.run_dir, STAGE)
    fc = cfg.filter
    stage_cfg = {**fc.model_dump(mode="json"), "models": model_versions(cfg, "teacher", "student_tokenizer")}
    if fc.require_correct:  # a filter of an earlier dasd graded only prompts with an answer: its verdicts are made again
        stage_cfg["graded"] = "answer, choices, tests"
    done = begin_unless_up_to_date(store, STAGE, stage_cfg, ("sample",), extra=cfg.student.tokenizer or cfg.student.model,
                                   outputs=(KEPT + "-", "rejects"))
    if done is not None:
        return done
    prompts = RunPrompts(store)
    count_tokens = student_token_counter(cfg) if fc.max_student_tokens is not None else None

    def correct(sample: dict) -> bool:
        p = prompts.get(sample["prompt_id"], {})
        if not has_reference(p):  # nothing to grade against: kept
            return True
        try:
            return is_correct(p, sample["text"])
        except ValueError as err:  # the prompt's reference cannot be graded (bad tests, an answer that is no choice)
            raise DasdError(f"filter.require_correct: cannot grade prompt {p.get('id')!r}: {err}") from None

    def judge(pool: str, funnel: Funnel, rejects) -> int:
        """Filter ``pool`` into ``kept-<pool>`` (resumed: the ids on disk are skipped) and the rejects;
        return how many samples the kept output holds that the rules drop now."""
        stale = 0
        with store.writer(STAGE, output(KEPT, pool), shard_size=256) as kept:
            for s in store.read("sample", output(SAMPLE_POOL, pool)):
                ref = s.get(REF)
                where = f"{store.root / 'sample' / ref.shard} row {ref.row}" if ref else f"{store.root / 'sample'} pool-{pool}"
                bad = malformed(s)
                if bad is not None:  # hand-edited or imported records: quarantined, never a traceback
                    funnel.add(pool, Drop("malformed", bad))
                    rid = str(s.get("id") or content_id("malformed", pool, sorted(s), repr(s.get("text"))[:2000]))
                    rejects.add({"id": rid, "pool": pool, "rule": "malformed", "reason": bad,
                                 "where": where, "text": repr(s.get("text"))[:2000]})
                    continue
                out, drop = apply_filters(s, fc, count_tokens, correct if fc.require_correct else None)
                funnel.add(pool, drop)
                if out is not None:
                    kept.add(out)
                else:
                    stale += s["id"] in kept
                    rejects.add({"id": s["id"], "pool": pool, "rule": drop.rule, "reason": str(drop),
                                 "where": f"{where} sample {s['id']}", "text": (s.get("text") or "")[:2000]})
        return stale

    funnel = Funnel()
    with store.writer(STAGE, "rejects") as rejects:
        for pool in pools(store, "sample", SAMPLE_POOL):
            before = copy.deepcopy(funnel)
            stale = judge(pool, funnel, rejects)
            if stale:  # kept under a reference answer corrected since (`dasd sample` updated the run's prompts)
                log.warning(f"{pool}: {stale} sample(s) kept by an earlier run are dropped by the rules now (a prompt's "
                            f"reference answer changed since): {output(KEPT, pool)} is made again")
                store.remove_output(STAGE, output(KEPT, pool))
                funnel = before
                judge(pool, funnel, rejects)
    log.info(f"funnel\n{funnel.format()}")
    counts = funnel.to_dict()
    store.end_stage(STAGE, counts)
    return counts
