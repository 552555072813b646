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
    # stage 3 trains exactly when mix wrote examples, on exactly those; it is then evaluated and is
    # the analysed model, otherwise stage 2 is (three sources that must agree: mix's output on disk,
    # the trainer's counts, the evaluation summary)
    n_mixed = store.count("mix", "examples")
    stage3 = (store.root / "train" / "stage3_mixed" / "final" / "config.json").is_file()
    assert stage3 == (n_mixed > 0)
    assert set(summary) == {"student", "stage2_high"} | ({"stage3_mixed"} if n_mixed else set())
    assert store.stage_info("analyze")["counts"]["model"] == ("stage3_mixed" if n_mixed else "stage2_high")
    if n_mixed:
        assert store.stage_info("train")["counts"]["stage3_mixed"]["examples"] == n_mixed
    else:
        assert "stage3_mixed" not in store.stage_info("train")["counts"]
    assert (store.root / "report.html").is_file()
    closing = closing_lines(cfg, outcome)
    assert "[run] accuracy on held-out problems" in closing and f"[run] report: {store.root / 'report.html'}" in closing
    assert all(label in closing for label in summary)
    assert (f"{'stage3_mixed':16s} {'(not run)':>7s}" in closing) == (not n_mixed)
    before = {s: store.count(*s) for s in [("sample", "pool-T0.6"), ("eval", "results-student")]}
    capsys.readouterr()
    run_pipeline(cfg)
    out = capsys.readouterr().err
    assert "samples graded" not in out and "(0 new)" in out
    assert {s: RunStore.open(cfg.run_dir).count(*s) for s in before} == before


def test_the_closing_table_names_the_protocol_the_models_were_evaluated_under():
    """The header of `dasd run`'s accuracy table gives the samples, temperature and top_p of the
    evaluation: eval.protocol's, or under eval.preset: paper the paper's (n 64, T 1.0), not the
    eval.protocol that preset replaces."""
    from pathlib import Path

    demo = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    outcome = {"eval": {}, "report": "r.html", "seconds": 1.0, "run_dir": "runs/x"}
    assert "(4 samples each, T=1.0, top_p=1.0)" in closing_lines(load_config(demo, []), outcome)
    assert "(2 samples each, T=0.7, top_p=0.9)" in closing_lines(
        load_config(demo, ["eval.protocol.n=2", "eval.protocol.temperature=0.7", "eval.protocol.top_p=0.9"]), outcome)
    assert "(64 samples each, T=1.0, top_p=1.0, the paper's protocol)" in closing_lines(
        load_config(demo, ["eval.preset=paper", "eval.protocol.n=2"]), outcome)
