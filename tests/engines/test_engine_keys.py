"""Engine errors name what the user set: the run config's section for a missing vLLM or Ray (was
``engine.kind`` / ``engine.ray``, keys no run config has), and a training stage for its final model
loaded by eval or mix (was ``student.model``, which names the base model)."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from transformers import AutoTokenizer

from dasd.config import load_config
from dasd.engines import make_engine
from dasd.errors import DasdError
from dasd.runs import model_for, open_engine
from dasd.store import RunStore


def test_a_missing_vllm_names_the_section_that_asked_for_it(tiny_lm_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # what an environment without vllm sees: ImportError
    cfg = load_config(None, ["teacher.kind=vllm", f"teacher.model={tiny_lm_dir}", "student.kind=vllm"])
    with pytest.raises(DasdError) as err:
        make_engine(cfg.teacher)
    assert str(err.value).startswith("teacher.kind 'vllm' needs vLLM in dasd's environment")
    with pytest.raises(DasdError, match=r"^student\.kind 'vllm' needs vLLM"):
        make_engine(cfg.student)


def test_a_missing_ray_names_the_section_that_asked_for_it(tiny_lm_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without ray sees: ImportError
    cfg = load_config(None, [f"student.model={tiny_lm_dir}", "student.ray={address: local}"])
    with pytest.raises(DasdError) as err:
        make_engine(cfg.student)
    msg = str(err.value)
    assert msg.startswith("student.ray needs the optional ray package, which is not installed: pip install 'dasd[ray]'")
    assert "or remove student.ray to run in one process" in msg and "engine." not in msg


@pytest.fixture
def trained_run(tmp_path, tiny_lm_dir):
    """A run whose first training stage finished with a final model that has weights and no tokenizer."""
    run = tmp_path / "run"
    stage = run / "train" / "stage1_low"
    final = stage / "final"
    final.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(f"{tiny_lm_dir}/{name}", final / name)
    (stage / "done.json").write_text(json.dumps({"steps": 1}), encoding="utf-8")
    cfg = load_config(None, [f"run_dir={run}", f"student.model={tiny_lm_dir}", f"teacher.model={tiny_lm_dir}",
                             "student.device=cpu", "teacher.device=cpu"])
    return cfg, run, final


def test_a_trained_stage_that_cannot_load_names_the_stage_and_its_path(trained_run):
    cfg, run, final = trained_run
    store = RunStore(run)
    mcfg = model_for(cfg, store, "stage1_low")
    assert mcfg.model == str(final) and mcfg.key("model") == "training stage 'stage1_low'"
    assert mcfg.key("device") == "student.device"  # the student's settings it is loaded with keep their keys
    with pytest.raises(DasdError) as err:
        open_engine(mcfg)
    assert str(err.value).startswith(f"training stage 'stage1_low': cannot load a tokenizer from '{final}': ")
    assert "\n" not in str(err.value)
    assert model_for(cfg, store, "student").key("model") == "student.model"  # the base: the key the user set
    assert cfg.student.key("model") == "student.model"  # the config it was copied from is left as it was


def test_a_trained_stage_or_model_directory_is_loaded_with_its_own_tokenizer(tmp_path, tiny_lm_dir,
                                                                          tiny_lm_dir_other_vocab):
    """With ``student.tokenizer`` set (the tokenizer the base student is scored with), a trained
    stage's model was loaded with that tokenizer, not the one saved beside it, which its examples
    were rendered and tokenised with: eval, analyze and mix would prompt it in another vocabulary."""
    run = tmp_path / "run"
    final = run / "train" / "s" / "final"
    shutil.copytree(tiny_lm_dir, final)
    (final.parent / "done.json").write_text(json.dumps({"steps": 1}), encoding="utf-8")
    cfg = load_config(None, [f"run_dir={run}", f"student.model={tiny_lm_dir}", f"teacher.model={tiny_lm_dir}",
                             f"student.tokenizer={tiny_lm_dir_other_vocab}", "student.device=cpu", "teacher.device=cpu",
                             "train.stages=[{name: s, data: kept-T1, init: base}]"])
    mcfg = model_for(cfg, RunStore(run), "s")
    assert mcfg.tokenizer_key() == ("training stage 's'", str(final))
    text = "Compute 12 + 30."
    want = AutoTokenizer.from_pretrained(tiny_lm_dir)(text)["input_ids"]
    assert want != AutoTokenizer.from_pretrained(tiny_lm_dir_other_vocab)(text)["input_ids"]
    assert open_engine(mcfg).tokenizer(text)["input_ids"] == want
    assert model_for(cfg, RunStore(run), "student").tokenizer == tiny_lm_dir_other_vocab  # the base: as set
    # a model directory in eval.models: its own tokenizer too, unless it has none (weights only)
    other = tmp_path / "other-model"
    shutil.copytree(tiny_lm_dir, other)
    assert model_for(cfg, RunStore(run), str(other)).tokenizer_key() == (f"eval.models {str(other)!r}", str(other))
    weights = tmp_path / "weights-only"
    weights.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(other / name, weights / name)
    assert model_for(cfg, RunStore(run), str(weights)).tokenizer == tiny_lm_dir_other_vocab


def test_mix_names_the_trained_stage_whose_model_it_cannot_load(trained_run):
    from dasd.stages.mix import run_mix_stage

    cfg, run, final = trained_run
    (run / "select").mkdir()
    (run / "select" / "selected-T1-00000.jsonl").write_text("", encoding="utf-8")  # a selected pool (not read)
    with pytest.raises(DasdError) as err:
        run_mix_stage(cfg)
    assert str(err.value).startswith(f"training stage 'stage1_low': cannot load a tokenizer from '{final}': ")
