"""A stage's data: resolve it (named pool or JSONL path), validate each example, tokenise, pack.

Validation errors name the file, line and field. Examples longer than the context are dropped and
counted (the paper drops responses over its 64K training context).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from dasd.errors import ConfigError, InputError
from dasd.jsonl import BadLine, iter_jsonl
from dasd.records import TrainingExample
from dasd.train.encode import Encoded, encode_example
from dasd.train.packing import pack


@dataclass
class StageData:
    """Tokenised examples of one stage and the sequences (lists of example indices) they pack into."""

    examples: list[Encoded]
    sequences: list[list[int]]
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def n_tokens(self) -> int:
        return sum(len(e) for e in self.examples)


def _check_example(obj: dict, where: str) -> dict:
    try:
        ex = TrainingExample.model_validate({"id": obj.get("id", where), **{k: v for k, v in obj.items() if k != "id"}})
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        raise InputError(f"{where}: field {loc!r}: {err['msg']}") from None
    if not ex.messages or ex.messages[-1].role != "assistant":
        raise InputError(f"{where}: field 'messages': the last message must be the assistant's")
    if ex.prefix_chars < 0:
        raise InputError(f"{where}: field 'prefix_chars' must be >= 0, got {ex.prefix_chars}")
    return {"messages": [m.model_dump() for m in ex.messages], "prefix_chars": ex.prefix_chars}


def load_examples(source: str, data: dict[str, list[dict]] | None) -> list[tuple[str, dict]] | None:
    """``(where, example)`` pairs of a named pool or JSONL file; None when the source does not exist."""
    if data is not None and source in data:
        return [(f"{source}[{i}]", _check_example(dict(r), f"{source}[{i}]")) for i, r in enumerate(data[source])]
    p = Path(source)
    if not p.exists():
        return None
    if p.is_dir():
        raise ConfigError(f"stage data {source!r} is a directory; give a JSONL file or a named pool")
    out = []
    for lineno, obj in iter_jsonl(p):
        if isinstance(obj, BadLine):
            raise InputError(f"{obj.where()}: {obj.reason}")
        where = f"{p}:{lineno}"
        out.append((where, _check_example(obj, where)))
    return out


def prepare(tokenizer, items: list[tuple[str, dict]], context: int, mask_prefix: bool, packing: bool) -> StageData:
    """Tokenise ``items``, drop those over ``context`` tokens, and pack (or not) into sequences."""
    examples, dropped = [], {"over_context": 0}
    for where, ex in items:
        enc = encode_example(tokenizer, ex, mask_prefix=mask_prefix, where=where)
        if len(enc) > context:
            dropped["over_context"] += 1
            continue
        examples.append(enc)
    if not examples:
        raise InputError(f"no usable training example (dropped: {dropped})")
    if packing:
        sequences = pack([len(e) for e in examples], context)
    else:
        sequences = [[i] for i in range(len(examples))]
    return StageData(examples, sequences, dropped)
