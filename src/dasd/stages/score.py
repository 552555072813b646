"""`dasd score`: student teacher-forced log-probs of every kept teacher response, then sentence tables.

Reads ``RUN/filter/kept-<pool>``; writes ``RUN/score/pool-<pool>`` (ScoredSample records: the
sample + ``student`` {offsets, logprobs} + ``sentences`` + ``das`` summary + ``input_digest``, what it
was scored from: ``scored_input``). The student sees the
same messages through **its own** chat template and tokenizer, and is scored on the tokens training
gives the response, after the context they follow there (``train.encode.score_as_trained``); sentences are
character spans, so teacher and student vocabularies need not match (docs/das.md). Teacher log-probs come from the
sample; when they are missing or tempered (``logprob_mode`` not ``raw``), ``score.rescore_teacher``
decides whether the teacher engine re-scores the text; a sample whose teacher signal is still not
usable is quarantined before the student scores it. Resumable by sample id; a sample whose
signals cannot be aligned, or whose prompt + response is longer than the student's (or the
re-scoring teacher's) context (a ``ContextLengthError``: an hf engine's ``max_model_len``, a
server's refusal; counted in the pool's ``too_long``), is quarantined in ``RUN/score/rejects``
with the reason, and the rest are scored. A quarantined sample is not scored again while the
stage's settings, models and teacher config are the same (its record keeps their hash,
``judged``); when they changed, it is judged again. Neither that hash nor the stage's config holds
the engines' transport-only settings (``runs.engine_identity``: server addresses, concurrency,
timeouts, retries) or the speed-only ones (``runs.stage_identity``: batch sizes, ``logprob_chunk``,
``score.batch``), so a new server farm or another batch size redoes nothing.

With ``score.local_naturalness`` on (``auto``: when ``select.method`` is ``local_naturalness``), the
student also scores every sentence after the prompt and only its ``score.local_window`` preceding
sentences (``dasd.rules.das.local_windows``), one extra request per sentence, and the record's
``naturalness`` gets ``local`` beside ``global``.

Streaming: kept samples are read ``score.batch`` at a time and written in bounded shards that
refer to the kept rows (only the student signal, sentences and summary are new columns), so
memory does not grow with the pool. A finished score with the same settings, models and inputs
is not redone. When filter wrote a pool's kept output again (a prompt's answer corrected, another
filter setting, a pool imported again), the scored and quarantined records of the samples it still
keeps with the same ``input_digest`` are kept, re-linked to their new kept rows, and only the
others are scored (``runs.drop_if_inputs_rewritten``); records of an earlier dasd, which have no
digest, are scored again. The models count by name and by version (``runs.model_versions``: teacher, student
and its tokenizer): when one changed under its name, or a student (or its tokenizer) with no
version (a served name, a hub id) is named otherwise (``runs.model_names``), the scored pools and
rejects are dropped and every kept sample is scored again, so no student signal of an earlier
model is resumed; a local student under another spelling of its path resumes.

A pool's counts in the manifest (``pool_counts``) say what the stage holds for it, whichever run
judged it, so a run resumed after a crash (or after a re-link) records an uninterrupted run's:
``scored``, ``rejected`` (its kept samples in quarantine) and, when any, ``too_long`` (those of them
too long for a context); only ``new`` (samples scored or quarantined by this run) is of the run
that recorded the counts.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from dasd.engines.base import ScoreRequest
from dasd.errors import ContextLengthError
from dasd.idset import IdSet
from dasd.log import Rate, chunks, logger, progress
from dasd.records import teacher_signal
from dasd.rules.das import ScoreConfig, local_naturalness, local_sentence_lp, local_windows, score_sample
from dasd.runs import (INPUT_DIGEST, KEPT, SCORED, RunPrompts, as_recorded, begin_unless_up_to_date,
                       engine_identity, existing_run, faults_kept, model_versions, open_engine, output, pools,
                       record_faults, recorded_extra, scoring_tokenizer_warnings, stage_identity,
                       teacher_as_hashed_before, with_settings_left_out)
from dasd.store import RunStore, config_hash
from dasd.train.encode import score_as_trained

STAGE = "score"
log = logger(STAGE)


def _signal(result) -> dict:
    """A re-scoring teacher's ``ScoreResult`` as a sample's teacher signal, its offsets an ``(n, 2)``
    int64 array and its log-probs a float64 array: what the columnar store writes as it is (int32
    and float32 columns) and what the sentence rules take without a per-token pass."""
    return {"offsets": np.asarray(result.offsets, dtype=np.int64).reshape(-1, 2),
            "logprobs": np.asarray(result.logprobs, dtype=np.float64), "logprob_mode": result.logprob_mode}


def scored_input(prompts: RunPrompts | dict, sample: dict) -> str:
    """What the score of a kept sample is made from, as a digest (BLAKE2b-128, 32 hex digits): its
    id and prompt id, the prompt's messages, its text and its teacher signal (``logprob_mode``,
    ``offsets``, ``logprobs``, as filter kept them). Stored on its scored or quarantine record
    (``runs.INPUT_DIGEST``): when filter writes its kept output again, a record whose sample is
    still kept with the same digest is kept (``runs.drop_if_inputs_rewritten``), not scored again."""
    t = teacher_signal(sample)
    arrays = [np.ascontiguousarray(np.asarray(t[k], dtype=dt)) if t.get(k) is not None else None
              for k, dt in (("offsets", np.int32), ("logprobs", np.float32))]
    prompt = prompts.get(sample.get("prompt_id")) or {}
    head = [sample.get("id"), sample.get("prompt_id"), prompt.get("messages"), sample.get("text"), t.get("logprob_mode"),
            [None if a is None else a.shape for a in arrays]]
    h = hashlib.blake2b(json.dumps(head, ensure_ascii=False).encode("utf-8", "surrogatepass"), digest_size=16)
    for a in arrays:
        if a is not None:
            h.update(a.tobytes())
    return h.hexdigest()


def _too_long(sample: dict, role: str, err: ContextLengthError, judged: str) -> dict:
    """The quarantine record of a sample that does not fit the ``role`` model's context."""
    return {"id": sample["id"], "where": f"sample {sample['id']}", "too_long": True, "judged": judged,
            "reason": f"prompt + response longer than the {role}'s context: {err}"}


class _Rejects:
    """The quarantine records of one pool, added to the stage's ``rejects`` writer as they are judged;
    counts the new ones (``n``, ``too_long`` and the first too-long one's ``where``) without holding
    them, and adds the ids of the too-long ones to ``too_long_ids`` (those of the stage's rejects)."""

    def __init__(self, writer, too_long_ids: IdSet):
        self.writer, self.too_long_ids, self.n, self.too_long, self.first_too_long = writer, too_long_ids, 0, 0, ""

    def add(self, record: dict, made_from: str) -> None:
        """Quarantine ``record``, made from a sample of digest ``made_from`` (``scored_input``)."""
        if self.writer.add({**record, INPUT_DIGEST: made_from}):
            self.n += 1
            if record.get("too_long"):
                self.too_long += 1
                self.too_long_ids.add(record["id"])
                self.first_too_long = self.first_too_long or record["where"]


def pool_counts(store: RunStore, pool: str, rejected, too_long_ids) -> dict:
    """What the score stage holds for ``pool``, whichever run judged it (a resumed run records an
    uninterrupted one's): its scored records (``scored``) and, of its kept samples, those quarantined
    (``rejected``: their ids are ``in rejected``, e.g. the stage's rejects writer) and among them the
    too-long ones (``too_long``, when any: ids ``in too_long_ids``). Counted from id columns, not by
    holding records."""
    kept = store.ids("filter", output(KEPT, pool))
    counts = {"scored": store.count(STAGE, output(SCORED, pool)), "rejected": sum(sid in rejected for sid in kept)}
    too_long = sum(sid in too_long_ids for sid in kept)
    if too_long:
        counts["too_long"] = too_long
    return counts


def wants_local_naturalness(cfg) -> bool:
    """Whether this run's score stage computes local naturalness (``score.local_naturalness``)."""
    mode = cfg.score.local_naturalness
    return mode == "always" or (mode == "auto" and cfg.select.method == "local_naturalness")


def score_local_naturalness(student, prompts: RunPrompts | dict, samples: list[dict], window: int, batch: int) -> list[float | None]:
    """Local naturalness of each sample (the student engine scores every sentence's local window)."""
    reqs, owners = [], []
    for i, s in enumerate(samples):
        for j, (ctx, start, end) in enumerate(local_windows(s["text"], window)):
            reqs.append((ScoreRequest(id=f"{s['id']}:{j}", messages=prompts[s["prompt_id"]]["messages"],
                                      continuation=s["text"][ctx:end]), start - ctx))
            owners.append(i)
    lps: list[list[float | None]] = [[] for _ in samples]
    for part in chunks(list(zip(reqs, owners)), batch):
        results, _ = score_as_trained(student, [req for (req, _), _ in part])  # a window is an assistant turn too
        for ((req, start), i), r in zip(part, results):
            if isinstance(r, ContextLengthError):  # a window is shorter than its response, which fitted
                raise r
            lps[i].append(local_sentence_lp(req.continuation, start, r.offsets, r.logprobs))
    return [local_naturalness(x) for x in lps]


def run_score(cfg, store: RunStore | None = None, student=None, teacher=None) -> dict:
    """Score every kept sample of every pool; return per-pool counts."""
    store = store or existing_run(cfg.run_dir, STAGE)
    sc: ScoreConfig = cfg.score
    local = wants_local_naturalness(cfg)
    stage_cfg = stage_identity({"score": sc.model_dump(), "student": cfg.student.model_dump(), "das": cfg.das.model_dump(),
                                "local_naturalness": local, "tokens": "as trained",  # earlier ones: each response's own tokens
                                "models": model_versions(cfg, "teacher", "student", "student_tokenizer")})
    stage_cfg = as_recorded(store, STAGE, stage_cfg)  # an earlier dasd's, with transport or speed settings
    # the teacher's settings that change results (its transport and speed ones do not); an earlier dasd hashed them
    teachers = [engine_identity(cfg.teacher.model_dump(mode="json"))]
    if with_settings_left_out(stage_cfg):
        teachers += teacher_as_hashed_before(store, cfg)
    had_local = (store.stage_info(STAGE).get("config") or {}).get("local_naturalness", local)
    prompts: RunPrompts | None = None  # read when first needed: not for a stage that is up to date

    def made_from(sample: dict) -> str:
        nonlocal prompts
        prompts = prompts or RunPrompts(store)
        return scored_input(prompts, sample)

    # a rewritten kept output (filter made it again) keeps the scores of the samples it still holds unchanged
    done = begin_unless_up_to_date(store, STAGE, stage_cfg, ("sample", "filter"),
                                   extra=recorded_extra(store, STAGE, ("sample", "filter"), teachers),
                                   outputs=(SCORED + "-", "rejects"), made_from=made_from)
    if done is not None:
        return done
    for warning in scoring_tokenizer_warnings(cfg):  # before the costly pass, not only at `dasd train`
        log.warning(warning)
    if local and not had_local:  # records resumed by id would lack it: score them all again
        names = store.remove_outputs(STAGE, (SCORED + "-",))
        log.info(f"local naturalness is wanted now and was not computed before: {len(names)} scored output(s) "
                 "dropped, scored again")
    judged = config_hash([stage_cfg, teachers[0]])  # what a quarantine verdict depends on
    current = {config_hash([stage_cfg, t]) for t in teachers}  # and how an earlier dasd hashed it
    stale = store.drop_records(STAGE, "rejects", lambda r: "judged" in r and r["judged"] not in current)
    if stale:
        log.info(f"{stale} sample(s) quarantined under other settings or models: judged again")
    prompts = prompts or RunPrompts(store)
    too_long_ids = IdSet(r["id"] for r in store.read(STAGE, "rejects") if r.get("too_long"))
    counts = {}
    with faults_kept(store, STAGE, lambda: [student, teacher]):
        for pool in pools(store, "filter", KEPT):
            with store.writer(STAGE, output(SCORED, pool), shard_size=128) as w, store.writer(STAGE, "rejects") as wq:
                rejects = _Rejects(wq, too_long_ids)  # written as judged, like the scored records: a stopped stage keeps them
                alone = {"student": 0, "teacher": 0}  # responses not scored on their training tokens
                done_rejected = wq.existing

                def skip(sid, w=w, done_rejected=done_rejected):
                    return sid in w or sid in done_rejected

                n_todo = sum(not skip(sid) for sid in store.ids("filter", output(KEPT, pool)))
                if n_todo and student is None:
                    student = open_engine(cfg.student)
                bar, rate = progress(n_todo, f"score {pool}", "resp"), Rate()
                todo = (s for s in store.read("filter", output(KEPT, pool)) if not skip(s["id"]))
                for batch in chunks(todo, sc.batch):
                    digests = {s["id"]: scored_input(prompts, s) for s in batch}  # of the kept samples, before re-scoring
                    reqs = [ScoreRequest(id=s["id"], messages=prompts[s["prompt_id"]]["messages"], continuation=s["text"]) for s in batch]
                    need = [i for i, s in enumerate(batch) if teacher_signal(s).get("logprob_mode") != "raw"]
                    refused: dict[int, dict] = {}  # batch index -> quarantine record: too long for a model's context
                    if (need and sc.rescore_teacher == "auto") or sc.rescore_teacher == "always":
                        idx = range(len(batch)) if sc.rescore_teacher == "always" else need
                        if teacher is None:
                            teacher = open_engine(cfg.teacher)
                        results, n = score_as_trained(teacher, [reqs[i] for i in idx])
                        alone["teacher"] += n
                        for i, r in zip(idx, results):
                            if isinstance(r, ContextLengthError):
                                refused[i] = _too_long(batch[i], "teacher", r, judged)
                            else:
                                batch[i] = {**batch[i], "teacher": {**_signal(r), "rescored": True}}
                    usable = []  # the student scores only samples whose teacher signal can be used
                    for i, (s, req) in enumerate(zip(batch, reqs)):
                        if i in refused:
                            rejects.add(refused[i], digests[s["id"]])
                        elif teacher_signal(s).get("logprob_mode") != "raw":
                            rejects.add({"id": s["id"], "where": f"sample {s['id']}", "judged": judged,
                                         "reason": "teacher log-probs missing or not raw (score.rescore_teacher=never)"},
                                        digests[s["id"]])
                        else:
                            usable.append((s, req))
                    scored = []
                    results, n = score_as_trained(student, [req for _, req in usable])
                    alone["student"] += n
                    for (s, _), r in zip(usable, results):
                        if isinstance(r, ContextLengthError):
                            rejects.add(_too_long(s, "student", r, judged), digests[s["id"]])
                        else:
                            scored.append((s, r))
                    local_nat = score_local_naturalness(student, prompts, [s for s, _ in scored], sc.local_window, sc.batch) \
                        if local and scored else None
                    for k, (s, r) in enumerate(scored):
                        try:
                            rec = {**score_sample(s, r.offsets, r.logprobs, cfg.das), INPUT_DIGEST: digests[s["id"]]}
                            if local_nat is not None:
                                rec["naturalness"].update(local=local_nat[k], local_window=sc.local_window)
                            w.add(rec)
                        except ValueError as e:
                            rejects.add({"id": s["id"], "where": f"sample {s['id']}", "reason": str(e), "judged": judged},
                                        digests[s["id"]])
                        rate.add(len(r.logprobs))
                    bar.update(len(batch))
                    bar.set_postfix(tok_s=f"{rate.per_s():.0f}")
                bar.close()
            counts[pool] = {**pool_counts(store, pool, wq, too_long_ids), "new": w.written + rejects.n}
            if rejects.too_long:
                log.warning(f"{pool}: {rejects.too_long} response(s) longer than the student's or teacher's context "
                            f"(e.g. {rejects.first_too_long}): quarantined, not scored again "
                            "while the stage's settings and models stay the same")
            for role, n in alone.items():
                if n:
                    log.warning(f"{pool}: {n} response(s) scored on their own tokens after the {role}'s generation "
                                "prompt, not on the tokens training gives them: its chat template changes them beyond "
                                "whitespace, or joins their first or last token with its own text")
            log.info(f"{pool}: {counts[pool]['scored']} responses scored, {counts[pool]['rejected']} quarantined "
                     f"({counts[pool]['new']} judged now)")
    record_faults(store, STAGE, [student, teacher])
    store.end_stage(STAGE, counts)
    return counts
