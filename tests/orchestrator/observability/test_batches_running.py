"""The batches the window runs now (`BatchingWindow.running`): exported by /metrics as
skillroute_batches_running and shown by the dashboard beside the backlog. Batches run at once only
where they share no worker, so a reading over 1 says the workers are kept busy side by side."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from experts.mock import MockBackend
from orchestrator.api.dashboard import state as dashboard_state
from orchestrator.container import SkillRoute
from orchestrator.domain import Ask
from orchestrator.observability.metrics import Metrics
from orchestrator.services.keys import Caller
from skills.embedder import Embedder
from tests.orchestrator.conftest import mock_expert, quiet_settings, small_pool
from tests.orchestrator.observability.test_queries_waiting import WAIT_S, Gate, gauges


@pytest.fixture
def gate() -> Gate:
    return Gate()


@pytest.fixture
def service(tmp_path: Path, embedder: Embedder, gate: Gate) -> Iterator[SkillRoute]:
    c = SkillRoute(quiet_settings(tmp_path), small_pool([mock_expert("alpha", "m1")]),
                   factory=lambda spec: MockBackend(spec.key, fault=gate), embedder=embedder)
    c.bootstrap()
    yield c
    gate.opened.set()  # whatever the test asserted, the held batch goes on, so the close finds it done
    c.close()


def settled(service: SkillRoute) -> int:
    """The window's running batches once the last one has let go of its lanes (just after its rows)."""
    deadline = time.monotonic() + WAIT_S
    while (n := service.queries.window.running()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return n


def test_a_metrics_reads_the_batches_running_at_scrape_time() -> None:
    m, now = Metrics(), [3]
    m.watch_running(lambda: now[0])
    read = {f.name: f for f in text_string_to_metric_families(generate_latest(m.registry).decode())}
    family = read["skillroute_batches_running"]
    assert family.type == "gauge" and family.samples[0].value == 3 and "share no worker" in family.documentation
    now[0] = 0
    assert "skillroute_batches_running 0.0" in generate_latest(m.registry).decode()


def test_a_held_batch_is_exported_and_shown_as_running(service: SkillRoute, gate: Gate) -> None:
    assert gauges(service)["skillroute_batches_running"][0] == 0  # wired, before any batch
    held = service.queries.submit([Ask(text="HOLD: what is 2+2?", k=1, seed=1)])
    assert gate.reached.wait(WAIT_S)
    assert service.queries.window.running() == 1
    assert gauges(service)["skillroute_batches_running"][0] == 1
    assert dashboard_state(service, Caller(None))["scheduling"]["batches_running"] == 1  # the page's own route
    gate.opened.set()
    assert [q.status for q in held.result(WAIT_S)] == ["done"]
    assert settled(service) == 0
    assert gauges(service)["skillroute_batches_running"][0] == 0
    assert dashboard_state(service, Caller(None))["scheduling"]["batches_running"] == 0
