"""Read-only access to a run directory for the report: the manifest, stage states, outputs.

All reads go through ``dasd.store.RunStore`` (``read`` / ``outputs`` / ``manifest``); training
curves are plain files under ``RUN/train/<stage>/curve.jsonl`` and are read here line by line
(a line cut by a crash ends the curve, as in the trainer).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dasd import registry
from dasd.columnar import kind_of, upstream_output
from dasd.runs import REWRITTEN, changes_since
from dasd.store import RunStore

PIPELINE = tuple(registry.pipeline_names())


class RunView:
    """A run directory seen by the report. ``stage_state`` says what ran; ``counts`` what it counted."""

    def __init__(self, store: RunStore):
        self.store = store
        self.root = Path(store.root)
        self.manifest: dict[str, Any] = store.manifest
        self.stages: dict[str, dict] = self.manifest.get("stages") or {}
        self._changes: dict[str, list[tuple[str, str]]] = {}

    def info(self, stage: str) -> dict:
        v = self.stages.get(stage)
        return v if isinstance(v, dict) else {}

    def counts(self, stage: str) -> dict:
        """The counts ``stage`` recorded when it last finished; ``{}`` while it is ``unfinished``: they
        would be of an earlier run's outputs, not of what the stage holds on disk now."""
        if self.unfinished(stage):
            return {}
        c = self.info(stage).get("counts")
        return c if isinstance(c, dict) else {}

    def count(self, stage: str, name: str) -> int | None:
        """How many records output ``name`` of ``stage`` holds on disk (``RunStore.count``); None when it has none."""
        return self.store.count(stage, name) if name in self.outputs(stage) else None

    def outputs(self, stage: str) -> list[str]:
        return self.store.outputs(stage)

    def pools(self, stage: str, prefix: str) -> list[str]:
        """Pool names of outputs ``<prefix>-<pool>``, ordered by temperature when they look like ``T0.6``."""
        names = [o[len(prefix) + 1 :] for o in self.outputs(stage) if o.startswith(prefix + "-")]
        return sorted(names, key=_pool_key)

    def read(self, stage: str, name: str) -> Iterator[dict]:
        return self.store.read(stage, name)

    def first(self, stage: str, name: str) -> dict | None:
        return next(iter(self.store.read(stage, name)), None)

    def stage_state(self, stage: str) -> str:
        """``complete``, ``incomplete`` (started, not finished: running or interrupted), or ``not run``.

        Samples brought in by `dasd import` make ``sample`` "complete (imported)".
        """
        info = self.info(stage)
        if stage == "sample" and not info and self.info("import"):  # `dasd import` fills RUN/sample
            return "complete (imported)" if self.info("import").get("complete") else "incomplete"
        if info.get("complete"):
            return "complete"
        if info or self.outputs(stage) or (stage == "train" and self.train_stage_dirs()):
            return "incomplete"
        return "not run"

    def ran(self, stage: str) -> bool:
        return self.stage_state(stage) != "not run"

    def unfinished(self, stage: str) -> bool:
        """True when ``stage`` began and did not finish (interrupted, or still running)."""
        return self.stage_state(stage) == "incomplete"

    def unfinished_text(self, stage: str) -> str:
        """The line that marks an ``unfinished`` stage in the sections showing its numbers ("" when it is not)."""
        if not self.unfinished(stage):
            return ""
        if stage == "sample" and not self.info(stage) and self.info("import"):
            stage = "import"
        again = f"`dasd {stage}`" + (" (or `dasd run`)" if stage in PIPELINE else "")
        return (f"{stage}: interrupted (began {self.info(stage).get('started', '?')} and did not finish; or still "
                f"running): resume with {again}. Its numbers here count what its outputs hold so far; those it counts "
                "only when it finishes are left empty (–).")

    def changes(self, stage: str) -> list[tuple[str, str]]:
        """What changed in the outputs a finished ``stage`` read since it ran (``runs.changes_since``:
        ``(sample/pool-T1, "grew")``, ``written again``, ``is new``); ``[]`` when nothing did, or while
        it has not run or is ``unfinished`` (its own run will read them as they are)."""
        if stage not in self._changes:
            done = self.info(stage).get("complete") and not self.unfinished(stage)
            try:
                self._changes[stage] = changes_since(self.store, stage) if done else []
            except OSError:  # a shard removed while listed, by a stage running now (marked as such)
                self._changes[stage] = []
        return self._changes[stage]

    def changed(self, stage: str) -> list[str]:
        """``changes`` in words (``runs.changed_since``'s): ``sample/pool-T1 grew``, ..."""
        return [f"{name} {how}" for name, how in self.changes(stage)]

    def out_of_date(self, stage: str) -> bool:
        """True when ``stage`` finished and what it read changed since (``changed``)."""
        return bool(self.changed(stage))

    def rerun_from(self, stage: str) -> str:
        """The first out-of-date stage of the pipeline up to ``stage``: the one to run again first
        (a later stage is refused while an earlier one it reads is out of date: ``runs.require_current``)."""
        return next((s for s in PIPELINE[: PIPELINE.index(stage) + 1] if self.out_of_date(s)), stage)

    def stale_text(self, stage: str) -> str:
        """The line that marks an ``out_of_date`` stage in the sections showing its numbers ("" when it is not)."""
        if not self.out_of_date(stage):
            return ""
        first = self.rerun_from(stage)
        return (f"{stage}: out of date ({'; '.join(self.changed(stage))} since it ran): run `dasd {first}` and the "
                "stages after it (or `dasd run`)")

    def gone(self, stage: str) -> str:
        """The out-of-date stage because of which rows of ``stage``'s columnar outputs refer to rows that
        are gone ("" when none): ``stage`` itself when an output its rows refer to (directly or further
        up, ``columnar.upstream_output``) was written again since it ran, else the stage its rows refer
        to when that one's are gone. Reading such records fails (``RunStore.read``)."""
        if stage not in PIPELINE or not self.info(stage).get("complete") or self.unfinished(stage):
            return ""
        rewritten = {name for name, how in self.changes(stage) if how == REWRITTEN}  # lost a shard (``runs._lost``)
        ups = set()
        for name in self.outputs(stage):
            kind, at = kind_of(stage, name), name
            while kind is not None and kind.upstream is not None:
                up_stage, at = upstream_output(kind, at)
                if f"{up_stage}/{at}" in rewritten:
                    return stage
                ups.add(up_stage)
                kind = kind_of(up_stage, at)
        return next((g for up in sorted(ups, key=PIPELINE.index, reverse=True) if (g := self.gone(up))), "")

    def gone_text(self, stage: str) -> str:
        """The line shown instead of the numbers of a section made from ``stage``'s records when they
        refer to rows that are gone (``gone``; "" when they do not)."""
        blamed = self.gone(stage)
        if not blamed:
            return ""
        return f"Not shown: the records of {stage} refer to rows that are gone. {self.stale_text(blamed)}."

    # -- training --------------------------------------------------------------------------------
    def train_stage_dirs(self) -> list[Path]:
        """``RUN/train/<stage>`` folders with a curve, in config order, then any others by name."""
        d = self.root / "train"
        if not d.is_dir():
            return []
        found = {p.name: p for p in d.iterdir() if p.is_dir() and ((p / "curve.jsonl").is_file() or (p / "done.json").is_file())}
        order = [s.get("name") for s in (self.info("train").get("config") or {}).get("stages") or [] if isinstance(s, dict)]
        order += [s.get("name") for s in ((self.manifest.get("config") or {}).get("train") or {}).get("stages") or []
                  if isinstance(s, dict)]
        out, seen = [], set()
        for name in [*order, *sorted(found)]:
            if name in found and name not in seen:
                seen.add(name)
                out.append(found[name])
        return out

    def train_stage_names(self) -> set[str]:
        """The run's training stage names: those of the train configs the run recorded and the folders
        under ``RUN/train`` (one deleted to be trained again is still named by the config)."""
        cfgs = [self.info("train").get("config") or {}, (self.manifest.get("config") or {}).get("train") or {}]
        names = {s.get("name") for c in cfgs if isinstance(c, dict) for s in c.get("stages") or [] if isinstance(s, dict)}
        d = self.root / "train"
        names |= {p.name for p in d.iterdir() if p.is_dir()} if d.is_dir() else set()
        return {n for n in names if isinstance(n, str) and n and "/" not in n and n not in (".", "..")}

    @staticmethod
    def curve(stage_dir: Path) -> list[dict]:
        path = stage_dir / "curve.jsonl"
        rows: list[dict] = []
        if not path.is_file():
            return rows
        with path.open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    break
                if isinstance(rec, dict):
                    rows.append(rec)
        return rows

    @staticmethod
    def done(stage_dir: Path) -> dict | None:
        path = stage_dir / "done.json"
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        return d if isinstance(d, dict) else None


def _pool_key(name: str) -> tuple:
    try:
        return (0, float(name[1:]) if name.startswith("T") else float(name), name)
    except ValueError:
        return (1, math.inf, name)


def mean(xs) -> float | None:
    xs = [x for x in xs if isinstance(x, (int, float)) and math.isfinite(x)]
    return math.fsum(xs) / len(xs) if xs else None
