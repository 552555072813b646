"""Log lines and progress: levels, the [stage] prefix, and progress that never floods a log file."""

from __future__ import annotations

import io
import logging

from dasd.log import Progress, logger, setup


def test_stage_prefix_levels_and_quiet():
    buf = io.StringIO()
    setup(logging.INFO, stream=buf)
    logger("score").info("T0.6: 3 responses scored")
    logger("score").warning("2 quarantined")
    logger("score").debug("hidden at INFO")
    assert buf.getvalue().splitlines() == ["[score] T0.6: 3 responses scored", "[score] warning: 2 quarantined"]
    quiet = io.StringIO()
    setup(logging.WARNING, stream=quiet)
    logger("score").info("not shown with -q")
    logger("score").error("shown")
    assert quiet.getvalue().splitlines() == ["[score] error: shown"]
    setup()


def test_progress_off_a_terminal_is_one_line_per_ten_percent(monkeypatch):
    monkeypatch.delenv("DASD_PROGRESS", raising=False)  # stderr is not a terminal under pytest
    buf = io.StringIO()
    setup(logging.INFO, stream=buf)
    bar = Progress(200, "sample T0.6", "prompt")
    for _ in range(200):
        bar.update(1)
    bar.close()
    lines = buf.getvalue().splitlines()
    assert len(lines) == 10, lines  # 10%, 20%, ..., 100%: not 200 frames
    assert lines[0].startswith("sample T0.6: 20/200 prompt (10%)") and lines[-1].startswith("sample T0.6: 200/200 prompt (100%)")
    assert "\r" not in buf.getvalue()
    setup()


def test_progress_resumed_counts_from_its_start_and_can_be_switched_off(monkeypatch):
    buf = io.StringIO()
    setup(logging.INFO, stream=buf)
    monkeypatch.setenv("DASD_PROGRESS", "lines")
    bar = Progress(10, "train s1", "step", initial=5)
    bar.update(1)  # 6/10: the 60% mark
    assert buf.getvalue().splitlines()[0].startswith("train s1: 6/10 step (60%)")
    monkeypatch.setenv("DASD_PROGRESS", "off")
    silent = Progress(10, "x", "y")
    silent.update(10)
    assert len(buf.getvalue().splitlines()) == 1
    setup()
