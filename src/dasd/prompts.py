"""Prompt input: JSONL, Parquet, a local Hugging Face `datasets` folder, a hub data set (``hf:``,
streamed through ``dasd.sources``), or the toy world.

Each record needs ``messages`` (a chat list) or ``prompt`` (a string, made the user turn). An ``id``
is kept when present, else derived from the messages' content hash. A system turn
(``data.system_prompt``, default "You are a helpful assistant." as in the paper) is added to
prompts that have none. Records that cannot be used are quarantined with ``where`` (file:line) and
``reason``; they never stop the load.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator

from dasd.configbase import Seed, StrictModel
from dasd.errors import InputError
from dasd.idset import IdSet
from dasd.jsonl import BadLine
from dasd.records import Prompt, content_id
from dasd.rules.source_spec import HUB_PREFIX, check_source_spec
from dasd.toy import ToyWorld, check_world
from dasd.sources import iter_rows

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."


class ToyDataConfig(StrictModel):
    """Which toy world and how many of its problems the run generates (used when ``data.prompts`` is ``toy``)."""

    world: ToyWorld = Field("chain", description="chain (chained one-digit arithmetic, the demo's) or column "
                            "(two-digit sums; use with the toy:column-teacher / toy:column-student models)")
    n_train: int = Field(64, ge=1, description="training prompts (sampled by the teacher)")
    seed: Seed = Field(0, description="seed of the problem generator")


class DataConfig(StrictModel):
    """Where the prompts come from."""

    prompts: str = Field(
        "toy",
        description="'toy' (generate toy-world problems), or a source: a JSONL/Parquet file with `messages` or "
        "`prompt` per record, a local Hugging Face `datasets` folder (save_to_disk), or "
        "hf:<repo>[:<config>][@<split>][#<revision>] (streamed)",
    )
    system_prompt: str | None = Field(
        DEFAULT_SYSTEM_PROMPT,
        description="added as the system turn to prompts that have none (the paper's); null = none",
    )
    limit: int | None = Field(None, ge=1, description="use only the first N valid prompts")
    toy: ToyDataConfig = Field(default_factory=ToyDataConfig)

    @field_validator("prompts")
    @classmethod
    def _source(cls, v: str) -> str:
        return v if v == "toy" else check_source_spec(v)


def to_prompt(raw: dict[str, Any], system_prompt: str | None) -> dict[str, Any]:
    """Normalise one raw record into a Prompt dict; raises ValueError with the field at fault."""
    if "messages" in raw and raw["messages"] is not None:
        messages = raw["messages"]
        if not isinstance(messages, list) or not messages:
            raise ValueError("field 'messages' must be a non-empty list of {role, content}")
    elif isinstance(raw.get("prompt"), str):
        if not raw["prompt"].strip():
            raise ValueError("field 'prompt' is empty")
        messages = [{"role": "user", "content": raw["prompt"]}]
    else:
        raise ValueError("missing field 'messages' (a chat list) or 'prompt' (a string)")
    messages = [dict(m) if isinstance(m, dict) else m for m in messages]
    if system_prompt is not None and not any(isinstance(m, dict) and m.get("role") == "system" for m in messages):
        messages = [{"role": "system", "content": system_prompt}, *messages]
    rec = {k: v for k, v in raw.items() if k not in ("prompt", "messages") and v is not None}
    rec["messages"] = messages
    rec.setdefault("id", content_id("prompt", messages))
    if isinstance(rec["id"], bool) or not isinstance(rec["id"], (str, int)) or not str(rec["id"]).strip():
        raise ValueError(f"field 'id' must be a non-empty string or an integer, got {rec['id']!r:.80}")
    rec["id"] = str(rec["id"])
    if "answer" in rec and not isinstance(rec["answer"], str):
        rec["answer"] = str(rec["answer"])
    try:
        return Prompt.model_validate(rec).model_dump(mode="json", exclude_none=True)
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"field '{field}': {first['msg']}") from None


def load_prompts(source: str | Path, system_prompt: str | None, limit: int | None = None) -> tuple[list[dict], list[dict]]:
    """Load prompts from a source spec (``dasd.sources``); return (prompts, rejects). Duplicate ids are
    rejected after the first."""
    rejects: list[dict] = []
    prompts = list(iter_prompts(source, system_prompt, limit, rejects))
    return prompts, rejects


def check_prompt_source(source: str | Path) -> None:
    """Refuse (``InputError``, one line) a local prompt source that does not exist (a hub data set is
    checked when it is read)."""
    if not str(source).startswith(HUB_PREFIX) and not Path(source).exists():
        raise InputError(f"{source}: prompt file or folder not found")


def iter_prompts(source: str | Path, system_prompt: str | None, limit: int | None = None,
                 rejects: list[dict] | None = None) -> Iterator[dict]:
    """``load_prompts`` as a stream: the prompts as they are read (only digests of their ids are held,
    ``dasd.idset.IdSet``, to reject a duplicate), the rejects appended to ``rejects`` as they are met."""
    check_prompt_source(source)
    rejects = [] if rejects is None else rejects
    seen = IdSet()
    n = 0
    for where, raw in iter_rows(source):
        if isinstance(raw, BadLine):
            rejects.append(raw.to_record())
            continue
        try:
            p = to_prompt(raw, system_prompt)
        except ValueError as e:
            rejects.append({"where": where, "reason": str(e), "raw": str(raw)[:2000]})
            continue
        if not seen.add(p["id"]):
            rejects.append({"where": where, "reason": f"duplicate prompt id {p['id']!r}", "raw": str(raw)[:2000]})
            continue
        n += 1
        yield p
        if limit is not None and n >= limit:
            break


def toy_prompts(n: int, seed: int, split: str, system_prompt: str | None, world: str = "chain") -> list[dict]:
    """Prompts of a toy world (``chain`` or ``column``; train split for sampling, test split for evaluation)."""
    if check_world(world) == "column":
        from dasd.toy.column import make_sum_problems as make_problems
        from dasd.toy.column import problem_to_prompt
    else:
        from dasd.toy.world import make_problems, problem_to_prompt
    return [to_prompt(problem_to_prompt(prob), system_prompt) for prob in make_problems(n, seed=seed, split=split)]
