"""Headless Chromium against a running service: the dashboard shows the queries just made.

The server is a real uvicorn on 127.0.0.1 serving the real app over the mock-backend pool of
tests/orchestrator/conftest.py: on this 2-core CI machine the llama.cpp pool would spend minutes
profiling, and what is under test here is the page, not the models. Chromium is Debian's
(`apt-get install -y chromium`), driven by playwright-core (`npm ci --prefix tests/browser`).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from orchestrator.api.app import create_app
from orchestrator.settings import AuthSettings

ROOT = Path(__file__).resolve().parents[2]
DRIVER = ROOT / "tests" / "browser" / "drive.mjs"
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACT = ROOT / "test-artifacts" / "dashboard.png"
QUERIES = ["What is 17*23?", "Who wrote the Analects?", "Balance the equation H2 + O2 -> H2O"]
BUDGET = {"latency_ms": 3_600_000, "energy_j": 1e8}


def missing_browser() -> str | None:
    if not CHROMIUM.exists():
        return "chromium not installed: apt-get install -y chromium"
    if shutil.which("node") is None:
        return "node not installed: apt-get install -y nodejs npm"
    if not (DRIVER.parent / "node_modules" / "playwright-core").is_dir():
        return "playwright-core not installed: npm ci --prefix tests/browser"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(container) -> Iterator[str]:
    with serving(container) as url:
        yield url


@contextmanager
def serving(container) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """The app under a real uvicorn in a thread; yields its base URL."""
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(container), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


def drive(url: str, min_rows: int, key: str | None = None) -> dict[str, Any]:
    """What the page shows; with `key`, the browser answers the page's login prompt with it."""
    ARTIFACT.parent.mkdir(exist_ok=True)
    env = {**os.environ, **({"DASHBOARD_KEY": key} if key else {})}
    out = subprocess.run(["node", str(DRIVER), url, str(ARTIFACT), str(min_rows)],
                         capture_output=True, text=True, timeout=120, check=False, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    shown: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return shown


@pytest.mark.skipif(missing_browser() is not None, reason=missing_browser() or "")
def test_dashboard_shows_the_queries_just_made(server):
    with httpx.Client(base_url=server, timeout=60) as http:
        made = [http.post("/v1/queries", json={"query": q, "k": 3, "seed": i}).json() for i, q in enumerate(QUERIES)]
        made.append(http.post("/v1/queries", json={"query": "What is 6*7?", "k": 2, **BUDGET}).json())
    assert all(b["status"] == "done" for b in made)
    shown = drive(f"{server}/dashboard", len(made))
    assert shown["errors"] == []
    rows = {r["id"]: r for r in shown["rows"]}
    for body in made:
        row = rows[body["id"]]
        _, query, skills, experts, aggregator, answer, _ = row["cells"]
        assert query == body["query"] and row["recruited"] == body["recruited"]
        assert all(s["skill"] in skills for s in body["skills"])
        assert all(name in experts for name in body["recruited"])
        assert aggregator == (body["aggregator"] or "–") and answer == body["answer"]  # none for one expert
    matched = {s["skill"] for b in made for s in b["skills"]}
    assert matched <= set(shown["heatmap"]["matched"])
    texts = set(shown["heatmap"]["texts"])  # the chart's own SVG labels, not just data attributes
    assert {f"★ {s}" for s in matched} <= texts and {"alpha", "beta", "gamma"} <= texts
    assert all(n > 0 for n in shown["charts"].values()), shown["charts"]
    assert ARTIFACT.stat().st_size > 10_000
    budget = made[-1]["budget"]  # the budget panel: predicted vs measured latency and energy, as stored
    latency, energy = shown["budget"]["budget"], shown["budget"]["budget-energy"]
    assert latency["series"] == {"ids": [made[-1]["id"]], "predicted": [budget["predicted_latency_s"]],
                                 "measured": [budget["measured_latency_s"]], "budget": [3600]}
    assert energy["series"] == {"ids": [made[-1]["id"]], "predicted": [budget["predicted_energy_j"]],
                                "measured": [budget["measured_energy_j"]], "budget": [1e8]}
    assert {"predicted energy (J)", "measured energy (J)", "energy budget (J)"} <= set(energy["texts"])
    assert {"predicted latency (s)", "measured latency (s)"} <= set(latency["texts"])


@pytest.mark.skipif(missing_browser() is not None, reason=missing_browser() or "")
def test_with_client_keys_required_the_browser_signs_in_with_a_key(container):
    container.settings = container.settings.model_copy(update={"auth": AuthSettings(require_client_keys=True)})
    _, key = container.keys.create("viewer", "client")
    with serving(container) as url:
        with httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {key}"}) as http:
            made = http.post("/v1/queries", json={"query": QUERIES[0], "k": 3, "seed": 1}).json()
        shown = drive(f"{url}/dashboard", 1, key=key)
    assert shown["errors"] == [] and made["id"] in {r["id"] for r in shown["rows"]}
