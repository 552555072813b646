"""Base class of every config model: unknown keys and wrong types are errors at load time."""

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class StrictModel(BaseModel):
    """A pydantic model that rejects unknown keys and NaN/infinite numbers, and validates on assignment.

    Every stage's config derives from this, documents each field in its docstring or
    `Field(description=...)`, and checks cross-field rules in a `model_validator`.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


Seed = Annotated[int, Field(ge=0, lt=2**32)]
"""A seed field's type: 0 to 2**32 - 1, what numpy (and so ``accelerate.set_seed``) accepts, checked
at load time rather than as a crash in the middle of a stage."""


def dump_config(cfg: BaseModel) -> dict:
    """A config as plain JSON data (stored in the manifest; its hash decides whether a stage is done),
    keys as a config file spells them (``import``, not the field name ``import_``), so that what
    `dasd config show` prints loads back."""
    return cfg.model_dump(mode="json", by_alias=True)
