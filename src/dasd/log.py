"""What dasd tells the user while it runs: log lines with levels, and progress.

Library code never calls ``print``: it logs through ``logger(stage)`` (a ``logging`` logger named
``dasd.<stage>``, whose lines read ``[stage] message``) and shows progress with ``progress()``.
The CLI calls ``setup()`` once: ``-q`` keeps warnings and errors only, ``-v`` adds debug lines.
Results a command exists to print (the demo's accuracy table, ``dasd config show``) go to stdout;
log lines go to stderr.

Progress: on a terminal, a tqdm bar with throughput; anywhere else (a log file, CI, Slurm) one log
line each time another ``every_pct`` percent is done, so logs stay readable (no bar frames).
``DASD_PROGRESS=bar`` forces the bar, ``DASD_PROGRESS=lines`` the lines, ``DASD_PROGRESS=off`` neither.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import TypeVar

T = TypeVar("T")

ROOT = "dasd"


class _StageFormatter(logging.Formatter):
    """``[stage] message`` (the logger's last name part); warnings and errors say so."""

    def format(self, record: logging.LogRecord) -> str:
        name = record.name.split(".", 1)[1] if record.name.startswith(ROOT + ".") else record.name
        prefix = f"[{name}] " if name and name != ROOT else ""
        level = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        return f"{prefix}{level}{record.getMessage()}"


class _StderrHandler(logging.StreamHandler):
    """A stream handler that writes to whatever ``sys.stderr`` is when a line is logged."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # logging sets it once in __init__
        pass


def setup(level: int = logging.INFO, stream=None) -> None:
    """Send dasd's log lines to ``stream`` (default: the current ``sys.stderr``) at ``level``; idempotent."""
    root = logging.getLogger(ROOT)
    for h in list(root.handlers):
        if getattr(h, "_dasd", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.setFormatter(_StageFormatter())
    handler._dasd = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


def logger(name: str) -> logging.Logger:
    """The logger of a stage or module: ``logger("sample")`` logs ``[sample] ...``."""
    return logging.getLogger(f"{ROOT}.{name}")


def _mode() -> str:
    forced = os.environ.get("DASD_PROGRESS", "").lower()
    if forced in ("bar", "lines", "off"):
        return forced
    if forced == "1":  # older spelling: show the bar
        return "bar"
    return "bar" if sys.stderr.isatty() else "lines"


class Progress:
    """A progress counter: a tqdm bar on a terminal, else a log line every ``every_pct`` percent.

    Same calls as a tqdm bar for what dasd uses: ``update(n)``, ``set_postfix(**kv)``, ``close()``.
    """

    def __init__(self, total: int, desc: str, unit: str, initial: int = 0, every_pct: float = 10.0,
                 enabled: bool = True):
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.every = max(every_pct, 0.1) / 100.0
        self.mode = _mode() if enabled else "off"
        self._postfix: dict[str, str] = {}
        self._next_mark = self._mark_after(initial)
        self._t0 = time.monotonic()
        self._n0 = initial
        self._bar = None
        if self.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, file=sys.stderr)

    def _mark_after(self, n: int) -> float:
        if self.total <= 0:
            return float("inf")
        step = self.every * self.total
        return (int(n / step) + 1) * step

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.mode == "lines" and self.n >= self._next_mark - 1e-9:
            self._next_mark = self._mark_after(self.n)
            self._line()

    def set_postfix(self, **kv) -> None:
        self._postfix = {k: str(v) for k, v in kv.items()}
        if self._bar is not None:
            self._bar.set_postfix(**kv)

    def _line(self) -> None:
        dt = max(time.monotonic() - self._t0, 1e-9)
        rate = (self.n - self._n0) / dt
        extra = "".join(f", {k} {v}" for k, v in self._postfix.items())
        pct = 100.0 * self.n / self.total if self.total else 100.0
        logging.getLogger(ROOT).info(f"{self.desc}: {self.n}/{self.total} {self.unit} ({pct:.0f}%), "
                                f"{rate:.2f} {self.unit}/s{extra}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(total: int, desc: str, unit: str, **kw) -> Progress:
    """A ``Progress`` for ``total`` items (see the module docstring for where it shows)."""
    return Progress(total, desc, unit, **kw)


class Rate:
    """Counts things per second since creation (for progress postfixes and summaries)."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.n = 0

    def add(self, n: int) -> None:
        self.n += n

    @property
    def seconds(self) -> float:
        return max(time.monotonic() - self.t0, 1e-9)

    def per_s(self) -> float:
        return self.n / self.seconds


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of at most ``size`` of ``items``, read as they are needed (a generator is
    never held whole)."""
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch
