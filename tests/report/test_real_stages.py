"""The report of a run made by the real stages (sample -> filter -> score -> select) on tiny models."""

from __future__ import annotations

import json
import math
import re

from dasd.config import load_config
from dasd.report.build import render_report
from dasd.stages.filter import run_filter
from dasd.stages.sample import run_sample
from dasd.stages.score import run_score
from dasd.stages.select import run_select
from dasd.store import RunStore

RELAXED = ["filter.require_structure=false", "filter.drop_cutoff=false", "filter.repetition.enabled=false"]


def _section(html: str, anchor: str) -> str:
    return re.search(rf'<section id="{anchor}">(.*?)</section>', html, flags=re.S).group(1)


def test_report_follows_the_real_stages(tmp_path, tiny_lm_dir, tiny_lm_dir_other_vocab):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Say {i}."}) + "\n" for i in range(3)), encoding="utf-8")
    cfg = load_config(None, [
        f"run_dir={tmp_path / 'run'}", f"data.prompts={prompts}", f"teacher.model={tiny_lm_dir}",
        f"student.model={tiny_lm_dir_other_vocab}", "sample.k=3", "sample.max_tokens=16", *RELAXED,
    ])
    counts = run_sample(cfg)

    rep = render_report(cfg.run_dir)  # after sampling only
    assert rep.problems == []
    sample = _section(rep.html, "sample")
    assert sample.count("<img") == 1
    for pool, c in counts.items():  # the table agrees with the stage's own statistics
        row = re.search(rf"<tr><td>{re.escape(pool)}</td>(.*?)</tr>", sample).group(1)
        cells = re.findall(r'<td class="n">([^<]*)</td>', row)
        assert cells[1] == str(c["samples"]) and cells[4] == f"{c['tokens']:,}"
        assert math.isclose(float(cells[5]), c["mean_token_logprob"], abs_tol=5e-5)
    for anchor in ("filter", "sentences", "select", "train", "mix", "eval", "analyze"):
        assert "Not run yet" in _section(rep.html, anchor), anchor

    funnel = run_filter(cfg)
    run_score(cfg)
    sel = run_select(cfg)
    rep = render_report(cfg.run_dir)
    assert rep.problems == [] and 'class="error"' not in rep.html
    for anchor in ("sentences", "select"):
        assert "Not run yet" not in _section(rep.html, anchor) and "<img" in _section(rep.html, anchor), anchor
    for anchor in ("train", "mix", "eval", "analyze"):
        assert "Not run yet" in _section(rep.html, anchor), anchor
    fun = _section(rep.html, "funnel")
    for pool, f in funnel.items():
        assert f"<td>{pool}</td><td class=\"n\">{f['in']}</td>" in fun
        assert f"<td class=\"n\">{sel[pool]['selected']['n']}</td>" in fun
    store = RunStore.open(cfg.run_dir)
    assert store.manifest["stages"]["select"]["complete"]


def test_report_of_imported_responses_without_logprobs(tmp_path, tiny_lm_dir):
    from dasd.stages.import_ import run_import

    data = tmp_path / "chat.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"q{i}"},
                          {"role": "assistant", "content": f"<think>step {i}.</think> Done <script>x()</script>."}]}
            for i in range(3)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", f"import.source={data}", "import.format=chat",
                             f"teacher.model={tiny_lm_dir}"])
    run_import(cfg)
    rep = render_report(cfg.run_dir)
    assert rep.problems == []
    sample = _section(rep.html, "sample")
    assert "imported (`dasd import`)" in sample and "No teacher log-probs in these samples" in sample
    row = re.search(r"<tr><td>T1</td>(.*?)</tr>", sample).group(1)
    assert re.findall(r'<td class="n">([^<]*)</td>', row)[-1] == "3"  # the "no log-probs" column
    assert "complete (imported)" in _section(rep.html, "run")
    assert "<script" not in rep.html
