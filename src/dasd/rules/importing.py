"""Import rules (pure): the ``import`` config section and how one chat row is read (a released
DASD row: ``dasd.rules.released``).

The stage that reads the sources and writes the pools is ``dasd.stages.import_``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from dasd.configbase import StrictModel
from dasd.records import Prompt
from dasd.rules.released import LOGPROB_MODE_HELP, LogprobMode
from dasd.rules.source_spec import SourceSpec


class ImportConfig(StrictModel):
    """`dasd import` settings (YAML section ``import``)."""

    source: SourceSpec | None = Field(
        None, description="responses: a JSONL/Parquet file, a save_to_disk folder, or hf:<repo>[:<config>][@<split>][#<revision>]")
    format: Literal["dasd", "chat"] = Field("dasd", description="layout of `source`: dasd (the released data, "
                                            "docs/released-data.md) or chat (messages ending with the assistant turn)")
    logprobs: SourceSpec | None = Field(
        None, description="the DASD -Logprob companion (sample_uuid, token_ids, logprobs), joined by id; same forms as source")
    logprob_mode: LogprobMode = Field("auto", description=LOGPROB_MODE_HELP)
    temperature: float = Field(1.0, ge=0, description="the sampling temperature of these responses (their pool)")
    top_p: float = Field(1.0, gt=0, le=1, description="the nucleus threshold these responses were sampled with "
                         "(recorded; with temperature 1 and top_p 1, logprob_mode auto reads them as raw)")
    model: str = Field("gpt-oss-120b", description="name of the teacher that wrote them (recorded)")

    @model_validator(mode="after")
    def _logprobs_need_the_dasd_layout(self) -> ImportConfig:
        if self.logprobs and self.format != "dasd":  # chat rows have no uuid: the companion was read and never joined
            raise ValueError(f"import.logprobs (the -Logprob companion) is joined to import.format dasd rows only, "
                             f"not {self.format!r}: unset it")
        return self


RESPONSE_FIELDS = ("messages", "finish_reason")
"""The fields of a chat row that are its response (the last turn, how it ended), not its prompt's."""


def parse_chat(raw: dict) -> tuple[dict, str, dict]:
    """(prompt raw record, response text, extra fields) of one chat row; ValueError names the field.

    The prompt gets the turns before the last and the row's ``Prompt`` fields (``id``, ``domain``,
    ``answer``, ``choices``, ``tests``, ``meta``), as a ``data.prompts`` record would. Any other field
    of the row (``model``, ``usage``, ``source``, ...) goes into the prompt's ``meta`` under its own
    name, as a released row's ``meta`` does; a ``meta`` that already holds that key with another
    value is an error rather than a silent overwrite. The extra fields returned are the sample's
    (the assistant turn's ``reasoning_content``)."""
    msgs = raw.get("messages")
    if not isinstance(msgs, list) or len(msgs) < 2:
        raise ValueError("field 'messages' must be a chat list ending with the assistant's response")
    last = msgs[-1]
    if not isinstance(last, dict) or last.get("role") != "assistant":
        raise ValueError("field 'messages': the last turn must be role 'assistant'")
    text = "" if last.get("content") is None else last["content"]
    reasoning = last.get("reasoning_content")
    for field, value in (("content", text), ("reasoning_content", reasoning)):
        if value is not None and not isinstance(value, str):
            raise ValueError(f"field 'messages': the assistant turn's '{field}' must be a string, "
                             f"got {type(value).__name__}")
    extra = {"reasoning_content": reasoning} if reasoning is not None else {}
    if not text.strip() and not (reasoning or "").strip():
        raise ValueError("field 'messages': the assistant response is empty")
    prompt = {k: v for k, v in raw.items() if k in Prompt.model_fields}
    others = {k: v for k, v in raw.items() if k not in Prompt.model_fields and k not in RESPONSE_FIELDS and v is not None}
    if others:
        meta = raw.get("meta")
        if meta is not None and not isinstance(meta, dict):
            raise ValueError(f"field 'meta' must be an object, got {type(meta).__name__}")
        for k, v in others.items():
            if meta and k in meta and meta[k] != v:
                raise ValueError(f"field 'meta' has {k} {meta[k]!r:.80} but field {k!r} is {v!r:.80}")
        prompt["meta"] = {**others, **(meta or {})}
    prompt["messages"] = msgs[:-1]
    return prompt, text, extra


def finish_reason(raw: dict) -> str:
    """A row's ``finish_reason`` (``stop`` when it has none); ValueError when it is not a string."""
    value = raw.get("finish_reason")
    if value is None or value == "":
        return "stop"
    if not isinstance(value, str):
        raise ValueError(f"field 'finish_reason' must be a string, got {type(value).__name__}")
    return value
