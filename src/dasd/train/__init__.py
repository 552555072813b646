"""Staged SFT for DASD: chat examples -> masked, packed sequences -> chunked-CE training with accelerate.

Public API: ``TrainConfig`` / ``StageConfig`` (config), ``run_training`` (trainer),
``paper_recipe`` / ``demo_recipe`` (recipes), ``export`` (export_llamafactory).
See docs/training.md.
"""

from dasd.train.config import StageConfig, TrainConfig

__all__ = ["StageConfig", "TrainConfig"]
