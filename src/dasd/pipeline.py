"""`dasd run CONFIG` and `dasd demo`: every registered stage in order in one run directory.

The order is the registry's (``dasd.registry.run_order``)::

    sample -> filter -> score -> select -> train (stages 1-2) -> mix -> train (stage 3)
           -> eval -> analyze -> report

Each stage resumes what it left unfinished and skips what is complete, so re-running the same
command after a crash (even ``kill -9``) finishes the run with the same data as an uninterrupted
one, and re-running a finished run does (almost) nothing.
"""

from __future__ import annotations

import time
from pathlib import Path

from dasd import registry
from dasd.configbase import dump_config
from dasd.errors import DasdError
from dasd.log import logger
from dasd.store import RunStore

REPO_ROOT = Path(__file__).resolve().parents[2]
log = logger("run")


DEMO_CONFIGS = {"chain": "demo.yaml", "column": "column.yaml"}
"""`dasd demo --world W`'s config in configs/."""


def demo_config_path(world: str = "chain") -> Path:
    """configs/demo.yaml (``world`` chain) or configs/column.yaml (column) of the source tree (the
    package is installed editable by `make`)."""
    if world not in DEMO_CONFIGS:
        raise DasdError(f"--world {world!r}: the toy worlds are {', '.join(DEMO_CONFIGS)}")
    p = REPO_ROOT / "configs" / DEMO_CONFIGS[world]
    if not p.is_file():
        raise DasdError(f"{p}: demo config not found (run `dasd demo` from a source checkout installed with `make`)")
    return p


def ensure_toy_world(cfg) -> None:
    """Build the toy models once if the config uses them and they are not there."""
    from dasd.runs import resolve_model

    for m in (cfg.teacher, cfg.student):
        if m.model.startswith("toy:"):
            resolve_model(m.model)


def run_pipeline(cfg) -> dict:
    """Run every stage; return ``{"eval": evaluation summary, "report": report path, "seconds": ...}``.
    An evaluation `dasd eval` would refuse (``stages.eval.require_eval_protocol``) is refused before
    the first stage."""
    from dasd.stages.eval import require_eval_protocol

    require_eval_protocol(cfg)
    t0 = time.monotonic()
    store = RunStore(cfg.run_dir)
    store.manifest["config"] = dump_config(cfg)
    store.save_manifest()
    log.info(str(cfg.run_dir))
    ensure_toy_world(cfg)
    results: dict = {}
    for stage in registry.run_order():
        results[stage.name] = stage.load()(cfg, store)
    return {"eval": results.get("eval") or {}, "report": results.get("report"), "seconds": time.monotonic() - t0,
            "run_dir": store.root}


def closing_lines(cfg, outcome: dict) -> str:
    """What `dasd run` prints at the end: the accuracy table and where the report is."""
    from dasd.grading.evaluate import Protocol
    from dasd.grading.metrics import accuracy_table

    paper = cfg.eval.preset == "paper"  # the paper's protocol per domain, in place of eval.protocol
    p = Protocol.paper("math") if paper else cfg.eval.protocol
    how = f"{p.n} samples each, T={p.temperature}, top_p={p.top_p}" + (", the paper's protocol" if paper else "")
    return "\n".join([
        f"\n[run] accuracy on held-out problems ({how})",
        accuracy_table(outcome["eval"], cfg.eval.models),
        f"[run] report: {outcome['report']}",
        f"[run] done in {outcome['seconds']:.0f}s; run directory: {outcome['run_dir']}",
    ])
