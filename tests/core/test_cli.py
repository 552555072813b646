"""The CLI as a user runs it: help lists every verb; user errors are one line, exit 2, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys

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
