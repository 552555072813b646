"""Report sections about the training data: funnel, sampling, filtering, sentence types, selection, mix.

Each ``*_section(view, scan)`` returns the HTML of one section (``html.section``). ``scan_data``
reads the sample, score and select outputs once (streaming: per response only a few numbers are
kept), so the sections share one pass over the run.
"""

from __future__ import annotations

import json
import math
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from dasd.errors import DasdError
from dasd.records import teacher_signal
from dasd.rules.das import DASConfig, das_summary, retype
from dasd.rules.mixing import funnel_of
from dasd.report import plots
from dasd.report.html import Raw, details, esc, figure, fmt, not_run, para, pre, section, table
from dasd.report.view import RunView, mean
from dasd.runs import MIXED_POOLS
from dasd.text.filters import RULES

TYPES = ("teacher", "shared", "student", "unscored")
MAX_DELTAS = 200_000  # sentence deltas kept per pool for the histogram (the rest are counted only)
EXCERPT_CHARS = 3000


@dataclass
class PoolScan:
    """What the report keeps of one temperature pool: a few numbers per response, in ``array``\ s
    (8 bytes a number rather than a list's ~32; DAS scores, which may be missing, stay lists)."""

    samples: int = 0
    prompts: set = field(default_factory=set)
    cut_off: int = 0
    tokens: int = 0
    lp_sum: float = 0.0
    no_logprobs: int = 0
    likelihood: array = field(default_factory=lambda: array("d"))  # exp(mean token log-prob) per response
    chars: array = field(default_factory=lambda: array("q"))
    temperature: float | None = None
    models: Counter = field(default_factory=Counter)  # teacher model names of the samples
    scored: int = 0
    shares: dict[str, array] = field(default_factory=lambda: {t: array("d") for t in TYPES})
    deltas: array = field(default_factory=lambda: array("d"))
    sentence_types: Counter = field(default_factory=Counter)
    tau: float | None = None
    unit: str = "token"  # das.unit the pool was scored with: delta per token (nats) or per character (bits)
    das: dict[str, list[float | None]] = field(default_factory=lambda: {"selected": [], "rejected": []})
    sel_shares: dict[str, dict[str, array]] = field(
        default_factory=lambda: {k: {t: array("d") for t in TYPES} for k in ("selected", "rejected")})
    example: dict | None = None


def scan_data(view: RunView) -> tuple[dict[str, PoolScan], list[str]]:
    """One streaming pass over sample, score and select outputs: ``(pools by temperature, problems)``.

    A stage whose files cannot be read (a corrupt shard) adds a problem naming file and line, keeps
    what was read before it, and the other stages are still read. A stage whose records refer to rows
    that are gone (``RunView.gone``: an out-of-date stage's) is not read: its sections say so.
    """
    pools: dict[str, PoolScan] = {}
    names = view.pools("sample", "pool") + view.pools("score", "pool") + view.pools("select", "selected")
    for p in names:
        pools.setdefault(p, PoolScan())
    problems = []
    for stage, fn in (("sample", _scan_sample), ("score", _scan_score), ("select", _scan_select)):
        if view.gone(stage):
            continue
        try:
            fn(view, pools)
        except DasdError as e:
            problems.append(f"{stage}: {e} (numbers from this stage are partial)")
    return pools, problems


def _scan_sample(view: RunView, pools: dict[str, PoolScan]) -> None:
    for p in view.pools("sample", "pool"):
        ps = pools[p]
        for r in view.read("sample", f"pool-{p}"):
            ps.samples += 1
            ps.prompts.add(r.get("prompt_id"))
            ps.cut_off += r.get("finish_reason") == "length"
            if ps.temperature is None and isinstance(r.get("temperature"), (int, float)):
                ps.temperature = float(r["temperature"])
            ps.chars.append(len(r.get("text") or ""))
            ps.models[str(r.get("model", "?"))] += 1
            lps = teacher_signal(r).get("logprobs")
            lps = [] if lps is None else lps.tolist() if hasattr(lps, "tolist") else lps
            if lps:
                s = math.fsum(lps)
                ps.tokens += len(lps)
                ps.lp_sum += s
                ps.likelihood.append(math.exp(s / len(lps)))
            else:
                ps.no_logprobs += 1


def das_settings(view: RunView) -> DASConfig | None:
    """The ``das`` settings the run's selection ranked by (select's, else score's last config): a
    response scored under earlier ones is shown typed under these, as select ranks it (``typed``)."""
    for stage in ("select", "score"):
        das = (view.info(stage).get("config") or {}).get("das")
        if isinstance(das, dict):
            try:
                return DASConfig(**das)
            except ValueError:
                return None
    return None


def typed(r: dict, das_cfg: DASConfig | None) -> tuple[list[dict], dict]:
    """A scored response's sentence rows and DAS summary under ``das_cfg`` (``rules.das.retype``, as
    select ranks); as stored when there are none, or they cannot be typed again (scored before a
    field existed)."""
    rows, das = r.get("sentences"), r.get("das") or {}
    if das_cfg is None or not isinstance(rows, list):
        return rows or [], das
    try:
        rows = retype(rows, das_cfg)
        return rows, {**das, **das_summary(rows, das_cfg)}
    except (ValueError, KeyError, TypeError):
        return r.get("sentences") or [], das


def _scan_score(view: RunView, pools: dict[str, PoolScan]) -> None:
    das_cfg = das_settings(view)
    for p in view.pools("score", "pool"):
        ps = pools[p]
        for r in view.read("score", f"pool-{p}"):
            ps.scored += 1
            sentences, das = typed(r, das_cfg)
            if ps.tau is None and isinstance(das.get("tau"), (int, float)):
                ps.tau = float(das["tau"])
                ps.unit = das.get("unit") if das.get("unit") in ("token", "char") else "token"
            for t in TYPES:
                if isinstance(das.get(f"frac_{t}"), (int, float)):
                    ps.shares[t].append(das[f"frac_{t}"])
            for s in sentences:
                ps.sentence_types[s.get("type", "?")] += 1
                if s.get("type") == "unscored" or len(ps.deltas) >= MAX_DELTAS:
                    continue
                d = s.get("delta")
                if d is None and s.get("lp_teacher") is not None and s.get("lp_student") is not None:
                    d = s["lp_teacher"] - s["lp_student"]
                if isinstance(d, (int, float)) and math.isfinite(d):
                    ps.deltas.append(d)


def _scan_select(view: RunView, pools: dict[str, PoolScan]) -> None:
    das_cfg = das_settings(view)
    for p in view.pools("select", "selected"):
        ps = pools[p]
        for kind in ("selected", "rejected"):
            for r in view.read("select", f"{kind}-{p}"):
                sentences, das = typed(r, das_cfg)
                ps.das[kind].append(das.get("score"))
                for t in TYPES:
                    if isinstance(das.get(f"frac_{t}"), (int, float)):
                        ps.sel_shares[kind][t].append(das[f"frac_{t}"])
                if kind == "selected" and sentences and isinstance(das.get("score"), (int, float)):
                    best = ps.example
                    if best is None or das["score"] > (best.get("das") or {}).get("score", -math.inf):
                        ps.example = {**{k: r.get(k) for k in ("id", "prompt_id", "text", "temperature")},
                                      "sentences": sentences, "das": das}


def _shares(lists: dict[str, list[float]]) -> dict[str, float]:
    return {t: m for t, v in lists.items() if (m := mean(v)) is not None}


# -- sections -------------------------------------------------------------------------------------
def pool_counts(view: RunView, pool: str, ps: PoolScan) -> dict[str, Any]:
    """What the stages hold of ``pool`` for the funnel: ``filter`` (filter's funnel row, None while it
    is unfinished), ``kept``, ``scored``, ``quarantined``, ``selected``, ``rejected``. From each stage's
    manifest counts when it finished; while it is unfinished (those counts are of an earlier run), what
    its outputs hold so far (``kept`` and the selected and rejected ones from disk, ``scored`` from
    ``scan_data``), and None for what it counts only when it finishes (filter's drops per rule,
    score's quarantined)."""
    def row(stage: str) -> dict | None:
        c = view.counts(stage).get(pool)
        return c if isinstance(c, dict) else None

    f, s, se = row("filter"), row("score"), row("select")
    out: dict[str, Any] = {"filter": f, "kept": f.get("out") if f else None,
                           "scored": s.get("scored") if s else None, "quarantined": s.get("rejected") if s else None,
                           "selected": ((se or {}).get("selected") or {}).get("n"),
                           "rejected": ((se or {}).get("rejected") or {}).get("n")}
    if view.unfinished("filter"):
        out["kept"] = view.count("filter", f"kept-{pool}")
    if view.unfinished("score"):
        out["scored"] = ps.scored
    if view.unfinished("select"):
        out["selected"], out["rejected"] = len(ps.das["selected"]), len(ps.das["rejected"])
    return out


def funnel_section(view: RunView, scan: dict[str, PoolScan]) -> Raw:
    """Per pool: sampled -> through each filter rule -> kept -> scored -> selected."""
    if not view.ran("sample"):
        return section("funnel", "Data funnel", [not_run("No samples yet: `dasd sample` (or `dasd import`) has not run.")])
    rules = _rule_order(view.counts("filter"))
    head = ["pool", "sampled", *(f"− {r}" for r in rules), "kept (filter)", "scored", "quarantined (score)",
            "selected", "not selected"]
    rows, chart = [], {}
    for p, ps in scan.items():
        c = pool_counts(view, p, ps)
        f = c["filter"]
        dropped = (f or {}).get("dropped") or {}
        rows.append([p, fmt(ps.samples), *(fmt(dropped.get(r, 0)) if f else "–" for r in rules),
                     fmt(c["kept"]), fmt(c["scored"]), fmt(c["quarantined"]), fmt(c["selected"]), fmt(c["rejected"])])
        steps = [("sampled", ps.samples)]
        if f:
            left = int(f.get("in", ps.samples))
            if left != ps.samples:
                steps.append(("filter input", left))
            for r in rules:
                if dropped.get(r):
                    left -= int(dropped[r])
                    steps.append((f"after {r}", left))
        if isinstance(c["kept"], int):
            steps.append(("kept by filter", c["kept"]))
        if isinstance(c["scored"], int):
            steps.append(("scored", c["scored"]))
        if isinstance(c["selected"], int):
            steps.append(("selected", c["selected"]))
        chart[p] = steps
    parts: list[str] = [
        para("Every teacher response from sampling to the training set, per temperature pool. "
             "A '−' column counts what that filter rule dropped (rules run in this order; "
             "a response is counted under the first rule that drops it)."),
        table(head, rows),
        figure(plots.funnel_bars(chart), "Responses left after each step (percent of sampled).", "data funnel"),
    ]
    for stage, what in (("sample", "dasd sample"), ("filter", "dasd filter"), ("score", "dasd score"),
                        ("select", "dasd select")):
        if not view.ran(stage):
            parts.append(not_run(f"{stage}: not run yet ({what})."))
        elif view.unfinished(stage):
            parts.append(para(view.unfinished_text(stage), "warn"))
        elif view.out_of_date(stage):
            parts.append(para(view.stale_text(stage), "warn"))
    return section("funnel", "Data funnel", parts)


def _rule_order(fc: dict) -> list[str]:
    seen: list[str] = []
    for f in fc.values():
        if isinstance(f, dict):
            for r in (f.get("dropped") or {}):
                if r not in seen:
                    seen.append(r)
    return sorted(seen, key=lambda r: (RULES.index(r) if r in RULES else len(RULES), r))


def sampling_section(view: RunView, scan: dict[str, PoolScan]) -> Raw:
    """Pool statistics and the histogram of response likelihood per temperature (paper figure 3)."""
    if not view.ran("sample"):
        return section("sample", "Teacher sampling", [not_run("Not run yet (`dasd sample`).")])
    head = ["pool", "temperature", "responses", "prompts", "cut off (length)", "teacher tokens",
            "mean log-prob / token", "mean likelihood", "mean chars", "no log-probs"]
    rows = []
    hist = {}
    for p, ps in scan.items():
        if not ps.samples:
            continue
        rows.append([p, fmt(ps.temperature), fmt(ps.samples), fmt(len(ps.prompts)), fmt(ps.cut_off), fmt(ps.tokens),
                     fmt(ps.lp_sum / ps.tokens if ps.tokens else None, ".4f"), fmt(mean(ps.likelihood), ".4f"),
                     fmt(mean(ps.chars), ",.0f"), fmt(ps.no_logprobs)])
        hist[p if ps.temperature is None else f"T={ps.temperature:g}"] = ps.likelihood
    stage = "sample" if view.info("sample") or not view.info("import") else "import"
    cfg = view.info(stage).get("config") or {}
    models = sum((ps.models for ps in scan.values()), Counter())
    teacher = ", ".join(m for m, _ in models.most_common()) or "?"
    parts: list[str] = []
    if stage == "import":
        parts.append(para(f"Teacher responses imported (`dasd import`) from {teacher}."))
    else:
        parts.append(para(f"Teacher: {teacher}. Sampling: {_sample_knobs(cfg.get('sample') or {})}."))
    parts.append(table(head, rows))
    lo, hi = _unit_range(hist)
    parts.append(figure(
        plots.hist_panels({"response likelihood by sampling temperature": hist}, "response likelihood "
                          "(geometric mean of the teacher's token probabilities)", bins=40, lo=lo, hi=hi),
        "Response likelihood under the teacher (its untempered token log-probs, recorded at sampling): the "
        "paper's figure 3. Higher temperature moves mass to lower-likelihood responses (the teacher's tail); "
        "dashed lines are means.", "histogram of response likelihood per temperature"))
    if not any(ps.likelihood for ps in scan.values()):
        parts.append(para("No teacher log-probs in these samples (imported without them): no likelihoods to plot.", "warn"))
    parts.append(_state_note(view, stage))
    return section("sample", "Teacher sampling", parts)


def _unit_range(groups: dict[str, list[float]]) -> tuple[float, float]:
    """A histogram range for values in [0, 1]: the data's range with a margin, kept inside [0, 1]."""
    vals = [v for vs in groups.values() for v in vs]
    if not vals:
        return 0.0, 1.0
    lo, hi = min(vals), max(vals)
    pad = max(0.05 * (hi - lo), 0.005)
    return max(0.0, lo - pad), min(1.0, hi + pad)


def _sample_knobs(s: dict) -> str:
    keys = ("temperatures", "k", "top_p", "max_tokens", "seed")
    return ", ".join(f"{k} {s[k]}" for k in keys if k in s) or "settings not recorded"


def filtering_section(view: RunView) -> Raw:
    """The funnel per pool and rule, and a few rejected responses of each rule."""
    if not view.ran("filter"):
        return section("filter", "Filters", [not_run("Not run yet (`dasd filter`).")])
    fc = view.counts("filter")
    unfinished = view.unfinished("filter")
    if unfinished:  # nothing counted yet: what the kept outputs hold so far
        fc = {p: {"in": None, "out": view.count("filter", f"kept-{p}"), "dropped": {}} for p in view.pools("filter", "kept")}
    rules = _rule_order(fc)
    rows = []
    tot = Counter()
    for p, f in fc.items():
        if not isinstance(f, dict):
            continue
        d = f.get("dropped") or {}
        rows.append([p, fmt(f.get("in")), *(fmt(d.get(r, 0)) for r in rules), fmt(f.get("out")),
                     fmt(f["out"] / f["in"] if f.get("in") else None, ".1f", pct=True)])
        tot["in"] += f.get("in") or 0
        tot["out"] += f.get("out") or 0
        for r in rules:
            tot[r] += d.get(r, 0)
    if len(rows) > 1:
        n_in = None if unfinished else tot["in"]
        rows.append(["total", fmt(n_in), *(fmt(tot[r]) for r in rules), fmt(tot["out"]),
                     fmt(tot["out"] / n_in if n_in else None, ".1f", pct=True)])
    parts: list[str] = [table(["pool", "in", *(f"dropped: {r}" for r in rules), "kept", "kept %"], rows,
                              total_last=len(rows) > 1)]
    cfg = view.info("filter").get("config")
    if isinstance(cfg, dict):
        parts.append(details("filter settings", _json_pre(cfg)))
    examples: dict[str, list[dict]] = {}
    for r in view.read("filter", "rejects") if "rejects" in view.outputs("filter") else []:
        lst = examples.setdefault(str(r.get("rule", "?")), [])
        if len(lst) < 3:
            lst.append(r)
    if examples:
        rows = []
        for rule, recs in sorted(examples.items()):
            for r in recs:
                text = (r.get("sample") or {}).get("text") or r.get("text") or ""
                rows.append([rule, r.get("pool", ""), r.get("reason", ""), _clip(text, 300), r.get("where", "")])
        parts.append(Raw("<h3>Examples of dropped responses (up to 3 per rule)</h3>"))
        parts.append(table(["rule", "pool", "reason", "response (start)", "where"], rows, numeric_from=99))
    parts.append(_state_note(view, "filter"))
    return section("filter", "Filters", parts)


def sentences_section(view: RunView, scan: dict[str, PoolScan]) -> Raw:
    """Sentence-type shares (all scored / selected / rejected) and the per-sentence delta histogram."""
    if not view.ran("score"):
        return section("sentences", "Sentence types (DAS scoring)", [not_run("Not run yet (`dasd score`).")])
    if view.gone("score"):
        return section("sentences", "Sentence types (DAS scoring)", [para(view.gone_text("score"), "warn")])
    rows, share_rows, deltas = [], [], {}
    tau, unit = None, "token"
    for p, ps in scan.items():
        if not ps.scored:
            continue
        if tau is None:
            tau, unit = ps.tau, ps.unit
        n_sent = sum(ps.sentence_types.values())
        rows.append([p, fmt(ps.scored), fmt(n_sent), *(fmt(ps.sentence_types.get(t, 0)) for t in TYPES),
                     *(fmt(mean(ps.shares[t]), ".1f", pct=True) for t in TYPES)])
        share_rows.append((f"{p} all scored", _shares(ps.shares)))
        for kind in ("selected", "rejected"):
            if any(ps.sel_shares[kind].values()):
                share_rows.append((f"{p} {kind}", _shares(ps.sel_shares[kind])))
        deltas[p] = ps.deltas
    parts: list[str] = [
        para("Each response is split into sentences; a sentence's log-prob under a model is the mean of that "
             "model's token log-probs inside it (each model with its own tokenizer)"
             + (" or, with das.unit: char as here, their sum per character in bits" if unit == "char" else "")
             + ". delta = teacher − student. "
             f"Teacher sentence: delta > tau; Student sentence: delta < −tau; else Shared (tau = {fmt(tau, '.3f')})."),
        table(["pool", "responses", "sentences", *(f"# {t}" for t in TYPES), *(f"{t} share %" for t in TYPES)], rows),
        figure(plots.stacked_shares(share_rows, TYPES),
               "Mean share of response tokens in each sentence type (DAS weight), for all scored responses and, "
               "after selection, the selected and the rejected ones. DAS prefers Teacher-rich, Student-poor "
               "responses.", "sentence type shares"),
    ]
    vl = [(tau, "+tau"), (-tau, "−tau")] if tau else []
    xlabel = ("delta = teacher − student log-prob per character (bits)" if unit == "char" else
              "delta = mean teacher log-prob − mean student log-prob per token (nats)")
    parts.append(figure(plots.hist_panels({"sentence delta": deltas}, xlabel, bins=50, vlines=vl),
                        "Per-sentence delta of the scored sentences; dotted lines at ±tau separate Student (left), "
                        "Shared and Teacher (right) sentences.", "histogram of sentence deltas"))
    parts.append(_state_note(view, "score"))
    return section("sentences", "Sentence types (DAS scoring)", parts)


def selection_section(view: RunView, scan: dict[str, PoolScan]) -> Raw:
    """Selected vs rejected: summary table, DAS score histograms, and the best selected response."""
    if not view.ran("select"):
        return section("select", "Selection", [not_run("Not run yet (`dasd select`).")])
    if view.gone("select"):
        return section("select", "Selection (DAS vs rejected)", [para(view.gone_text("select"), "warn")])
    sel = view.counts("select")
    cfg = view.info("select").get("config") or {}
    method = ((cfg.get("select") or {}).get("method")) or "?"
    m = (cfg.get("select") or {}).get("m")
    head = ["pool", "set", "n", "DAS score", "teacher %", "student %", "chars", "teacher log-prob/token", "accuracy"]
    if view.unfinished("select"):  # nothing counted yet: how many records its outputs hold so far
        sel = {p: {kind: {"n": len(ps.das[kind])} for kind in ("selected", "rejected")}
               for p, ps in scan.items() if ps.das["selected"] or ps.das["rejected"]}
    rows = []
    for p, c in sel.items():
        if not isinstance(c, dict):
            continue
        for kind in ("selected", "rejected"):
            r = c.get(kind) or {}
            rows.append([p, kind, fmt(r.get("n")), fmt(r.get("das_score"), ".3f"), fmt(r.get("frac_teacher"), ".1f", pct=True),
                         fmt(r.get("frac_student"), ".1f", pct=True), fmt(r.get("chars"), ",.0f"),
                         fmt(r.get("teacher_lp_per_token"), ".4f"), fmt(r.get("accuracy"), ".1f", pct=True)])
    panels = {p: {"selected": ps.das["selected"], "rejected": ps.das["rejected"]}
              for p, ps in scan.items() if ps.das["selected"] or ps.das["rejected"]}
    parts: list[str] = [
        para(f"Method: {method}, keeping {fmt(m)} response(s) per prompt and pool. Accuracy is against the prompt's "
             "reference answer where it has one."),
        table(head, rows, numeric_from=2),
        figure(plots.hist_panels(panels, "DAS score = teacher share − penalty × student share", bins=30,
                                 colors={"selected": plots.PALETTE[2], "rejected": plots.PALETTE[1]}),
               "DAS score of the selected and the rejected candidates, per pool (densities; dashed lines are means).",
               "DAS score histograms"),
    ]
    ex = next((ps.example for ps in scan.values() if ps.example), None)
    if ex:
        parts.append(Raw("<h3>The highest-scoring selected response, sentence by sentence</h3>"))
        parts.append(Raw('<p class="legend">' + "".join(f'<span class="s-{t}">{t}</span>' for t in TYPES) + "</p>"))
        das = ex.get("das") or {}
        parts.append(para(f"sample {ex.get('id')} (prompt {ex.get('prompt_id')}, T={ex.get('temperature')}): DAS score "
                          f"{fmt(das.get('score'), '.3f')}, teacher share {fmt(das.get('frac_teacher'), '.1f', pct=True)}%, "
                          f"student share {fmt(das.get('frac_student'), '.1f', pct=True)}%."))
        parts.append(colored_response(ex.get("text") or "", ex.get("sentences") or []))
    parts.append(_state_note(view, "select"))
    return section("select", "Selection (DAS vs rejected)", parts)


def colored_response(text: str, sentences: list[dict], limit: int = EXCERPT_CHARS) -> Raw:
    """The response with each sentence's span tinted by its type (escaped; cut at ``limit`` chars)."""
    out, pos = [], 0
    for s in sentences:
        a, b = int(s.get("start", 0)), int(s.get("end", 0))
        if a >= limit:
            break
        if a > pos:
            out.append(esc(text[pos:a]))
        t = s.get("type") if s.get("type") in TYPES else "unscored"
        d = s.get("delta")
        title = f' title="delta {d:.3f}"' if isinstance(d, (int, float)) else ""
        out.append(f'<span class="s-{t}"{title}>{esc(text[max(a, pos):min(b, limit)])}</span>')
        pos = max(pos, min(b, limit))
    if pos < min(len(text), limit):
        out.append(esc(text[pos:limit]))
    more = f"\n… ({len(text) - limit:,} more characters)" if len(text) > limit else ""
    return Raw(f'<div class="resp">{"".join(out)}{esc(more)}</div>')


def mix_section(view: RunView) -> Raw:
    """The mixed-policy funnel and what the kept examples look like (student prefix share)."""
    if not view.ran("mix"):
        return section("mix", "Mixed-policy data", [not_run("Not run yet (`dasd mix`).")])
    f = mix_funnel(view)
    parts: list[str] = []
    if f:
        rows = [("questions", fmt(f.get("questions")), ""),
                ("student finished (not used)", fmt(f.get("finished")), "")]
        if f.get("prompt_too_long"):
            rows.append(("question too long for the student (no rollout)", fmt(f.get("prompt_too_long")), ""))
        rows.append(("cut off", fmt(f.get("cut_off")), f"{fmt(f.get('cut_off_rate'), '.1f', pct=True)}% of questions"))
        rows += [(f"  skipped: {k}", fmt(v), "") for k, v in (f.get("skipped") or {}).items() if v]
        rows.append(("teacher continuations", fmt(f.get("continuations")), ""))
        rows += [(f"  dropped: {k}", fmt(v), "") for k, v in (f.get("dropped") or {}).items() if v]
        rows.append(("kept (mixed-policy examples)", fmt(f.get("kept")), f"{fmt(f.get('keep_rate'), '.1f', pct=True)}% of cut-offs"))
        parts.append(table(["step", "count", ""], rows, total_last=True))
    shares, n = [], 0
    for ex in view.read("mix", "examples") if "examples" in view.outputs("mix") else []:
        n += 1
        msgs = ex.get("messages") or []
        reply = msgs[-1].get("content", "") if msgs and isinstance(msgs[-1], dict) else ""
        if reply and isinstance(ex.get("prefix_chars"), int):
            shares.append(ex["prefix_chars"] / len(reply))
    parts.append(para(f"{n:,} mixed-policy training examples on disk (student prefix + teacher continuation; "
                      f"{_prefix_training(view)})."))
    parts.append(figure(plots.hist_panels({"student prefix share": {"examples": shares}}, "share of the assistant "
                                          "turn written by the student", bins=20, lo=0.0, hi=1.0, density=False),
                        "Where the student's rollouts were cut: the fraction of each kept example written by the "
                        "student (the rest is the teacher's continuation).", "prefix share histogram"))
    parts.append(_state_note(view, "mix"))
    return section("mix", "Mixed-policy data", parts)


def mix_funnel(view: RunView) -> dict:
    """The mixed-policy funnel: mix's manifest counts when it finished; while it is unfinished, that of
    the rollouts on disk so far (``rules.mixing.funnel_of``, as the stage counts at its end)."""
    if view.unfinished("mix"):
        return funnel_of(view.read("mix", "rollouts")) if "rollouts" in view.outputs("mix") else {}
    return view.counts("mix")


# -- helpers --------------------------------------------------------------------------------------
def _prefix_training(view: RunView) -> str:
    """How the training stages on mixed-policy data treat the student prefix, from the train config
    the run recorded (a stage's ``mask_prefix``, else ``train.mask_prefix``)."""
    cfg = view.info("train").get("config") or (view.manifest.get("config") or {}).get("train") or {}
    how = {}
    for s in cfg.get("stages") or []:
        if isinstance(s, dict) and s.get("data") in MIXED_POOLS:
            masked = s.get("mask_prefix") if s.get("mask_prefix") is not None else cfg.get("mask_prefix", False)
            how[s.get("name", "?")] = "prefix masked" if masked else "prefix trained on"
    if not how:
        return "no training stage uses them"
    return "; ".join(f"{name}: {words}" for name, words in how.items())


def _state_note(view: RunView, stage: str) -> Raw:
    """How ``stage`` stands under its section: interrupted, else when it finished (and, when what it
    read changed since, that it is out of date: ``RunView.stale_text``)."""
    info = view.info(stage)
    if view.unfinished(stage):
        return para(view.unfinished_text(stage), "warn")
    stale = para(view.stale_text(stage), "warn") if view.out_of_date(stage) else ""
    if info.get("seconds") is not None:
        return Raw(stale + para(f"{stage}: finished {info.get('finished', '?')} in {fmt(info.get('seconds'), ',.1f')} s; "
                                f"config hash {info.get('config_hash', '?')}.", "sub"))
    return Raw(stale)


def _clip(text: str, n: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _json_pre(obj: Any) -> Raw:
    return pre(json.dumps(obj, indent=2, ensure_ascii=False, default=str))

