"""Report sections about models: the accuracy summary, training curves, evaluation, analysis, run facts.

``scan_eval`` reads the evaluation results once (summaries from the manifest when there and eval
finished, else recomputed from the results on disk with ``grading.metrics.summarize``; the protocols always from the results themselves,
since every result carries the protocol that produced it). The results of a training stage that are
not those of its model now (``stale_eval``: the stage is being trained again, was trained from an
earlier version of a stage before it, or was trained again or deleted since `dasd eval` ran) are left
out, with a line saying why (``stale_note``), as `dasd eval` would not report them either; those
of a stage evaluated by a dasd that did not record its model's version are shown with a line saying
so (``version_unknown``, ``unknown_note``). An analysis profile that is not of the current
evaluation responses of its model is left out the same way (``stale_analysis``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from dasd.errors import DasdError
from dasd.grading.metrics import SUMMARY_FIELDS, summarize
from dasd.report import plots
from dasd.report.html import Raw, details, esc, fmt, kv_table, not_run, para, pre, section, table
from dasd.report.view import PIPELINE, RunView, mean

PROTOCOL_KEYS = ("name", "temperature", "top_p", "n", "max_tokens", "seed", "system_prompt", "chat_template", "model")


@dataclass
class EvalScan:
    order: list[str] = field(default_factory=list)  # model labels, config order first
    rows: dict[str, list[dict]] = field(default_factory=dict)  # label -> summarize rows
    protocols: dict[str, dict[str, dict]] = field(default_factory=dict)  # label -> benchmark -> protocol
    results: dict[str, int] = field(default_factory=dict)  # label -> graded samples on disk
    problems: list[str] = field(default_factory=list)  # results that could not be read
    cut_off: dict[str, dict[str, list[int]]] = field(default_factory=dict)  # label -> group -> [cut off, known]
    stale: dict[str, tuple[int, str]] = field(default_factory=dict)  # label -> (results on disk, why left out)
    unknown: list[str] = field(default_factory=list)  # shown labels whose model version eval did not record


def stale_eval(view: RunView, label: str) -> str | None:
    """Why the evaluation results stored under ``label`` are not those of the model it names now; None
    when they are, or when that cannot be told. Not: ``label`` is a training stage of the run
    (``RunView.train_stage_names``) that is not current (``runs.training_not_current``: being trained
    again, or trained from an earlier version of a stage before it; `dasd eval` refuses it), or whose
    final model is not the one `dasd eval` recorded for it (``versions``, by ``runs.model_version``:
    trained again since, or deleted; `dasd eval` would drop these results and evaluate it again). Results
    evaluated by a dasd that did not record the version (``version_unknown``) are taken as the stage's
    model's when it has one and is current: they are shown, marked (``unknown_note``)."""
    from dasd.runs import model_version, training_not_current

    if label not in view.train_stage_names():
        return None
    stage_dir = view.root / "train" / label
    why = training_not_current(stage_dir)
    if why is not None:
        return f"{why}, then `dasd eval`"
    final = stage_dir / "final"
    if not (final.is_dir() and (stage_dir / "done.json").is_file()):
        return (f"stage {label!r} has no trained model in the run now (no {final} with its done.json): run `dasd train`, "
                "then `dasd eval`")
    recorded = (view.info("eval").get("versions") or {}).get(label)
    if recorded is None:  # evaluated by a dasd that did not record versions: ``version_unknown``
        return None
    if model_version(str(final)) != recorded:
        return f"stage {label!r} was trained again since `dasd eval` evaluated it: run `dasd eval` to evaluate its new model"
    return None


def version_unknown(view: RunView, label: str) -> bool:
    """True when ``label`` is a training stage of the run whose evaluation results were made by a dasd
    that did not record the model's version (no ``versions`` entry for it in the eval stage): whether
    the stage was trained again since cannot be told from the run, so they are shown, with a line
    saying so (``unknown_note``). `dasd eval` tells it: it keeps them when the model is the one they
    were made with (their key holds the model's files) and records the version, and otherwise drops
    them and evaluates the model again."""
    return label in view.train_stage_names() and (view.info("eval").get("versions") or {}).get(label) is None


def stale_analysis(view: RunView, profile: dict) -> str | None:
    """Why the analysis ``profile`` (`dasd analyze`'s counts) is not of the current evaluation responses
    of its model, with what to run; None when it is, or when that cannot be told (a profile of a dasd
    that did not record its ``eval_key``: ``analysis_doubt``). Not: its training stage's results are
    not the stage's model's (``stale_eval``), or `dasd eval` has replaced the responses it was made
    from (the label's key in the eval stage is not the ``eval_key`` the profile recorded: the model
    was trained again, or the benchmarks or protocol changed, and `dasd eval` ran)."""
    label = profile.get("model") or (view.info("analyze").get("config") or {}).get("model")
    if not isinstance(label, str):
        return None
    why = stale_eval(view, label)
    if why is not None:
        return (f"it was made from the evaluation responses of an earlier model of the stage ({why}, then `dasd "
                "analyze`)")
    if "eval_key" in profile and profile["eval_key"] != (view.info("eval").get("keys") or {}).get(label):
        return (f"it was made from evaluation responses of {label} that `dasd eval` has replaced since (the model was "
                "trained again, or the benchmarks or protocol changed): run `dasd analyze` to analyse the current ones")
    return None


def analysis_doubt(view: RunView, profile: dict) -> str | None:
    """A line for a profile made by a dasd that did not record which evaluation responses it analysed
    (no ``eval_key``) when `dasd eval` began after `dasd analyze` last began (the manifest's
    ``started`` times): it may be of responses `dasd eval` has replaced since; None otherwise."""
    if "eval_key" in profile:
        return None
    ev, an = view.info("eval").get("started"), view.info("analyze").get("started")
    if not (isinstance(ev, str) and isinstance(an, str) and ev > an):
        return None
    label = profile.get("model") or "the model"
    return (f"This profile was made by an earlier dasd, which did not record which evaluation responses it analysed, "
            f"and `dasd eval` ran after it (began {ev}; `dasd analyze` began {an}): if that evaluated {label} "
            "again, the profile is of the earlier responses. Run `dasd analyze` to be sure.")


def _count_cut(cut: dict[str, list[int]], r: dict) -> None:
    """Tally finish_reason "length" per benchmark, domain and overall (results without it are not counted)."""
    fr = r.get("finish_reason")
    if fr is None:
        return
    for key in (f"benchmark:{r.get('benchmark') or r.get('domain') or 'unknown'}", f"domain:{r.get('domain') or 'unknown'}", "all:all"):
        c = cut.setdefault(key, [0, 0])
        c[0] += fr == "length"
        c[1] += 1


def scan_eval(view: RunView) -> EvalScan:
    """Summaries, protocols and result counts of every evaluated model (streaming the results).

    Only the fields ``summarize`` needs are kept per result (never the response text), so a large
    evaluation (64 samples x long responses x several models) fits in memory.
    """
    scan = EvalScan()
    counts = view.counts("eval")
    outputs = [o for o in view.outputs("eval") if o.startswith("results-")]
    cfg_models = (view.info("eval").get("config") or {}).get("models") or \
        ((view.manifest.get("config") or {}).get("eval") or {}).get("models") or []
    by_label: dict[str, list[dict]] = {}
    protocols: dict[str, dict[str, dict]] = {}
    for o in outputs:
        label, recs, protos, cut = o[len("results-"):], [], {}, {}
        try:
            for r in view.read("eval", o):
                label = r.get("model_label") or label
                recs.append({k: r.get(k) for k in SUMMARY_FIELDS})
                _count_cut(cut, r)
                b = str(r.get("benchmark") or r.get("domain") or "?")
                if b not in protos:
                    protos[b] = r.get("protocol") if isinstance(r.get("protocol"), dict) else {}
        except DasdError as e:
            scan.problems.append(f"eval: {e} (model {label}: the summary eval recorded when it last finished is shown, if any)")
            continue
        by_label[label], protocols[label], scan.cut_off[label] = recs, protos, cut
    labels = [m for m in cfg_models if m in counts or m in by_label]
    labels += sorted(x for x in {*counts, *by_label} if x not in labels)
    for label in labels:
        rows = counts.get(label)
        recs = by_label.get(label, [])
        why = stale_eval(view, label)
        if why is not None:
            scan.stale[label] = (len(recs), why)
            continue
        if not (isinstance(rows, list) and rows and isinstance(rows[0], dict)) and recs:
            rows = summarize(recs)
        if not rows:
            continue
        scan.order.append(label)
        if version_unknown(view, label):
            scan.unknown.append(label)
        scan.rows[label] = rows
        scan.results[label] = len(recs)
        scan.protocols[label] = protocols.get(label, {})
    return scan


def cut_off_note(ev: EvalScan) -> Raw:
    """A warning naming each model and benchmark with samples cut off at the token limit (their
    answers were never written and are graded wrong), with the fix; empty when there are none."""
    items = []
    for label in ev.order:
        for key, (cut, known) in ev.cut_off.get(label, {}).items():
            kind, _, bench = key.partition(":")
            if kind == "benchmark" and cut:
                cap = (ev.protocols.get(label, {}).get(bench) or {}).get("max_tokens")
                items.append(f"{label} on {bench}: {cut:,} of {known:,} samples ({fmt(cut / known, '.1f', pct=True)}%) "
                             f"stopped at max_tokens {fmt(cap)} (or the model's context)")
    if not items:
        return Raw("")
    lis = "".join(f"<li>{esc(t)}</li>" for t in items)
    return Raw(f'<div class="warn"><p>Answers cut off at the token limit are graded wrong, so these accuracies '
               f"understate the models by up to the share cut off: raise eval.protocol.max_tokens (or set eval.preset: "
               f"paper for the paper's protocol) and run `dasd eval` again.</p><ul>{lis}</ul></div>")


def stale_note(ev: EvalScan) -> Raw:
    """A warning naming each model whose stored results are left out (``stale_eval``) and why; empty
    when there are none."""
    if not ev.stale:
        return Raw("")
    lis = "".join(f"<li>{esc(label)}: {esc(n)} result(s) of an earlier model left out: {esc(why)}</li>"
                  for label, (n, why) in ev.stale.items())
    return Raw(f'<div class="warn"><p>Evaluation results stored for a training stage whose model has changed or is '
               f"being trained are not shown: they are not its model's (`dasd eval` would not report them either).</p>"
               f"<ul>{lis}</ul></div>")


def unknown_note(ev: EvalScan) -> Raw:
    """A line naming the training stages whose results are shown though `dasd eval` did not record the
    version of the model they were made with (``version_unknown``); empty when there are none."""
    if not ev.unknown:
        return Raw("")
    return para(f"Model version unknown for {', '.join(ev.unknown)}: evaluated by an earlier dasd, which did not "
                "record it, so these results are shown as the current model's without a check that the stage was not "
                "trained again since. `dasd eval` checks it (it keeps the results if the model is the same, and "
                "records the version).", "warn")


def _overall(rows: list[dict]) -> dict | None:
    return next((r for r in rows if r.get("kind") == "all"), rows[-1] if rows else None)


def _ci(r: dict, key: str) -> str:
    ci = r.get(f"{key}_ci")
    v = r.get(key)
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(x, (int, float)) for x in ci):
        return f"{fmt(v, '.1f', pct=True)} [{fmt(ci[0], '.1f', pct=True)}, {fmt(ci[1], '.1f', pct=True)}]"
    return fmt(v, ".1f", pct=True)


def _users(pairs: list[tuple[str, str]], labels: list[str]) -> str:
    """Who used a protocol: "aime24, gpqa" when every model did on those benchmarks, else "model/benchmark"s."""
    benches = list(dict.fromkeys(b for _, b in pairs))
    if all(sum(1 for _, b2 in pairs if b2 == b) == len(labels) for b in benches):
        return ", ".join(benches) + (" (every model)" if len(labels) > 1 else "")
    return ", ".join(f"{m}/{b}" for m, b in pairs)


def _benchmarks(ev: EvalScan) -> list[str]:
    out: list[str] = []
    for label in ev.order:
        for r in ev.rows[label]:
            if r.get("kind") == "benchmark" and r.get("name") not in out:
                out.append(r.get("name"))
    return out


def protocol_text(p: dict) -> str:
    """A protocol as one line: name, temperature, top_p, n, max tokens, seed, chat template, model."""
    if not p:
        return "protocol not recorded"
    bits = [f"{k} {p[k]}" for k in PROTOCOL_KEYS if k in p and p[k] is not None and k != "name"]
    extra = [f"{k} {v}" for k, v in p.items() if k not in PROTOCOL_KEYS]
    return f"{p.get('name', 'unnamed')}: " + ", ".join(bits + extra)


def summary_section(view: RunView, ev: EvalScan, facts: list[tuple[str, str]]) -> Raw:
    """The top of the report: accuracy of every model with CIs and the protocol, and key data counts."""
    parts: list[str] = []
    if ev.order:
        benches = _benchmarks(ev)
        rows = []
        if len(benches) > 1:  # the paper's layout: one column per benchmark
            for label in ev.order:
                by = {r.get("name"): r for r in ev.rows[label] if r.get("kind") == "benchmark"}
                r = _overall(ev.rows[label]) or {}
                rows.append([label, *(_ci(by[b], "avg@k") if b in by else "–" for b in benches), _ci(r, "avg@k"),
                             fmt(r.get("no_answer"), ".1f", pct=True)])
            parts.append(table(["model", *(f"{b} avg@k % [95% CI]" for b in benches), "all avg@k % [95% CI]",
                                "no answer %"], rows))
        else:
            for label in ev.order:
                r = _overall(ev.rows[label]) or {}
                rows.append([label, _ci(r, "avg@k"), _ci(r, "pass@k"), fmt(r.get("maj@k"), ".1f", pct=True),
                             fmt(r.get("no_answer"), ".1f", pct=True), fmt(r.get("k")), fmt(r.get("problems")),
                             fmt(r.get("samples"))])
            parts.append(table(["model", "avg@k % [95% CI]", "pass@k % [95% CI]", "maj@k %", "no answer %", "k",
                                "problems", "samples"], rows))
        distinct: dict[str, list[tuple[str, str]]] = {}
        for label in ev.order:
            for bench, p in ev.protocols.get(label, {}).items():
                key = protocol_text({k: v for k, v in p.items() if k != "model"})
                distinct.setdefault(key, []).append((label, bench))
        for text, users in distinct.items():
            parts.append(para(f"Protocol — {text}" + (f" (used for {_users(users, ev.order)})" if len(distinct) > 1 else "")))
        parts.append(cut_off_note(ev))
        parts.append(stale_note(ev))
        parts.append(unknown_note(ev))
        parts.append(para("avg@k: mean accuracy over the first k samples of each problem (the paper's metric); pass@k: "
                          "unbiased estimator; 95% CIs: percentile bootstrap over problems.", "sub"))
    elif ev.stale:
        parts += [not_run("No current evaluation results (`dasd eval`): no accuracy to report."), stale_note(ev)]
    else:
        parts.append(not_run("No evaluation yet (`dasd eval`): no accuracy to report."))
    if facts:
        parts.append(Raw("<h3>The run in numbers</h3>"))
        parts.append(kv_table(facts))
    return section("summary", "Summary", parts)


def evaluation_section(view: RunView, ev: EvalScan) -> Raw:
    """Every summary row of every model, the protocol of each, and a chart per benchmark."""
    if not ev.order:
        if ev.stale:
            return section("eval", "Evaluation", [not_run("No current evaluation results (`dasd eval`)."), stale_note(ev)])
        return section("eval", "Evaluation", [not_run("Not run yet (`dasd eval`).")])
    head = ["model", "kind", "name", "problems", "samples", "k", "avg@k % [95% CI]", "pass@1 %", "pass@k % [95% CI]",
            "maj@k %", "no answer %", "cut off %"]
    rows = []
    for label in ev.order:
        for r in _distinct_rows(ev.rows[label]):
            cut = ev.cut_off.get(label, {}).get(f"{r.get('kind')}:{r.get('name')}")
            rows.append([label, r.get("kind", ""), r.get("name", ""), fmt(r.get("problems")), fmt(r.get("samples")),
                         fmt(r.get("k")), _ci(r, "avg@k"), fmt(r.get("pass@1"), ".1f", pct=True), _ci(r, "pass@k"),
                         fmt(r.get("maj@k"), ".1f", pct=True), fmt(r.get("no_answer"), ".1f", pct=True),
                         fmt(cut[0] / cut[1] if cut and cut[1] else None, ".1f", pct=True)])
    benches = []
    values = {}
    for label in ev.order:
        for r in ev.rows[label]:
            if r.get("kind") == "benchmark" and isinstance(r.get("avg@k"), (int, float)):
                if r["name"] not in benches:
                    benches.append(r["name"])
                ci = r.get("avg@k_ci") or [None, None]
                values[(r["name"], label)] = (r["avg@k"], ci[0], ci[1])
    prow = []
    for label in ev.order:
        for bench, p in ev.protocols.get(label, {}).items():
            prow.append([label, bench, *(fmt(p.get(k)) if k in p else "–" for k in PROTOCOL_KEYS)])
    parts: list[str] = [
        figure_or_empty(plots.accuracy_bars(benches, ev.order, values, "avg@k (%)"),
                        "avg@k per benchmark and model with 95% bootstrap intervals.", "accuracy per benchmark"),
        table(head, rows, numeric_from=3),
        cut_off_note(ev),
        stale_note(ev),
        unknown_note(ev),
        Raw("<h3>Protocols (as recorded with the results)</h3>"),
        table(["model", "benchmark", *PROTOCOL_KEYS], prow, numeric_from=99),
    ]
    cfg = view.info("eval").get("config")
    if isinstance(cfg, dict):
        parts.append(details("eval settings", pre(json.dumps(cfg, indent=2, ensure_ascii=False, default=str))))
    if view.unfinished("eval"):
        parts.append(para(view.unfinished_text("eval"), "warn"))
    return section("eval", "Evaluation", parts)


def _distinct_rows(rows: list[dict]) -> list[dict]:
    """Summary rows without repeats: a domain row equal to a benchmark row, or the "all" row when there is
    only one benchmark, says nothing new."""
    benches = [r for r in rows if r.get("kind") == "benchmark"]
    out = []
    for r in rows:
        if r.get("kind") == "domain" and any(b.get("name") == r.get("name") and b.get("samples") == r.get("samples")
                                             for b in benches):
            continue
        if r.get("kind") == "all" and len(benches) == 1 and benches[0].get("samples") == r.get("samples"):
            continue
        out.append(r)
    return out


def figure_or_empty(uri: str | None, caption: str, alt: str) -> Raw:
    from dasd.report.html import figure

    return figure(uri, caption, alt)


def training_section(view: RunView) -> Raw:
    """Per training stage: data, steps, losses, throughput; loss and lr curves across stages. A stage
    trained from an earlier version of a stage before it is marked out of date, with what to do
    (``runs.training_not_current``), not shown as done."""
    from dasd.runs import training_not_current

    dirs = view.train_stage_dirs()
    if not dirs:
        return section("train", "Training", [not_run("Not run yet (`dasd train`).")])
    counts = view.counts("train")
    rows, curves = [], []
    for d in dirs:
        curve = view.curve(d)
        done = view.done(d) or {}
        c = counts.get(d.name) if isinstance(counts.get(d.name), dict) else {}
        losses = [r.get("loss") for r in curve]
        stale = training_not_current(d) if done else None
        status = f"out of date: {stale}" if stale else "done" if done else f"interrupted or running ({len(curve)} steps so far)"
        if not done and curve and isinstance(curve[-1].get("eta_s"), (int, float)):
            status += f", ETA {curve[-1]['eta_s']:,.0f} s when it last logged"
        rows.append([d.name, status, fmt(done.get("examples", c.get("examples"))), fmt(done.get("tokens", c.get("tokens"))),
                     fmt(done.get("steps", len(curve) or None)), fmt(losses[0] if losses else None, ".4f"),
                     fmt(losses[-1] if losses else None, ".4f"),
                     fmt(mean(r.get("tokens_per_s") for r in curve), ",.0f"),
                     fmt(curve[-1].get("elapsed_s") if curve else None, ",.1f"),
                     fmt(done.get("padding_share"), ".1f", pct=True), _short_path(done.get("init", ""))])
        curves.append((d.name, curve))
    parts: list[str] = [
        table(["stage", "status", "examples", "tokens", "steps", "first loss", "final loss", "tokens/s", "seconds",
               "padding %", "initialised from"], rows, numeric_from=2),
        figure_or_empty(plots.train_curves(curves), "Training loss (mean cross-entropy per target token) and learning "
                        "rate per optimizer step; stages run one after another (dotted lines), each starting from the "
                        "previous stage's model.", "training curves"),
    ]
    cfg = view.info("train").get("config")
    if isinstance(cfg, dict):
        parts.append(details("training settings", pre(json.dumps(cfg, indent=2, ensure_ascii=False, default=str))))
    return section("train", "Training", parts)


def _short_path(p: str) -> str:
    p = str(p)
    return p if len(p) < 60 else "…" + p[-57:]


def analysis_section(view: RunView) -> Raw:
    """The `analyze` results: per sentence type, its share by sentence index and by relative position in
    correct vs incorrect responses.

    The profile is ``dasd.rules.analysis.position_profile``'s dict (``types.<type>.{correct, incorrect,
    overall, area, abs_area, n_bins_used}``, ``edges``, ``n_responses``, ``by_index``). Anything else found in the
    counts is shown generically: numeric series as curves, scalars in a table. A profile that is not
    of the current evaluation responses of its model (``stale_analysis``: the stage's results are not
    its model's now, or `dasd eval` replaced them after `dasd analyze` ran) is left out, with a line
    saying why and what to run; one of an earlier dasd that may be is shown under a line saying so
    (``analysis_doubt``).
    """
    title = "Analysis (sentence types vs correctness)"
    if not view.ran("analyze"):
        return section("analyze", title, [not_run("Not run yet (`dasd analyze`).")])
    if view.unfinished("analyze"):  # the profile in the manifest is an earlier run's
        return section("analyze", title, [para(view.unfinished_text("analyze") + " Its profile is computed when it "
                                               "finishes.", "warn")])
    a = view.counts("analyze")
    label = a.get("model") or (view.info("analyze").get("config") or {}).get("model")
    why = stale_analysis(view, a)
    if why is not None:  # the profile is of responses that are not those of the model now
        return section("analyze", title, [para(f"The profile of {label} is left out: {why}.", "warn")])
    doubt = analysis_doubt(view, a)
    parts: list[str] = [para(doubt, "warn")] if doubt else []
    parts += [
        para("Sentences of the distilled model's own evaluation responses, typed with the teacher, the student base "
             "and the distilled model: Teacher (delta > tau), Student (delta < −tau), Boosted (teacher and base agree "
             "but the distilled model's probability differs from both by more than tau_boost: two-sided, or only "
             "higher with analyze.boosted: higher), Shared. The paper: Teacher sentences go "
             "with correct answers, Boosted ones with wrong answers."),
    ]
    types = a.get("types")
    if isinstance(types, dict) and types:
        parts += _profile_parts(a, types)
    else:
        panels: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
        scalars: list[tuple[str, str]] = []
        _walk(a, "", panels, scalars)
        if panels:
            parts.append(figure_or_empty(plots.line_panels(panels, "position in response (fraction)", "share"),
                                         "Analysis curves as recorded by `dasd analyze`.", "analysis curves"))
        if scalars:
            parts.append(table(["quantity", "value"], scalars))
        if not panels and not scalars:
            parts.append(para("The analysis recorded no numbers.", "warn"))
    return section("analyze", title, parts)


def _curves(types: dict, n: dict, xs_of) -> dict[str, dict[str, tuple[list[float], list[float | None]]]]:
    """One panel per type: the correct and incorrect share curves (in %), x from ``xs_of(len)``."""
    panels: dict[str, dict[str, tuple[list[float], list[float | None]]]] = {}
    for t, v in types.items():
        if not isinstance(v, dict):
            continue
        series = {}
        for g in ("correct", "incorrect"):
            ys = v.get(g)
            if isinstance(ys, list) and ys:
                series[f"{g} (n={n.get(g, '?')})"] = (xs_of(len(ys)), [None if y is None else 100 * y for y in ys])
        area = v.get("area")
        panels[f"{t}: area {area:+.3f}" if isinstance(area, (int, float)) else t] = series
    return panels


def _profile_parts(a: dict, types: dict) -> list[str]:
    n = a.get("n_responses") or {}
    edges = a.get("edges") if _num_list(a.get("edges")) else None
    colors = {"correct": plots.PALETTE[2], "incorrect": plots.PALETTE[1]}
    by_index = a.get("by_index") if isinstance(a.get("by_index"), dict) else {}
    index_types = by_index.get("types") if isinstance(by_index.get("types"), dict) else {}
    rows = []
    for t, v in types.items():
        if not isinstance(v, dict):
            continue
        ov = v.get("overall") or {}
        iv = index_types.get(t) if isinstance(index_types.get(t), dict) else {}
        rows.append([t, fmt(ov.get("correct"), ".1f", pct=True), fmt(ov.get("incorrect"), ".1f", pct=True),
                     fmt(iv.get("area"), "+.3f"), fmt(iv.get("n_bins_used")),
                     fmt(v.get("area"), "+.3f"), fmt(v.get("abs_area"), ".3f"), fmt(v.get("n_bins_used"))])
    knobs = ", ".join(f"{k} {fmt(a[k], '.3f') if isinstance(a[k], float) else a[k]}"
                      for k in ("model", "tau", "tau_boost", "boosted", "bins", "weight") if k in a)
    out = [para(f"{knobs}; {fmt(n.get('correct'))} correct and {fmt(n.get('incorrect'))} incorrect responses.")]
    if not n.get("correct") or not n.get("incorrect"):
        out.append(para("One group has no responses, so there is nothing to compare: the areas are undefined. "
                        "Evaluate more samples (eval.protocol.n) or a stronger model.", "warn"))
    if index_types:
        beyond = by_index.get("n_beyond") or {}
        out.append(figure_or_empty(
            plots.line_panels(_curves(index_types, n, lambda k: [float(i) for i in range(k)]), "sentence index",
                              "share of sentences (%)", colors=colors),
            f"Share of each sentence type by sentence index (the paper's Fig. 6: the k-th sentence of each response), "
            f"in correct vs incorrect responses; sentences past index {fmt(by_index.get('index_bins'))} are left out "
            f"({fmt(beyond.get('correct'))} correct, {fmt(beyond.get('incorrect'))} incorrect).",
            "sentence type share by sentence index"))
    rel_x = (lambda k: [(edges[i] + edges[i + 1]) / 2 for i in range(k)]) if edges else None
    out.append(figure_or_empty(
        plots.line_panels(_curves(types, n, lambda k: rel_x(k) if rel_x and len(edges) == k + 1
                                  else [(i + 0.5) / k for i in range(k)]),
                          "position in response", "share of sentences (%)", colors=colors, xlim=(0.0, 1.0)),
        "Share of each sentence type by relative position (our addition: responses of different lengths on one "
        "axis), in correct vs incorrect responses; area = mean over positions of (correct − incorrect): positive "
        "means the type goes with correct answers.", "sentence type share by position"))
    out.append(table(["type", "share in correct %", "share in incorrect %", "area by index", "indices used",
                      "area by position", "|area| by position", "positions used"], rows))
    return out


_X_KEYS = ("x", "positions", "position", "bins", "bin_centers", "centers")


def _num_list(v: Any) -> bool:
    return isinstance(v, list) and len(v) >= 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)


def _walk(obj: Any, path: str, panels: dict, scalars: list, depth: int = 0) -> None:
    if depth > 8:
        return
    if isinstance(obj, dict):
        lists = {k: v for k, v in obj.items() if _num_list(v)}
        xs = next((lists[k] for k in _X_KEYS if k in lists), None)
        series = {k: v for k, v in lists.items() if k not in _X_KEYS}
        if series:
            panel = panels.setdefault(path or "analysis", {})
            for k, v in series.items():
                x = xs if xs is not None and len(xs) == len(v) else [(i + 0.5) / len(v) for i in range(len(v))]
                panel[k] = (x, v)
        for k, v in obj.items():
            if k in lists:
                continue
            _walk(v, f"{path}.{k}" if path else str(k), panels, scalars, depth + 1)
    elif isinstance(obj, list):
        if all(isinstance(x, dict) for x in obj):
            for i, x in enumerate(obj[:20]):
                _walk(x, f"{path}[{i}]", panels, scalars, depth + 1)
        elif len(obj) <= 8:
            scalars.append((path, ", ".join(fmt(x, ".4g") if isinstance(x, float) else str(x) for x in obj)))
    elif isinstance(obj, (int, float, str, bool)) or obj is None:
        scalars.append((path, fmt(obj, ".4g") if isinstance(obj, float) else fmt(obj)))


def stages_table(view: RunView) -> Raw:
    """State, finish time, duration and config hash of every pipeline stage (and any extra ones)."""
    rows = []
    names = list(PIPELINE) + sorted(s for s in view.stages if s not in PIPELINE)
    for s in names:
        info = view.info(s)
        state = view.stage_state(s)
        cls = _state_cls(state)
        if s in PIPELINE and view.out_of_date(s):
            state, cls = f"{state} (out of date)", "warn"
        rows.append([s, Raw(f'<span class="{cls}">{esc(state)}</span>'), info.get("finished", "–"),
                     fmt(info.get("seconds"), ",.1f"), info.get("config_hash", "–")])
    return table(["stage", "state", "finished", "seconds", "config hash"], rows, numeric_from=3)


def _state_cls(state: str) -> str:
    return "ok" if state.startswith("complete") else "warn" if state == "incomplete" else "sub"


def appendix_section(view: RunView) -> Raw:
    cfg = view.manifest.get("config")
    pk = view.manifest.get("packages") or {}
    parts: list[str] = [Raw("<h3>Stages</h3>"), stages_table(view)]
    if pk:
        parts += [Raw("<h3>Packages</h3>"), kv_table(sorted(pk.items()))]
    if isinstance(cfg, dict):
        parts.append(details("full run config (JSON)", pre(json.dumps(cfg, indent=2, ensure_ascii=False, default=str))))
    else:
        parts.append(para("The manifest holds no run config (stages were run one by one); each section shows its "
                          "stage's own settings.", "sub"))
    return section("run", "Run details", parts)
