"""Record types: one JSON object a line. Stages read and write these through the run store.

Ids are content hashes (``content_id``), so a re-run recognises what it already wrote and
teacher signals are always joined to samples **by id, never by position**.

- ``Prompt``: a question to sample or evaluate.
- ``Sample``: one teacher response, with the teacher's per-token log-probs and char offsets.
- ``ScoredSample`` = Sample + ``student`` log-probs + ``sentences`` table + ``das`` summary.
- ``TrainingExample``: chat ``messages`` (+ ``prefix_chars`` for mixed-policy examples).
- ``EvalResult``: one graded response, with the protocol that produced it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Domain = Literal["math", "code", "science", "instruction", "toy", "other"]


def content_id(*parts: Any, length: int = 16) -> str:
    """A stable hex id from JSON-serialisable parts (order matters)."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:length]


class Record(BaseModel):
    model_config = ConfigDict(extra="allow")


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant", "tool"]
    content: str


class Prompt(Record):
    id: str
    domain: Domain = "other"
    messages: list[Message]
    answer: str | None = None
    choices: list[str] | None = None
    tests: dict[str, Any] | None = None
    meta: dict[str, Any] = Field(default_factory=dict)

    @field_validator("messages")
    @classmethod
    def _has_user_turn(cls, v: list[Message]) -> list[Message]:
        if not any(m.role == "user" for m in v):
            raise ValueError("needs at least one user message")
        return v


class TokenLogprobs(BaseModel):
    """Per-token signal of one model over a response text (char offsets into ``Sample.text``)."""

    model_config = ConfigDict(extra="allow")
    tokens: list[str] | None = None
    offsets: list[tuple[int, int]]
    logprobs: list[float]
    logprob_mode: Literal["raw", "processed", "missing"] = "raw"

    @model_validator(mode="after")
    def _same_length(self) -> "TokenLogprobs":
        if len(self.offsets) != len(self.logprobs):
            raise ValueError(f"{len(self.offsets)} offsets but {len(self.logprobs)} logprobs")
        if self.tokens is not None and len(self.tokens) != len(self.logprobs):
            raise ValueError(f"{len(self.tokens)} tokens but {len(self.logprobs)} logprobs")
        return self


class Sample(Record):
    id: str
    prompt_id: str
    model: str
    temperature: float
    top_p: float = 1.0
    seed: int = 0
    index: int = 0
    text: str
    finish_reason: str = "stop"
    teacher: TokenLogprobs | None = None


def sample_id(prompt_id: str, model: str, temperature: float, top_p: float, seed: int, index: int) -> str:
    """The content-hash id of a teacher sample (docs/design.md: prompt, model, temperature, top_p, seed, index)."""
    return content_id("sample", prompt_id, model, float(temperature), float(top_p), int(seed), int(index))


class Sentence(BaseModel):
    model_config = ConfigDict(extra="allow")
    start: int
    end: int
    lp_teacher: float | None
    lp_student: float | None
    n_teacher_tokens: int
    n_student_tokens: int
    type: Literal["teacher", "student", "shared", "boosted", "unscored"]


class TrainingExample(Record):
    id: str
    messages: list[Message]
    prefix_chars: int = 0  # leading chars of the last assistant turn written by the student (mixed policy)
    source: str = ""


class EvalResult(Record):
    problem_id: str
    sample_index: int
    extracted: str | None
    correct: bool
    detail: dict[str, Any] = Field(default_factory=dict)
    protocol: dict[str, Any] = Field(default_factory=dict)


def teacher_signal(sample: dict) -> dict:
    """A sample's teacher signal (``tokens``, ``offsets``, ``logprobs``, ``logprob_mode``), ``{}`` if none."""
    t = sample.get("teacher")
    return t if isinstance(t, dict) else {}
