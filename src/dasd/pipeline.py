"""`dasd run CONFIG` and `dasd demo`: every stage in order in one run directory.

    sample -> filter -> score -> select -> train (stages 1-2) -> mix -> train (stage 3)
           -> eval -> analyze -> report

Each stage resumes what it left unfinished and skips what is complete, so re-running the same
command after a crash (even ``kill -9``) finishes the run with the same data as an uninterrupted
one, and re-running a finished run does (almost) nothing.
"""

from __future__ import annotations

import time
from pathlib import Path

from dasd.configbase import dump_config
from dasd.errors import DasdError
from dasd.store import RunStore

REPO_ROOT = Path(__file__).resolve().parents[2]


def demo_config_path() -> Path:
    """configs/demo.yaml of the source tree (the package is installed editable by `make`)."""
    p = REPO_ROOT / "configs" / "demo.yaml"
    if not p.is_file():
        raise DasdError(f"{p}: demo config not found (run `dasd demo` from a source checkout installed with `make`)")
    return p


def grade_fn(problem: dict, text: str) -> bool:
    """Correctness of a response against a prompt's reference, when it has one."""
    from dasd.grading.grade import grade_one

    return bool(grade_one(problem, text)["correct"])


def ensure_toy_world(cfg) -> None:
    """Build the toy models once if the config uses them and they are not there."""
    if any(m.model.startswith("toy:") for m in (cfg.teacher, cfg.student)):
        from dasd.toy.build import default_toy_dir

        default_toy_dir()


def run_pipeline(cfg) -> dict:
    """Run every stage; return the evaluation summary."""
    from dasd.stages.evaluation import accuracy_table, run_evaluation
    from dasd.stages.sample import run_sample
    from dasd.stages.score import run_score
    from dasd.stages.select import run_select
    from dasd.stages.training import run_train

    t0 = time.monotonic()
    store = RunStore(cfg.run_dir)
    store.manifest["config"] = dump_config(cfg)
    store.save_manifest()
    print(f"[run] {cfg.run_dir}")
    ensure_toy_world(cfg)
    run_sample(cfg, store)
    _filter(cfg, store)
    run_score(cfg, store)
    run_select(cfg, store, grade=grade_fn)
    run_train(cfg, store)
    _mix(cfg, store)
    summary = run_evaluation(cfg, store)
    _analyze(cfg, store)
    from dasd.report.build import write_report

    report = write_report(store.root)
    p = cfg.eval.protocol
    print(f"\n[run] accuracy on held-out problems ({p.n} samples each, T={p.temperature}, top_p={p.top_p})")
    print(accuracy_table(summary, cfg.eval.models))
    print(f"[run] report: {report}")
    print(f"[run] done in {time.monotonic() - t0:.0f}s; run directory: {store.root}")
    return summary


def _filter(cfg, store: RunStore) -> None:
    from dasd.stages.filter import run_filter

    run_filter(cfg, store)


def _analyze(cfg, store: RunStore) -> None:
    from dasd.stages.analyze import run_analyze

    run_analyze(cfg, store)


def latest_student(cfg, store: RunStore, before: str | None = None) -> tuple[str, str]:
    """(label, model dir) of the newest trained student (stages before ``before``), else the base."""
    from dasd.stages.training import final_model

    latest = ("student", cfg.student.model)
    for st in cfg.train.stages:
        if st.name == before:
            break
        path = final_model(store, st.name)
        if path:
            latest = (st.name, path)
    return latest


def run_mix_stage(cfg, store: RunStore | None = None) -> dict:
    """`dasd mix`: the latest student (before the mixed-policy stage) writes, the teacher continues."""
    from dasd.stages.common import open_engine
    from dasd.stages.mix import curated_from_run, run_mix

    store = store or RunStore(cfg.run_dir)
    mixed_stages = [s.name for s in cfg.train.stages if s.data == "mixed"]
    label, path = latest_student(cfg, store, before=mixed_stages[0] if mixed_stages else None)
    print(f"[mix] student: {label} ({path})")
    student = open_engine(cfg.student.model_copy(update={"model": path}))
    teacher = open_engine(cfg.teacher)
    return run_mix(cfg.mix, store, curated_from_run(store), student, teacher, grade=grade_fn)


def _mix(cfg, store: RunStore) -> None:
    """Mixed-policy data, then training stage 3."""
    from dasd.stages.training import run_train

    run_mix_stage(cfg, store)
    run_train(cfg, store)
