"""`dasd report`: every section from a full run, self-contained, escaped, partial runs, broken files."""

from __future__ import annotations

import base64
import io
import re

import pytest
from PIL import Image

from dasd.errors import DasdError
from dasd.report.build import NAV, render_report, write_report
from dasd.store import RunStore
from report_runs import PLANT, build_run

SECTIONS = [a for a, _ in NAV]
# section anchor -> the stage whose absence makes it say "not run yet"
NEEDS = {"funnel": "sample", "sample": "sample", "filter": "filter", "sentences": "score", "select": "select",
         "train": "train", "mix": "mix", "eval": "eval", "analyze": "analyze"}
ORDER = ["sample", "filter", "score", "select", "train", "mix", "eval", "analyze"]


def sections(html: str) -> dict[str, str]:
    return dict(re.findall(r'<section id="([^"]+)">(.*?)</section>', html, flags=re.S))


def images(html: str) -> list[Image.Image]:
    out = []
    for b64 in re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html):
        im = Image.open(io.BytesIO(base64.b64decode(b64)))
        im.load()
        out.append(im)
    return out


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    root = build_run(tmp_path_factory.mktemp("report") / "run")
    path = write_report(root)
    return root, path, path.read_text(encoding="utf-8")


def test_full_run_has_every_section_with_its_plots(full):
    root, path, html = full
    assert path == root / "report.html"
    secs = sections(html)
    assert list(secs) == SECTIONS  # pipeline order, summary first
    assert 'class="notrun"' not in html and 'class="error"' not in html
    want_plots = {"funnel": 1, "sample": 1, "sentences": 2, "select": 1, "train": 1, "mix": 1, "eval": 1, "analyze": 2}
    for anchor, n in want_plots.items():
        imgs = images(secs[anchor])
        assert len(imgs) == n, anchor
        assert all(im.format == "PNG" and im.width > 300 and im.height > 100 for im in imgs), anchor
    # the summary: one accuracy row per model, in the configured order, with CIs and the protocol
    summary = secs["summary"]
    labels = re.findall(r"<tr><td>([a-z0-9_]+)</td><td class=\"n\">[0-9.]+ \[[0-9.]+, [0-9.]+\]", summary)
    assert labels == ["student", "stage1_low", "stage2_high", "stage3_mixed", "teacher"]
    assert "Protocol — demo: temperature 0.6, top_p 1.0, n 4, max_tokens 320, seed 0" in summary
    # numbers on the page are the run's: the funnel row of each pool matches the manifest
    store = RunStore.open(root)
    for pool, f in store.manifest["stages"]["filter"]["counts"].items():
        assert f"<td>{pool}</td><td class=\"n\">{f['in']}</td>" in secs["funnel"]
    # the sentence view of the best selected response shows typed spans
    assert re.search(r'<span class="s-(teacher|shared|student)"', secs["select"])
    # the analysis: one row per sentence type with the recorded area between correct and incorrect
    prof = store.manifest["stages"]["analyze"]["counts"]
    for t, v in prof["types"].items():
        assert f"<td>{t}</td>" in secs["analyze"] and f"{v['area']:+.3f}" in secs["analyze"]
    # and the paper's Fig. 6 by sentence index beside it, with its own areas
    for t, v in prof["by_index"]["types"].items():
        assert v["area"] is None or f"{v['area']:+.3f}" in secs["analyze"]
    assert "sentence type share by sentence index" in secs["analyze"]
    assert prof["types"]["teacher"]["area"] > 0 > prof["types"]["boosted"]["area"]


def test_report_is_self_contained(full):
    _, _, html = full
    refs = re.findall(r'\b(?:src|href|action|poster|data)\s*=\s*"([^"]*)"', html, flags=re.I)
    assert refs and all(r.startswith("data:image/png;base64,") or r.startswith("#") for r in refs)
    low = html.lower()
    for bad in ("http://", "https://", "<link", "<iframe", "<object", "<embed", "@import", "url(", "<base", "//cdn"):
        assert bad not in low, bad
    assert "<script" not in low  # the report runs no script at all
    assert "Content-Security-Policy" in html and "default-src 'none'" in html


def test_model_output_is_escaped(full):
    _, _, html = full
    assert PLANT not in html
    escaped = PLANT.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    assert escaped in html  # shown as text (filter rejects and the best selected response contain it)
    assert len(re.findall(r"<img\b", html)) == len(images(html))  # the planted <img> is not an element


@pytest.mark.parametrize("upto", ["sample", "select", "eval"])
def test_partial_run_says_what_has_not_run(tmp_path, upto):
    root = build_run(tmp_path / "run", upto=upto, n_prompts=4, k=2)
    rep = render_report(root)
    assert rep.problems == []
    secs = sections(rep.html)
    assert list(secs) == SECTIONS
    done = set(ORDER[: ORDER.index(upto) + 1])
    for anchor, stage in NEEDS.items():
        said = "Not run yet" in secs[anchor]
        assert said == (stage not in done), (anchor, stage)
        if stage in done and anchor != "filter":  # the filter counts are drawn in the funnel
            assert "<img" in secs[anchor], anchor
    if "eval" not in done:
        assert "No evaluation yet" in secs["summary"]


def test_empty_run_and_not_a_run(tmp_path):
    RunStore(tmp_path / "empty")
    rep = render_report(tmp_path / "empty")
    assert rep.problems == [] and rep.html.count('class="notrun"') == len(NEEDS) + 1  # + the summary's
    with pytest.raises(DasdError, match="no such run directory"):
        render_report(tmp_path / "nope")
    (tmp_path / "plain").mkdir()
    with pytest.raises(DasdError, match="not a dasd run directory"):
        write_report(tmp_path / "plain")
    assert not (tmp_path / "plain" / "report.html").exists()


def test_unfinished_stage_and_corrupt_file(tmp_path, capsys):
    root = build_run(tmp_path / "run", upto="train", n_prompts=4, k=2)
    # training stage 3 was killed after 2 steps, mid-line
    d = root / "train" / "stage3_mixed"
    (d / "done.json").unlink()
    lines = (d / "curve.jsonl").read_text(encoding="utf-8").splitlines()
    (d / "curve.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][:15], encoding="utf-8")
    # a score shard damaged by hand
    shard = sorted((root / "score").glob("pool-T1-*.parquet"))[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    out = write_report(root, tmp_path / "elsewhere" / "r.html")
    assert out == tmp_path / "elsewhere" / "r.html"
    html = out.read_text(encoding="utf-8")
    secs = sections(html)
    assert "interrupted or running (2 steps so far)" in secs["train"]
    assert re.search(rf"{re.escape(str(shard))}: corrupt run file", secs["read-data"])  # named
    assert "section not built" in capsys.readouterr().err
    assert list(secs) == ["read-data", *SECTIONS]  # every section is still there
    assert "<img" in secs["train"] and "<img" in secs["sentences"]  # with what could be read
    # an eval results shard damaged too: the summary falls back to the manifest's numbers
    root2 = build_run(tmp_path / "run2", upto="eval", n_prompts=4, k=2)
    ev = sorted((root2 / "eval").glob("results-teacher-*.jsonl"))[0]
    ev.write_text(ev.read_text(encoding="utf-8") + "[1]\n", encoding="utf-8")
    rep = render_report(root2)
    secs = sections(rep.html)
    assert len(rep.problems) == 1 and str(ev) in secs["read-eval"]
    assert re.search(r"<tr><td>teacher</td><td class=\"n\">[0-9.]+ \[", secs["summary"])


def test_analysis_of_another_shape_is_still_shown(tmp_path):
    store = RunStore(tmp_path / "run")
    store.begin_stage("analyze", {})
    store.end_stage("analyze", {"curves": {"x": [0.1, 0.5, 0.9], "teacher": [0.2, 0.3, 0.4]}, "n": 7, "note": "<b>hi</b>"})
    rep = render_report(tmp_path / "run")
    sec = sections(rep.html)["analyze"]
    assert rep.problems == [] and len(images(sec)) == 1
    assert "<td>n</td>" in sec and "&lt;b&gt;hi&lt;/b&gt;" in sec


def test_several_benchmarks_get_one_column_each_and_their_protocols(tmp_path):
    root = build_run(tmp_path / "run", upto="eval", n_prompts=3, k=2, benchmarks=("toy", "toy-long"))
    rep = render_report(root)
    assert rep.problems == []
    secs = sections(rep.html)
    summary = secs["summary"]
    assert "<th>toy avg@k % [95% CI]</th><th>toy-long avg@k % [95% CI]</th><th>all avg@k % [95% CI]</th>" in summary
    store = RunStore.open(root)
    for label, rows in store.manifest["stages"]["eval"]["counts"].items():
        cells = [f"{100 * r['avg@k']:.1f} [{100 * r['avg@k_ci'][0]:.1f}, {100 * r['avg@k_ci'][1]:.1f}]"
                 for r in rows if r["kind"] in ("benchmark", "all")]
        assert f"<tr><td>{label}</td>" + "".join(f'<td class="n">{c}</td>' for c in cells) in summary
    # two protocols, each line saying which model/benchmark pairs used it
    assert "max_tokens 320, seed 0, chat_template model default (used for toy (every model))" in summary
    assert "max_tokens 640, seed 0, chat_template model default (used for toy-long (every model))" in summary
    assert len(images(secs["eval"])) == 1
    # the eval table adds the share of responses cut off at max_tokens, counted from the results
    for label in ("student", "teacher"):
        for bench in ("toy", "toy-long"):
            res = [r for r in store.read("eval", f"results-{label}") if r["benchmark"] == bench]
            cut = sum(r["finish_reason"] == "length" for r in res) / len(res)
            row = re.search(rf"<tr><td>{label}</td><td>benchmark</td><td>{bench}</td>(.*?)</tr>", secs["eval"]).group(1)
            assert row.endswith(f'<td class="n">{100 * cut:.1f}</td>')


def test_the_report_is_rebuilt_when_the_run_changed_and_only_then(tmp_path):
    """`dasd report` (and `dasd run`) rebuilds report.html when the run's contents changed, not when
    only the run's lock changed hands (another process id: another size)."""
    import json

    from dasd.config import load_config
    from dasd.lock import LOCK, release_run_lock
    from dasd.stages.report import REPORT, run_report

    run = tmp_path / "run"
    store = RunStore(run)
    with store.writer("sample", "prompts") as w:
        w.add({"id": "p0", "messages": [{"role": "user", "content": "2 + 3?"}]})
    cfg = load_config(None, [f"run_dir={run}"])
    run_report(cfg, store)
    built = (run / REPORT).stat().st_mtime_ns
    release_run_lock(run)
    (run / LOCK).write_text(json.dumps({"pid": 1234567, "host": "elsewhere", "started": "2026-12-02T00:00:00Z"}))
    run_report(cfg, store)
    assert (run / REPORT).stat().st_mtime_ns == built
    with store.writer("sample", "prompts") as w:
        w.add({"id": "p1", "messages": [{"role": "user", "content": "4 + 5?"}]})
    run_report(cfg, store)
    assert (run / REPORT).stat().st_mtime_ns != built


def test_mix_section_says_how_the_training_stages_treat_the_prefix(tmp_path):
    """The mixed-policy paragraph states what the recorded train config does with the student
    prefix, stage by stage (it said "trained without masking" even under mask_prefix: true)."""
    from dasd.report.data import mix_section
    from dasd.report.view import RunView

    root = build_run(tmp_path / "run", upto="mix")
    assert "stage3_mixed: prefix trained on)" in str(mix_section(RunView(RunStore.open(root))))
    store = RunStore.open(root)
    store.manifest["stages"]["train"]["config"]["stages"][2]["mask_prefix"] = True
    store.save_manifest()
    html = str(mix_section(RunView(RunStore.open(root))))
    assert "stage3_mixed: prefix masked)" in html and "without masking" not in html
    store.manifest["stages"]["train"]["config"] = {"mask_prefix": True, "stages": [{"name": "a", "data": "low"}]}
    store.save_manifest()
    assert "no training stage uses them)" in str(mix_section(RunView(RunStore.open(root))))
