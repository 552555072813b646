"""The CLI as a user runs it: help lists every verb; user errors are one line, exit 2, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

VERBS = ["sample", "import", "filter", "score", "select", "train", "mix", "eval", "grade", "analyze",
         "report", "run", "demo", "toy", "export"]


def dasd(*args, cwd=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "dasd", *args], capture_output=True, text=True, cwd=cwd, env=env)


def assert_one_line_error(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_help_lists_every_verb():
    r = dasd("--help")
    assert r.returncode == 0
    for verb in VERBS:
        assert f"\n  {verb} " in r.stdout or f"\n  {verb}\n" in r.stdout, verb


def test_unknown_verb():
    assert_one_line_error(dasd("smaple"), "No such command", "smaple")


def test_config_error_unknown_key(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("sample:\n  temprature: 0.6\n", encoding="utf-8")
    assert_one_line_error(dasd("sample", "--config", str(p)), "bad.yaml", "sample.temprature", "temperatures")


def test_config_error_bad_override():
    assert_one_line_error(dasd("sample", "sample.k=zero"), "sample.k", "zero")


def test_bad_run_directory(tmp_path):
    assert_one_line_error(dasd("report", str(tmp_path / "nope")), "no such run directory")
    assert_one_line_error(dasd("report", str(tmp_path)), "not a dasd run directory")


def test_version():
    r = dasd("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"dasd {__import__('dasd').__version__}"


def test_config_show_resolves_the_file_and_overrides_and_both_spellings_agree(tmp_path):
    import yaml

    p = tmp_path / "c.yaml"
    p.write_text("sample:\n  k: 3\n", encoding="utf-8")
    positional = dasd("config", "show", str(p), "sample.top_p=0.9")
    option = dasd("config", "show", "-c", str(p), "sample.top_p=0.9")
    assert positional.returncode == 0, positional.stderr
    shown = yaml.safe_load(positional.stdout)
    assert shown["sample"]["k"] == 3 and shown["sample"]["top_p"] == 0.9
    assert shown["filter"] == yaml.safe_load(dasd("config", "show").stdout)["filter"]  # defaults filled in
    assert option.stdout == positional.stdout


def test_two_configs_are_refused(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("{}\n", encoding="utf-8")
    assert_one_line_error(dasd("config", "show", "-c", str(p), str(p)), "two configs")


def test_every_stage_verb_comes_from_the_registry():
    from dasd import registry

    r = dasd("--help")
    for stage in registry.STAGES:
        assert f"\n  {stage.name} " in r.stdout, stage.name


def test_what_config_show_prints_loads_back_as_the_same_config(tmp_path):
    # it printed the field name `import_:`, which a config file cannot use ("unknown key 'import_'")
    from dasd.config import load_config

    shown = tmp_path / "shown.yaml"
    r = dasd("config", "show", "configs/demo.yaml", "import.temperature=0.6", cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "\nimport:\n" in r.stdout and "import_" not in r.stdout
    shown.write_text(r.stdout, encoding="utf-8")
    assert load_config(shown) == load_config(ROOT / "configs" / "demo.yaml", ["import.temperature=0.6"])
    assert load_config(shown).import_.temperature == 0.6
