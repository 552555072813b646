"""`dasd eval` inside a run: which models, on which benchmarks, under which protocol.

Models are named by label: ``teacher``, ``student`` (the student base), a training stage name
(``stage1_low``, ``stage2_high``, ``stage3_mixed``: that stage's final model in this run), or a
model directory. Results go to ``RUN/eval/results-<label>`` (one EvalResult per sample, the protocol
embedded), resumable per (benchmark problem, sample index) as long as the model, the benchmarks and
the protocol are the ones the stored results were made with (``eval_key``, kept per label in the
manifest, beside the ``model_version`` of the model they were made with, kept per label under
``versions``: the report tells by it a training stage's results of an earlier model of it,
``report.models.stale_eval``); otherwise the label's stored results are deleted and it is evaluated again. The
benchmarks are read once per `dasd eval` (``grading.benchmarks.load_benchmarks``, which names a bad entry by its
place in ``eval.benchmarks``), for every model, and once with `dasd analyze` in `dasd run`. The summary (avg@k with a bootstrap
95% CI, pass@k, maj@k, the share cut off at the token limit) is printed per model and kept in the
manifest; samples cut off at the token limit get a warning per model and benchmark
(``cut_off_warning``). A config without ``eval.protocol`` or ``eval.preset`` gets the demo's protocol,
which is for the toy models only: evaluating any other model with it is refused
(``require_eval_protocol``). Grading and protocols: docs/evaluation.md.
"""

from __future__ import annotations

from dasd.errors import ConfigError, DasdError
from dasd.grading.evaluate import PAPER_MAX_TOKENS, PAPER_MAX_TOKENS_OTHER, Protocol, run_eval
from dasd.grading.benchmarks import load_benchmarks
from dasd.grading.metrics import format_table, summarize
from dasd.log import logger
from dasd.records import content_id
from dasd.runs import (StoredRecords, faults_kept, model_for, model_identity, model_version, open_engine, record_faults,
                       resolve_model, results_name)
from dasd.store import RunStore, config_hash
from dasd.train.card import refresh_card

STAGE = "eval"
log = logger(STAGE)


def eval_key(store: RunStore, ecfg, mcfg, legacy: bool = False) -> str:
    """A hash of what a label's results depend on: the model's identity (``runs.model_identity``;
    ``legacy``: as earlier versions wrote it), the benchmarks and the protocol (preset or explicit)."""
    return config_hash({
        "model": model_identity(store, mcfg, legacy),
        "benchmarks": [b.model_dump(mode="json") for b in ecfg.benchmarks],
        "preset": ecfg.preset,
        "protocol": ecfg.protocol.model_dump(mode="json"),
    })


def require_eval_protocol(cfg, labels: list[str] | None = None) -> None:
    """Refuse (``ConfigError``) to evaluate a model that is not a toy model (``toy:`` name; a training
    stage counts as its ``train.base_model``) under the protocol a config gets when it gives neither
    ``eval.protocol`` nor ``eval.preset``: the demo's (512 tokens), which would cut off almost every
    answer of a long-CoT model and grade it wrong. ``labels``: the models to evaluate (default
    ``eval.models``)."""
    ecfg = cfg.eval
    if ecfg.preset != "none" or "protocol" in ecfg.model_fields_set:
        return
    stages = {s.name for s in cfg.train.stages}
    models = {"teacher": cfg.teacher.model, "student": cfg.student.model,
              **{name: cfg.train.base_model for name in stages}}
    real = [label if models.get(label, label) == label else f"{label} ({models[label]})"
            for label in labels or ecfg.models if not models.get(label, label).startswith("toy:")]
    if not real:
        return
    p = ecfg.protocol
    raise ConfigError(
        f"eval.protocol: not given, so the demo's protocol (T {p.temperature}, n {p.n}, max_tokens {p.max_tokens}) "
        f"would evaluate {', '.join(real)}: it is for the toy models only, and cuts a long-CoT answer off at "
        f"{p.max_tokens} tokens, graded wrong. Give eval.protocol (e.g. eval.protocol={{temperature: 1.0, n: 4, "
        f"max_tokens: 32768}}), or eval.preset: paper for the paper's protocol (T 1.0, n 64, "
        f"{PAPER_MAX_TOKENS['math']:,} tokens math, {PAPER_MAX_TOKENS_OTHER:,} code and science)")


def cut_off_warning(label: str, benchmark: str, cut: int, samples: int, caps: list[int], preset: str) -> str:
    """The line `dasd eval` logs when ``cut`` of a model's ``samples`` on a benchmark stopped at the
    token limit (``caps``: the max_tokens of its protocols), with the fix."""
    if preset == "paper":
        fix = "these are the paper's caps: to allow longer answers, give eval.protocol with a larger max_tokens and eval.preset: none"
    else:
        fix = (f"raise eval.protocol.max_tokens, or set eval.preset: paper for the paper's protocol "
               f"({PAPER_MAX_TOKENS['math']:,} tokens math, {PAPER_MAX_TOKENS_OTHER:,} code and science)")
    return (f"{label}: {cut} of {samples} samples on {benchmark} stopped at the token limit (max_tokens "
            f"{' / '.join(f'{c:,}' for c in caps)}, or the model's context if shorter): their answers were cut off "
            f"and are graded wrong; {fix}")


def evaluate_model(cfg, store: RunStore, label: str, engine=None,
                   benchmarks: list[list[dict]] | None = None) -> StoredRecords | list | None:
    """Evaluate one model on every benchmark; return all its results, read from the run on each pass
    (never held: each holds a response), [] when there are none, None if the model does not exist.
    ``benchmarks``: the problems of each ``eval.benchmarks`` entry (``load_benchmarks``, as
    ``run_evaluation`` reads them once for all its models); None: read here.

    Results stored under ``label`` by an earlier call are reused only when ``eval_key`` is the same
    (same model files, however their path is spelled, benchmarks and protocol); otherwise they are deleted first, so a retrained
    stage or a changed protocol is never reported with another model's or protocol's numbers. The
    model's ``model_version`` is kept beside the key (``versions``)."""
    ecfg = cfg.eval
    mcfg = model_for(cfg, store, label)
    if mcfg is None:
        log.info(f"{label}: not trained in this run, skipped")
        return None
    key = eval_key(store, ecfg, mcfg)
    keys = store.manifest["stages"].setdefault(STAGE, {}).setdefault("keys", {})
    if keys.get(label) not in (None, key) and keys[label] == eval_key(store, ecfg, mcfg, legacy=True):
        keys[label] = key  # stored by an earlier version under the same model, benchmarks and protocol
        store.save_manifest()
    if keys.get(label) != key:
        removed = store.remove_output(STAGE, results_name(label))
        if removed:
            why = "no record of what they were made with" if label not in keys else "the model, benchmarks or protocol changed"
            log.info(f"{label}: stored results dropped ({why}); evaluating again")
        keys[label] = key
        # its summary in the manifest was of the dropped results: until this evaluation ends, the
        # report recomputes it from the results on disk
        (store.manifest["stages"][STAGE].get("counts") or {}).pop(label, None)
        store.save_manifest()
    versions = store.manifest["stages"][STAGE].setdefault("versions", {})
    version = model_version(resolve_model(mcfg.model))
    if versions.get(label) != version:  # the label's stored results (if any) are this model's now
        versions[label] = version
        store.save_manifest()
    with faults_kept(store, STAGE, lambda: [engine]), \
         store.writer(STAGE, results_name(label), shard_size=256, flush_seconds=20) as w:
        # the keys of the stored results only (and whether each was cut off): at the paper's protocol
        # a label's results hold ~28K responses of up to 100K tokens each, read back from the run when summarised
        existing = {(r["benchmark"], r["problem_id"], r["sample_index"]): r.get("finish_reason") == "length"
                    for r in store.read(STAGE, results_name(label))}
        for spec, problems in zip(ecfg.benchmarks, benchmarks if benchmarks is not None else load_benchmarks(ecfg, store)):
            by_domain: dict[str, list[dict]] = {}
            for p in problems:
                by_domain.setdefault(p.get("domain", "other"), []).append(p)
            caps = set()
            for domain, probs in by_domain.items():
                proto = Protocol.paper(domain) if ecfg.preset == "paper" else ecfg.protocol
                caps.add(proto.max_tokens)
                done = {(pid, j) for (b, pid, j) in existing if b == spec.name}
                todo = sum(1 for p in probs for j in range(proto.n) if (p["id"], j) not in done)
                if todo == 0:
                    continue
                if engine is None:
                    engine = open_engine(mcfg)

                def write(result, bench=spec.name):
                    result = {**result, "benchmark": bench, "model_label": label}
                    result["id"] = content_id("eval", label, key, bench, result["problem_id"], result["sample_index"], result["protocol"])
                    w.add(result)
                    existing[(bench, result["problem_id"], result["sample_index"])] = result.get("finish_reason") == "length"

                log.info(f"{label}: {todo} samples on {spec.name} ({domain})")
                run_eval(engine, probs, proto, done, write, batch_requests=ecfg.batch_requests, workers=ecfg.workers)
            cut = [c for (b, _, _), c in existing.items() if b == spec.name]
            if any(cut):
                log.warning(cut_off_warning(label, spec.name, sum(cut), len(cut), sorted(caps), ecfg.preset))
    record_faults(store, STAGE, [engine])
    return StoredRecords(store, STAGE, results_name(label)) if existing else []


def run_evaluation(cfg, store: RunStore | None = None, labels: list[str] | None = None) -> dict:
    """Evaluate each model label; return {label: summary rows} (also in the manifest).

    A training stage's label whose model this run has not trained yet is refused (``DasdError``
    naming it and `dasd train`) before anything is evaluated or recorded, as is one whose stage is
    being trained (again) or was trained from an earlier version of a stage before it (``runs.final_model``:
    its old model is not evaluated as the stage's), and so are a model that is
    not a toy model under the implicit demo protocol (``require_eval_protocol``) and a benchmark that
    is not there or cannot be read or graded (``InputError`` naming its ``eval.benchmarks`` entry, then file and
    line, or problem: ``grading.benchmarks.load_benchmarks``, which reads each benchmark once for every model);
    an ``optional`` stage's,
    once `dasd train` finished (it skips such a stage when its data does not exist), is skipped with
    a log line."""
    store = store or RunStore(cfg.run_dir)
    labels = list(labels or cfg.eval.models)
    require_eval_protocol(cfg, labels)
    skipped = {s.name for s in cfg.train.stages if s.optional} if store.stage_info("train").get("complete") else set()
    untrained = [label for label in labels if label not in skipped and model_for(cfg, store, label) is None]
    if untrained:
        raise DasdError(f"{store.root}: eval.models: {', '.join(map(repr, untrained))} not trained in this run yet "
                        "(no train/<stage>/final); run `dasd train` first, or leave it out of eval.models")
    benchmarks = load_benchmarks(cfg.eval, store)  # a bad benchmark is refused before any model is evaluated
    store.begin_stage(STAGE, cfg.eval.model_dump(mode="json"))
    summary = {}
    for label in labels:
        results = evaluate_model(cfg, store, label, benchmarks=benchmarks)
        if results:
            rows = summarize(results)
            summary[label] = rows
            log.info(f"{label}\n{format_table(rows)}")
            if label in {st.name for st in cfg.train.stages}:  # a stage model of this run: its card gets the table
                refresh_card(store.root / "train" / label, results)
    prev = store.stage_info(STAGE).get("counts") or {}
    store.end_stage(STAGE, {**prev, **summary})
    return summary
