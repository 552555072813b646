"""`dasd analyze`: the paper's diagnosis of a distilled model (docs/method.md#the-post-training-diagnosis).

Takes the distilled model's own evaluation responses (``RUN/eval/results-<label>``, graded), scores
every sentence under the teacher, the student base and the distilled model (each with its own
tokenizer, teacher-forced on the same prompt), types sentences Teacher / Student / Shared /
Boosted and computes, per type, its share by sentence index (the paper's Fig. 6) and by relative
position in correct vs incorrect responses, and the area between the two curves
(``dasd.rules.analysis``). Writes ``RUN/analyze/responses`` (the
typed sentence tables) and the profile into the manifest (``stages.analyze.counts``) for the report.
Scored responses are resumed by id (the eval result's id, which carries the distilled model's
version) and typed again under the current ``analyze`` thresholds (``tau``, ``tau_boost``,
``boosted``) before the profile, so changing those needs no new scoring; when the teacher or the student base changed under its name since the stage last began
(``runs.model_versions``), the stored responses are dropped and scored again. The prompts of the
responses come from the ``eval.benchmarks`` (``grading.benchmarks.load_benchmarks``: in `dasd run`,
those `dasd eval` read, not read again). The profile records the ``eval_key`` of the label's evaluation
responses it was made from (``stages.eval.keys``): once `dasd eval` replaces them (a model trained again,
other benchmarks or protocol), the report leaves the profile out until `dasd analyze` runs again
(``report.models.stale_analysis``).
"""

from __future__ import annotations

import heapq

from dasd.engines.base import ScoreRequest
from dasd.errors import ContextLengthError, DasdError
from dasd.grading.benchmarks import load_benchmarks
from dasd.log import chunks, logger
from dasd.records import content_id
from dasd.rules.analysis import AnalyzeConfig, position_profile, retype, score_response
from dasd.runs import (drop_if_models_changed, existing_run, faults_kept, model_for, model_versions, open_engine, record_faults,
                       require_finished, results_name)
from dasd.store import RunStore
from dasd.train.encode import score_as_trained

STAGE = "analyze"
log = logger(STAGE)


def _pick_model(cfg, store: RunStore) -> str:
    if cfg.analyze.model != "auto":
        return cfg.analyze.model
    for stage in reversed(cfg.train.stages):
        if model_for(cfg, store, stage.name) is not None and results_name(stage.name) in store.outputs("eval"):
            return stage.name
    raise DasdError("dasd analyze: no trained model with evaluation responses in this run yet "
                    "(run `dasd train` and `dasd eval` first, or set analyze.model)")


def run_analyze(cfg, store: RunStore | None = None) -> dict:
    store = store or existing_run(cfg.run_dir, STAGE)
    ac: AnalyzeConfig = cfg.analyze
    require_finished(store, "eval", STAGE)
    label = _pick_model(cfg, store)
    # the first max_responses by (benchmark, problem, index), drawn from the stream: only they are held
    results = heapq.nsmallest(ac.max_responses, store.read("eval", results_name(label)),
                              key=lambda r: (r["benchmark"], r["problem_id"], r["sample_index"]))
    if not results:
        raise DasdError(f"dasd analyze: no evaluation responses of {label!r} (run `dasd eval` first)")
    problems = {}  # read once: in `dasd run`, those `dasd eval` read before (the same store)
    for spec, probs in zip(cfg.eval.benchmarks, load_benchmarks(cfg.eval, store)):
        for p in probs:
            problems[(spec.name, p["id"])] = p
    stray = next((r for r in results if (r["benchmark"], r["problem_id"]) not in problems), None)
    if stray is not None:  # scoring needs the problem's messages: refused before anything is begun
        raise DasdError(f"dasd analyze: the evaluation responses of {label!r} answer problem {stray['problem_id']!r} of "
                        f"benchmark {stray['benchmark']!r}, which the configured eval.benchmarks do not hold (they were "
                        "made under other eval settings); run `dasd eval` with this config first")
    stage_cfg = {"analyze": ac.model_dump(mode="json"), "model": label, "models": model_versions(cfg, "teacher", "student"),
                 "tokens": "as trained"}  # responses of earlier versions: scored on their own tokens
    drop_if_models_changed(store, STAGE, stage_cfg["models"], ("responses",))
    before = store.stage_info(STAGE).get("config")
    if before is not None and before.get("tokens") != stage_cfg["tokens"]:
        store.mark_unfinished(STAGE)  # a kill before the stage begins again leaves it unfinished
        if store.remove_outputs(STAGE, ("responses",)):
            log.info("responses scored by an earlier dasd on their own tokens, not those training gives them: scored again")
    store.begin_stage(STAGE, stage_cfg)
    engines = {}
    scored = []
    with faults_kept(store, STAGE, engines.values), store.writer(STAGE, "responses") as w:
        done = {r["id"]: r for r in store.read(STAGE, "responses")}
        todo = [r for r in results if content_id("analyze", label, r["id"]) not in done]
        scored = [done[content_id("analyze", label, r["id"])] for r in results if content_id("analyze", label, r["id"]) in done]
        for batch in chunks(todo, ac.batch):
            reqs = [ScoreRequest(id=r["id"], messages=problems[(r["benchmark"], r["problem_id"])]["messages"], continuation=r["text"]) for r in batch]
            signals = {}
            for role, mcfg in (("teacher", cfg.teacher), ("student", cfg.student), ("distilled", model_for(cfg, store, label))):
                if role not in engines:
                    engines[role] = open_engine(mcfg)
                signals[role] = _scored(engines[role], reqs)
            for i, r in enumerate(batch):
                sig = {k: (v[i].offsets, v[i].logprobs) for k, v in signals.items()}
                rec = {
                    "id": content_id("analyze", label, r["id"]), "result_id": r["id"], "problem_id": r["problem_id"],
                    "correct": r["correct"], "text": r["text"],
                    "sentences": score_response(r["text"], sig["teacher"], sig["student"], sig["distilled"], ac),
                }
                w.add(rec)
                scored.append(rec)
    # resumed responses were typed under the settings of their run: type every one under the current ones
    profile = position_profile([{**r, "sentences": retype(r["sentences"], ac)} for r in scored], ac)
    profile["model"] = label
    # which evaluation responses these are: the report leaves the profile out once `dasd eval` replaced them
    profile["eval_key"] = (store.stage_info("eval").get("keys") or {}).get(label)
    record_faults(store, STAGE, engines.values())
    store.end_stage(STAGE, profile)
    log.info(format_profile(profile))
    return profile


def _scored(engine, reqs: list[ScoreRequest]) -> list:
    """Each response scored as ``dasd score`` scores it (``score_as_trained``: the tokens training
    gives it, so the types here are those DAS gave); a response longer than a model's context
    stops the stage with that model's words."""
    results, _ = score_as_trained(engine, reqs)
    refused = next((r for r in results if isinstance(r, ContextLengthError)), None)
    if refused is not None:
        raise refused
    return results


def format_profile(p: dict) -> str:
    n = p["n_responses"]
    lines = [f"{p['model']}: {n['correct']} correct / {n['incorrect']} incorrect responses "
             f"(Boosted: {p.get('boosted', 'higher')}); area = mean over buckets of share(correct) - share(incorrect)",
             f"  {'type':9s} {'share(correct)':>15s} {'share(incorrect)':>17s} {'area by index':>14s} {'area by position':>17s}"]
    by_index = (p.get("by_index") or {}).get("types", {})

    def f(x):
        return "-" if x is None else f"{100 * x:.1f}%"

    def a(x):
        return "-" if x is None else f"{x:+.3f}"

    for t, v in p["types"].items():
        ai = a(by_index.get(t, {}).get("area"))
        lines.append(f"  {t:9s} {f(v['overall']['correct']):>15s} {f(v['overall']['incorrect']):>17s} {ai:>14s} {a(v['area']):>17s}")
    return "\n".join(lines)
