"""`dasd eval` inside a run: which models, on which benchmarks, under which protocol.

Models are named by label: ``teacher``, ``student`` (the student base), a training stage name
(``stage1_low``, ``stage2_high``, ``stage3_mixed``: that stage's final model in this run), or a
model directory. Results go to ``RUN/eval/results-<label>`` (one EvalResult per sample, the protocol
embedded), resumable per (benchmark problem, sample index); the summary (avg@k with a bootstrap
95% CI, pass@k, maj@k) is printed per model and kept in the manifest. Grading and protocols:
docs/evaluation.md.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from dasd.configbase import StrictModel
from dasd.records import content_id
from dasd.stages.common import open_engine, resolve_model
from dasd.stages.evaluate import Protocol, run_eval
from dasd.stages.training import final_model
from dasd.store import RunStore

STAGE = "eval"


class BenchmarkSpec(StrictModel):
    """One benchmark: the toy world's test split or a local file in a usual format."""

    name: str = Field(description="label in tables")
    format: Literal["toy", "aime", "gpqa", "livecodebench", "prompts"] = Field(
        "toy", description="toy (built in), aime (jsonl problem/answer), gpqa (csv), livecodebench (jsonl), "
        "prompts (JSONL with `messages` or `prompt`, plus `answer`, `choices` or `tests`)")
    path: str | None = Field(None, description="the file (not for toy)")
    limit: int | None = Field(None, ge=1, description="use the first N problems (toy: how many to generate)")
    seed: int = Field(0, description="toy problem seed / GPQA choice-shuffle seed")

    @model_validator(mode="after")
    def _path(self) -> "BenchmarkSpec":
        if self.format != "toy" and not self.path:
            raise ValueError(f"benchmark {self.name!r}: format {self.format} needs a path")
        return self


class EvalConfig(StrictModel):
    """`dasd eval` settings (YAML section ``eval``)."""

    benchmarks: list[BenchmarkSpec] = Field(
        default_factory=lambda: [BenchmarkSpec(name="toy", format="toy", limit=50)],
        description="what to evaluate on")
    protocol: Protocol = Field(
        default_factory=lambda: Protocol(name="demo", temperature=0.6, top_p=1.0, n=4, max_tokens=512),
        description="sampling protocol, stored with every result")
    preset: Literal["none", "paper"] = Field(
        "none", description="paper = the paper's protocol per benchmark domain (T 1.0, top_p 1.0, n 64, "
        "102,400 tokens math / 81,920 code and science), replacing `protocol`")
    models: list[str] = Field(
        default_factory=lambda: ["student", "stage1_low", "stage2_high", "stage3_mixed", "teacher"],
        description="labels: teacher, student (base), a training stage name, or a model directory")
    batch_requests: int = Field(64, ge=1, description="samples per engine call")
    workers: int | None = Field(None, ge=0, description="grading processes (0 = in process; None = auto)")


def load_benchmark(spec: BenchmarkSpec) -> list[dict]:
    from dasd.grading import loaders

    if spec.format == "toy":
        probs = loaders.load_toy(n=spec.limit or 100, seed=spec.seed, split="test", benchmark=spec.name)
    elif spec.format == "aime":
        probs = loaders.load_aime(spec.path, benchmark=spec.name)
    elif spec.format == "gpqa":
        probs = loaders.load_gpqa(spec.path, seed=spec.seed, benchmark=spec.name)
    elif spec.format == "livecodebench":
        probs = loaders.load_livecodebench(spec.path, benchmark=spec.name)
    else:
        from dasd.errors import InputError
        from dasd.stages.prompts import load_prompts

        probs, rejects = load_prompts(spec.path, system_prompt=None)
        if rejects:  # a score over part of a benchmark is not comparable: refuse, naming the line
            raise InputError(f"{rejects[0]['where']}: {rejects[0]['reason']} (benchmark {spec.name!r})")
        for p in probs:
            p.setdefault("meta", {}).setdefault("benchmark", spec.name)
    return probs[: spec.limit] if spec.limit else probs


def model_for(cfg, store: RunStore, label: str):
    """(engine config, resolved path) of a model label, or None when that model does not exist yet."""
    if label == "teacher":
        return cfg.teacher
    if label == "student":
        return cfg.student
    if label in {s.name for s in cfg.train.stages}:
        path = final_model(store, label)
        return cfg.student.model_copy(update={"model": path}) if path else None
    if Path(resolve_model(label)).is_dir():
        return cfg.student.model_copy(update={"model": label})
    from dasd.errors import ConfigError

    raise ConfigError(f"eval.models: {label!r} is not teacher, student, a training stage name or a model directory")


def results_name(label: str) -> str:
    """The run-store output holding a model label's evaluation results."""
    return "results-" + re.sub(r"[^A-Za-z0-9_.=+\-]", "_", label)


def evaluate_model(cfg, store: RunStore, label: str, engine=None) -> list[dict] | None:
    """Evaluate one model on every benchmark; return all its results (None if it does not exist)."""
    ecfg = cfg.eval
    mcfg = model_for(cfg, store, label)
    if mcfg is None:
        print(f"[eval] {label}: no such model in this run yet, skipped")
        return None
    with store.writer(STAGE, results_name(label), shard_size=256, flush_seconds=20) as w:
        existing = {(r["benchmark"], r["problem_id"], r["sample_index"]): r for r in store.read(STAGE, results_name(label))}
        for spec in ecfg.benchmarks:
            problems = load_benchmark(spec)
            by_domain: dict[str, list[dict]] = {}
            for p in problems:
                by_domain.setdefault(p.get("domain", "other"), []).append(p)
            for domain, probs in by_domain.items():
                proto = Protocol.paper(domain) if ecfg.preset == "paper" else ecfg.protocol
                done = {(pid, j) for (b, pid, j) in existing if b == spec.name}
                todo = sum(1 for p in probs for j in range(proto.n) if (p["id"], j) not in done)
                if todo == 0:
                    continue
                if engine is None:
                    engine = open_engine(mcfg)

                def write(result, bench=spec.name):
                    result = {**result, "benchmark": bench, "model_label": label}
                    result["id"] = content_id("eval", label, bench, result["problem_id"], result["sample_index"], result["protocol"])
                    w.add(result)
                    existing[(bench, result["problem_id"], result["sample_index"])] = result

                print(f"[eval] {label}: {todo} samples on {spec.name} ({domain})")
                run_eval(engine, probs, proto, done, write, batch_requests=ecfg.batch_requests, workers=ecfg.workers)
    return list(existing.values())


def run_evaluation(cfg, store: RunStore | None = None, labels: list[str] | None = None) -> dict:
    """Evaluate each model label; return {label: summary rows} (also in the manifest)."""
    from dasd.grading.metrics import format_table, summarize

    store = store or RunStore(cfg.run_dir)
    store.begin_stage(STAGE, cfg.eval.model_dump(mode="json"))
    summary = {}
    for label in labels or cfg.eval.models:
        results = evaluate_model(cfg, store, label)
        if results:
            rows = summarize(results)
            summary[label] = rows
            print(f"[eval] {label}\n{format_table(rows)}")
    prev = store.stage_info(STAGE).get("counts") or {}
    store.end_stage(STAGE, {**prev, **summary})
    return summary


def accuracy_table(summary: dict[str, list[dict]], order: list[str]) -> str:
    """The demo's closing table: avg@k with 95% CI of each model (overall row)."""
    lines = [f"{'model':16s} {'avg@k':>7s} {'95% CI':>15s} {'pass@k':>7s} {'k':>3s} {'problems':>8s}"]
    for label in order:
        rows = summary.get(label)
        if not rows:
            lines.append(f"{label:16s} {'(not run)':>7s}")
            continue
        r = next(x for x in rows if x["kind"] == "all")
        lo, hi = r["avg@k_ci"]
        lines.append(f"{label:16s} {100 * r['avg@k']:6.1f}% [{100 * lo:5.1f}, {100 * hi:5.1f}] {100 * r['pass@k']:6.1f}% {r['k']:3d} {r['problems']:8d}")
    return "\n".join(lines)
