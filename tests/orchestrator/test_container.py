"""The container's start: a restart while an expert was being profiled serves at once and
profiles it behind (the mock backend of that expert's model waits on a gate the test opens)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from experts.mock import MockBackend
from experts.types import BaseModelSpec
from orchestrator.api.app import create_app
from orchestrator.container import SkillRoute
from orchestrator.store.repositories.experts import ExpertRepository
from skills.embedder import Embedder
from tests.orchestrator.conftest import mock_expert, quiet_settings, small_pool

EXPERTS = [mock_expert("alpha", "m1", "math persona"), mock_expert("gamma", "m2")]
LATE = mock_expert("delta", "m9")  # registered over the API; the service stopped mid-profiling


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()  # a failed test must not leave generations blocked


def gated_on(key: str, gate: threading.Event) -> Callable[[BaseModelSpec], MockBackend]:
    """Mock experts; those over the base model `key` write nothing until `gate` opens."""
    def factory(spec: BaseModelSpec) -> MockBackend:
        if spec.key != key:
            return MockBackend(spec.key)
        return MockBackend(spec.key, gate=lambda _request, _word: _open(gate))
    return factory


def _open(gate: threading.Event) -> None:
    assert gate.wait(timeout=120), "the test never opened the gate"


def until(condition: Callable[[], bool], within_s: float = 60.0) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)  # between polls of the condition


def left_mid_profiling(tmp_path: Path, embedder: Embedder) -> None:
    """A data directory whose pool is profiled, and one expert the last run never finished."""
    first = SkillRoute(quiet_settings(tmp_path), small_pool(EXPERTS), factory=gated_on("", threading.Event()),
                       embedder=embedder)
    try:
        first.bootstrap()
        with first.db.session() as s:
            ExpertRepository(s).add(LATE, status="profiling")
    finally:
        first.close()


def test_a_restart_mid_profiling_serves_at_once_and_profiles_behind(tmp_path: Path, embedder: Embedder,
                                                                    gate: threading.Event) -> None:
    left_mid_profiling(tmp_path, embedder)
    c = SkillRoute(quiet_settings(tmp_path), small_pool(EXPERTS), factory=gated_on(LATE.base.key, gate),
                   embedder=embedder)
    with TestClient(create_app(c, owns_container=True, background_start=True)) as client:
        until(lambda: c.startup.status.phase in ("ready", "failed"))  # before: "profiling" until the gate
        assert c.startup.status.phase == "ready"
        routed = client.post("/v1/routes", json={"query": "What is 6*7?", "k": 2, "mode": "topk"})
        assert routed.status_code == 200, routed.text
        assert c.experts.find("delta").status == "profiling" and "delta" in c.pool.snapshot.uncertain
        gate.set()
        c.experts.queue.join()  # the same background queue a registration's profiling runs on
        assert c.experts.find("delta").status == "ready"
        assert "delta" in c.pool.snapshot.experts and "delta" not in c.pool.snapshot.uncertain
