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


def test_extra_body_cannot_override_what_dasd_sets(tiny_lm_dir):
    """A seed or temperature in openai.extra_body replaced every request's own: the k samples of a
    prompt came back identical (one seed) or at another temperature than their records say."""
    from dasd.config import load_config
    from dasd.engines import GenerateRequest
    from dasd.engines.config import SET_BY_DASD
    from dasd.errors import ConfigError

    with pytest.raises(ValidationError, match=r"seed, temperature: set by dasd on every request"):
        EngineConfig(kind="openai", model="m", openai={"base_urls": ["http://x/v1"], "extra_body": {"temperature": 0, "seed": 1}})
    with pytest.raises(ConfigError, match=r"teacher\.openai\.extra_body: .*n: set by dasd"):
        load_config(None, ["teacher.kind=openai", "teacher.openai.base_urls=[http://x/v1]", "teacher.openai.extra_body={n: 4}"])
    ok = EngineConfig(kind="openai", model="m", tokenizer=tiny_lm_dir,
                      openai={"base_urls": ["http://x/v1"], "top_logprobs": 2, "token_ids": True,
                              "extra_body": {"top_k": 20, "chat_template_kwargs": {"enable_thinking": True}}})
    engine = make_engine(ok)
    chat = GenerateRequest(id="a", messages=[{"role": "user", "content": "hi"}], n=2, temperature=0.6, seed=1)
    prefix = GenerateRequest(id="b", prefix="<think>\n", n=2, temperature=0.6, seed=1)
    for req in (chat, prefix):
        path, body = engine._body(req, 1)
        assert body["seed"] != req.seed and body["temperature"] == 0.6 and body["top_k"] == 20
        assert set(body) - set(ok.openai.extra_body) <= SET_BY_DASD  # every field dasd sets is protected


def test_engine_errors_name_the_config_section_the_settings_came_from(tmp_path, tiny_lm_dir):
    """An engine built from a run config's `teacher` or `student` section names that section's key
    (was `engine.tokenizer` / `engine.model`, keys no config has); a bare EngineConfig says `engine`,
    and a copy with another model (a trained stage's, in eval and mix) keeps its section."""
    from dasd.config import load_config
    from dasd.errors import ConfigError

    broken = tmp_path / "tok"
    broken.mkdir()
    (broken / "tokenizer.json").write_text('{"broken":', encoding="utf-8")
    cfg = load_config(None, ["student.kind=openai", "student.openai.base_urls=[http://127.0.0.1:9/v1]",
                             f"student.tokenizer={broken}", f"teacher.model={tmp_path / 'none'}"])
    assert (cfg.teacher.section, cfg.student.section) == ("teacher", "student")
    with pytest.raises(ConfigError, match=rf"^student\.tokenizer: cannot load a tokenizer from '{broken}': [^\n]+$"):
        make_engine(cfg.student)  # the openai engine loads its local tokenizer when built
    with pytest.raises(DasdError, match=rf"^teacher\.model: '{tmp_path / 'none'}' does not exist or is not a directory$"):
        make_engine(cfg.teacher)
    hf = cfg.student.model_copy(update={"kind": "hf", "model": str(tmp_path), "tokenizer": None})
    (tmp_path / "config.json").write_text("{}", encoding="utf-8")  # a model folder without a tokenizer
    with pytest.raises(DasdError, match=rf"^student\.model: cannot load a tokenizer from '{tmp_path}': [^\n]+$"):
        make_engine(hf)
    with pytest.raises(DasdError, match=rf"^student\.tokenizer: cannot load a tokenizer from '{broken}'"):
        make_engine(hf.model_copy(update={"model": tiny_lm_dir, "tokenizer": str(broken)}))
    with pytest.raises(DasdError, match=rf"^engine\.tokenizer: cannot load a tokenizer from '{broken}'"):
        make_engine(EngineConfig(model=tiny_lm_dir, tokenizer=str(broken)))
    with pytest.raises(DasdError, match=r"^student\.gguf_file: 'model\.gguf' not found"):
        make_engine(cfg.student.model_copy(update={"kind": "hf", "model": tiny_lm_dir, "gguf_file": "model.gguf"}))
