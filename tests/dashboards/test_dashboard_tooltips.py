"""Headless Chromium: the dashboard's tooltips show API callers' names as text, never as HTML.

Expert names, skill names and model keys reach the page from whoever registered an expert; ECharts
renders a tooltip formatter's string as HTML. The page is served by the real app, its state is a
given one (routed in the browser, tests/browser/tooltips.mjs) carrying markup in every such name.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.dashboards.test_dashboard_browser import ROOT, missing_browser, serving

HOVER = ROOT / "tests" / "browser" / "tooltips.mjs"
EXPERT, SKILL = 'expert<b class="xss">E</b>', 'skill<b class="xss">S</b>'
MODEL = 'mock:model<b class="xss">M</b>'


def hostile_state(now: float) -> dict[str, Any]:
    """A dashboard state (orchestrator/observability/dashboard.py's shape) naming markup everywhere."""
    decision = {"id": 1, "query": "q", "status": "done", "answer": "a", "error": None, "latency_s": 1.0,
                "skills": [{"skill": SKILL, "similarity": 0.9}], "experts": [{"name": EXPERT, "weight": 1.0,
                                                                            "recruited": 1}],
                "recruited": [EXPERT], "aggregator": None, "budget": None}
    return {"generated_at": now, "pool": {"experts": [{"name": EXPERT, "status": "ready", "accuracy": 0.5}],
                                          "aggregator": EXPERT},
            "heatmap": {"experts": [EXPERT], "skills": [SKILL], "matched": [SKILL], "cells": [[0, 0, 0.5]]},
            "decisions": [decision], "recruitment": {"experts": [EXPERT], "times": [now], "shares": {EXPERT: [1.0]}},
            "timeline": {"now": now, "segments": [{"worker": "cpu", "model": MODEL, "start": now - 5, "end": None}],
                         "unavailable_workers": []},
            "scheduling": {"queries_waiting": 0, "queue_depth": 0, "batches_running": 0, "batch_sizes": [1]},
            "budgets": {"queries": []},
            "learning": {"lessons": {"competition": 0, "explore": 0, "feedback": 0}, "evidence": {EXPERT: 3},
                         "exploring": [EXPERT]}}


@pytest.mark.skipif(missing_browser() is not None, reason=missing_browser() or "")
def test_tooltips_show_names_as_text_not_html(container, tmp_path: Path):
    state = tmp_path / "state.json"
    state.write_text(json.dumps(hostile_state(time.time())))
    with serving(container) as url:
        out = subprocess.run(["node", str(HOVER), f"{url}/dashboard", str(state)],
                             capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    shown = json.loads(out.stdout.strip().splitlines()[-1])
    assert shown["errors"] == [] and shown["injected"] == []
    said = {t["chart"]: t["text"] for t in shown["tips"]}  # each chart's last tooltip
    assert SKILL in said["heatmap"] and EXPERT in said["heatmap"] and MODEL in said["timeline"]
