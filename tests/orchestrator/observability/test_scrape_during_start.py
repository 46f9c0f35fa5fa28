"""/metrics while a start still loads the pool: a scrape reads what is there and loads nothing."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.container import SkillRoute
from orchestrator.observability.metrics import Metrics
from skills.embedder import Embedder
from tests.orchestrator.api.test_health import EXPERTS, background_client, gated, until
from tests.orchestrator.conftest import quiet_settings, small_pool


def samples(text: str) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append(s.value)
    return out


def test_a_scrape_while_the_pool_is_profiled_does_not_load_it(tmp_path: Path, embedder: Embedder) -> None:
    gate = threading.Event()  # the mock experts answer no profiling question until it opens
    c = SkillRoute(quiet_settings(tmp_path), small_pool(EXPERTS), factory=gated(gate), embedder=embedder)
    refreshes: list[str] = []
    refresh = c.pool.refresh
    c.pool.refresh = lambda: (refreshes.append(threading.current_thread().name), refresh())[1]  # type: ignore[method-assign]
    try:
        with background_client(c) as client:
            until(lambda: c.startup.status.phase == "profiling")  # the gate holds it there
            scraped = client.get("/metrics")
            assert scraped.status_code == 200 and refreshes == []  # the scrape built no snapshot
            shown = samples(scraped.text)
            assert shown["skillroute_pool_experts"] == [0.0] and "skillroute_expert_evidence" not in shown
    finally:
        gate.set()  # a failed test must not leave generations blocked


def test_an_evidence_read_that_fails_leaves_the_rest_of_the_scrape(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    metrics.watch_evidence(lambda: 1 / 0)  # type: ignore[arg-type,return-value]
    metrics.queries_finished("done", 2)
    with caplog.at_level(logging.WARNING):
        shown = samples(generate_latest(metrics.registry).decode())
    assert shown["skillroute_queries_total"] == [2.0, 0.0] and "skillroute_expert_evidence" not in shown
    assert "evidence" in caplog.text and "ZeroDivisionError" in caplog.text
