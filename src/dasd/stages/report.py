"""`dasd report`: one self-contained HTML page about a run (the page itself: ``dasd.report``)."""

from __future__ import annotations

from pathlib import Path

from dasd.report.build import write_report
from dasd.store import RunStore


def run_report(cfg, store: RunStore | None = None, out: str | Path | None = None) -> Path:
    """Write ``RUN/report.html`` (or ``out``) for the run of ``cfg``; return its path."""
    root = store.root if store is not None else RunStore.open(cfg.run_dir).root
    return write_report(root, out)
