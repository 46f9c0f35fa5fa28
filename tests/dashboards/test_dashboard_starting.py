"""Headless Chromium: while the service starts, the dashboard says what still runs.

Its state API is gated on the start (a 503 naming what runs: loading, profiling N/M answers,
recovering). The page said "refresh failed: HTTP 503" for the whole first profiling, the one
long wait a user opens it during; it shows the service's own words instead (tests/browser/starting.mjs)."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from orchestrator.api.errors import error_body
from tests.dashboards.test_dashboard_browser import ROOT, missing_browser, serving

STARTING = ROOT / "tests" / "browser" / "starting.mjs"


def status_line(container, body: dict[str, Any]) -> str:  # type: ignore[no-untyped-def]
    with serving(container) as url:
        out = subprocess.run(["node", str(STARTING), f"{url}/dashboard", json.dumps(body)],
                             capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    shown: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    assert shown["asked"] >= 1
    return str(shown["updated"])


@pytest.mark.skipif(missing_browser() is not None, reason=missing_browser() or "")
def test_the_page_shows_what_a_starting_service_still_runs(container) -> None:  # type: ignore[no-untyped-def]
    said = "starting: profiling experts (12/48 answers)"
    body = error_body(said, "not_ready", code="not_ready")  # as the gated route sends it
    assert status_line(container, body) == said
