"""Teacher sampling rules (pure): the temperature schedule's config and derived seeds.

The stage that samples is ``dasd.stages.sample``; the method is in
docs/method.md#temperature-scheduled-learning.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from dasd.configbase import Seed, StrictModel
from dasd.records import content_id


def pool_name(temperature: float) -> str:
    """The name of a temperature pool, e.g. ``T0.6`` (two temperatures with one name share a pool)."""
    return f"T{float(temperature):g}"


class SampleConfig(StrictModel):
    """Teacher sampling on a temperature schedule (docs/method.md#temperature-scheduled-learning)."""

    temperatures: list[float] = Field([0.6, 1.0], min_length=1, description="one pool per temperature")
    k: int = Field(4, ge=1, description="candidate responses per prompt per temperature")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling threshold; 1 keeps the whole distribution "
                         "(with temperature 1, sampled log-probs are then raw)")
    max_tokens: int = Field(1024, ge=1, description="generation cap in teacher tokens")
    seed: Seed = Field(0, description="base seed; each (prompt, temperature) derives its own")
    batch_prompts: int = Field(16, ge=1, description="prompts sent to the engine per call")

    @field_validator("temperatures")
    @classmethod
    def _temps(cls, v: list[float]) -> list[float]:
        if any(t < 0 for t in v):
            raise ValueError("temperatures must be >= 0")
        if len(set(v)) != len(v):
            raise ValueError("temperatures must be distinct")
        names = [pool_name(t) for t in v]
        if len(set(names)) != len(names):  # 0.6 and 0.6000001 would write into one pool, T0.6
            raise ValueError(f"temperatures must differ in their first 6 significant digits (pools {names})")
        return v


def derived_seed(*parts) -> int:
    """A 31-bit seed derived from parts (stable across runs and machines)."""
    return int(content_id("seed", *parts), 16) % (2**31 - 1)
