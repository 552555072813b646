"""`dasd report RUN`: one self-contained HTML page about a run (plots embedded, no network).

    from dasd.report.build import write_report
    path = write_report(Path("runs/demo"))            # -> runs/demo/report.html

Sections, in pipeline order after a summary: accuracy of every model with CIs and the protocol;
the data funnel per pool and filter rule; teacher sampling (response likelihood per temperature,
the paper's figure 3); filters; sentence types; selection (DAS scores of selected vs rejected);
training curves; mixed-policy data; evaluation tables; the `analyze` results; run details.

Pitfalls: the report reads only what is on disk, so it can be built at any time, also while a stage
runs (such sections say so). A section that cannot be drawn (e.g. a corrupt run file) shows the error
in its place and the rest of the report is still written; the problems are returned by
``render_report`` and logged by ``write_report``. Everything from the run is escaped, and the page's
Content-Security-Policy forbids scripts and any fetch: the file is safe to open and to share.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dasd.jsonl import atomic_open
from dasd.log import logger
from dasd.report import data, models
from dasd.report.html import Raw, esc, fmt, page, section
from dasd.report.view import PIPELINE, RunView
from dasd.store import RunStore

log = logger("report")

NAV = [("summary", "Summary"), ("funnel", "Funnel"), ("sample", "Sampling"), ("filter", "Filters"),
       ("sentences", "Sentence types"), ("select", "Selection"), ("train", "Training"), ("mix", "Mixed policy"),
       ("eval", "Evaluation"), ("analyze", "Analysis"), ("run", "Run details")]


@dataclass
class Report:
    """A rendered report: the HTML text and the sections that failed (``"section: error"``)."""

    html: str
    problems: list[str] = field(default_factory=list)


def _safe(problems: list[str], anchor: str, title: str, fn: Callable[[], str]) -> str:
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - one broken section must not cost the whole report
        problems.append(f"{title}: {type(e).__name__}: {e}")
        return section(anchor, title, [Raw(f'<p class="error">This section could not be built: '
                                           f"{esc(type(e).__name__)}: {esc(e)}</p>")])


def render_report(run_dir: str | Path) -> Report:
    """Build the report of ``run_dir`` in memory (raises ``DasdError`` if it is not a run directory)."""
    store = RunStore.open(run_dir)
    view = RunView(store)
    problems: list[str] = []
    scan = {}
    ev = models.EvalScan()

    def do_scan():
        nonlocal scan
        scan, read_problems = data.scan_data(view)
        if not read_problems:
            return ""
        problems.extend(read_problems)
        items = "".join(f"<li>{esc(p)}</li>" for p in read_problems)
        return section("read-data", "Unreadable run files", [Raw(f'<div class="error"><ul>{items}</ul></div>')])

    def do_eval():
        nonlocal ev
        ev = models.scan_eval(view)
        if not ev.problems:
            return ""
        problems.extend(ev.problems)
        items = "".join(f"<li>{esc(p)}</li>" for p in ev.problems)
        return section("read-eval", "Unreadable evaluation results", [Raw(f'<div class="error"><ul>{items}</ul></div>')])

    head = [_safe(problems, "read-data", "Reading samples, scores and selections", do_scan),
            _safe(problems, "read-eval", "Reading evaluation results", do_eval)]
    body = [
        *[h for h in head if h],
        _safe(problems, "summary", "Summary", lambda: models.summary_section(view, ev, _facts(view, scan))),
        _safe(problems, "funnel", "Data funnel", lambda: data.funnel_section(view, scan)),
        _safe(problems, "sample", "Teacher sampling", lambda: data.sampling_section(view, scan)),
        _safe(problems, "filter", "Filters", lambda: data.filtering_section(view)),
        _safe(problems, "sentences", "Sentence types", lambda: data.sentences_section(view, scan)),
        _safe(problems, "select", "Selection", lambda: data.selection_section(view, scan)),
        _safe(problems, "train", "Training", lambda: models.training_section(view)),
        _safe(problems, "mix", "Mixed-policy data", lambda: data.mix_section(view)),
        _safe(problems, "eval", "Evaluation", lambda: models.evaluation_section(view, ev)),
        _safe(problems, "analyze", "Analysis", lambda: models.analysis_section(view)),
        _safe(problems, "run", "Run details", lambda: models.appendix_section(view)),
    ]
    created = view.manifest.get("created", "?")
    subtitle = (f"run directory {view.root.resolve()} · created {created} · report generated "
                f"{time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime())} · dasd "
                f"{(view.manifest.get('packages') or {}).get('dasd', '?')}")
    return Report(page(f"DASD run report: {view.root.resolve().name}", subtitle, NAV, body), problems)


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    """Write the report of ``run_dir`` to ``out`` (default ``RUN/report.html``) atomically; return its path.

    Problems with single sections are logged as warnings (the report is written anyway).
    """
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "report.html"
    t0 = time.monotonic()
    rep = render_report(run_dir)
    with atomic_open(out) as fh:
        fh.write(rep.html)
    for p in rep.problems:
        log.warning(f"section not built: {p}")
    log.info(f"{out} ({len(rep.html.encode()) / 1e6:.1f} MB, {time.monotonic() - t0:.1f}s)")
    return out


def _facts(view: RunView, scan: dict) -> list[tuple[str, str]]:
    """Headline counts: models, prompts, responses, kept, selected, mixed, training stages."""
    cfg = view.manifest.get("config") or {}
    out: list[tuple[str, str]] = []
    teacher = (cfg.get("teacher") or {}).get("model") or ((view.info("sample").get("config") or {}).get("teacher") or {}).get("model")
    student = (cfg.get("student") or {}).get("model") or ((view.info("score").get("config") or {}).get("student") or {}).get("model")
    if teacher:
        out.append(("teacher", teacher))
    if student:
        out.append(("student (base)", student))
    prompts = set().union(*(ps.prompts for ps in scan.values())) if scan else set()
    if prompts:
        out.append(("prompts sampled", fmt(len(prompts))))
    for p, ps in scan.items():
        bits = [f"{ps.samples:,} responses"] if ps.samples else []
        c = data.pool_counts(view, p, ps)
        if c["kept"] is not None:
            bits.append(f"{c['kept']:,} kept by filters")
        if ps.scored:
            bits.append(f"{ps.scored:,} scored")
        if c["selected"] is not None:
            bits.append(f"{c['selected']:,} selected")
        if bits:
            out.append((f"pool {p}", ", ".join(bits)))
    mix = data.mix_funnel(view)
    if mix.get("kept") is not None:
        out.append(("mixed-policy examples", f"{mix['kept']:,} of {mix.get('questions', 0):,} questions"))
    dirs = view.train_stage_dirs()
    if dirs:
        out.append(("training stages", ", ".join(d.name + ("" if view.done(d) else " (unfinished)") for d in dirs)))
    unfinished = [s for s in ("import", *PIPELINE) if view.unfinished(s) and view.info(s)]
    if unfinished:
        out.append(("interrupted (or running)", ", ".join(unfinished) + ": their sections say what is on disk so far"))
    out += [("out of date", view.stale_text(s)) for s in PIPELINE if view.out_of_date(s)]
    return out
