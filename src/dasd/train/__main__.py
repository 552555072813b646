"""``python -m dasd.train --config cfg.yaml --out DIR``: run the stages of a training config.

This entry point is what multi-process launches run, e.g.::

    accelerate launch --num_processes 2 --cpu -m dasd.train --config cfg.yaml --out runs/x/train
    accelerate launch --config_file configs/accelerate/zero3.yaml -m dasd.train --config cfg.yaml --out DIR

The YAML holds a ``TrainConfig`` (its keys alone), or is a pipeline config (``configs/demo.yaml``):
then its ``train`` section is used as ``dasd train`` reads it (``dasd.config.load_config``: a missing
``base_model`` is ``student.model``, missing ``stages`` the paper's). A ``toy:`` model name is
resolved to its directory (``dasd.runs.resolve_model``). Stage ``data`` entries must be chat JSONL
paths here: the named pools (``low``, ``high``, ``mixed``) exist only in a run, which ``dasd train -c
CONFIG`` trains, so a stage whose data is not a file is refused in one line before anything starts.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from dasd.errors import ConfigError, DasdError
from dasd.train.config import TrainConfig


def load_config(path: str | Path) -> TrainConfig:
    """The ``TrainConfig`` of a YAML file: the file itself, or the ``train`` section of a pipeline
    config (a file with any top-level key of a run config that a ``TrainConfig`` does not have, e.g.
    ``train``, ``student``), with the defaults a run gives it; ``base_model`` with a ``toy:`` name
    resolved. A bad file or value is a ``ConfigError`` naming ``FILE:LINE`` and the key."""
    from dasd.config import RunConfig, read_yaml
    from dasd.config import load_config as load_any
    from dasd.runs import resolve_model

    run_keys = {f.alias or name for name, f in RunConfig.model_fields.items()}
    if set(read_yaml(path)) & (run_keys - set(TrainConfig.model_fields)):
        cfg = load_any(path).train
    else:
        cfg = load_any(path, model=TrainConfig)
    return cfg.model_copy(update={"base_model": resolve_model(cfg.base_model)})


def check_stage_data(cfg: TrainConfig, path: str | Path) -> None:
    """ConfigError when a stage that is not ``optional`` reads data that is not a file (here a stage's
    data is a chat JSONL path: there is no run to give named pools)."""
    for s in cfg.stages:
        if not s.optional and not Path(s.data).exists():
            raise ConfigError(f"{path}: stage {s.name!r}: data {s.data!r} is not a file; here a stage's data is a chat "
                              f"JSONL path (named pools such as 'low', 'high', 'mixed' exist only in a pipeline run: "
                              f"`dasd train -c CONFIG` trains on them)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dasd.train", description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="YAML file with a TrainConfig, or a pipeline config (its train "
                    "section, with the run's defaults); stage data must be JSONL paths")
    ap.add_argument("--out", required=True, help="output directory (stage outputs go to OUT/<stage>/)")
    args = ap.parse_args(argv)
    from dasd.log import logger, setup
    from dasd.train.trainer import run_training

    setup()
    from transformers.utils import logging as hf_logging

    # transformers' own bars (loading the weights, writing the model's shards) on every process, also
    # into a log file: off, as in `dasd train`; the trainer's step progress is the main process's only
    hf_logging.disable_progress_bar()

    env = os.environ
    if env.get("MASTER_ADDR") and env.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true") and not any(
        env.get(k) for k in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE")
    ):
        logger("train").warning(
            "`accelerate launch --cpu` started a single process (accelerate spawns several CPU processes only "
            "through mpirun); for N CPU processes use `accelerate launch --multi_gpu --num_processes N` or "
            "`torchrun --nproc_per_node N` (dasd uses gloo when no GPU is present)")

    try:
        cfg = load_config(args.config)
        check_stage_data(cfg, args.config)
        results = run_training(cfg, Path(args.out))
    except DasdError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for r in results:
        print(f"{r['name']}: {r['steps']} steps, final loss {r['final_loss']:.4f}, model {r['final']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
