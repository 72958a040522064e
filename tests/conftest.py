"""Test-wide settings: the no-skip switch used by CI.

Tests that need root, namespaces or system tools skip with a clear reason on a developer's
machine. CI runs as root with every tool installed and sets `PEERPXE_FORBID_SKIPS=1`; there a
skip means something that should have run did not, so it is reported as a failure.
"""

from __future__ import annotations

import os

import pytest

FORBID_SKIPS = os.environ.get("PEERPXE_FORBID_SKIPS") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if FORBID_SKIPS and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under PEERPXE_FORBID_SKIPS=1 (CI): {report.longrepr}"
    return None
