"""Strict sandbox mode: with DASD_STRICT_SANDBOX=1, a skipped test marked ``sandbox`` fails instead
(see sandbox_host.py). CI sets it where namespaces, per-run uids and cgroups work."""

from __future__ import annotations

import pytest
from sandbox_host import STRICT_ENV, strict


def pytest_configure(config):
    config.addinivalue_line("markers", "sandbox: a sandbox containment test; in strict mode its skips fail")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.skipped and not hasattr(rep, "wasxfail") and strict() and item.get_closest_marker("sandbox"):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.outcome = "failed"
        rep.longrepr = f"{STRICT_ENV}=1: this sandbox test may not skip here ({reason})"
