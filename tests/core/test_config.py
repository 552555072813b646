"""Config loading: strict validation, dotted overrides, one-line errors naming key and file."""

from __future__ import annotations

import re

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
    with pytest.raises(ConfigError, match=r"c.yaml:2: sample.k: .*greater than or equal to 1.*got 0"):
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


def test_every_error_names_the_yaml_line_or_the_override_that_set_the_key(tmp_path):
    p = write(tmp_path, "seed: 1\nsample:\n  k: two\n  temprature: 0.6\ntrain:\n  stages:\n    - name: a\n"
                        "      data: low\n      lr: -1\n")
    with pytest.raises(ConfigError) as e:
        load_config(p, ["das.tau=0", "import.sorce=x.jsonl"])
    lines = str(e.value).splitlines()
    assert f"{p}:3: sample.k: Input should be a valid integer" in lines[0] and "(got 'two')" in lines[0]
    assert any(line.startswith(f"{p}:4: unknown key 'sample.temprature'") for line in lines)
    assert any(line.startswith(f"{p}:9: train.stages.0.lr: Input should be greater than 0") for line in lines)
    assert any(line.startswith("override das.tau=0: das.tau:") for line in lines)
    # an aliased section ('import') lists its keys and suggests the closest
    assert any(line.startswith("override import.sorce=x.jsonl: unknown key 'import.sorce' (allowed here: source,")
               and "did you mean 'source'?" in line for line in lines)
    # a key of a list item (a benchmark, a training stage) lists the item's keys
    p2 = tmp_path / "list.yaml"
    p2.write_text("eval:\n  benchmarks:\n    - {name: a, format: aime, path: a.jsonl}\n    - {name: b, pathh: x}\n")
    with pytest.raises(ConfigError, match=rf"^{p2}:4: unknown key 'eval.benchmarks.1.pathh' \(allowed here: name, format, "
                                          r"path, limit, seed, world\); did you mean 'path'\?"):
        load_config(p2)
    with pytest.raises(ConfigError, match=r"^override sample\.k\.x=3: sample\.k: Input should be a valid integer"):
        load_config(None, ["sample.k.x=3"])
    with pytest.raises(ConfigError, match=r"^override sample.k.x=3: cannot set 'sample.k.x': sample.k is not a section"):
        load_config(p, ["sample.k.x=3"])


def test_a_section_wide_rule_names_the_file_line_and_the_overrides_inside_the_section(tmp_path):
    p = write(tmp_path, "train:\n  lr: 1.0e-3\n  stages:\n    - {name: a, data: low}\n")
    with pytest.raises(ConfigError, match=rf"^{p}:1; override train.stages=\[{{name: a, data: high}}, {{name: a, data: low}}\]: "
                                          r"train: stage names must be unique"):
        load_config(p, ["train.stages=[{name: a, data: high}, {name: a, data: low}]"])


def test_a_key_given_twice_is_an_error_naming_both_lines(tmp_path):
    # PyYAML keeps the last one silently: the first `sample` section (k: 2) would vanish
    p = write(tmp_path, "sample:\n  k: 2\nrun_dir: x\nsample:\n  top_p: 0.9\n")
    with pytest.raises(ConfigError, match=r"c.yaml:4: invalid YAML \(key 'sample' given twice \(first on line 1\)\)"):
        load_config(p)
    # a YAML merge key may still be overridden key by key
    p = write(tmp_path, "base: &b {k: 2, top_p: 0.9}\nsample:\n  <<: *b\n  k: 3\n")
    with pytest.raises(ConfigError, match="unknown key 'base'"):  # the merge itself is fine; `base` is not a section
        load_config(p)
    from dasd.config import read_yaml

    assert read_yaml(p)["sample"] == {"k": 3, "top_p": 0.9}


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_nan_and_infinity_are_refused_in_any_section(tmp_path, value):
    p = write(tmp_path, f"sample:\n  temperatures: [0.6, {value}]\n")
    with pytest.raises(ConfigError, match=r"c.yaml:2: sample.temperatures.1: Input should be a finite number"):
        load_config(p)
    with pytest.raises(ConfigError, match=r"override train.lr=.*: train.lr: Input should be a finite number"):
        load_config(None, [f"train.lr={value}"])


def test_a_config_that_is_not_a_text_file_or_is_a_directory_is_one_error(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_bytes(b"sample:\n  k: \xff2\n")
    with pytest.raises(ConfigError, match=r"c.yaml: not a YAML text file: not valid UTF-8 \(byte 13"):
        load_config(p)
    with pytest.raises(ConfigError, match=r"is a directory, not a YAML config file .*run_dir="):
        load_config(tmp_path)
    with pytest.raises(ConfigError, match=r"sample.k: config file not found \(an override needs '=': sample.k=VALUE\)"):
        load_config("sample.k")
    p.write_bytes(b"\xef\xbb\xbfsample:\n  k: 3\n")  # a byte order mark (editors on Windows) is not a key
    assert load_config(p).sample.k == 3


def test_an_empty_run_dir_or_source_is_refused_naming_the_key(tmp_path):
    # run_dir '' would be the current directory: every stage would write its folders there
    for value in ("", "'   '"):
        with pytest.raises(ConfigError, match=rf"^override run_dir={value}: run_dir: String should"):
            load_config(None, [f"run_dir={value}"])
    p = write(tmp_path, "data:\n  prompts: ''\n")
    with pytest.raises(ConfigError, match=rf"^{p}:2: data.prompts: source '': expected a file path"):
        load_config(p)


@pytest.mark.parametrize("key", ["seed", "sample.seed", "select.seed", "mix.seed", "mix.replay.seed", "train.seed",
                                 "data.toy.seed"])
@pytest.mark.parametrize("value", [-1, 2**32])
def test_a_seed_numpy_cannot_take_is_refused_at_load(key, value):
    with pytest.raises(ConfigError, match=rf"^override {key}={value}: {key}: Input should be"):
        load_config(None, [f"{key}={value}"])
    assert load_config(None, [f"{key}={2**32 - 1}"])


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
    # four cells a row: an unescaped | (e.g. of the type `str | None`, code span or not) splits a cell on GitHub
    assert [r for r in rows if len(re.split(r"(?<!\\)\|", r)) != 6] == []
    cells = [re.fullmatch(r"\| `(.+?)` \| `(.*?)` \| `(.*?)` \| (.*)\|", r) for r in rows]  # key, type, default, desc
    assert all(cells), [r for r, c in zip(rows, cells) if not c]
    undocumented = [c[1] for c in cells if not c[4].strip()]
    assert undocumented == []


def test_a_misspelt_eval_label_or_a_repeated_one_is_refused_at_load(tmp_path, monkeypatch):
    p = write(tmp_path, "eval:\n  models: [student, stage1_lo]\n")
    with pytest.raises(ConfigError, match=rf"^{p}:2: eval.models: 'stage1_lo' is not teacher, student, a training "
                                          r"stage \(stage1_low, stage2_high, stage3_mixed\) .*did you mean 'stage1_low'\?"):
        load_config(p)
    with pytest.raises(ConfigError, match=r"'student' given more than once"):
        load_config(None, ["eval.models=[student,student]"])
    with pytest.raises(ConfigError, match=r"eval.benchmarks: 'toy' given more than once"):
        load_config(write(tmp_path, "eval:\n  benchmarks:\n    - {name: toy, format: toy}\n    - {name: toy, format: toy}\n"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mymodel").mkdir()  # a bare label naming a directory here, and a path, are model directories
    assert load_config(None, ["eval.models=[mymodel,elsewhere/final,teacher]"]).eval.models[0] == "mymodel"


def test_an_empty_list_that_would_make_a_stage_do_nothing_is_refused_at_load(tmp_path, capsys):
    """`eval.models: []` (or `eval.benchmarks: []`) made `dasd eval` exit 0 having evaluated nothing,
    and `train.push_to_hub.stages: []` pushed nothing; each is one line naming the file's line (or
    the override) and the key, as an empty `sample.temperatures` or `train.stages` is."""
    from dasd.cli import main

    p = write(tmp_path, "run_dir: runs/x\neval:\n  models: []\n")
    empty = "empty, so nothing would be done; give at least one item, or leave the key out for its default"
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(p))}:3: eval.models: {empty}"):
        load_config(p)
    capsys.readouterr()
    assert main(["eval", str(p)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"dasd: error: {p}:3: eval.models: {empty}")
    q = write(tmp_path, "eval:\n  protocol: {n: 1}\n  benchmarks: []\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(q))}:3: eval.benchmarks: {empty}"):
        load_config(q)
    with pytest.raises(ConfigError, match=rf"^override train.push_to_hub=.*: train.push_to_hub.stages: {empty}"):
        load_config(None, ["train.push_to_hub={repo_id: me/m, stages: []}"])
    for key in ("sample.temperatures", "train.stages"):
        with pytest.raises(ConfigError, match=rf"^override {key}=\[\]: {key}: {empty}"):
            load_config(None, [f"{key}=[]"])
    assert load_config(None, ["train.push_to_hub={repo_id: me/m}"]).train.pushed_stages() == ["stage3_mixed"]


def test_eval_models_default_to_the_student_every_training_stage_and_the_teacher():
    assert load_config(None).eval.models == ["student", "stage1_low", "stage2_high", "stage3_mixed", "teacher"]
    cfg = load_config(None, ["train.stages=[{name: warm, data: low, init: base}, {name: hot, data: high}]"])
    assert cfg.eval.models == ["student", "warm", "hot", "teacher"]
    assert load_config(None, ["train.stages=[{name: warm, data: low, init: base}]", "eval.models=[warm]"]).eval.models == ["warm"]


def test_a_run_dir_under_the_home_folder_is_expanded(tmp_path, monkeypatch):
    # taken literally, `run_dir: ~/runs/x` made a folder named '~' in the working directory, and the
    # next stage (pyarrow expands '~') found no shards there: "corrupt run file"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    p = write(tmp_path, "run_dir: ~/runs/x\n")
    assert load_config(p).run_dir == str(tmp_path / "home" / "runs" / "x")
    assert load_config(None, ["run_dir=~/y"]).run_dir == str(tmp_path / "home" / "y")
    assert load_config(None, ["run_dir=runs/~x"]).run_dir == "runs/~x"


def test_temperatures_that_share_a_pool_name_are_refused():
    # pools are named T{t:g}: 0.6 and 0.6000001 would both write into T0.6, one pool of two temperatures
    with pytest.raises(ConfigError, match=r"sample.temperatures: .*first 6 significant digits.*'T0.6', 'T0.6'"):
        load_config(None, ["sample.temperatures=[0.6, 0.6000001]"])
    assert load_config(None, ["sample.temperatures=[0.6, 0.60001]"]).sample.temperatures == [0.6, 0.60001]


def test_a_section_with_every_key_commented_out_means_its_defaults(tmp_path):
    # `sample:` followed only by comments is null in YAML: it was "sample: Input should be a valid
    # dictionary" while `train:` and `eval:` left empty were already their defaults
    p = write(tmp_path, "sample:\n  # k: 8\nteacher:\nimport:\ntrain:\neval:\n")
    assert load_config(p) == load_config(None)
    with pytest.raises(ConfigError, match=r"c.yaml:1: run_dir: Input should be a valid string \(got None\)"):
        load_config(write(tmp_path, "run_dir:\n"))


def test_an_override_sets_an_item_of_a_list_by_its_number(tmp_path):
    # error messages name list items by number (train.stages.0.lr); an override spelt the same way
    # was "train.stages: Input should be a valid list" (the number became a key of a new mapping)
    p = write(tmp_path, "eval:\n  benchmarks:\n    - {name: a, format: toy, limit: 5}\n    - {name: b, format: toy}\n")
    cfg = load_config(p, ["eval.benchmarks.1.limit=7", "sample.temperatures=[0.6, 1.0]", "sample.temperatures.1=0.9"])
    assert [b.limit for b in cfg.eval.benchmarks] == [5, 7] and cfg.sample.temperatures == [0.6, 0.9]
    with pytest.raises(ConfigError, match=r"^override eval.benchmarks.1.limit=0: eval.benchmarks.1.limit: Input should "
                                          r"be greater than or equal to 1 \(got 0\)$"):
        load_config(p, ["eval.benchmarks.1.limit=0"])
    for key in ("eval.benchmarks.2.limit", "eval.benchmarks.x"):
        with pytest.raises(ConfigError, match=rf"^override {key}=1: cannot set '{key}': eval.benchmarks is a list of "
                                              r"2 item\(s\), numbered from 0$"):
            load_config(p, [f"{key}=1"])
    with pytest.raises(ConfigError, match=r"train.stages is not given in the config file, so it has no item 0 to "
                                          r"change; give the whole list"):
        load_config(p, ["train.stages.0.epochs=2"])


def test_a_replay_source_that_is_no_pool_of_the_run_is_refused_at_load(tmp_path):
    # a misspelt source left stage 3 without its mixed+replay data: one warning, then the optional
    # stage was skipped and the run finished without it
    p = write(tmp_path, "mix:\n  replay:\n    source: hihg\n")
    with pytest.raises(ConfigError, match=r"^.*c.yaml:3: mix.replay.source: 'hihg' is not a selected pool of this run "
                                          r"\(high, low, T0.6, T1\); did you mean 'high'\?$"):
        load_config(p)
    with pytest.raises(ConfigError, match=r"^override mix.replay.source=T0.7: mix.replay.source: 'T0.7'"):
        load_config(None, ["mix.replay.source=T0.7"])
    for ok in ("high", "low", "T0.6", "T1"):
        assert load_config(None, [f"mix.replay.source={ok}"]).mix.replay.source == ok


def test_a_rule_of_a_section_is_said_without_pydantics_value_error_prefix(tmp_path):
    # "train: Value error, stage names must be unique": the prefix names a Python exception, not the problem
    p = write(tmp_path, "train:\n  stages:\n    - {name: a, data: low, init: base}\n    - {name: a, data: high}\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value) == f"{p}:1: train: stage names must be unique, repeated: ['a']"
    with pytest.raises(ConfigError) as e:
        load_config(None, ["sample.prompts_per_temperature=[10]"])
    assert str(e.value) == ("override sample.prompts_per_temperature=[10]: sample: prompts_per_temperature has 1 "
                            "count(s) for 2 temperature(s) [0.6, 1.0]: give one count per temperature")


def test_a_key_given_in_the_wrong_section_is_offered_the_section_it_belongs_to(tmp_path):
    # `lr=1e-4` or `sample.tau=1` listed the keys allowed where it was given, none of them close to it
    with pytest.raises(ConfigError, match=r"^override lr=1e-4: unknown key 'lr' \(allowed here: run_dir, .*\); "
                                          r"did you mean 'train.lr'\?$"):
        load_config(None, ["lr=1e-4"])
    with pytest.raises(ConfigError, match=r"^override sample.tau=1: unknown key 'sample.tau' .*; did you mean "
                                          r"'das.tau' or 'analyze.tau'\?$"):
        load_config(None, ["sample.tau=1"])
    p = write(tmp_path, "run_dir: x\nepochs: 2\n")
    with pytest.raises(ConfigError, match=rf"^{p}:2: unknown key 'epochs' .*; did you mean 'train.epochs'\?$"):
        load_config(p)
    # a close spelling in the same section comes first; a key of no section gets no guess
    with pytest.raises(ConfigError, match=r"did you mean 'k'\?$"):
        load_config(None, ["sample.kk=2"])
    with pytest.raises(ConfigError, match=r"\(allowed here: [^)]*\)$"):
        load_config(None, ["nosuch=1"])
