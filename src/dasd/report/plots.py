"""Plots of the run report, rendered with matplotlib's Agg canvas to PNG ``data:`` URIs.

Uses ``matplotlib.figure.Figure`` with ``FigureCanvasAgg`` directly (no pyplot): no global backend
switch, no display needed, no state shared between figures. Every function takes plain numbers and
returns a ``data:image/png;base64,...`` string, or ``None`` when there is nothing to draw.
Labels may come from a run (pool and model names); matplotlib draws them as text, so they need no
escaping here, but mathtext is disabled for them (a ``$`` in a name is drawn as is).
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"]
TYPE_COLORS = {"teacher": "#2ca02c", "shared": "#b0b0b8", "student": "#d62728", "unscored": "#e8e8e8", "boosted": "#9467bd"}
DPI = 100


def _fig(width: float = 10.0, height: float = 3.6, ncols: int = 1, nrows: int = 1):
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat:
        ax.grid(True, alpha=0.25)
        ax.spines[["top", "right"]].set_visible(False)
    return fig, axes


def _plain(label: object) -> str:
    """A run-provided label drawn literally (no mathtext)."""
    return str(label).replace("$", r"\$")


def to_uri(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _finite(xs: Sequence[float | None]) -> list[float]:
    return [float(x) for x in xs if x is not None and isinstance(x, (int, float)) and math.isfinite(x)]


def _bins(groups: dict[str, list[float]], bins: int, lo: float | None = None, hi: float | None = None):
    allv = [v for vs in groups.values() for v in vs]
    a = min(allv) if lo is None else lo
    b = max(allv) if hi is None else hi
    if b <= a:
        a, b = a - 0.5, b + 0.5
    return [a + (b - a) * i / bins for i in range(bins + 1)]


def hist_panels(panels: dict[str, dict[str, Sequence[float | None]]], xlabel: str, bins: int = 30,
                vlines: Sequence[tuple[float, str]] = (), lo: float | None = None, hi: float | None = None,
                density: bool = True, colors: dict[str, str] | None = None) -> str | None:
    """One histogram panel per key of ``panels``; inside a panel, one step histogram per group.

    Groups share bins within a panel; ``density`` normalises each group (different sizes compare);
    the group's mean is drawn as a dashed line and its n and mean are in the legend. ``vlines``:
    ``(x, label)`` reference lines drawn in every panel.
    """
    panels = {t: {g: _finite(v) for g, v in groups.items()} for t, groups in panels.items()}
    panels = {t: {g: v for g, v in groups.items() if v} for t, groups in panels.items()}
    panels = {t: g for t, g in panels.items() if g}
    if not panels:
        return None
    n = len(panels)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig, axes = _fig(10.0 if ncols > 1 else 8.5, 3.2 * nrows, ncols, nrows)
    for ax, (title, groups) in zip(axes.flat, panels.items()):
        edges = _bins(groups, bins, lo, hi)
        for i, (g, vs) in enumerate(groups.items()):
            color = (colors or {}).get(g, PALETTE[i % len(PALETTE)])
            mean = sum(vs) / len(vs)
            ax.hist(vs, bins=edges, density=density, histtype="stepfilled", alpha=0.25, color=color)
            ax.hist(vs, bins=edges, density=density, histtype="step", linewidth=1.6, color=color,
                    label=f"{_plain(g)} (n={len(vs)}, mean {mean:.3g})")
            ax.axvline(mean, color=color, linestyle="--", linewidth=1)
        for x, lab in vlines:
            ax.axvline(x, color="#444", linestyle=":", linewidth=1)
            ax.annotate(_plain(lab), (x, 0.98), xycoords=("data", "axes fraction"), fontsize=8, color="#444",
                        ha="left", va="top", xytext=(2, 0), textcoords="offset points")
        ax.set_title(_plain(title), fontsize=11)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("density" if density else "count")
        ax.legend(fontsize=8, loc="best")
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    return to_uri(fig)


def stacked_shares(rows: Sequence[tuple[str, dict[str, float]]], order: Sequence[str]) -> str | None:
    """Horizontal 100% bars: one bar per row label, segments in ``order`` (sentence types)."""
    rows = [(lab, sh) for lab, sh in rows if sh]
    if not rows:
        return None
    fig, axes = _fig(10.0, 0.55 * len(rows) + 1.3)
    ax = axes[0, 0]
    ax.grid(False)
    labels = [_plain(r[0]) for r in rows][::-1]
    left = [0.0] * len(rows)
    for t in order:
        vals = [100 * float(r[1].get(t) or 0.0) for r in rows][::-1]
        bars = ax.barh(labels, vals, left=left, color=TYPE_COLORS.get(t, "#999"), edgecolor="white", label=t)
        for b, v in zip(bars, vals):
            if v >= 6:
                ax.text(b.get_x() + b.get_width() / 2, b.get_y() + b.get_height() / 2, f"{v:.0f}%",
                        ha="center", va="center", fontsize=8)
        left = [a + v for a, v in zip(left, vals)]
    ax.set_xlim(0, 100)
    ax.set_xlabel("share of response tokens (%)")
    ax.legend(ncols=len(order), fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.35 if len(rows) < 4 else -0.15),
              frameon=False)
    return to_uri(fig)


def funnel_bars(pools: dict[str, list[tuple[str, int]]]) -> str | None:
    """The data funnel: per pool, one horizontal bar per step (count, and % of the first step)."""
    pools = {p: steps for p, steps in pools.items() if steps}
    if not pools:
        return None
    n = len(pools)
    steps_max = max(len(s) for s in pools.values())
    fig, axes = _fig(10.0 if n > 1 else 7.0, 0.38 * steps_max + 1.2, n, 1)
    for i, (ax, (pool, steps)) in enumerate(zip(axes.flat, pools.items())):
        ax.grid(False)
        labels = [_plain(s) for s, _ in steps][::-1]
        vals = [v for _, v in steps][::-1]
        top = max(steps[0][1], 1)
        ax.barh(labels, vals, color=PALETTE[i % len(PALETTE)], alpha=0.8)
        for y, v in enumerate(vals):
            ax.text(v, y, f" {v:,} ({100 * v / top:.0f}%)", va="center", fontsize=8)
        ax.set_xlim(0, max(vals) * 1.35 or 1)
        ax.set_title(_plain(pool), fontsize=11)
        ax.tick_params(axis="y", labelsize=8)
        if i:
            ax.set_yticklabels([])
    return to_uri(fig)


def train_curves(stages: Sequence[tuple[str, list[dict]]]) -> str | None:
    """Loss (left) and learning rate (right) against the global step, stages one after another."""
    stages = [(n, rows) for n, rows in stages if rows]
    if not stages:
        return None
    fig, axes = _fig(10.0, 3.4, 2, 1)
    ax_loss, ax_lr = axes[0, 0], axes[0, 1]
    offset = 0
    for i, (name, rows) in enumerate(stages):
        color = PALETTE[i % len(PALETTE)]
        xs = [offset + int(r.get("step", j + 1)) for j, r in enumerate(rows)]
        loss = [r.get("loss") for r in rows]
        pts = [(x, y) for x, y in zip(xs, loss) if isinstance(y, (int, float)) and math.isfinite(y)]
        if pts:
            ax_loss.plot([p[0] for p in pts], [p[1] for p in pts], color=color, linewidth=1.2, label=_plain(name))
        lr = [(x, r.get("lr")) for x, r in zip(xs, rows) if isinstance(r.get("lr"), (int, float))]
        if lr:
            ax_lr.plot([p[0] for p in lr], [p[1] for p in lr], color=color, linewidth=1.2, label=_plain(name))
        if i:
            for ax in (ax_loss, ax_lr):
                ax.axvline(offset + 0.5, color="#999", linestyle=":", linewidth=1)
        offset = xs[-1] if xs else offset
    ax_loss.set_xlabel("optimizer step (stages in order)")
    ax_loss.set_ylabel("loss (mean CE per target token)")
    ax_lr.set_xlabel("optimizer step (stages in order)")
    ax_lr.set_ylabel("learning rate")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax_loss.legend(fontsize=8)
    return to_uri(fig)


def accuracy_bars(groups: Sequence[str], models: Sequence[str],
                  values: dict[tuple[str, str], tuple[float, float | None, float | None]], ylabel: str) -> str | None:
    """Grouped bars of a score in percent with CI error bars: x = groups (benchmarks), bars = models.

    ``values[(group, model)] = (value, lo, hi)`` as fractions; a missing pair leaves a gap.
    """
    if not values:
        return None
    fig, axes = _fig(10.0 if len(groups) > 1 else 7.5, 3.6)
    ax = axes[0, 0]
    ax.grid(True, axis="y", alpha=0.25)
    ax.grid(False, axis="x")
    width = 0.8 / max(len(models), 1)
    for i, m in enumerate(models):
        xs, ys, err_lo, err_hi = [], [], [], []
        for g_i, g in enumerate(groups):
            if (g, m) not in values:
                continue
            v, lo, hi = values[(g, m)]
            xs.append(g_i - 0.4 + width * (i + 0.5))
            ys.append(100 * v)
            err_lo.append(100 * (v - lo) if lo is not None else 0.0)
            err_hi.append(100 * (hi - v) if hi is not None else 0.0)
        if not xs:
            continue
        ax.bar(xs, ys, width * 0.92, color=PALETTE[i % len(PALETTE)], label=_plain(m),
               yerr=[err_lo, err_hi], capsize=3, error_kw={"linewidth": 1})
        for x, y in zip(xs, ys):
            ax.text(x, 1, f"{y:.1f}", ha="center", va="bottom", fontsize=7, rotation=90, color="white")
    ax.set_xticks(range(len(groups)), [_plain(g) for g in groups])
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8, ncols=min(len(models), 5), loc="upper center", bbox_to_anchor=(0.5, -0.1), frameon=False)
    return to_uri(fig)


def line_panels(panels: dict[str, dict[str, tuple[Sequence[float], Sequence[float | None]]]], xlabel: str = "",
                ylabel: str = "", colors: dict[str, str] | None = None,
                xlim: tuple[float, float] | None = None) -> str | None:
    """One panel per key; in each, one line per series ``(xs, ys)`` (a None y leaves a gap).

    ``colors``: series whose name starts with a key get that colour; ``xlim``: a fixed x range.
    """
    panels = {t: s for t, s in panels.items() if s}
    if not panels:
        return None
    n = len(panels)
    ncols = min(n, 4 if n == 4 else 3)
    nrows = math.ceil(n / ncols)
    fig, axes = _fig(10.0 if ncols > 1 else 7.5, 3.0 * nrows, ncols, nrows)
    for ax, (title, series) in zip(axes.flat, panels.items()):
        for i, (name, (xs, ys)) in enumerate(series.items()):
            color = next((c for k, c in (colors or {}).items() if str(name).startswith(k)), PALETTE[i % len(PALETTE)])
            yv = [math.nan if y is None else float(y) for y in ys]
            ax.plot(list(xs), yv, color=color, linewidth=1.4, marker="." if len(xs) < 30 else None, label=_plain(name))
        ax.set_title(_plain(title), fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if xlim is not None:
            ax.set_xlim(*xlim)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    return to_uri(fig)
