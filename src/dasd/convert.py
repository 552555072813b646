"""`dasd convert RUN`: bring a run written by the JSONL-only store up to the columnar store.

Earlier versions of dasd wrote every output as JSONL shards. The token-carrying outputs
(``dasd.columnar.OUTPUTS``: sample pools, kept pools, scored pools, selected and rejected) are now
Parquet; reading such an output from an old run fails with one line naming this command. The
conversion rewrites each of those outputs as Parquet shards of the same records (log-probs become
float32; rows are written whole, without references) and then removes its JSONL shards. Every
other output stays JSONL as it was. It is safe to re-run after an interruption: an output whose
JSONL shards are still there is converted again from them.
"""

from __future__ import annotations

from pathlib import Path

from dasd.columnar import kind_of
from dasd.errors import DasdError
from dasd.log import logger
from dasd.store import RunStore, read_jsonl_shard, shard_paths

log = logger("convert")


def convert_run(root: str | Path, shard_size: int = 256) -> dict[str, int]:
    """Convert the JSONL shards of every columnar output under ``root``; return records per output."""
    store = RunStore.open(root)
    done: dict[str, int] = {}
    for stage_dir in sorted(p for p in store.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        stage = stage_dir.name
        aside = stage_dir / ".convert"  # JSONL shards being converted (kept until the output is done)
        names = set(store.outputs(stage)) | set(_names(aside))
        for name in sorted(names):
            if kind_of(stage, name) is None:
                continue
            for path in shard_paths(stage_dir, name):
                if path.suffix == ".jsonl":
                    aside.mkdir(exist_ok=True)
                    path.rename(aside / path.name)
                else:  # Parquet: from an interrupted conversion when JSONL shards wait aside
                    if shard_paths(aside, name):
                        path.unlink()
            old = shard_paths(aside, name)
            if not old:
                continue
            n = 0
            seen: set[str] = set()
            with store.writer(stage, name, shard_size=shard_size, flush_seconds=1e9) as w:
                for path in old:
                    for rec in read_jsonl_shard(path):
                        if rec.get("id") in seen:
                            continue
                        seen.add(rec.get("id"))
                        try:
                            w.add(rec)
                        except ValueError as e:
                            raise DasdError(f"{path}: {e}") from None
                        n += 1
            for path in old:
                path.unlink()
            done[f"{stage}/{name}"] = n
            log.info(f"{stage}/{name}: {n} records -> {len(shard_paths(stage_dir, name))} Parquet shard(s)")
        if aside.is_dir() and not any(aside.iterdir()):
            aside.rmdir()
    if not done:
        log.info(f"{store.root}: nothing to convert")
    return done


def _names(folder: Path) -> list[str]:
    return [p.name.rsplit("-", 1)[0] for p in folder.glob("*.jsonl")] if folder.is_dir() else []
