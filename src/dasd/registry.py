"""The stage registry: every pipeline stage, in pipeline order, in one list.

The CLI makes one verb per entry, `dasd run` runs the entries marked ``in_run`` in this order, and
the report lists the stages from here. Adding a stage = one driver file in ``dasd/stages/`` (a
function ``run_<name>(cfg, store=None)``) + one ``Stage(...)`` entry below (docs/design.md, "Adding
a stage", walks through an example).

A driver is named by ``"module:function"`` and imported only when it runs, so ``dasd --help`` stays
fast and this module imports no driver.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    """One pipeline stage.

    - ``name``: the CLI verb and the manifest key.
    - ``sections``: the config sections it reads (``dasd config show`` and docs).
    - ``inputs``: the stages whose outputs it reads. In `dasd run`, a stage that ran earlier and
      reads a later stage's outputs runs again once after it (``train`` after ``mix``: stage 3).
    - ``outputs``: what it writes under ``RUN/<folder>/`` (names as in ``dasd.runs``).
    - ``driver``: ``"module:function"``, called as ``function(cfg, store)``.
    - ``help``: one line for ``dasd --help``.
    - ``in_run``: part of `dasd run` / `dasd demo`.
    - ``folder``: the run sub-folder it writes (default: ``name``).
    """

    name: str
    sections: tuple[str, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    driver: str
    help: str
    in_run: bool = True
    folder: str | None = None

    def load(self) -> Callable:
        """The driver function (imports its module)."""
        module, _, func = self.driver.partition(":")
        return getattr(importlib.import_module(module), func)

    @property
    def directory(self) -> str:
        return self.folder or self.name


STAGES: tuple[Stage, ...] = (
    Stage("sample", ("data", "sample", "teacher"), (), ("prompts", "pool-T<temp>"),
          "dasd.stages.sample:run_sample",
          "Sample k teacher responses per prompt at each temperature of the schedule (one pool each; "
          "sample.prompts_per_temperature: a number of prompts per temperature)."),
    Stage("import", ("import", "data", "teacher"), (), ("prompts", "pool-T<temp>"),
          "dasd.stages.import_:run_import",
          "Bring existing teacher responses into a run (released DASD layout or chat JSONL).",
          in_run=False, folder="sample"),
    Stage("filter", ("filter", "student"), ("sample",), ("kept-<pool>", "rejects"),
          "dasd.stages.filter:run_filter",
          "Normalise delimiters and drop bad teacher responses; prints the funnel per pool."),
    Stage("score", ("score", "das", "select", "student", "teacher"), ("sample", "filter"), ("pool-<pool>", "rejects"),
          "dasd.stages.score:run_score",
          "Student teacher-forced log-probs and per-sentence teacher/student scores of kept responses."),
    Stage("select", ("select", "das"), ("sample", "score"), ("selected-<pool>", "rejected-<pool>", "train-<pool>"),
          "dasd.stages.select:run_select",
          "Keep m of k candidates per prompt and pool: by DAS, at random, or by the student's naturalness."),
    Stage("train", ("train", "sample"), ("select", "mix"), ("<stage>/final", "<stage>/checkpoints", "<stage>/curve.jsonl"),
          "dasd.stages.train:run_train",
          "Staged SFT: stage 1 (low temperature), stage 2 (high temperature), stage 3 (mixed policy)."),
    Stage("mix", ("mix", "student", "teacher", "train"), ("sample", "select", "train"), ("rollouts", "examples"),
          "dasd.stages.mix:run_mix_stage",
          "Mixed-policy data: student prefixes that were cut off, continued by the teacher."),
    Stage("eval", ("eval", "teacher", "student", "train"), ("train",), ("results-<model>",),
          "dasd.stages.eval:run_evaluation",
          "Generate k samples per benchmark problem with a recorded protocol, grade, and summarise."),
    Stage("analyze", ("analyze", "eval", "teacher", "student"), ("eval", "train"), ("responses",),
          "dasd.stages.analyze:run_analyze",
          "Sentence-type diagnosis (Teacher/Student/Shared/Boosted) of the distilled model's responses."),
    Stage("report", (), ("sample", "filter", "score", "select", "train", "mix", "eval", "analyze"), ("report.html",),
          "dasd.stages.report:run_report",
          "Write a self-contained HTML report of a run (plots embedded, no network).", folder="."),
)

BY_NAME: dict[str, Stage] = {s.name: s for s in STAGES}


def get(name: str) -> Stage:
    """The stage called ``name`` (KeyError names the known ones)."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"no stage {name!r}; stages: {', '.join(BY_NAME)}") from None


def run_order() -> list[Stage]:
    """What `dasd run` executes, in order, re-runs included.

    The stages marked ``in_run`` in registry order; after each, every stage that already ran and
    reads its outputs runs once more (so ``train`` runs again after ``mix`` for the mixed stage).
    """
    order: list[Stage] = []
    done: list[Stage] = []
    for st in (s for s in STAGES if s.in_run):
        order.append(st)
        order += [earlier for earlier in done if st.name in earlier.inputs]
        done.append(st)
    return order


def pipeline_names() -> list[str]:
    """The stages of a run that write data, in order (the report's stage list)."""
    return [s.name for s in STAGES if s.in_run and s.name != "report"]
