"""Engines: one protocol (``base``), backends chosen by ``EngineConfig.kind``.

    from dasd.engines import EngineConfig, make_engine
    engine = make_engine(EngineConfig(kind="hf", model="runs/toy/teacher"))
"""

from __future__ import annotations

from dasd.engines.base import Engine, GenerateRequest, Generation, ScoreRequest, ScoreResult
from dasd.engines.config import EngineConfig
from dasd.errors import DasdError

__all__ = [
    "Engine", "EngineConfig", "GenerateRequest", "Generation", "ScoreRequest", "ScoreResult",
    "make_engine",
]


def make_engine(cfg: EngineConfig) -> Engine:
    """Build the engine ``cfg.kind`` names (loads the model; may take a while for big ones).

    With ``cfg.ray`` set, a ``fanout.RayEngine`` of ``cfg.ray.replicas`` such engines.
    """
    if cfg.ray is not None:
        from dasd.engines.fanout import RayEngine

        return RayEngine(cfg, make_engine)
    if cfg.kind == "hf":
        from dasd.engines.hf import HFEngine

        return HFEngine(cfg)
    if cfg.kind == "openai":
        from dasd.engines.openai import OpenAIEngine

        return OpenAIEngine(cfg)
    if cfg.kind == "vllm":
        from dasd.engines.vllm import VLLMEngine

        return VLLMEngine(cfg)
    raise DasdError(
        f"engine.kind {cfg.kind!r} is not implemented yet; use kind: hf"
    )
