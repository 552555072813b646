"""Teacher sampling rules (pure): the temperature schedule's config, which prompts each temperature
asks (``picks_by_temperature``) and derived seeds.

The stage that samples is ``dasd.stages.sample``; the method is in
docs/method.md#temperature-scheduled-learning.
"""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from dasd.configbase import SPEED, Seed, StrictModel
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
    batch_prompts: int = Field(16, ge=1, description="Prompts sent to the engine per call.", json_schema_extra=SPEED)
    prompts_per_temperature: list[int] | None = Field(
        None, description="Questions asked at each temperature, one count per entry of temperatures (the paper: "
        "[105000, 330000]); null = every prompt at every temperature. Temperature i asks the first N_i prompts of "
        "one ranking by a hash of (seed, prompt id), so a smaller set is part of a larger one; raising a count asks "
        "only the prompts it adds, lowering one deletes no sample, a count above the prompts asks them all "
        "(docs/pipeline.md, 'Questions per temperature').")

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

    @model_validator(mode="after")
    def _per_temperature(self) -> SampleConfig:
        per = self.prompts_per_temperature
        if per is not None:
            if len(per) != len(self.temperatures):
                raise ValueError(f"prompts_per_temperature has {len(per)} count(s) for {len(self.temperatures)} "
                                 f"temperature(s) {self.temperatures}: give one count per temperature")
            if any(n < 1 for n in per):
                raise ValueError(f"prompts_per_temperature: every count must be >= 1 (got {per})")
        return self


def prompt_rank(prompt_id: str, seed: int) -> tuple[str, str]:
    """Where a prompt stands in the order ``prompts_per_temperature`` takes prompts from: a hash of
    ``(seed, prompt id)`` (then the id), so a prompt's place does not depend on the other prompts."""
    return content_id("sample-order", seed, prompt_id, length=64), prompt_id


def picks_by_temperature(ids: list[str], cfg: SampleConfig) -> tuple[dict[float, list[int]] | None, list[str]]:
    """Which prompts each temperature asks, from the prompts' ids alone: per temperature, the
    positions in ``ids`` it asks, ascending (None: every prompt at every temperature), and warnings
    to log. Temperature ``i`` asks the ``N_i`` prompts of lowest ``prompt_rank`` (all of them, with a
    warning, when ``N_i`` is more than there are)."""
    per = cfg.prompts_per_temperature
    if per is None:
        return None, []
    ranked = sorted(range(len(ids)), key=lambda i: (prompt_rank(ids[i], cfg.seed), i))
    out, warnings = {}, []
    for t, n in zip(cfg.temperatures, per):
        if n > len(ids):
            warnings.append(f"{pool_name(t)}: sample.prompts_per_temperature asks {n} prompts and the run has "
                            f"{len(ids)}: all of them are asked")
        out[t] = sorted(ranked[:n])
    return out, warnings


def derived_seed(*parts) -> int:
    """A 31-bit seed derived from parts (stable across runs and machines)."""
    return int(content_id("seed", *parts), 16) % (2**31 - 1)
