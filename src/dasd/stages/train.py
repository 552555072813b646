"""`dasd train` inside a run: the selected pools and the mixed-policy set as named training data.

Named pools a stage's ``data`` may use (besides a path to any chat JSONL):

- ``low``: the selected examples of the lowest-temperature pool (``RUN/select/train-T<low>``);
- ``high``: those of the highest-temperature pool;
- ``mixed``: the mixed-policy examples (``RUN/mix/examples``), once `dasd mix` has run;
- ``T<temp>`` (e.g. ``T0.6``): any selected pool by name.

Training itself is ``dasd.train.trainer.run_training`` (docs/training.md); outputs go to
``RUN/train/<stage>/`` and finished stages are skipped on a re-run, interrupted ones resumed.
"""

from __future__ import annotations

from dasd.log import logger
from dasd.runs import named_pools, resolve_model
from dasd.store import RunStore

STAGE = "train"
log = logger(STAGE)


def run_train(cfg, store: RunStore | None = None, stages: list[str] | None = None, on_step=None) -> list[dict]:
    """Train the configured stages (or only those named in ``stages``); return their results."""
    from dasd.train.trainer import run_training

    store = store or RunStore(cfg.run_dir)
    tcfg = cfg.train.model_copy(update={"base_model": resolve_model(cfg.train.base_model)})
    if stages is not None:
        keep = [s for s in tcfg.stages if s.name in stages]
        tcfg = tcfg.model_copy(update={"stages": keep})
    store.begin_stage(STAGE, tcfg.model_dump(mode="json"))
    results = run_training(tcfg, store.root / STAGE, named_pools(cfg, store), on_step=on_step)
    for r in results:
        log.info(f"{r['name']}: {r['steps']} steps, final loss {r['final_loss']:.4f} -> {r['final']}")
    info = store.stage_info(STAGE).get("counts") or {}
    info.update({r["name"]: {k: r[k] for k in ("steps", "final_loss", "final", "examples", "tokens")} for r in results})
    store.end_stage(STAGE, info)
    return results
