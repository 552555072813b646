"""Helpers shared by stages: opening engines, progress bars, pools, seeds."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Sequence
from typing import TypeVar

from tqdm import tqdm

from dasd.engines.config import EngineConfig
from dasd.records import content_id

T = TypeVar("T")


def resolve_model(model: str) -> str:
    """``toy:teacher`` / ``toy:student`` name the built-in toy models; anything else is kept."""
    if model.startswith("toy:"):
        from dasd.toy.build import default_toy_dir

        role = model.split(":", 1)[1]
        if role not in ("teacher", "student"):
            from dasd.errors import ConfigError

            raise ConfigError(f"model {model!r}: the toy world has 'toy:teacher' and 'toy:student'")
        return str(default_toy_dir() / role)
    return model


def open_engine(cfg: EngineConfig):
    """Build the engine a config names (``toy:`` models resolved)."""
    from dasd.engines import make_engine

    return make_engine(cfg.model_copy(update={"model": resolve_model(cfg.model)}))


def pool_name(temperature: float) -> str:
    """The name of a temperature pool, e.g. ``T0.6``."""
    return f"T{float(temperature):g}"


def derived_seed(*parts) -> int:
    """A 31-bit seed derived from parts (stable across runs and machines)."""
    return int(content_id("seed", *parts), 16) % (2**31 - 1)


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def progress(total: int, desc: str, unit: str) -> tqdm:
    """A progress bar on stderr (hidden when stderr is not a terminal unless DASD_PROGRESS=1)."""
    import os

    disable = not (sys.stderr.isatty() or os.environ.get("DASD_PROGRESS") == "1")
    return tqdm(total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True, file=sys.stderr)


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
