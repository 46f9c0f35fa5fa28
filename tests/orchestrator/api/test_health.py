"""The app's start in the background (how `skillroute serve` and a KubeRay replica run it): HTTP
is served at once; profiling and the recovery of what a crash left run behind it, /health
answers throughout and /ready is 503 naming what still runs until it is done.

The mock experts wait on a gate the test opens, so "still running" is a state the test holds,
not a race it hopes to win."""

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
from orchestrator.domain import Ask
from skills.embedder import Embedder
from tests.orchestrator.conftest import mock_expert, quiet_settings, small_pool

EXPERTS = [mock_expert("alpha", "m1", "math persona"), mock_expert("beta", "m2")]


def until(condition: Callable[[], bool], within_s: float = 60.0) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)  # between polls of the condition


def gated(gate: threading.Event) -> Callable[[BaseModelSpec], MockBackend]:
    """Mock experts that write nothing until `gate` opens."""
    return lambda spec: MockBackend(spec.key, gate=lambda _request, _word: _open(gate))


def _open(gate: threading.Event) -> None:
    assert gate.wait(timeout=120), "the test never opened the gate"


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()  # a failed test must not leave generations blocked


def background_client(c: SkillRoute) -> TestClient:
    return TestClient(create_app(c, owns_container=True, background_start=True))


def test_http_is_served_while_the_pool_is_profiled_behind_it(tmp_path: Path, embedder: Embedder, gate) -> None:  # type: ignore[no-untyped-def]
    c = SkillRoute(quiet_settings(tmp_path), small_pool(EXPERTS), factory=gated(gate), embedder=embedder)
    with background_client(c) as client:
        health = client.get("/health")
        assert health.status_code == 200 and health.json()["startup"] in ("loading", "profiling")
        until(lambda: c.startup.status.phase == "profiling")
        ready = client.get("/ready")
        assert ready.status_code == 503 and "profiling experts (0/" in ready.json()["error"]["message"]
        refused = client.post("/v1/queries", json={"query": "What is 2+2?", "k": 1})
        assert refused.status_code == 503 and "profiling" in refused.json()["error"]["message"]
        assert client.get("/health").json()["experts_ready"] == 0
        gate.set()
        until(lambda: client.get("/ready").status_code == 200)
        assert client.get("/health").json() | {"workers": None, "resident_models": None} == {
            "status": "ok", "pool": c.pool_config.name, "startup": "ready", "recovering": 0, "experts_ready": 2,
            "aggregator": c.pool.snapshot.aggregator, "workers": None, "resident_models": None,
            "unavailable_workers": {}}
        answered = client.post("/v1/queries", json={"query": "What is 2+2?", "k": 1})
        assert answered.status_code == 200 and answered.json()["status"] == "done"


def test_http_is_served_while_a_crash_s_queries_are_recovered_behind_it(tmp_path: Path, embedder: Embedder,
                                                                        gate) -> None:  # type: ignore[no-untyped-def]
    first = SkillRoute(quiet_settings(tmp_path), small_pool(EXPERTS), embedder=embedder,
                       factory=lambda spec: MockBackend(spec.key))
    first.bootstrap()
    left = first.admission.admit([Ask(text=f"What is {n}*3?", k=2, mode="topk", seed=n) for n in range(5)])
    first.close()  # the process died with five queries accepted, none answered
    c = SkillRoute(quiet_settings(tmp_path), small_pool(EXPERTS), factory=gated(gate), embedder=embedder)
    with background_client(c) as client:
        health = client.get("/health").json()
        assert health["startup"] in ("loading", "recovering") and health["status"] == "ok"
        until(lambda: c.startup.status.phase == "recovering")
        ready = client.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["error"]["message"] == "recovering 5 queries left unfinished by the last run"
        assert client.get("/health").json()["recovering"] == 5
        stored = client.get(f"/v1/queries/{left[0].query_id}")
        assert stored.status_code == 200 and stored.json()["status"] == "accepted"  # readable meanwhile
        live = c.queries.submit([Ask(text="What is 9*9?", k=2, mode="topk", seed=9)])  # admitted during recovery
        gate.set()
        until(lambda: client.get("/ready").status_code == 200)
        (live_row,) = live.result(timeout=60)
    live_id = live_row.id
    rows = c.queries.get_many([a.query_id for a in left] + [live_id])
    assert [r.status for r in rows] == ["done"] * 6
    experts = [[g.expert for g in r.generations if g.role == "expert"] for r in rows]
    assert all(len(e) == 2 for e in experts), experts  # each answered once: the live one was not recovered too


def test_a_started_pool_with_nothing_left_is_ready_at_once(container: SkillRoute) -> None:
    with TestClient(create_app(container, background_start=True)) as client:
        assert container.startup.status.phase == "ready"
        assert client.get("/ready").json() == {"status": "ready", "experts_ready": 3,
                                               "aggregator": container.pool.snapshot.aggregator}


def test_a_start_that_fails_says_so_on_ready(tmp_path: Path, embedder: Embedder) -> None:
    def broken(spec: BaseModelSpec) -> MockBackend:
        raise RuntimeError("the model store is unreachable")

    c = SkillRoute(quiet_settings(tmp_path), small_pool(EXPERTS), factory=broken, embedder=embedder)
    with background_client(c) as client:
        until(lambda: c.startup.status.phase == "failed")
        ready = client.get("/ready").json()["error"]["message"]
        assert ready.startswith("start-up failed:") and "unreachable" in ready
        assert client.get("/health").status_code == 200
        assert client.post("/v1/queries", json={"query": "x", "k": 1}).status_code == 503


def test_a_pool_whose_every_expert_is_profiled_again_is_not_ready(tmp_path: Path, embedder: Embedder,
                                                                  gate: threading.Event) -> None:
    """Experts profiling are explored, never recruited: /ready said 200 (and /health counted them
    ready) while every query was a 503."""
    gate.set()
    c = SkillRoute(quiet_settings(tmp_path), small_pool(EXPERTS), factory=gated(gate), embedder=embedder)
    with background_client(c) as client:
        until(lambda: client.get("/ready").status_code == 200)
        gate.clear()  # the profiling runs the persona changes start wait from now on
        try:
            for e in client.get("/v1/experts").json():
                assert client.patch(f"/v1/experts/{e['id']}", json={"system_prompt": "a persona"}).status_code == 202
            until(lambda: c.pool.snapshot.uncertain == {"alpha", "beta"})
            ready = client.get("/ready")
            assert ready.status_code == 503, ready.text
            assert ready.json()["error"]["message"] == "no expert in the pool is ready yet (2 being profiled)"
            assert client.get("/health").json()["experts_ready"] == 0
            assert "\nskillroute_pool_experts 0.0\n" in client.get("/metrics").text  # the gauge counts alike
        finally:
            gate.set()  # else closing the app waits on the gated profiling runs
        until(lambda: client.get("/health").json()["experts_ready"] == 2)  # profiled: both ready again
        assert client.get("/ready").status_code == 200
