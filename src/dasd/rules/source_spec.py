"""Source specs (pure): a local path or ``hf:<repo>[:<config>][@<split>][#<revision>]``, parsed and
checked without I/O, so a config with a typo fails at load time. Reading a source is
``dasd.sources``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, ConfigDict

from dasd.configbase import StrictModel
from dasd.errors import ConfigError

HUB_PREFIX = "hf:"
_HUB = re.compile(r"^hf:(?P<repo>[^:@#]+)(?::(?P<config>[^@#]+))?(?:@(?P<split>[^#]+))?(?:#(?P<revision>.+))?$")


class LocalSource(StrictModel):
    """A local JSONL or Parquet file, or a ``save_to_disk`` folder."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    path: Path

    def spec(self) -> str:
        return str(self.path)


class HubSource(StrictModel):
    """A Hugging Face hub data set (or a local folder laid out like one): id, config, split, revision."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    repo: str
    config: str | None = None
    split: str = "train"
    revision: str | None = None

    def spec(self) -> str:
        """The string form, ``hf:repo[:config]@split[#revision]``."""
        cfg = f":{self.config}" if self.config else ""
        rev = f"#{self.revision}" if self.revision else ""
        return f"{HUB_PREFIX}{self.repo}{cfg}@{self.split}{rev}"

    def label(self) -> str:
        return f"{self.repo}:{self.config}" if self.config else self.repo

    def where(self, i: int) -> str:
        return f"{self.label()}[{self.split}][{i}]"


Source = LocalSource | HubSource


def parse_source(spec: str | Path | Source) -> Source:
    """A ``Source`` from its string form (module doc); ``ConfigError`` says what is allowed."""
    if isinstance(spec, (LocalSource, HubSource)):
        return spec
    if isinstance(spec, Path):
        return LocalSource(path=spec)
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"source {spec!r}: expected a file path or hf:<repo>[:<config>][@<split>][#<revision>]")
    if not spec.startswith(HUB_PREFIX):
        return LocalSource(path=Path(spec))
    m = _HUB.match(spec.strip())
    if m is None or not m["repo"].strip() or any(v is not None and not v.strip() for v in m.groupdict().values()):
        raise ConfigError(f"source {spec!r}: expected hf:<repo>[:<config>][@<split>][#<revision>], "
                          "e.g. hf:Alibaba-Apsara/Superior-Reasoning-SFT-gpt-oss-120b:stage1@train")
    return HubSource(repo=m["repo"], config=m["config"], split=m["split"] or "train", revision=m["revision"])


def check_source_spec(spec: str | None) -> str | None:
    """Validate a source spec's syntax (no I/O): for config fields, so a typo fails at load time
    (a ``ValueError``, so that the config error names the key and where it was set)."""
    if spec is not None:
        try:
            parse_source(spec)
        except ConfigError as e:
            raise ValueError(str(e)) from None
    return spec


SourceSpec = Annotated[str, AfterValidator(check_source_spec)]
"""A config field type: a local path or an ``hf:`` spec, checked when the config is loaded."""
