"""Prompts read again for a run that keeps them (``RUN/sample/prompts``), as `dasd sample` and
`dasd import` read them: the ones to refuse and the ones whose kept record is replaced.

``StagedPrompts`` copies prompts to an unnamed temp file as a source is read, so the source is read
once and no prompt is held in memory; ``EditedPrompts`` compares each prompt read with the record
the run keeps under its id, holding an index of the kept prompts (``runs.RunPrompts``), the ids of
the changed ones (``dasd.idset.IdSet``) and counts.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from dasd.errors import InputError
from dasd.idset import IdSet
from dasd.jsonl import dumps
from dasd.runs import PROMPTS, RunPrompts
from dasd.store import RunStore

STAGE = "sample"  # the run's prompts are the sample stage's output


class StagedPrompts:
    """Prompts as a stage read them, one JSON line each, in an unnamed temp file in the run folder
    (the system removes it when it is closed or the process dies): `dasd sample` writes
    ``RUN/sample/prompts`` from it after the pass over the source that checks every prompt and
    ranks their ids, so the source is read once (an ``hf:`` data set is not streamed from the hub
    twice) and no prompt is held in memory. ``with StagedPrompts(folder) as staged``:
    ``staged.add(prompt)``, then ``for prompt in staged`` (from the first, each time)."""

    def __init__(self, folder: Path):
        self._fh = tempfile.TemporaryFile(dir=folder)

    def add(self, prompt: dict) -> None:
        self._fh.write(dumps(prompt).encode("utf-8") + b"\n")

    def __iter__(self) -> Iterator[dict]:
        self._fh.seek(0)
        for line in self._fh:
            yield json.loads(line)

    def __enter__(self) -> StagedPrompts:
        return self

    def __exit__(self, *exc) -> None:
        self._fh.close()


class EditedPrompts:
    """Prompts read from a source (``data.prompts``, or an import's rows) that differ from the
    record ``RUN/sample/prompts`` keeps under their id. ``check`` each prompt as it is read (an
    index of the kept prompts, ``runs.RunPrompts``, is held), then:

    - ``refuse`` (``InputError``, one line) if any has other messages (the prompts file edited, or
      ``data.system_prompt`` changed): the run's samples of that id answer the old text, new ones
      would be asked with it, and later stages join them to it (`dasd import` quarantines such a
      row instead: ``other_messages``);
    - ``update`` the others that differ (the same messages, another ``answer``, ``choices``,
      ``tests``, ``domain`` or ``meta``: a reference answer corrected): the kept record is replaced
      by the new one (``RunStore.drop_records``: one new shard, then the old ones go; a run killed
      in between finds the old records and replaces them again), and one warning names how many
      changed, which fields, and an example. The samples stand (they answer the same messages);
      ``dasd filter``, which judges them against the run's prompts, judges them again (the
      prompts output lost its old shards: ``runs.drop_if_inputs_rewritten``), and a sample it
      kept that the new answer fails makes it make that pool's kept samples again.

    ``ignore``: fields whose difference alone is no correction: the kept record stays, counted in
    ``kept_as_is`` (`dasd import` passes ``meta``: a chat row's own ``usage`` or ``model`` lands there,
    and describes that response, not the question).
    """

    def __init__(self, store: RunStore, log: logging.Logger, ignore: tuple[str, ...] = ()):
        self.store, self.log, self.ignore = store, log, ignore
        self.kept = RunPrompts(store) if PROMPTS in store.outputs(STAGE) else None
        self.n, self.first = 0, None
        self.kept_as_is = 0  # prompts that differ from their kept record only in ``ignore`` fields
        self.changed = IdSet()  # ids whose kept record has other fields than the prompt read now
        self.fields: dict[str, int] = {}  # field -> how many of those prompts have another one
        self.example: tuple | None = None  # (id, field, kept value, new value) of the first

    def other_messages(self, prompt: dict) -> bool:
        """Whether the run keeps ``prompt``'s id with other messages (``RunPrompts.other_messages``)."""
        return self.kept is not None and self.kept.other_messages(prompt)

    def check(self, prompt: dict) -> None:
        if self.kept is None:
            return
        if self.other_messages(prompt):
            self.n += 1
            self.first = self.first or prompt["id"]
            return
        kept = self.kept.get(prompt["id"])
        if kept is None or kept == prompt:
            return
        fields = sorted(k for k in kept.keys() | prompt.keys() if kept.get(k) != prompt.get(k))
        if all(f in self.ignore for f in fields):
            self.kept_as_is += 1
            return
        self.changed.add(prompt["id"])
        for f in fields:
            self.fields[f] = self.fields.get(f, 0) + 1
        if self.example is None:
            self.example = (prompt["id"], fields[0], kept.get(fields[0]), prompt.get(fields[0]))

    def refuse(self, source: str) -> None:
        if self.n:
            d = self.store.root / STAGE
            raise InputError(f"{source}: {self.n} prompt(s) have other messages than the run keeps under their id "
                             f"(e.g. id {self.first!r}; data.prompts edited, or data.system_prompt changed): the "
                             f"samples in {d} answer the old text; give an edited prompt a new id, or delete "
                             f"{d}/prompts-* and {d}/pool-* to sample again, or use another run_dir")

    def update(self, staged: Iterable[dict], source: str) -> None:
        """Replace the kept records of the changed prompts by their ``staged`` ones (those of
        ``staged`` under another id are passed over; call after the stage began: a run killed
        meanwhile is unfinished, and later stages wait for it)."""
        if not len(self.changed):
            return
        self.store.drop_records(STAGE, PROMPTS, lambda r: r.get("id") in self.changed,
                                add=(p for p in staged if p["id"] in self.changed))
        pid, field, old, new = self.example
        fields = ", ".join(f"{f} ({n})" for f, n in sorted(self.fields.items()))
        self.log.warning(f"{source}: {len(self.changed)} prompt(s) have the same messages and other fields than the "
                         f"run kept under their id: {fields} (e.g. id {pid!r}: {field} {_short(old)} -> {_short(new)}); "
                         "the run's prompts now hold the new records, and `dasd filter` judges their responses again")


def _short(value) -> str:
    """A value for a log line: its repr, cut to 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
