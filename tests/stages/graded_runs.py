"""A toy run whose prompts carry reference answers that filter grades (``filter.require_correct``),
for the tests that correct an answer and follow it through the stages."""

from __future__ import annotations

import json

from dasd.config import load_config


def graded_toy_run(tmp_path, *overrides: str):
    """``(write(rows), cfg(run))``: ``write`` (re)writes the prompts file ``tmp_path/prompts.jsonl``;
    ``cfg(run)`` is the config of the run folder ``tmp_path/run`` on it: the toy teacher and student,
    320-token samples, graded by filter, then ``overrides``."""
    src = tmp_path / "prompts.jsonl"

    def write(rows):
        src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    def cfg(run):
        return load_config(None, [f"run_dir={tmp_path / run}", f"data.prompts={src}", "student.model=toy:student",
                                  "teacher.model=toy:teacher", "sample.max_tokens=320", "filter.require_correct=true",
                                  *overrides])

    return write, cfg
