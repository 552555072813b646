"""Small HTML building blocks for the run report: escaping, tables, figures, the page shell.

Everything that comes from a run (model output, prompts, config values, file names) goes through
``esc``; the helpers here escape every cell and caption themselves, so a section never builds markup
from raw run text. The page carries a Content-Security-Policy that allows only inline CSS and
``data:`` images: even a rendering bug cannot make the browser run a script or fetch anything.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from typing import Any

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"

CSS = """
body{font:14px/1.45 -apple-system,"Segoe UI",Helvetica,Arial,sans-serif;color:#1d1d1f;margin:0;background:#fff}
main{max-width:1180px;margin:0 auto;padding:16px 28px 60px}
h1{font-size:24px;margin:10px 0 2px}h2{font-size:19px;margin:34px 0 8px;padding-top:10px;border-top:2px solid #e3e3e8}
h3{font-size:15px;margin:18px 0 6px}
.sub{color:#666;margin:0 0 12px}
nav{font-size:13px;margin:10px 0 4px}nav a{margin-right:12px;color:#0b57d0;text-decoration:none}
table{border-collapse:collapse;margin:6px 0 12px;font-size:13px}
th,td{border:1px solid #d8d8de;padding:3px 8px;vertical-align:top}
th{background:#f3f3f6;text-align:left;font-weight:600}
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.total td{font-weight:600;background:#fafafc}
figure{margin:8px 0 16px}figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#555;font-size:12.5px;max-width:1000px}
.notrun{color:#8a5a00;background:#fff6e0;border:1px solid #f0d9a0;padding:6px 10px;display:inline-block;border-radius:4px}
.error{color:#8b0000;background:#fdecec;border:1px solid #f3b5b5;padding:6px 10px;border-radius:4px}
.ok{color:#106b2a}.warn{color:#8a5a00}
pre,.resp{background:#f7f7f9;border:1px solid #e3e3e8;padding:8px;font:12px/1.4 ui-monospace,Menlo,Consolas,monospace;
white-space:pre-wrap;word-break:break-word;max-height:420px;overflow:auto}
.s-teacher{background:#c9efd1}.s-student{background:#f8c9c9}.s-shared{background:#ececf0}.s-unscored{background:#fff}
.legend span{padding:1px 6px;margin-right:8px;border:1px solid #ddd}
details{margin:8px 0}summary{cursor:pointer;color:#0b57d0}
"""


def esc(value: Any) -> str:
    """HTML-escape anything (quotes included) after ``str()``."""
    return html.escape(str(value), quote=True)


def fmt(value: Any, spec: str = "", pct: bool = False, none: str = "–") -> str:
    """A number for a table cell: ``spec`` is a format spec, ``pct`` multiplies by 100; None/NaN -> dash."""
    if value is None:
        return none
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            return none
        v = 100 * value if pct else value
        if spec:
            return format(v, spec)
        return f"{v:,}" if isinstance(v, int) else f"{v:.4g}"
    return str(value)


class Raw(str):
    """A string that is already safe markup (built by these helpers); ``table`` will not escape it."""


def cell(value: Any) -> str:
    return value if isinstance(value, Raw) else esc(value)


def table(head: Sequence[Any] | None, rows: Iterable[Sequence[Any]], numeric_from: int = 1,
          total_last: bool = False) -> Raw:
    """An HTML table; cells are escaped unless ``Raw``; columns from ``numeric_from`` are right-aligned.

    ``head`` None: no header row. ``total_last`` styles the last row as a total row.
    """
    rows = list(rows)
    out = ["<table>"]
    if head is not None:
        out += ["<thead><tr>", *(f"<th>{cell(h)}</th>" for h in head), "</tr></thead>"]
    out.append("<tbody>")
    for i, row in enumerate(rows):
        cls = ' class="total"' if total_last and i == len(rows) - 1 else ""
        out.append(f"<tr{cls}>")
        for j, v in enumerate(row):
            out.append(f'<td class="n">{cell(v)}</td>' if j >= numeric_from else f"<td>{cell(v)}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return Raw("".join(out))


def kv_table(pairs: Iterable[tuple[Any, Any]]) -> Raw:
    """A two-column key/value table."""
    return table(None, [(Raw(f"<b>{esc(k)}</b>"), v) for k, v in pairs], numeric_from=99)


def figure(data_uri: str | None, caption: str, alt: str) -> Raw:
    """An embedded PNG (a ``data:image/png;base64,`` URI from ``plots``) with an escaped caption."""
    if not data_uri:
        return Raw("")
    if not data_uri.startswith("data:image/png;base64,"):
        raise ValueError("figure() takes only data:image/png;base64 URIs")
    return Raw(f'<figure><img src="{data_uri}" alt="{esc(alt)}"><figcaption>{esc(caption)}</figcaption></figure>')


def not_run(what: str) -> Raw:
    return Raw(f'<p class="notrun">{esc(what)}</p>')


def para(text: str, cls: str = "") -> Raw:
    c = f' class="{esc(cls)}"' if cls else ""
    return Raw(f"<p{c}>{esc(text)}</p>")


def pre(text: str) -> Raw:
    return Raw(f"<pre>{esc(text)}</pre>")


def details(summary: str, body: str) -> Raw:
    return Raw(f"<details><summary>{esc(summary)}</summary>{body}</details>")


def section(anchor: str, title: str, parts: Iterable[str]) -> Raw:
    return Raw(f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{"".join(parts)}</section>')


def page(title: str, subtitle: str, nav: Sequence[tuple[str, str]], body: Iterable[str]) -> str:
    """The whole self-contained document."""
    links = "".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t in nav)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>"
        f"<h1>{esc(title)}</h1><p class=\"sub\">{esc(subtitle)}</p><nav>{links}</nav>"
        + "".join(body)
        + "</main></body></html>\n"
    )
