"""Import rules (pure): the ``import`` config section and how one row of each layout is read.

The stage that reads the files and writes the pools is ``dasd.stages.import_``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from dasd.configbase import StrictModel


class ImportConfig(StrictModel):
    """`dasd import` settings (YAML section ``import``)."""

    source: str | None = Field(None, description="responses file (JSONL or Parquet)")
    format: Literal["dasd", "chat"] = Field("dasd", description="layout of `source` (see module doc)")
    logprobs: str | None = Field(None, description="the DASD -Logprob companion file (JSONL or Parquet)")
    temperature: float = Field(1.0, ge=0, description="the sampling temperature of these responses (their pool)")
    top_p: float = Field(1.0, gt=0, le=1)
    model: str = Field("gpt-oss-120b", description="name of the teacher that wrote them (recorded)")



def parse_dasd(raw: dict) -> tuple[dict, str, str]:
    """(prompt raw record, response text, uuid) of one released-layout row; ValueError names the field."""
    uuid = raw.get("uuid")
    if not isinstance(uuid, str) or not uuid:
        raise ValueError("missing field 'uuid'")
    inp = raw.get("input")
    if isinstance(inp, str):
        prompt = {"prompt": inp}
    elif isinstance(inp, list):
        prompt = {"messages": inp}
    else:
        raise ValueError("field 'input' must be a string or a chat list")
    out = raw.get("output")
    if not isinstance(out, str) or not out.strip():
        raise ValueError("field 'output' is missing or empty")
    prompt["domain"] = raw.get("domain") if raw.get("domain") in ("math", "code", "science", "instruction") else "other"
    if isinstance(raw.get("meta"), dict):
        prompt["meta"] = raw["meta"]
    return prompt, out, uuid


def parse_chat(raw: dict) -> tuple[dict, str, dict]:
    """(prompt raw record, response text, extra fields) of one chat row; ValueError names the field."""
    msgs = raw.get("messages")
    if not isinstance(msgs, list) or len(msgs) < 2:
        raise ValueError("field 'messages' must be a chat list ending with the assistant's response")
    last = msgs[-1]
    if not isinstance(last, dict) or last.get("role") != "assistant":
        raise ValueError("field 'messages': the last turn must be role 'assistant'")
    text = last.get("content") or ""
    extra = {}
    if isinstance(last.get("reasoning_content"), str):
        extra["reasoning_content"] = last["reasoning_content"]
    if not text.strip() and not extra:
        raise ValueError("field 'messages': the assistant response is empty")
    prompt = {k: v for k, v in raw.items() if k != "messages"}
    prompt["messages"] = msgs[:-1]
    return prompt, text, extra
