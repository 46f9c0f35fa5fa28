"""The backlog, counted in queries as 503 overloaded counts it (`QueryService.waiting`): exported
by /metrics and shown by the dashboard, a batch job's chunks not fed to the window yet and every
query of a many-query request included. The window's depth counts submissions in its FIFO: it
read 0 while a batch job's hundreds of queries waited."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from experts.mock import MockBackend
from experts.types import GenerationRequest
from orchestrator.api.dashboard import state as dashboard_state
from orchestrator.container import SkillRoute
from orchestrator.domain import Ask
from orchestrator.observability.dashboard import DashboardService
from orchestrator.services.batches import BatchEntry
from orchestrator.services.keys import Caller
from orchestrator.settings import BatchingSettings
from skills.embedder import Embedder
from tests.orchestrator.conftest import mock_expert, quiet_settings, small_pool

WAIT_S = 30  # an event not set by then means the order under test did not happen
CHUNK = 2  # the window's batch size, so a batch job's chunks


class Gate:
    """Holds the runner on a query marked HOLD until opened, saying when it got there."""

    def __init__(self) -> None:
        self.reached, self.opened = threading.Event(), threading.Event()

    def __call__(self, request: GenerationRequest) -> str | None:
        if any("HOLD" in m.content for m in request.messages):
            self.reached.set()
            self.opened.wait(WAIT_S)
        return None


@pytest.fixture
def gate() -> Gate:
    return Gate()


@pytest.fixture
def service(tmp_path: Path, embedder: Embedder, gate: Gate) -> Iterator[SkillRoute]:
    settings = quiet_settings(tmp_path, batching=BatchingSettings(max_batch=CHUNK))
    c = SkillRoute(settings, small_pool([mock_expert("alpha", "m1")]),
                   factory=lambda spec: MockBackend(spec.key, fault=gate), embedder=embedder)
    c.bootstrap()
    yield c
    gate.opened.set()  # whatever the test asserted, the held batch goes on, so the close finds it done
    c.close()


def gauges(service: SkillRoute) -> dict[str, tuple[float, str]]:
    """Each unlabelled gauge's value and help text, as a scrape reads them."""
    text = generate_latest(service.metrics.registry).decode()
    return {f.name: (f.samples[0].value, f.documentation) for f in text_string_to_metric_families(text)
            if f.type == "gauge" and len(f.samples) == 1 and not f.samples[0].labels}


def held_backlog(service: SkillRoute, gate: Gate) -> int:
    """A batch job of three chunks, its first held running; then one request of three queries.
    The queries waiting: the job's two chunks outside the window, and the request's three in it."""
    service.batches.submit([BatchEntry(Ask(text=f"HOLD: what is {i}+1?", k=1, seed=i)) for i in range(3 * CHUNK)])
    assert gate.reached.wait(WAIT_S)
    service.queries.submit([Ask(text=f"What is {i}*3?", k=1, seed=i) for i in range(3)])
    return 2 * CHUNK + 3


def test_metrics_export_the_backlog_in_queries_beside_the_window_s_submissions(service: SkillRoute,
                                                                                gate: Gate) -> None:
    waiting = held_backlog(service, gate)
    exported = gauges(service)
    assert service.queries.waiting() == waiting == exported["skillroute_queries_waiting"][0]
    assert exported["skillroute_queue_depth"][0] == 1  # the one request: a submission, whatever its size
    assert "Submissions" in exported["skillroute_queue_depth"][1]
    assert "Queries accepted" in exported["skillroute_queries_waiting"][1]


def test_the_dashboard_shows_the_backlog_in_queries(service: SkillRoute, gate: Gate) -> None:
    waiting = held_backlog(service, gate)
    shown = dashboard_state(service, Caller(None))["scheduling"]  # the page's own route
    assert shown["queries_waiting"] == waiting and shown["queue_depth"] == 1
    q = service.queries
    alone = DashboardService(service.db, service.pool, service.fleet, q.window).state()["scheduling"]
    assert alone["queries_waiting"] == 3  # given only the window: its queries, not its one submission
