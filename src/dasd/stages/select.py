"""`dasd select`: keep m of k candidates per prompt and temperature pool, by DAS or at random.

Reads ``RUN/score/pool-<pool>``; writes ``RUN/select/selected-<pool>`` and ``rejected-<pool>``
(scored samples) and ``train-<pool>`` (training examples: the prompt's messages + the response as
the assistant turn). Random selection (``select.method: random``) uses the same budget and is
seeded, for the paper's RS baselines; ``global_naturalness`` and ``local_naturalness`` keep the
responses the student finds most natural (stronger baselines; ``dasd.rules.das``). The summary
compares selected and rejected responses: DAS score, share of Teacher sentences, length, mean
teacher log-prob/token and, where prompts carry a reference answer, correctness; with any method
but random it also shows what random sampling would have kept at the same budget
(``random_same_budget``), so the two can be compared on the same pool.
"""

from __future__ import annotations

import math

from dasd.grading.grade import is_correct
from dasd.log import logger
from dasd.records import content_id
from dasd.rules.das import SelectConfig, select_grouped
from dasd.runs import REJECTED, SCORED, SELECTED, TRAIN, load_run_prompts, output, pools, require_finished
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


def _stats(items: list[dict], correct: dict[str, bool]) -> dict:
    def mean(xs):
        xs = [x for x in xs if x is not None]
        return sum(xs) / len(xs) if xs else None

    lp = [math.fsum(s["teacher"]["logprobs"]) / len(s["teacher"]["logprobs"]) for s in items if s["teacher"]["logprobs"]]
    return {
        "n": len(items),
        "das_score": mean([s["das"]["score"] for s in items]),
        "frac_teacher": mean([s["das"]["frac_teacher"] for s in items]),
        "frac_student": mean([s["das"]["frac_student"] for s in items]),
        "chars": mean([len(s["text"]) for s in items]),
        "teacher_lp_per_token": mean(lp),
        "accuracy": mean([float(correct[s["id"]]) for s in items if s["id"] in correct]),
    }


def run_select(cfg, store: RunStore | None = None, grade=is_correct) -> dict:
    """Select per pool; ``grade(prompt, text) -> bool`` (None: skip) adds correctness to the summary."""
    store = store or RunStore(cfg.run_dir)
    sc: SelectConfig = cfg.select
    require_finished(store, ("sample", "import", "score"), STAGE)
    store.begin_stage(STAGE, {"select": sc.model_dump(), "das": cfg.das.model_dump()})
    prompts = load_run_prompts(store)
    summary = {}
    for pool in pools(store, "score", SCORED):
        cands = list(store.read("score", output(SCORED, pool)))
        selected, rejected = select_grouped(cands, sc.m, sc.method, seed=sc.seed)
        correct = {}
        if grade is not None:
            for s in cands:
                p = prompts[s["prompt_id"]]
                if p.get("answer") is not None:
                    correct[s["id"]] = bool(grade(p, s["text"]))
        # Selection is a pure function of the scored pool: outputs are rewritten whole (atomically).
        for name in (SELECTED, REJECTED, TRAIN):
            for old in store.stage_dir(STAGE).glob(f"{name}-{pool}-*.jsonl"):
                old.unlink()
        with store.writer(STAGE, output(SELECTED, pool), shard_size=10**9) as w:
            for s in selected:
                w.add(s)
        with store.writer(STAGE, output(REJECTED, pool), shard_size=10**9) as w:
            for s in rejected:
                w.add(s)
        with store.writer(STAGE, output(TRAIN, pool), shard_size=10**9) as w:
            for s in selected:
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
