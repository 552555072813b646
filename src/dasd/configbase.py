"""Base class of every config model: unknown keys and wrong types are errors at load time."""

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class StrictModel(BaseModel):
    """A pydantic model that rejects unknown keys and NaN/infinite numbers, and validates on assignment.

    Every stage's config derives from this, documents each field in its docstring or
    `Field(description=...)`, and checks cross-field rules in a `model_validator`.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


SPEED = {"speed": True}
"""``json_schema_extra`` of a speed-only setting: it changes how fast a stage runs (how many rows or
prompts go to an engine at once, how many positions its lm head turns into log-probs at a time, how
much GPU memory vLLM takes), not what it writes: sampling seeds are per sample and batch-invariant,
and a log-prob is the same in any batch or chunk up to float rounding. Such settings are left out of
a stage's identity (``runs.stage_identity``), so changing one on a finished run redoes nothing."""


def field_marks(field) -> dict:
    """The marks a pydantic field carries in its ``json_schema_extra`` (``SPEED``, ``TRANSPORT``), or {}."""
    return field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}


def marked_settings(model: type[BaseModel], marker: str, prefix: str = "") -> tuple[str, ...]:
    """Dotted keys of ``model``'s settings whose ``json_schema_extra`` sets ``marker`` (``"speed"``,
    ``"transport"``), down its sections."""
    out: list[str] = []
    for name, field in model.model_fields.items():
        if field_marks(field).get(marker):
            out.append(prefix + name)
        elif isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            out += marked_settings(field.annotation, marker, f"{prefix}{name}.")
    return tuple(out)


Seed = Annotated[int, Field(ge=0, lt=2**32)]
"""A seed field's type: 0 to 2**32 - 1, what numpy (and so ``accelerate.set_seed``) accepts, checked
at load time rather than as a crash in the middle of a stage."""


def dump_config(cfg: BaseModel) -> dict:
    """A config as plain JSON data (stored in the manifest; its hash decides whether a stage is done),
    keys as a config file spells them (``import``, not the field name ``import_``), so that what
    `dasd config show` prints loads back."""
    return cfg.model_dump(mode="json", by_alias=True)
