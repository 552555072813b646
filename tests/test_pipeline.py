"""`dasd run` end to end on tiny real models, in process: every stage completes, in order, and a
re-run has nothing left to do."""

from __future__ import annotations

from dasd.config import load_config
from dasd.pipeline import closing_lines, run_pipeline
from dasd.store import RunStore
from test_run_resume import write_config

STAGES = ["sample", "filter", "score", "select", "train", "mix", "eval", "analyze"]


def test_every_stage_runs_and_a_rerun_does_nothing(tmp_path, tiny_lm_dir, tiny_lm_dir_other_vocab, capsys):
    cfg = load_config(write_config(tmp_path, "run", tiny_lm_dir, tiny_lm_dir_other_vocab))
    outcome = run_pipeline(cfg)
    summary = outcome["eval"]
    store = RunStore.open(cfg.run_dir)
    for stage in STAGES:
        assert store.stage_info(stage).get("complete"), stage
    assert set(summary) == {"student", "stage2_high"} | ({"stage3_mixed"} if "stage3_mixed" in summary else set())
    assert (store.root / "report.html").is_file()
    assert store.stage_info("analyze")["counts"]["model"] in {"stage2_high", "stage3_mixed"}
    closing = closing_lines(cfg, outcome)
    assert "[run] accuracy on held-out problems" in closing and f"[run] report: {store.root / 'report.html'}" in closing
    assert all(label in closing for label in summary)
    before = {s: store.count(*s) for s in [("sample", "pool-T0.6"), ("eval", "results-student")]}
    capsys.readouterr()
    run_pipeline(cfg)
    out = capsys.readouterr().err
    assert "samples graded" not in out and "(0 new)" in out
    assert {s: RunStore.open(cfg.run_dir).count(*s) for s in before} == before
