"""Sampling the toy teacher at the paper's two temperatures shows the expected likelihood shift."""

from __future__ import annotations

from dasd.config import load_config
from dasd.stages.sample import run_sample


def test_low_temperature_samples_are_more_likely_under_the_teacher(tmp_path, capsys):
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", "data.toy.n_train=8", "sample.k=2",
                             "sample.max_tokens=320", "teacher.batch_size=32"])
    counts = run_sample(cfg)
    low, high = counts["T0.6"]["mean_token_logprob"], counts["T1"]["mean_token_logprob"]
    print(f"mean teacher log-prob/token: T=0.6 {low:.4f}, T=1.0 {high:.4f}")
    assert counts["T0.6"]["samples"] == counts["T1"]["samples"] == 16
    assert low > high
    out = capsys.readouterr().err
    assert "T0.6: 16 samples" in out and "T1: 16 samples" in out
