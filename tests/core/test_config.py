"""Config loading: strict validation, dotted overrides, one-line errors naming key and file."""

from __future__ import annotations

import pytest

from dasd.config import RunConfig, load_config
from dasd.errors import ConfigError


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def test_defaults_and_overrides(tmp_path):
    p = write(tmp_path, "run_dir: runs/x\nsample:\n  k: 3\n")
    cfg = load_config(p, ["sample.temperatures=[0.5, 0.9]", "teacher.batch_size=4", "data.limit=10"])
    assert isinstance(cfg, RunConfig)
    assert cfg.sample.k == 3 and cfg.sample.temperatures == [0.5, 0.9]
    assert cfg.teacher.batch_size == 4 and cfg.data.limit == 10
    assert cfg.student.model == "toy:student"


def test_unknown_key_names_file_key_and_allowed(tmp_path):
    p = write(tmp_path, "sample:\n  temprature: 0.6\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and "sample.temprature" in msg and "temperatures" in msg


def test_bad_value_names_key(tmp_path):
    p = write(tmp_path, "sample:\n  k: 0\n")
    with pytest.raises(ConfigError, match=r"c.yaml: sample.k: .*greater than or equal to 1.*got 0"):
        load_config(p)


def test_bad_override(tmp_path):
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(None, ["sample.k"])
    with pytest.raises(ConfigError, match="unknown key 'nosuch'"):
        load_config(None, ["nosuch=1"])
    with pytest.raises(ConfigError, match="sample.temperatures"):
        load_config(None, ["sample.temperatures=[0.6, 0.6]"])


def test_invalid_yaml_and_missing_file(tmp_path):
    p = write(tmp_path, "sample: [unclosed\n")
    with pytest.raises(ConfigError, match=r"c.yaml:\d+: invalid YAML"):
        load_config(p)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"))


@pytest.mark.parametrize("name", ["demo.yaml", "dasd-4b.yaml"])
def test_shipped_configs_validate(name):
    from pathlib import Path

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / name)
    assert [s.name for s in cfg.train.stages] == ["stage1_low", "stage2_high", "stage3_mixed"]
    assert cfg.sample.temperatures == [0.6, 1.0]


def test_paper_recipe_values():
    from pathlib import Path

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "dasd-4b.yaml")
    t = cfg.train
    assert (t.lr, t.min_lr, t.warmup_ratio, tuple(t.betas), t.eps, t.weight_decay, t.clip) == (5e-5, 1e-5, 0.1, (0.9, 0.95), 1e-8, 0.1, 1.0)
    assert (t.epochs, t.context, t.bf16) == (6, 65536, True)
    assert cfg.eval.preset == "paper" and cfg.data.system_prompt == "You are a helpful assistant."


def test_config_reference_doc_is_current_and_every_key_documented():
    from pathlib import Path

    from dasd.config import config_reference

    ref = config_reference()
    doc = Path(__file__).resolve().parents[2] / "docs" / "config.md"
    assert doc.read_text(encoding="utf-8").strip() == ref.strip(), "regenerate: python -m dasd.config > docs/config.md"
    rows = [line for line in ref.splitlines() if line.startswith("| `")]
    assert len(rows) > 80
    undocumented = [r.split("|")[1].strip() for r in rows if not r.rstrip("| ").split("|")[-1].strip()]
    assert undocumented == []
