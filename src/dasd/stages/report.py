"""`dasd report`: one self-contained HTML page about a run (the page itself: ``dasd.report``).

A report that is already there and was built from the same run contents (every stage's config,
completion and counts in the manifest, and the names and sizes of the run's files) is not
rebuilt; the fingerprint it was built from is kept in ``RUN/.report-inputs``.
"""

from __future__ import annotations

import os
from pathlib import Path

from dasd.jsonl import atomic_open
from dasd.lock import LOCK
from dasd.log import logger
from dasd.report.build import write_report
from dasd.store import RunStore, config_hash

REPORT = "report.html"
FINGERPRINT = ".report-inputs"
log = logger("report")


def run_fingerprint(store: RunStore) -> str:
    """What a report of ``store`` depends on: per stage config hash, completion and counts (not
    timings), and every file's relative path and size (the report, its fingerprint and the run's
    lock, which names the process holding it, excepted)."""
    stages = {name: [info.get("config_hash"), info.get("complete"), info.get("counts")]
              for name, info in store.manifest["stages"].items()}
    files = []
    for folder, dirs, names in os.walk(store.root):
        dirs.sort()
        for n in sorted(names):
            p = Path(folder) / n
            rel = p.relative_to(store.root).as_posix()
            if rel not in (REPORT, FINGERPRINT, "manifest.json", LOCK) and not n.endswith(".tmp"):
                files.append((rel, p.stat().st_size))
    return config_hash([stages, files])


def run_report(cfg, store: RunStore | None = None, out: str | Path | None = None) -> Path:
    """Write ``RUN/report.html`` (or ``out``) for the run of ``cfg``; return its path."""
    store = store if store is not None else RunStore.open(cfg.run_dir)
    if out is not None:
        return write_report(store.root, out)
    fp = run_fingerprint(store)
    mark = store.root / FINGERPRINT
    if (store.root / REPORT).is_file() and mark.is_file() and mark.read_text(encoding="utf-8").strip() == fp:
        log.info(f"{store.root / REPORT} is up to date (the run has not changed)")
        return store.root / REPORT
    path = write_report(store.root, None)
    with atomic_open(mark) as fh:
        fh.write(fp + "\n")
    return path
