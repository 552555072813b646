"""EngineConfig validation and make_engine errors."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from dasd.engines import EngineConfig, make_engine
from dasd.errors import DasdError


def test_config_rejects_bad_fields():
    with pytest.raises(ValidationError):
        EngineConfig(model="m", dtype="float64")
    with pytest.raises(ValidationError):
        EngineConfig(model="m", batch_size=0)
    with pytest.raises(ValidationError):
        EngineConfig(model="m", temprature=1.0)  # unknown key
    with pytest.raises(ValidationError):
        EngineConfig(model="m", gguf_file="weights.bin")
    cfg = EngineConfig(model="m")
    assert (cfg.kind, cfg.dtype, cfg.device, cfg.tokenizer) == ("hf", "auto", "auto", None)


def test_missing_or_non_model_dir(tmp_path, tiny_lm_dir):
    with pytest.raises(DasdError, match="does not exist"):
        make_engine(EngineConfig(model=str(tmp_path / "nope")))
    with pytest.raises(DasdError, match="not a transformers model directory"):
        make_engine(EngineConfig(model=str(tmp_path)))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(DasdError, match="engine.tokenizer.*does not exist"):
        make_engine(EngineConfig(model=str(tmp_path), tokenizer=str(tmp_path / "nope")))
    with pytest.raises(DasdError, match="engine.model: cannot load a causal LM"):
        make_engine(EngineConfig(model=str(tmp_path), tokenizer=tiny_lm_dir))


def test_gguf_file_must_exist(tiny_lm_dir):
    with pytest.raises(DasdError, match="not found"):
        make_engine(EngineConfig(model=tiny_lm_dir, gguf_file="model.gguf"))


def test_separate_tokenizer_dir(tiny_lm_dir):
    engine = make_engine(EngineConfig(model=tiny_lm_dir, tokenizer=tiny_lm_dir, device="cpu", dtype="float32"))
    assert engine.name == tiny_lm_dir and engine.count_tokens("abc") >= 1
