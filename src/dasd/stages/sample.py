"""`dasd sample`: k teacher responses per prompt at every temperature of the schedule.

Every prompt is asked at every temperature, unless ``sample.prompts_per_temperature`` gives each
temperature its own number of prompts (``rules.sampling.picks_by_temperature``: the first N_i of
one seeded ranking, so a smaller set is part of a larger one). ``RUN/sample/prompts`` keeps the
prompts asked at some temperature.

The source is read once (an ``hf:`` data set is streamed from the hub once): each prompt is
checked as it comes (its id kept; compared with the record the run keeps under it) and copied to
an unnamed temp file in the run folder (``prompt_edits.StagedPrompts``), from which
``RUN/sample/prompts`` is written once every prompt is known good and the ranking is made (two
passes over the source, as before, would download it twice; holding the prompts would cost their
size in memory). What the stage
holds grows with the prompts only by their ids (a list) and digests of ids (``dasd.idset.IdSet``,
about 20 bytes an id, for the prompts to ask, the samples on disk and the pool's counts).

Output: ``RUN/sample/pool-T<temp>-NNNNN.parquet`` (the ``sample`` schema of ``dasd.columnar``), one
Sample record per response, with the teacher's per-token (untempered) log-probs, token ids and
character offsets (token strings are not stored: the ids and the tokenizer give them back). Ids hash (prompt,
model, temperature, top_p, seed, index), so a re-run skips what exists and resumes the rest; the
engine derives each sample's random stream from (request seed, index), so a resumed run samples
the same responses as an uninterrupted one. The teacher is named in ids as it was when its pools
were first sampled (``runs.name_as_before``): the same model under another spelling of its path
resumes them. The stage's config records the teacher without its transport-only settings
(``runs.engine_identity``: server addresses, concurrency, timeouts, retries) and without the
speed-only ones (``runs.stage_identity``: ``teacher.batch_size``, ``sample.batch_prompts``, ...),
so a new server farm or another batch size leaves the later stages up to date. Samples are resumed only from the same teacher: when the
model under ``teacher.model`` changed since the stage last began (``runs.model_version``: its files'
names, sizes and sampled contents), the stored pools are dropped first and sampled again
(``runs.drop_if_models_changed``). A teacher with no version to compare (a served name, kind
openai; a hub id not on disk) is known only by its name: when ``teacher.model`` names another one
than the pools were sampled with, they are not sampled on (``_refuse_other_teacher``: one line,
before any request, nothing written): each prompt would get k more samples from the other teacher
and later stages would mix both. Pools drawn under another ``top_p``, ``seed`` or ``max_tokens``
are not sampled on either (``_refuse_other_sampling``): a pool would hold samples of both
settings. The user sets it back, deletes the pools or uses another run_dir. Nor is a prompt whose
messages differ from those ``RUN/sample/prompts`` keeps under its id
(``prompt_edits.EditedPrompts``: the prompts file edited, or ``data.system_prompt`` changed; one
line, nothing written): its samples answer the old text, which would also be asked again and
joined to them by later stages; the user gives the edited prompt a new id or deletes the prompts
and pools. A prompt with the same
messages and another reference answer, ``choices``, ``tests``, ``domain`` or ``meta`` (an answer
corrected in the data set) is updated instead: the run's record of it is replaced, one warning
names how many changed, the fields and an example, its samples stand (they answer the same
question), and ``dasd filter`` judges them again against the new answer (``stages.filter``).

Nothing is deleted when the schedule shrinks, and later stages read every pool on disk: samples of
prompts no longer asked (removed from ``data.prompts``, ``data.limit`` or a
``prompts_per_temperature`` count lowered; ``not_asked``), samples of index ``sample.k`` or more
(k lowered; ``beyond_k``) and pools of a temperature dropped from ``sample.temperatures`` are kept
and used; each is logged as a warning that names the pool files to delete.

Quarantined to ``RUN/sample/rejects`` (the stage goes on): a prompt longer than the teacher's
context (``max_model_len``, when the engine knows it: for a server, prompt + ``max_tokens`` must fit,
as vLLM counts), a prompt the teacher's server refuses as longer than its context (a
``ContextLengthError``, the server's message as the reason; counted in ``refused_too_long``), and a
sample whose log-probs are not all
finite (NaN or infinite, from any engine); such a sample is not written, so the next run asks for
it again. A verdict is written as it is judged (flushed with the samples), so a run stopped mid-pool
keeps it: a resumed run does not send a refused prompt to the server again. A too-long prompt is not asked again while the teacher's context is the same
(``_context_key``: the teacher's kind, model, tokenizer, their versions and ``max_model_len``, and
for kind openai ``sample.max_tokens``);
when it changed, its too-long records are dropped from the rejects and those prompts judged again
(other rejects stay: bad prompt records and imported rows do not depend on the teacher, and a
non-finite sample is asked again anyway). Engine retries (openai: by kind, time lost) are logged
and kept in the manifest, also when the stage fails (``runs.faults_kept``).

A pool's counts in the manifest (``pool_stats`` and the quarantine counts) say what the pool holds
and lacks, so a run resumed after a crash records those of an uninterrupted one: ``quarantined``
is the prompts it asks that are quarantined as too long (in each pool that asks one, whichever run
or temperature judged it) plus its samples quarantined as non-finite (asked again on every run, so
those it lacks), ``refused_too_long`` the too-long prompts a server refused; only ``new`` (samples
this run added) is of the run that recorded the counts.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from dasd.configbase import dump_config
from dasd.engines.base import GenerateRequest
from dasd.errors import ConfigError, ContextLengthError
from dasd.idset import IdSet
from dasd.log import Rate, chunks, logger, progress
from dasd.prompt_edits import EditedPrompts, StagedPrompts
from dasd.prompts import check_prompt_source
from dasd.records import sample_id, teacher_signal
from dasd.rules.sampling import derived_seed, picks_by_temperature
from dasd.runs import (PROMPTS, SAMPLE_POOL, as_recorded, drop_if_models_changed, faults_kept,
                       model_versions, name_as_before, open_engine, output, pool_name, pools, record_faults,
                       stage_identity, training_prompt_ids)
from dasd.store import MANIFEST, RunStore, config_hash

if TYPE_CHECKING:
    from dasd.config import RunConfig

STAGE = "sample"
log = logger(STAGE)


def run_sample(cfg: RunConfig, store: RunStore | None = None, engine=None) -> dict:
    """Sample every pool; return per-pool counts and statistics (also saved in the manifest)."""
    _check_room(cfg)
    if store is None and cfg.data.prompts != "toy" and not (Path(cfg.run_dir) / MANIFEST).is_file():
        check_prompt_source(cfg.data.prompts)  # no run there yet: a mistyped path leaves no run folder behind
    store = store or RunStore(cfg.run_dir)
    s = cfg.sample
    stage_cfg = stage_identity({"sample": dump_config(s), "teacher": dump_config(cfg.teacher), "data": dump_config(cfg.data),
                                "models": model_versions(cfg, "teacher")})
    if s.prompts_per_temperature is None:  # as the config was before the knob: a run's later stages stay up to date
        del stage_cfg["sample"]["prompts_per_temperature"]
    before = store.stage_info(STAGE).get("config") or {}
    model_name = stage_cfg["teacher"]["model"] = name_as_before(
        cfg.teacher.model, stage_cfg["models"]["teacher"], (before.get("teacher") or {}).get("model"),
        (before.get("models") or {}).get("teacher"))
    stage_cfg = as_recorded(store, STAGE, stage_cfg)  # an earlier dasd's, with transport or speed settings
    if drop_if_models_changed(store, STAGE, stage_cfg["models"], (SAMPLE_POOL + "-",)) and store.stage_info("import"):
        log.warning("imported responses were in those pools too and are gone with them: run `dasd import` again")
    _refuse_other_sampling(store, before.get("sample") or {}, stage_cfg["sample"])
    _refuse_other_teacher(store, (before.get("teacher") or {}).get("model"), model_name)
    with StagedPrompts(store.root) as staged:
        edits = EditedPrompts(store, log)

        def read(prompt: dict) -> None:
            edits.check(prompt)
            staged.add(prompt)

        ids = training_prompt_ids(cfg, store, each=read)  # the one pass over the source: ids kept, prompts staged
        edits.refuse(cfg.data.prompts)
        picked, warnings = picks_by_temperature(ids, s)
        for warning in warnings:
            log.warning(warning)
        store.begin_stage(STAGE, stage_cfg)
        edits.update(staged, cfg.data.prompts)
        _write_prompts(store, staged, len(ids), picked)
    counts: dict[str, dict] = {}
    opened = None
    context = _context_key(cfg)
    stale = store.drop_records(STAGE, "rejects", lambda r: _is_too_long(r) and r.get("context") != context)
    if stale:
        log.info(f"{stale} prompt(s) quarantined as too long for another teacher or context length: judged again")
    rejected, refused_ids = IdSet(), IdSet()  # every quarantine record's id; those of prompts a server refused
    for r in store.read(STAGE, "rejects"):
        rejected.add(r["id"])
        if _refused(r):
            refused_ids.add(r["id"])

    def sample_pool(temp: float, asked: list[str]) -> dict:
        """Ask the teacher for the samples ``asked`` prompts miss at ``temp``; return what was new and
        what the pool lacks for quarantine: ``quarantined`` counts the prompts it asks that are
        quarantined as too long (also those judged by an earlier run, or at another temperature: none
        is asked again) and the samples this run quarantined as non-finite (a missing sample is asked
        on every run, so those are all the pool lacks for that reason); ``refused_too_long`` those of
        the too-long prompts that the teacher's server refused."""
        nonlocal engine, opened
        pool = pool_name(temp)
        judged = {"records": 0, "non_finite": 0, "refused": 0}  # this run's verdicts in the pool
        first: dict[str, str] = {}  # the first of them, and the first prompt refused: for the warnings

        def sid_of(pid: str, index: int) -> str:
            return sample_id(pid, model_name, temp, s.top_p, s.seed, index)

        # the verdicts are written as they are judged, with the samples (flushed when they are): a stage
        # stopped mid-pool keeps them, and a resumed run does not judge (or ask the server) again
        with store.writer(STAGE, output(SAMPLE_POOL, pool), shard_size=64, flush_seconds=20) as w, \
                store.writer(STAGE, "rejects", shard_size=64, flush_seconds=20) as wq:

            def quarantine(record: dict) -> None:
                wq.add(record)  # a non-finite sample quarantined by an earlier run is on disk already
                rejected.add(record["id"])
                judged["records"] += 1
                judged["non_finite"] += not _is_too_long(record)
                first.setdefault("record", f"{record['where']}: {record['reason']}")

            # the id pass: which prompts miss samples (the rest are not read again)
            todo = IdSet(pid for pid in asked if _too_long_id({"id": pid}) not in rejected
                         and any(sid_of(pid, i) not in w for i in range(s.k)))
            if len(todo) and engine is None:
                engine = opened = open_engine(cfg.teacher)
            rate_p, rate_t = Rate(), Rate()
            bar = progress(len(todo), f"sample {pool}", "prompt")

            def todo_prompts():
                """The prompts to ask, read back from RUN/sample/prompts; too-long ones quarantined."""
                if not len(todo):
                    return
                for p in store.read(STAGE, PROMPTS):
                    if p["id"] not in todo:
                        continue
                    if _quarantine_long(engine, p, quarantine, context, s.max_tokens):
                        bar.update(1)
                        continue
                    yield p

            live: dict[int, dict] = {}  # request index -> its prompt, while samples of it are asked
            left: dict[int, int] = {}  # request index -> its samples not yet back

            def requests(prompts):
                for r, p in enumerate(prompts):
                    live[r], left[r] = p, sum(sid_of(p["id"], i) not in w for i in range(s.k))
                    yield GenerateRequest(id=p["id"], messages=p["messages"], n=s.k, temperature=temp, top_p=s.top_p,
                                          max_tokens=s.max_tokens, seed=derived_seed(s.seed, p["id"], temp))

            # A streaming engine (openai, ray) is fed the requests as it frees slots and hands back each
            # sample as it completes; a batch engine (hf) gets `batch_prompts` prompts per call.
            streaming = hasattr(engine, "generate_iter")
            groups = [requests(todo_prompts())] if streaming else (
                list(requests(batch)) for batch in chunks(todo_prompts(), s.batch_prompts))
            for reqs in groups:
                # a request no longer live has every sample it missed back: the rest were on disk
                for r, g in _generations(engine, reqs, skip=lambda r, i: r not in live or sid_of(live[r]["id"], i) in w):
                    p = live[r]
                    if isinstance(g, ContextLengthError):
                        judged["refused"] += 1
                        first.setdefault("refused", p["id"])
                        refused_ids.add(_too_long_id(p))
                        quarantine({"id": _too_long_id(p), "where": f"prompt {p['id']}", "context": context,
                                    "reason": f"{REFUSED}: {g}"})
                        bar.update(1)
                        continue
                    left[r] -= 1
                    if left[r] == 0:
                        del live[r], left[r]
                    sid = sid_of(p["id"], g.index)
                    bad = next((j for j, x in enumerate(g.logprobs) if not math.isfinite(x)), None)
                    if bad is not None:
                        quarantine({"id": sid, "where": f"prompt {p['id']} sample {g.index} ({pool})",
                                    "reason": f"non-finite teacher log-prob {g.logprobs[bad]} at token {bad}; "
                                              "not kept, asked again on the next run", "raw": g.text[:2000]})
                        continue
                    flushed = w.written
                    w.add(
                        {
                            "id": sid, "prompt_id": p["id"], "model": model_name,
                            "temperature": temp, "top_p": s.top_p, "seed": s.seed, "index": g.index,
                            "text": g.text, "finish_reason": g.finish_reason,
                            "teacher": {
                                "token_ids": g.token_ids, "offsets": g.offsets, "logprobs": g.logprobs,
                                "logprob_mode": g.logprob_mode,
                            },
                        }
                    )
                    if w.written != flushed:  # samples went to disk: the verdicts judged before them go too
                        wq.flush()
                    rate_t.add(len(g.logprobs))  # token_ids are empty from an openai server without openai.token_ids
                    if r not in left:
                        rate_p.add(1)
                        bar.update(1)
                        bar.set_postfix(prompts_s=f"{rate_p.per_s():.2f}", tok_s=f"{rate_t.per_s():.0f}")
                live.clear()
                left.clear()
            bar.close()
        if judged["refused"]:
            log.warning(f"{pool}: {judged['refused']} prompt(s) refused by the teacher's server as longer than its "
                        f"context (e.g. {first['refused']}): quarantined, not asked again while the teacher and its "
                        "context stay the same")
        if judged["records"]:
            log.warning(f"{pool}: {judged['records']} record(s) quarantined, e.g. {first['record']}; "
                        f"see {store.root / STAGE}/rejects-*.jsonl")
        too_long = sum(_too_long_id({"id": pid}) in rejected for pid in asked)
        return {"quarantined": too_long + judged["non_finite"],
                "refused_too_long": sum(_too_long_id({"id": pid}) in refused_ids for pid in asked), "new": w.written,
                "tok_s": rate_t.per_s()}

    with faults_kept(store, STAGE, lambda: [engine]):
        for temp in s.temperatures:
            pool = pool_name(temp)
            asked = ids if picked is None else [ids[i] for i in picked[temp]]
            done = sample_pool(temp, asked)  # what it held (the pool's ids, the prompts to ask) is let go
            counts[pool] = c = pool_stats(store, pool, IdSet(asked), s.k)
            del asked
            tok_s = done.pop("tok_s")
            c |= done
            if c["not_asked"]:
                log.warning(f"{pool}: {c['not_asked']} prompt(s) of the pool are not among the {c['asked']} it asks now "
                            "(sample.prompts_per_temperature or data.limit lowered, or prompts removed from data.prompts): "
                            "their samples are kept and later stages use them; delete "
                            f"{store.root / STAGE}/pool-{pool}-* to sample the pool again")
            if c["beyond_k"]:
                log.warning(f"{pool}: {c['beyond_k']} sample(s) beyond sample.k={s.k} per prompt (k lowered since they "
                            "were sampled): they are kept and later stages use them; delete "
                            f"{store.root / STAGE}/pool-{pool}-* to sample the pool again")
            log.info(
                f"{pool}: {c['samples']} samples for {c['prompts']} prompts ({c['new']} new), "
                f"mean teacher log-prob/token {_fmt(c['mean_token_logprob'])}, cut off {c['cut_off']}, "
                f"{tok_s:.0f} tok/s"
            )
    _warn_other_pools(store, s.temperatures)
    record_faults(store, STAGE, [engine])
    if opened is not None and hasattr(opened, "close"):
        opened.close()  # releases Ray actors / HTTP clients of an engine this stage opened
    store.end_stage(STAGE, counts)
    return counts


def _write_prompts(store: RunStore, staged: StagedPrompts, n: int, picked: dict[float, list[int]] | None) -> None:
    """Add to ``RUN/sample/prompts`` the ``n`` staged prompts that some temperature asks (``picked``:
    the positions each asks; None: all), as they stream; the ids on disk are skipped."""
    asked = None
    if picked is not None:
        asked = np.zeros(n, dtype=bool)
        for positions in picked.values():
            asked[positions] = True
    with store.writer(STAGE, PROMPTS) as pw:
        for i, p in enumerate(staged):
            if asked is None or asked[i]:
                pw.add(p)


def _warn_other_pools(store: RunStore, temperatures: list[float]) -> None:
    """Warn of sampled pools on disk at a temperature ``sample.temperatures`` no longer has: `filter`
    reads every pool of ``RUN/sample`` (an imported pool is expected there and not warned of)."""
    known = {pool_name(t) for t in temperatures} | set(store.stage_info("import").get("pools") or {})
    other = [p for p in pools(store, STAGE, SAMPLE_POOL) if p not in known]
    if other:
        log.warning(f"pool(s) {', '.join(other)} in {store.root / STAGE} are not at a temperature of sample.temperatures "
                    f"{temperatures}: they are kept, and filter, score and select use them; delete "
                    f"{store.root / STAGE}/pool-<pool>-* to leave one out")


SHAPING = ("top_p", "seed", "max_tokens")  # sample settings a pool's samples were drawn under


def _refuse_other_sampling(store: RunStore, before: dict, now: dict) -> None:
    """Refuse (``ConfigError``, one line) to sample on into pools drawn under another ``top_p``,
    ``seed`` or ``max_tokens``: the pools would hold samples of both settings (ids hash top_p and
    seed, so each prompt would get k more; a longer cap would keep the samples cut off at the old
    one). Dropping the pools is left to the user: sampling is the costliest stage."""
    changed = [f"sample.{k} {before[k]!r} -> {now[k]!r}" for k in SHAPING if k in before and before[k] != now.get(k)]
    if changed and any(o.startswith(SAMPLE_POOL + "-") for o in store.outputs(STAGE)):
        raise ConfigError(f"{', '.join(changed)} since the pools in {store.root / STAGE} were sampled: sampling on would "
                          f"mix samples of both settings in one pool; set it back, or delete {store.root / STAGE}/pool-* "
                          "to sample again, or use another run_dir")


def _refuse_other_teacher(store: RunStore, before: str | None, now: str) -> None:
    """Refuse (``ConfigError``, one line) to sample on into pools of a teacher named otherwise
    (``before``, as the stage last recorded it) when the pools are still there: its model had no
    version to tell (``runs.model_version`` is empty for a served name or a hub id, or the stage
    recorded none), so ``drop_if_models_changed`` kept them, and ``name_as_before`` keeps a name
    only for the same known model. Ids hash the name, so each prompt would get k more samples from
    the other teacher beside the old ones, and later stages would use both."""
    if before and before != now and any(o.startswith(SAMPLE_POOL + "-") for o in store.outputs(STAGE)):
        raise ConfigError(f"teacher.model {before!r} -> {now!r} since the pools in {store.root / STAGE} were sampled, "
                          "and dasd cannot tell from files whether it is the same model (a served name or a hub id): "
                          "sampling on would mix both teachers' samples in one pool; set it back, or delete "
                          f"{store.root / STAGE}/pool-* to sample again, or use another run_dir")


def _too_long_id(prompt: dict) -> str:
    """The id of a prompt's too-long quarantine record (a re-run does not ask the engine again)."""
    return f"too-long-{prompt['id']}"


def _is_too_long(reject: dict) -> bool:
    """True for a too-long quarantine record (``_too_long_id``)."""
    return str(reject.get("id", "")).startswith("too-long-")


REFUSED = "the teacher's server refused it as longer than its context"  # a refused prompt's reason begins so


def _refused(reject: dict) -> bool:
    """True for the too-long quarantine record of a prompt the teacher's server refused (``REFUSED``)."""
    return _is_too_long(reject) and str(reject.get("reason", "")).startswith(REFUSED)


def _context_key(cfg) -> str:
    """What a too-long verdict depends on: the teacher's kind, model and tokenizer (names and
    ``runs.model_version``s: a model's own context length is in its files) and ``max_model_len``;
    for a server (kind openai) also ``sample.max_tokens``, as it counts prompt + max_tokens."""
    t = cfg.teacher
    key = {"kind": t.kind, "model": t.model, "tokenizer": t.tokenizer, "gguf_file": t.gguf_file,
           "max_model_len": t.max_model_len, "versions": model_versions(cfg, "teacher", "teacher_tokenizer")}
    if t.kind == "openai":
        key["max_tokens"] = cfg.sample.max_tokens
    return config_hash(key)


def _check_room(cfg) -> None:
    """A server (kind openai) with a known ``max_model_len`` must leave room for a prompt beside
    ``sample.max_tokens``: else every prompt would be quarantined as too long."""
    t = cfg.teacher
    if t.kind == "openai" and t.max_model_len and cfg.sample.max_tokens >= t.max_model_len:
        raise ConfigError(f"sample.max_tokens ({cfg.sample.max_tokens}) leaves no room for a prompt in "
                          f"teacher.max_model_len ({t.max_model_len}): the server refuses prompt + max_tokens "
                          "past its context")


# No token of a tokenizer spells more characters than this: a prompt with more characters than
# context x this is too long without tokenizing it (a multi-megabyte prompt costs no memory).
MAX_CHARS_PER_TOKEN = 64


def _quarantine_long(engine, prompt: dict, quarantine: Callable[[dict], None], context: str, max_tokens: int) -> bool:
    """True (and a quarantine record handed to ``quarantine``, keeping the ``context`` it was judged
    against) when ``prompt`` does not fit the engine's context: the hf engine needs room for one token
    (it stops generation at its context), a server that counts prompt + ``max_tokens`` (``engine.reserves_max_tokens``,
    the openai engine: vLLM refuses more) room for ``max_tokens``."""
    limit = getattr(engine, "max_len", None)
    if not limit:
        return False
    chars = sum(len(m.get("content") or "") for m in prompt["messages"] if isinstance(m, dict))
    if chars > limit * MAX_CHARS_PER_TOKEN:
        reason = f"prompt of {chars} characters cannot fit the teacher's context of {limit} tokens"
    elif getattr(engine, "tokenizer", None) is not None and hasattr(engine, "context_ids"):
        n = len(engine.context_ids(prompt["messages"], None, prompt["id"]))
        room = max_tokens if getattr(engine, "reserves_max_tokens", False) else 1
        if n + room <= limit:
            return False
        reason = f"prompt has {n} tokens, the teacher's context is {limit} (engine max_model_len)"
        if room > 1:
            reason += f" and the server counts the prompt + sample.max_tokens ({max_tokens})"
    else:
        return False
    quarantine({"id": _too_long_id(prompt), "where": f"prompt {prompt['id']}", "reason": reason, "context": context})
    return True


def _generations(engine, reqs, skip):
    """``(request index, Generation)`` pairs, streamed when the engine can, skipping done samples;
    from an engine that can go on past a request refused as longer than the context (its
    ``generate_iter`` takes ``too_long``: the openai engine), ``(request index, ContextLengthError)``
    once for such a request."""
    if hasattr(engine, "generate_iter"):
        if "too_long" not in inspect.signature(engine.generate_iter).parameters:
            yield from engine.generate_iter(reqs, skip=skip)
            return
        refused: list = []
        for r, g in engine.generate_iter(reqs, skip=skip, too_long=lambda r, err: refused.append((r, err))):
            yield from refused
            refused.clear()
            yield r, g
        yield from refused
        return
    for r, gens in enumerate(engine.generate(reqs)):
        for g in gens:
            if not skip(r, g.index):
                yield r, g


def pool_stats(store: RunStore, pool: str, asked: IdSet | None = None, k: int | None = None) -> dict:
    """Counts and the mean per-token teacher log-prob of a sample pool (token-weighted); with the ids of
    the prompts the pool ``asked``, how many those are and how many prompts sampled into the pool are not
    among them (``not_asked``: imported responses, whose prompts are not asked, do not count); with ``k``,
    how many sampled responses have an index of ``k`` or more (``beyond_k``: sampled with a larger k)."""
    n = total_lp = total_tok = cut = beyond_k = not_asked = 0
    prompts, sampled = IdSet(), IdSet()
    for r in store.read(STAGE, output(SAMPLE_POOL, pool)):
        n += 1
        prompts.add(r["prompt_id"])
        if "source_id" not in r:  # sampled, not imported (`dasd import` records the row's own id)
            if sampled.add(r["prompt_id"]) and asked is not None and r["prompt_id"] not in asked:
                not_asked += 1
            if k is not None and r.get("index", 0) >= k:
                beyond_k += 1
        cut += r.get("finish_reason") == "length"
        lps = teacher_signal(r).get("logprobs")
        lps = [] if lps is None else lps.tolist() if hasattr(lps, "tolist") else lps
        total_lp += math.fsum(lps)
        total_tok += len(lps)
    stats = {
        "samples": n, "prompts": len(prompts), "cut_off": cut, "tokens": total_tok,
        "mean_token_logprob": total_lp / total_tok if total_tok else None,
    }
    if asked is not None:
        stats |= {"asked": len(asked), "not_asked": not_asked}
    if k is not None:
        stats["beyond_k"] = beyond_k
    return stats


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"
