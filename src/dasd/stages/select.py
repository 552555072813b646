"""`dasd select`: keep m of k candidates per prompt and temperature pool, by DAS or at random.

Reads ``RUN/score/pool-<pool>``; writes ``RUN/select/selected-<pool>`` and ``rejected-<pool>``
(scored samples) and ``train-<pool>`` (training examples: the prompt's messages + the response as
the assistant turn). Random selection (``select.method: random``) uses the same budget and is
seeded, for the paper's RS baselines; ``global_naturalness`` and ``local_naturalness`` keep the
responses the student finds most natural (stronger baselines; ``dasd.rules.das``). The summary
compares selected and rejected responses: DAS score, share of Teacher sentences, length, mean
teacher log-prob/token and, where prompts carry a reference answer, correctness; with any method
but random it also shows what random sampling would have kept at the same budget
(``random_same_budget``), so the two can be compared on the same pool. DAS ranks by each response's
sentence table typed under the current ``das`` settings (``rules.das.retype``): changing ``das.tau``,
``penalty``, ``weight``, ``min_tokens`` or ``unit`` needs no new student pass.
"""

from __future__ import annotations

import math

from dasd.columnar import REF, reference
from dasd.errors import DasdError
from dasd.grading.grade import is_correct
from dasd.log import logger
from dasd.records import content_id, teacher_signal
from dasd.rules.das import DASConfig, SelectConfig, das_summary, retype, select_grouped
from dasd.runs import REJECTED, SCORED, SELECTED, TRAIN, RunPrompts, begin_unless_up_to_date, existing_run, output, pools
from dasd.store import RunStore

STAGE = "select"
log = logger(STAGE)


def training_example(prompt: dict, sample: dict, source: str) -> dict:
    """A TrainingExample: the prompt's messages then the response as the assistant turn."""
    return {
        "id": content_id("example", sample["id"]),
        "messages": [*prompt["messages"], {"role": "assistant", "content": sample["text"]}],
        "prefix_chars": 0,
        "source": source,
    }


def candidate(s: dict, das_cfg: DASConfig | None = None) -> dict:
    """What selection and its summary need of a scored sample: ids, DAS summary, naturalness, a few
    numbers and where the row is; no token arrays, so a pool's candidates fit in memory at any scale.

    With ``das_cfg`` the DAS summary is that of the sample's sentence rows typed again under it
    (``rules.das.retype``), so the ranking follows the current ``das`` settings even where the
    stored summary was made under others; without it, the stored summary."""
    lps = teacher_signal(s).get("logprobs")
    ref, das = s.get(REF), s.get("das")
    if das_cfg is not None and isinstance(s.get("sentences"), list):
        das = das_summary(retype(s["sentences"], das_cfg), das_cfg)
    return {
        "id": s["id"], "prompt_id": s["prompt_id"], "temperature": s.get("temperature"),
        "das": {k: das[k] for k in ("score", "frac_teacher", "frac_student") if k in das} if isinstance(das, dict) else das,
        "chars": len(s["text"]),
        "lp": math.fsum(lps.tolist() if hasattr(lps, "tolist") else lps) / len(lps) if lps is not None and len(lps) else None,
        "naturalness": s.get("naturalness") or {},  # global/local naturalness (a few floats), for those selectors
        "at": (ref.folder, ref.shard, ref.row) if ref is not None else None,
    }


def _stats(items: list[dict], correct: dict[str, bool]) -> dict:
    def mean(xs):
        xs = [x for x in xs if x is not None]
        return sum(xs) / len(xs) if xs else None

    return {
        "n": len(items),
        "das_score": mean([s["das"]["score"] for s in items]),
        "frac_teacher": mean([s["das"]["frac_teacher"] for s in items]),
        "frac_student": mean([s["das"]["frac_student"] for s in items]),
        "chars": mean([s["chars"] for s in items]),
        "teacher_lp_per_token": mean([s["lp"] for s in items]),
        "accuracy": mean([float(correct[s["id"]]) for s in items if s["id"] in correct]),
    }


def run_select(cfg, store: RunStore | None = None, grade=is_correct) -> dict:
    """Select per pool; ``grade(prompt, text) -> bool`` (None: skip) adds correctness to the summary.

    Two passes over each scored pool: the first streams the records and keeps per candidate only
    its ids, DAS summary and a few numbers (``candidate``), then ranks; the second writes the
    selected and rejected outputs as references to the scored rows (no token array is copied) and
    the training examples in rank order. A finished select with the same settings and inputs is
    not redone.
    """
    store = store or existing_run(cfg.run_dir, STAGE)
    sc: SelectConfig = cfg.select
    if sc.method == "local_naturalness" and (store.stage_info("score").get("config") or {}).get("local_naturalness") is False:
        raise DasdError(f"{store.root}: select.method local_naturalness needs the student's local naturalness, which "
                        "the score stage did not compute; run `dasd score` with the same settings first (it adds it "
                        "when select.method is local_naturalness, or with score.local_naturalness: always)")
    stage_cfg = {"select": sc.model_dump(), "das": cfg.das.model_dump()}
    done = begin_unless_up_to_date(store, STAGE, stage_cfg, ("sample", "score"), extra={"graded": grade is not None})
    if done is not None:
        return done
    prompts = RunPrompts(store)
    summary = {}
    # Selection is a pure function of the scored pools: its outputs are rewritten whole, and those
    # of a pool that is no longer scored go too.
    store.remove_outputs(STAGE, (SELECTED + "-", REJECTED + "-", TRAIN + "-"))
    for pool in pools(store, "score", SCORED):
        scored = output(SCORED, pool)
        cands, correct = [], {}
        for s in store.read("score", scored):
            try:
                cands.append(candidate(s, cfg.das))
            except ValueError as e:
                ref = s.get(REF)
                raise DasdError(f"{store.root / 'score' / ref.shard if ref else store.root / 'score'}: sample {s['id']}: {e}") from e
            p = prompts[s["prompt_id"]]
            if grade is not None and p.get("answer") is not None:
                correct[s["id"]] = bool(grade(p, s["text"]))
        selected, rejected = select_grouped(cands, sc.m, sc.method, seed=sc.seed)
        for name, items in ((SELECTED, selected), (REJECTED, rejected)):
            with store.writer(STAGE, output(name, pool)) as w:
                for c in items:
                    w.add(reference(*c["at"], c["id"]))
        with store.writer(STAGE, output(TRAIN, pool)) as w:
            for c in selected:
                s = store.fetch("score", scored, *c["at"][1:])
                w.add(training_example(prompts[s["prompt_id"]], s, f"{sc.method}:{pool}"))
        summary[pool] = {"selected": _stats(selected, correct), "rejected": _stats(rejected, correct)}
        if sc.method != "random":  # what random sampling would keep at the same budget, for comparison
            rs, _ = select_grouped(cands, sc.m, "random", seed=sc.seed)
            summary[pool]["random_same_budget"] = _stats(rs, correct)
        log.info(format_summary(pool, sc.method, summary[pool]))
    store.end_stage(STAGE, summary)
    return summary


def format_summary(pool: str, method: str, s: dict) -> str:
    def f(x, fmt):
        return "-" if x is None else format(x, fmt)

    rows = [f"{pool} ({method}): selected vs rejected"]
    rows.append(f"  {'':18s} {'n':>5s} {'DAS':>7s} {'teacher%':>9s} {'student%':>9s} {'chars':>7s} {'lp/tok':>8s} {'acc':>6s}")
    for k in ("selected", "rejected", "random_same_budget"):
        if k not in s:
            continue
        r = s[k]
        rows.append(
            f"  {k:18s} {r['n']:5d} {f(r['das_score'], '7.3f')} {f(r['frac_teacher'] and 100 * r['frac_teacher'], '9.1f')} "
            f"{f(r['frac_student'] and 100 * r['frac_student'], '9.1f')} {f(r['chars'], '7.0f')} "
            f"{f(r['teacher_lp_per_token'], '8.4f')} {f(r['accuracy'], '6.2f')}"
        )
    return "\n".join(rows)
