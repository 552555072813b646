"""``python -m dasd.train --config cfg.yaml --out DIR``: run the stages of a training config.

This entry point is what multi-process launches run, e.g.::

    accelerate launch --num_processes 2 --cpu -m dasd.train --config cfg.yaml --out runs/x/train
    accelerate launch --config_file configs/accelerate/zero3.yaml -m dasd.train --config cfg.yaml --out DIR

The YAML holds a ``TrainConfig`` (its ``train:`` section is used when present, so a full pipeline
config works too). Stage ``data`` entries must be JSONL paths here (no in-memory pools).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml
from pydantic import ValidationError

from dasd.errors import ConfigError, DasdError
from dasd.train.config import TrainConfig


def load_config(path: str | Path) -> TrainConfig:
    """Read a ``TrainConfig`` from YAML (the whole file, or its ``train:`` section)."""
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{p}: cannot read YAML ({e})") from e
    if isinstance(raw, dict) and isinstance(raw.get("train"), dict):
        raw = raw["train"]
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: expected a mapping of training settings")
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        raise ConfigError(f"{p}: field {loc!r}: {err['msg']}") from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dasd.train", description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="YAML file with a TrainConfig (or a train: section)")
    ap.add_argument("--out", required=True, help="output directory (stage outputs go to OUT/<stage>/)")
    args = ap.parse_args(argv)
    from dasd.log import logger, setup
    from dasd.train.trainer import run_training

    setup()

    env = os.environ
    if env.get("MASTER_ADDR") and env.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true") and not any(
        env.get(k) for k in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE")
    ):
        logger("train").warning(
            "`accelerate launch --cpu` started a single process (accelerate spawns several CPU processes only "
            "through mpirun); for N CPU processes use `accelerate launch --multi_gpu --num_processes N` or "
            "`torchrun --nproc_per_node N` (dasd uses gloo when no GPU is present)")

    try:
        results = run_training(load_config(args.config), Path(args.out))
    except DasdError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for r in results:
        print(f"{r['name']}: {r['steps']} steps, final loss {r['final_loss']:.4f}, model {r['final']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
