"""`dasd mix`: mixed-policy distillation data (student rollouts cut off, teacher continuations).

    from dasd.stages.mix import run_mix
    funnel = run_mix(MixConfig(n_questions=500), store, curated, student_engine, teacher_engine)

The rules (draw, cap, cut, teacher context, verdicts, funnel) are in ``dasd.rules.mixing``; this
driver runs the engines and writes the outputs.

Outputs: ``RUN/mix/rollouts-*.jsonl`` (one record per question: the rollout, the cut, the
continuation and its verdict; this is what makes the stage resumable) and ``RUN/mix/examples-*.jsonl``
(TrainingExample dicts: prompt messages + one assistant turn ``prefix + continuation``,
``prefix_chars = len(prefix)``, ``source = "mixed_policy"``). The funnel (questions, finished,
cut-offs and rate, cut points, continuations, drops by reason, kept) goes into the manifest and is
returned.

A request longer than a model's context does not stop the stage: a question the student cannot
take (or whose rollout its context stopped short of the cap) is ``prompt_too_long``, a prefix the
teacher cannot continue (or whose continuation its context stopped short of
``max_continuation_tokens``) ``context_too_long`` (known ``max_len``: not asked; a server's refusal:
its words in ``detail``), and the others go on. Such a rollout keeps the context it was judged
against (``judged``: ``context_key`` of the model that judged it); a rerun with another context for
that model (``max_model_len`` raised) drops it and asks again.

A rollout also keeps the prompt record its verdict was judged against (``prompt_record_id``): when
the run's record of that prompt was replaced since (a reference answer corrected), a rerun judges
its continuation again against the new one, without asking the student or teacher anything. One run
reads ``RUN/mix/rollouts`` once (``_update_rollouts``), and again only to rewrite rollouts.
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from dasd import runs
from dasd.engines.base import GenerateRequest, Generation, first_or_refused
from dasd.errors import ContextLengthError, DasdError
from dasd.grading.grade import is_correct
from dasd.log import Rate, chunks, logger, progress
from dasd.rules.mixing import (
    TOO_LONG,
    MixConfig,
    continuation_verdict,
    cut_point,
    draw_questions,
    example_id,
    funnel_of,
    funnel_table,
    make_example,
    prompt_record_id,
    reasoning_region,
    render_generation_prompt,
    rollout_id,
    student_cap,
    teacher_context,
    teacher_text_id,
)
from dasd.rules.sampling import derived_seed
from dasd.store import RunStore, config_hash, shard_paths

STAGE = "mix"
log = logger(STAGE)
FLUSH_QUESTIONS, FLUSH_SECONDS = 64, 20.0  # questions' records written (a shard each) every 64 questions or 20 s


class Curated:
    """The curated set of a run (``curated_from_run``): read from the run on every pass, never held."""

    def __init__(self, store: RunStore, names: list[str]):
        self.store, self.names = store, names
        self.prompts = runs.RunPrompts(store)  # the questions, joined to each response by id (read on demand)

    def __iter__(self) -> Iterator[dict]:
        for pool in self.names:
            for s in self.store.read("select", runs.output(runs.SELECTED, pool)):
                p = self.prompts.get(s["prompt_id"])
                if p is None:
                    raise DasdError(f"{self.store.root}/select/selected-{pool}: sample {s['id']} names prompt "
                                    f"{s['prompt_id']!r}, which is not in the run's prompts")
                yield {"prompt": p, "teacher_text": s["text"]}


def curated_from_run(store: RunStore, pool_names: list[str] | None = None) -> Curated:
    """The curated set of a run: each selected teacher response (``RUN/select/selected-<pool>``)
    with its prompt (joined by prompt id), as ``{"prompt", "teacher_text"}`` items, read from the
    run on every pass (``draw_questions`` reads it twice and keeps only the drawn items; a response
    whose prompt is not in the run's prompts stops the read with a ``DasdError``).

    Pools are read from the lowest temperature up (or in the order given), so when a question has
    responses in several pools, ``draw_questions`` uses the lowest-temperature one as the length
    reference.
    """
    names = pool_names if pool_names is not None else sorted(runs.pools(store, "select", runs.SELECTED), key=runs.pool_temperature)
    if not names:
        raise DasdError(f"{store.root}: no selected pools (RUN/select/selected-*); run `dasd select` first")
    return Curated(store, names)


def run_mix(
    cfg: MixConfig,
    store: RunStore,
    curated: Iterable[dict],
    student_engine,
    teacher_engine,
    teacher_tokenizer_template: Any = None,
    grade: Callable[[dict, str], bool] | None = None,
    student_name: str | None = None,
    teacher_name: str | None = None,
) -> dict:
    """Build mixed-policy training examples; return the funnel (also saved in the manifest).

    ``curated``: ``{"prompt": Prompt dict, "teacher_text": str}`` items (the selected teacher
    responses; a list, or a ``Curated`` read again on each pass). ``teacher_tokenizer_template``: a callable ``messages -> str`` or a tokenizer
    (default: ``teacher_engine.tokenizer``). ``grade(prompt, text) -> bool`` judges correctness
    when a question has a reference (default: ``dasd.grading.grade.is_correct``). Re-running skips the
    questions already done (rollout ids are content hashes of question, models and config), and
    judges again those whose prompt record changed since (``prompt_record_id``).
    ``student_name`` names the student in ids and records (default: the engine's name; a run's
    own model is named relative to the run, ``runs.model_key``, so a moved run keeps its ids, with its
    ``runs.model_version``, so a retrained student does not reuse the old one's rollouts).
    ``teacher_name`` likewise (default: the engine's name; a run names it with its version too).
    """
    template = teacher_tokenizer_template if teacher_tokenizer_template is not None else getattr(teacher_engine, "tokenizer", None)
    if template is None:
        raise DasdError("mix: no teacher chat template (pass teacher_tokenizer_template or an engine with a tokenizer)")
    grade = grade if grade is not None else is_correct
    student_name, teacher_name = student_name or student_engine.name, teacher_name or teacher_engine.name
    questions = draw_questions(curated, cfg.n_questions, cfg.seed)
    if not questions:
        raise DasdError("mix: the curated set is empty (no {'prompt', 'teacher_text'} items)")
    # what it judges against and draws from: a prompt record replaced since (a corrected answer), or
    # a selected response replaced (`dasd select` chose again), makes it not current (``runs.mix_not_current``)
    store.begin_stage(STAGE, {"mix": cfg.model_dump(), "student": student_name, "teacher": teacher_name},
                      read=runs.read_shards(store, ("sample", "select")))
    rid = {q["prompt"]["id"]: rollout_id(q["prompt"]["id"], student_name, teacher_name, cfg) for q in questions}
    judged = {"student": context_key(student_engine), "teacher": context_key(teacher_engine)}
    known = _update_rollouts(store, cfg, questions, rid, judged, grade)
    # Both outputs are flushed together, examples first (``FLUSH_QUESTIONS``), and closed in that order:
    # a kept rollout on disk has its example on disk, so a killed run does not redo its question.
    with runs.faults_kept(store, STAGE, lambda: [student_engine, teacher_engine]), \
         store.writer(STAGE, "rollouts", shard_size=sys.maxsize, flush_seconds=math.inf) as wr, \
         store.writer(STAGE, "examples", shard_size=sys.maxsize, flush_seconds=math.inf) as wx:
        # done: the rollout is on disk and, if kept, its example too
        done = {i for i, k in known.items() if k["verdict"] != "kept" or k["example_id"] in wx}
        todo = [q for q in questions if rid[q["prompt"]["id"]] not in done]
        rate_q, rate_t = Rate(), Rate()
        bar = progress(len(todo), "mix", "question")
        pending, flushed = 0, time.monotonic()
        for batch in chunks(todo, cfg.batch_questions):
            records = _mix_batch(cfg, batch, rid, judged, student_engine, teacher_engine, template, grade, rate_t, student_name)
            for rec, example in records:
                if example is not None:
                    wx.add(example)
                if wr.add(rec):  # else its record is on disk (a kept one whose example was not): that one counts
                    known[rec["id"]] = {"verdict": rec["verdict"], "example_id": rec["example_id"]}
            pending += len(records)
            if pending >= FLUSH_QUESTIONS or time.monotonic() - flushed >= FLUSH_SECONDS:
                wx.flush()
                wr.flush()
                pending, flushed = 0, time.monotonic()
            rate_q.add(len(batch))
            bar.update(len(batch))
            bar.set_postfix(q_s=f"{rate_q.per_s():.2f}", tok_s=f"{rate_t.per_s():.0f}")
        bar.close()
    funnel = funnel_of(known.values())
    funnel["new"] = len(todo)
    funnel["stale_examples_removed"] = _drop_stale_examples(
        store, {k["example_id"] for k in known.values() if k["verdict"] == "kept"})
    runs.record_faults(store, STAGE, [student_engine, teacher_engine])
    store.end_stage(STAGE, funnel)
    log.info(funnel_table(funnel))
    return funnel


def _update_rollouts(store: RunStore, cfg: MixConfig, questions: list[dict], rid: dict[str, str],
                     judged: dict[str, str], grade) -> dict[str, dict]:
    """Bring ``RUN/mix/rollouts`` up to date with the draw in one pass over it; return the verdict
    and example id of each rollout of the draw that stands (by rollout id: the funnel, and which
    questions are done).

    Removed, to be asked again (``stale``): a question skipped as too long for another context than
    the model's now (``judged``), and one whose selected teacher response, which sets its cap,
    changed (rollouts of an earlier dasd keep no ``teacher_text_id``). Judged again
    (``_judge_again``), the rollout and continuation kept: one of the draw judged against another
    record of its prompt than the run's now (``prompt_record_id``: a reference answer corrected; an
    earlier dasd recorded none). The examples change first (a kill in between leaves the rollouts,
    found again by the rerun): those a judged-again question now keeps are written, those of the
    removed questions and of those it no longer keeps go; then the rollouts are rewritten.
    """
    prompts = {q["prompt"]["id"]: q["prompt"] for q in questions}
    text_ids = {pid: teacher_text_id(q["teacher_text"]) for pid, q in zip(prompts, questions)}
    record_ids = {pid: prompt_record_id(p) for pid, p in prompts.items()}
    drawn = set(rid.values())

    def stale(r: dict) -> bool:
        if r["verdict"] in TOO_LONG and r.get("judged") != judged[TOO_LONG[r["verdict"]]]:
            return True
        return r.get("teacher_text_id") not in (None, text_ids.get(r["prompt_id"], r.get("teacher_text_id")))

    gone: dict[str, str] = {}  # rollout id -> verdict
    again: dict[str, dict] = {}  # rollout id -> the fields judging again changes
    unkept: set[str] = set()  # examples of judged-again questions no longer kept
    known: dict[str, dict] = {}
    for r in store.read(STAGE, "rollouts"):
        if stale(r):
            gone[r["id"]] = r["verdict"]
            continue
        if r["id"] not in drawn:
            continue
        if r.get("prompt_record_id") != record_ids[r["prompt_id"]]:
            again[r["id"]] = _judge_again(r, prompts[r["prompt_id"]], cfg, grade)
            if r.get("example_id") and again[r["id"]].get("verdict") != "kept":
                unkept.add(r["example_id"])
            r = {**r, **again[r["id"]]}
        known[r["id"]] = {"verdict": r["verdict"], "example_id": r.get("example_id")}
    if not gone and not again:
        return known
    if any(a.get("verdict") == "kept" for a in again.values()):
        with store.writer(STAGE, "examples") as wx:  # an example already there is not written twice
            for r in store.read(STAGE, "rollouts"):
                if again.get(r["id"], {}).get("verdict") == "kept":
                    prefix = r["student"]["text"][: r["prefix_chars"]]
                    p = prompts[r["prompt_id"]]
                    wx.add(make_example(p, prefix, r["continuation"]["text"], again[r["id"]]["example_id"], prompt_id=p["id"]))
    # a removed question's example, by id: also one a killed run wrote before its rollout said kept
    dropped = unkept | {example_id(i) for i in gone}
    if dropped:
        store.drop_records(STAGE, "examples", lambda e: e["id"] in dropped)
    store.drop_records(STAGE, "rollouts", lambda r: r["id"] in gone or r["id"] in again,
                       add=({**r, **again[r["id"]]} for r in store.read(STAGE, "rollouts") if r["id"] in again))
    too_long = sum(verdict in TOO_LONG for verdict in gone.values())
    if too_long:
        log.info(f"{too_long} question(s) skipped as too long for another context of the student or teacher: judged again")
    if len(gone) > too_long:
        log.info(f"{len(gone) - too_long} question(s) whose selected teacher response changed (it sets the student's "
                 "cap): asked again")
    if again:
        log.info(f"{len(again)} question(s) judged against another record of their prompt than the run's now (a "
                 "reference answer corrected): judged again, their rollouts and continuations kept")
    return known


def _judge_again(rollout: dict, prompt: dict, cfg: MixConfig, grade) -> dict:
    """The fields of ``rollout`` that judging its continuation against ``prompt`` again changes
    (``continuation_verdict``: the reference decides ``incorrect``); a rollout without a continuation
    only records the prompt record it stands for."""
    out = {"prompt_record_id": prompt_record_id(prompt)}
    cont = rollout.get("continuation")
    if cont:
        prefix = rollout["student"]["text"][: rollout["prefix_chars"]]
        verdict, detail = continuation_verdict(prompt, prefix, cont["text"], cont["finish_reason"], cfg, grade)
        out.update(verdict=verdict, detail=detail, example_id=example_id(rollout["id"]) if verdict == "kept" else None)
    return out


def _drop_stale_examples(store: RunStore, keep: set[str]) -> int:
    """Make ``RUN/mix/examples`` hold only the examples of this draw's kept rollouts (``keep``);
    return how many were removed.

    Examples of an earlier config, student or larger draw would otherwise be trained on silently, and
    so would one written before its rollout was (examples are flushed first) or rewritten (a rerun
    judging it again) by a run killed in between, whose rollout is not kept now (judged against
    another record of its prompt, or asked again and answered otherwise).
    ``RunStore.drop_records`` writes the kept ones to a new shard before it deletes the old ones, so
    a process killed meanwhile keeps every current example (the rerun finishes the removal).
    """
    folder = store.stage_dir(STAGE)
    for leftover in shard_paths(folder, "examples.next"):  # of an earlier dasd's removal, killed midway
        leftover.unlink()
    stale = store.drop_records(STAGE, "examples", lambda r: r["id"] not in keep)
    if stale:
        log.info(f"removed {stale} example(s) of an earlier draw or config from {folder}/examples-*.jsonl")
    return stale


def context_key(engine) -> str:
    """What an engine's too-long verdicts depend on besides the model (which a rollout id names):
    the context it is known to have (``max_len``: ``max_model_len``, or the model's own) and whether
    a request must leave room for its ``max_tokens`` (a server). A context a server refuses without
    a known ``max_len`` is not in it: set ``max_model_len`` to have such rollouts judged again."""
    return config_hash({"max_len": getattr(engine, "max_len", None),
                        "reserves_max_tokens": getattr(engine, "reserves_max_tokens", False)})


def _context_words(engine) -> str:
    """An engine's context in a detail: ``max_model_len N``, or ``unknown length``."""
    n = getattr(engine, "max_len", None)
    return f"max_model_len {n}" if n is not None else "unknown length"


def _mix_batch(cfg, batch, rid, judged, student, teacher, template, grade, rate_t, student_name) -> list[tuple[dict, dict | None]]:
    """Rollouts, cuts and continuations of one batch of questions: ``(rollout record, example)``;
    a too-long verdict keeps ``judged[model]``, the ``context_key`` of the model that judged it."""
    reqs = []
    caps = []
    for q in batch:
        p = q["prompt"]
        n = student.count_tokens(q["teacher_text"])
        cap = student_cap(n, cfg.length_multiple)
        caps.append((n, cap))
        reqs.append(GenerateRequest(
            id=p["id"], messages=p["messages"], n=1, temperature=cfg.student_temperature,
            top_p=cfg.student_top_p, max_tokens=cap, seed=derived_seed("mix-student", cfg.seed, p["id"]),
        ))
    gens = first_or_refused(student, reqs)
    rate_t.add(sum(len(g.logprobs) for g in gens if isinstance(g, Generation)))
    recs: list[dict] = []
    cont_reqs: list[GenerateRequest] = []
    cont_of: list[int] = []
    max_len = getattr(teacher, "max_len", None)
    # a server counts context + max_tokens (vLLM refuses more); the hf engine needs room for one token
    reserves = getattr(teacher, "reserves_max_tokens", False)
    room = cfg.max_continuation_tokens if reserves else 1
    for k, (q, g, (n, cap)) in enumerate(zip(batch, gens, caps)):
        p = q["prompt"]
        rec = {
            "id": rid[p["id"]], "prompt_id": p["id"], "student_model": student_name, "teacher_model": teacher.name,
            "cap": cap, "teacher_student_tokens": n, "teacher_text_id": teacher_text_id(q["teacher_text"]),
            "prompt_record_id": prompt_record_id(p),
            "student": None, "cut": None, "prefix_chars": None, "continuation": None, "verdict": None, "detail": "",
            "example_id": None,
        }
        recs.append(rec)
        if isinstance(g, ContextLengthError):  # the question (+ cap, for a server) does not fit the student's context
            rec["student"] = {"text": None, "finish_reason": None, "n_tokens": 0}
            rec["verdict"], rec["detail"], rec["judged"] = "prompt_too_long", str(g), judged["student"]
            continue
        rec["student"] = {"text": g.text, "finish_reason": g.finish_reason, "n_tokens": len(g.logprobs)}
        if g.finish_reason == "length" and len(g.logprobs) < cap:  # stopped by its context (the hf engine), not the cap
            rec["student"]["text"] = None
            rec["verdict"], rec["judged"] = "prompt_too_long", judged["student"]
            rec["detail"] = f"the student's context ({_context_words(student)}) ended the rollout after " \
                            f"{len(g.logprobs)} of its {cap} tokens"
            continue
        if g.finish_reason != "length":
            rec["verdict"] = "finished"
            rec["student"]["text"] = None  # not needed downstream; long-CoT texts are large
            continue
        limit = reasoning_region(g.text, cfg.after_think)
        if limit is None:
            rec["verdict"] = "answered"
            continue
        u = random.Random(derived_seed("mix-cut", cfg.seed, p["id"])).uniform(cfg.cut_low, cfg.cut_high)
        at = cut_point(g.text, u, cfg.cut_low, limit)
        rec["cut"] = {"u": u, "target": u * limit, "region_chars": limit, "at": at}
        if at is None:
            rec["verdict"] = "no_cut_point"
            continue
        prefix = g.text[:at]
        rec["prefix_chars"] = at
        ctx = teacher_context(render_generation_prompt(template, p["messages"]), prefix, cfg.teacher_think_opener)
        if max_len is not None and (n_ctx := teacher.count_tokens(ctx)) + room > max_len:
            rec["verdict"], rec["judged"] = "context_too_long", judged["teacher"]
            rec["detail"] = f"teacher context of {n_ctx} tokens{' + max_continuation_tokens' if reserves else ''} " \
                            f"past the teacher's max_model_len {max_len}"
            continue
        cont_reqs.append(GenerateRequest(
            id=p["id"], prefix=ctx, n=1, temperature=cfg.teacher_temperature, top_p=cfg.teacher_top_p,
            max_tokens=cfg.max_continuation_tokens, seed=derived_seed("mix-teacher", cfg.seed, p["id"]),
        ))
        cont_of.append(k)
    out: list[tuple[dict, dict | None]] = [(r, None) for r in recs]
    if not cont_reqs:
        return out
    conts = first_or_refused(teacher, cont_reqs)
    rate_t.add(sum(len(c.logprobs) for c in conts if isinstance(c, Generation)))
    for k, c in zip(cont_of, conts):
        rec, q = recs[k], batch[k]
        if isinstance(c, ContextLengthError):  # the teacher's server refused the context as too long
            rec["verdict"], rec["detail"], rec["judged"] = "context_too_long", str(c), judged["teacher"]
            continue
        if c.finish_reason == "length" and len(c.logprobs) < cfg.max_continuation_tokens:  # stopped by the context
            rec["verdict"], rec["judged"] = "context_too_long", judged["teacher"]
            rec["detail"] = f"the teacher's context ({_context_words(teacher)}) ended the continuation after " \
                            f"{len(c.logprobs)} of max_continuation_tokens {cfg.max_continuation_tokens}"
            continue
        prefix = rec["student"]["text"][: rec["prefix_chars"]]
        rec["continuation"] = {"text": c.text, "finish_reason": c.finish_reason, "n_tokens": len(c.logprobs)}
        rec["verdict"], rec["detail"] = continuation_verdict(q["prompt"], prefix, c.text, c.finish_reason, cfg, grade)
        if rec["verdict"] == "kept":
            rec["example_id"] = example_id(rec["id"])
            out[k] = (rec, make_example(q["prompt"], prefix, c.text, rec["example_id"], prompt_id=q["prompt"]["id"]))
    return out


def run_mix_stage(cfg, store: RunStore | None = None) -> dict:
    """`dasd mix`: the latest student (before the mixed-policy stage) writes, the teacher continues."""
    store = store or runs.existing_run(cfg.run_dir, STAGE)
    runs.require_finished(store, ("sample", "import", "select"), STAGE)
    runs.require_current(store, ("select",), STAGE)  # selected from the scores (and pools) as they are now
    curated = curated_from_run(store)  # before any model is loaded: no selected pools is an error at once
    mixed_stages = [s.name for s in cfg.train.stages if s.data in runs.MIXED_POOLS]
    label, path = runs.latest_student(cfg, store, before=mixed_stages[0] if mixed_stages else None)
    log.info(f"student: {label} ({path})")
    student = runs.open_engine(runs.trained_model(cfg, label, path))
    teacher = runs.open_engine(cfg.teacher)
    before = store.stage_info(STAGE).get("config") or {}

    def named(role: str, key: str, version: str) -> str:  # "<model>@<version>", as named before when unchanged
        was = before.get(role) or ""
        return runs.name_as_before(f"{key}@{version}", version, was, was.rpartition("@")[2])

    name = named("student", runs.model_key(store, path), runs.model_version(path))
    teacher_name = named("teacher", teacher.name, runs.model_version(cfg.teacher.model))
    return run_mix(cfg.mix, store, curated, student, teacher, student_name=name, teacher_name=teacher_name)
