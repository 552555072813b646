"""The report of a run through every real stage on tiny models (sample ... train, eval, analyze)."""

from __future__ import annotations

import json
import re

import pytest

from dasd.config import load_config
from dasd.report.build import render_report
from dasd.stages.analyze import run_analyze
from dasd.stages.eval import run_evaluation
from dasd.stages.filter import run_filter
from dasd.stages.sample import run_sample
from dasd.stages.score import run_score
from dasd.stages.select import run_select
from dasd.stages.train import run_train
from dasd.store import RunStore

pytestmark = pytest.mark.slow


def _section(html: str, anchor: str) -> str:
    return re.search(rf'<section id="{anchor}">(.*?)</section>', html, flags=re.S).group(1)


def test_report_of_a_real_run(tmp_path, tiny_lm_dir, tiny_lm_dir_other_vocab):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Say {i}."}) + "\n" for i in range(4)), encoding="utf-8")
    cfg = load_config(None, [
        f"run_dir={tmp_path / 'run'}", f"data.prompts={prompts}", f"teacher.model={tiny_lm_dir}",
        f"student.model={tiny_lm_dir_other_vocab}", "sample.k=3", "sample.max_tokens=24",
        "filter.require_structure=false", "filter.drop_cutoff=false", "filter.repetition.enabled=false",
        "train.context=128", "train.micro_batch=2",
        "train.stages=[{name: stage1_low, data: low, init: base, max_steps: 4},"
        " {name: stage2_high, data: high, init: previous, max_steps: 3}]",
        "eval.benchmarks=[{name: toy, format: toy, limit: 3}]",
        "eval.protocol={name: mini, temperature: 1.0, n: 2, max_tokens: 24}",
        "eval.models=[student, stage1_low, stage2_high]", "eval.workers=0", "analyze.model=stage2_high",
    ])
    for stage in (run_sample, run_filter, run_score, run_select, run_train, run_evaluation, run_analyze):
        stage(cfg)
    rep = render_report(cfg.run_dir)
    assert rep.problems == [] and 'class="error"' not in rep.html
    for anchor in ("funnel", "sample", "sentences", "select", "train", "eval", "analyze"):
        sec = _section(rep.html, anchor)
        assert "Not run yet" not in sec and "<img" in sec, anchor
    assert "Not run yet" in _section(rep.html, "mix")
    summary = _section(rep.html, "summary")
    assert re.findall(r"<tr><td>([a-z0-9_]+)</td><td class=\"n\">", summary)[:3] == ["student", "stage1_low", "stage2_high"]
    assert "Protocol — mini: temperature 1.0, top_p 1.0, n 2, max_tokens 24, seed 0" in summary
    train = _section(rep.html, "train")
    store = RunStore.open(cfg.run_dir)
    for name, steps in (("stage1_low", 4), ("stage2_high", 3)):
        done = store.manifest["stages"]["train"]["counts"][name]
        row = re.search(rf"<tr><td>{name}</td>(.*?)</tr>", train).group(1)
        assert f'<td class="n">{steps}</td>' in row and f"{done['final_loss']:.4f}" in row
    analyze = _section(rep.html, "analyze")
    for t in ("teacher", "student", "shared", "boosted"):
        assert f"<td>{t}</td>" in analyze
