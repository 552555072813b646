"""`dasd train` inside a run: the selected pools and the mixed-policy set as named training data.

Named pools a stage's ``data`` may use (besides a path to any chat JSONL):

- ``low``: the selected examples of the lowest-temperature pool (``RUN/select/train-T<low>``);
- ``high``: those of the highest-temperature pool;
- ``mixed``: the mixed-policy examples (``RUN/mix/examples``), once `dasd mix` has finished with
  the current ``mix`` config;
- ``mixed+replay``: those plus off-policy examples replayed from ``mix.replay.source`` (the default
  stage 3's data; ``dasd.rules.mixing.replay_examples``);
- ``T<temp>`` (e.g. ``T0.6``): any selected pool by name.

(``dasd.runs.named_pools`` builds them.)

Training itself is ``dasd.train.trainer.run_training`` (docs/training.md); outputs go to
``RUN/train/<stage>/`` (paths in its files and the manifest relative to the run, so it can move)
and finished stages are skipped on a re-run, interrupted ones resumed. Under a multi-process launch
(``accelerate launch -m dasd train``) every process trains; only the main one writes the manifest,
and when that fails every process stops at once (``dasd.train.ranks.fail_together``).
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

from dasd.log import logger
from dasd.runs import existing_run, named_pools, pool_name, require_ran, resolve_model, scoring_tokenizer_warnings
from dasd.store import RunStore

STAGE = "train"
log = logger(STAGE)


def run_train(cfg, store: RunStore | None = None, stages: list[str] | None = None, on_step=None) -> list[dict]:
    """Train the configured stages (or only those named in ``stages``); return their results."""
    from dasd.train.ranks import fail_together, first_true
    from dasd.train.trainer import process_state, run_training

    tcfg = cfg.train.model_copy(update={"base_model": resolve_model(cfg.train.base_model)})
    state = process_state(tcfg)
    main = state.is_main_process
    together = partial(fail_together, partial(first_true, state))  # a block the main process does alone
    if tcfg.push_to_hub is not None:  # "the last stage" is the schedule's, also when only some stages run now
        tcfg = tcfg.model_copy(update={"push_to_hub": tcfg.push_to_hub.model_copy(update={"stages": tcfg.pushed_stages()})})
    if stages is not None:
        keep = [s for s in tcfg.stages if s.name in stages]
        tcfg = tcfg.model_copy(update={"stages": keep})
    pooled = any(not s.optional and not Path(s.data).exists() for s in tcfg.stages)  # a named pool: select's output
    with together(f"open the run directory {cfg.run_dir}"):
        if main:  # named pools: the run must exist (nothing is created when it does not); chat JSONL files alone
            # may start a run. The other processes then only read it.
            store = store or (existing_run(cfg.run_dir, STAGE) if pooled else RunStore(cfg.run_dir))
    store = store or RunStore(cfg.run_dir)
    if pooled:
        require_ran(store, ("select",), STAGE)
    with together(f"record the start of the train stage in {store.root / 'manifest.json'}"):
        if main:
            store.begin_stage(STAGE, tcfg.model_dump(mode="json"))
            for warning in scoring_tokenizer_warnings(cfg, tcfg):
                log.warning(warning)
    results = run_training(tcfg, store.root / STAGE, named_pools(cfg, store), on_step=on_step,
                           data_notes=data_notes(cfg))
    with together(f"record the end of the train stage in {store.root / 'manifest.json'}"):
        if main:
            for r in results:
                log.info(f"{r['name']}: {r['steps']} steps, final loss {r['final_loss']:.4f} -> {r['final']}")
            info = store.stage_info(STAGE).get("counts") or {}
            info.update({r["name"]: {**{k: r[k] for k in ("steps", "final_loss", "examples", "tokens")},
                                     "final": os.path.relpath(r["final"], store.root)} for r in results})
            store.end_stage(STAGE, info)
    return results


def data_notes(cfg) -> dict[str, str]:
    """What each named pool holds, for the model card: ``low`` -> ``T=0.6 teacher samples, DAS-selected``."""
    how = "DAS-selected" if cfg.select.method == "das" else f"{cfg.select.method}-selected"
    temps = sorted(cfg.sample.temperatures)
    notes = {pool_name(t): f"T={t:g} teacher samples, {how}" for t in temps}
    notes.update(low=notes[pool_name(temps[0])], high=notes[pool_name(temps[-1])],
                 mixed="student prefixes continued by the teacher (mixed policy)")
    replay = cfg.mix.replay  # the default stage 3's data
    notes["mixed+replay"] = (notes["mixed"] if replay.ratio == 0 else
                             f"{notes['mixed']}, with replayed {notes.get(replay.source, replay.source)}")
    return notes
