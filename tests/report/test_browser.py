"""The report in a real headless browser (Debian's `chromium`): loads clean, images decode, plots show.

Needs the `chromium` command (CI: `apt-get install -y chromium`); skipped with a reason otherwise.
Three page loads, each a real chromium process on a file:// URL:

1. the report as written, with console logging: chromium prints every console message (script
   errors, Content-Security-Policy violations, blocked fetches) as ``:CONSOLE`` lines; there must be
   none. A control page with one external image proves the check sees such violations.
2. a copy with a probe script allowed by its hash in the page's own CSP: on load it writes the count
   of decoded images (``naturalWidth > 0``) into the title, read back with ``--dump-dom``; a planted
   ``<script>`` in model output would have set the title to PWNED instead.
3. a screenshot: mostly white is wrong; the plots' colours must be there.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dasd.report.build import write_report
from report_runs import build_run

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's `chromium` on PATH (apt-get install -y chromium)")

PROBE = ("window.addEventListener('load',function(){var im=Array.prototype.slice.call(document.images);"
         "document.title='loaded '+im.filter(function(i){return i.complete&&i.naturalWidth>0;}).length+' of '+im.length;});")


def chromium(tmp: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars", "--disable-dev-shm-usage",
           f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def console_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    root = build_run(tmp / "run", n_prompts=6, k=3)
    return tmp, write_report(root)


def test_page_loads_without_console_errors(report):
    tmp, path = report
    html = path.read_text(encoding="utf-8")
    control = tmp / "control.html"
    control.write_text(html.replace("</main>", '<img src="https://example.invalid/x.png"></main>'), encoding="utf-8")
    seen = console_lines(chromium(tmp, control.as_uri(), "--dump-dom").stderr)
    assert any("Content Security Policy" in line for line in seen), "the console check sees nothing: control failed"
    run = chromium(tmp, path.as_uri(), "--dump-dom")
    assert run.returncode == 0, run.stderr[-2000:]
    assert console_lines(run.stderr) == []
    assert "Selection (DAS vs rejected)" in run.stdout  # the page was parsed and rendered


def test_every_image_decodes_and_no_planted_script_runs(report):
    tmp, path = report
    html = path.read_text(encoding="utf-8")
    digest = base64.b64encode(hashlib.sha256(PROBE.encode()).digest()).decode()
    probe = html.replace("default-src 'none';", f"default-src 'none'; script-src 'sha256-{digest}';", 1)
    probe = probe.replace("</body>", f"<script>{PROBE}</script></body>")
    page = tmp / "probe.html"
    page.write_text(probe, encoding="utf-8")
    run = chromium(tmp, page.as_uri(), "--dump-dom")
    assert console_lines(run.stderr) == []
    title = re.search(r"<title>(.*?)</title>", run.stdout).group(1)
    n = html.count('<img src="data:image/png;base64,')
    assert n >= 9
    assert title == f"loaded {n} of {n}"


def test_screenshot_shows_the_plots(report):
    tmp, path = report
    shot = tmp / "shot.png"
    run = chromium(tmp, path.as_uri(), f"--screenshot={shot}", "--window-size=1280,4000")
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    im = Image.open(shot).convert("RGB")
    assert im.size == (1280, 4000)
    px = np.asarray(im, dtype=np.int32)
    ink = float((px.sum(axis=2) < 600).mean())
    colour = int(((px.max(axis=2) - px.min(axis=2)) > 80).sum())
    # measured: the report of an empty run (text only) has ink 0.006 and 7.8K coloured pixels; this
    # full one about 0.10 and 150K
    assert ink > 0.02  # text, tables and axes
    assert colour > 30_000  # the plots' coloured bars and lines
