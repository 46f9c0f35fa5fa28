"""/health, /metrics and the dashboard's state while one worker cannot answer (its actor lost,
its node gone): each still answers 200, names that worker unavailable and shows the others.
The unreachable worker is a stand-in here; tests/orchestrator/serving/test_worker_faults.py
drives the same reads through real Ray actors that are absent or dead."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from experts.backend import BackendError
from experts.types import BaseModelSpec, ExpertPlacement, ExpertSpec
from orchestrator.api.app import create_app
from orchestrator.container import SkillRoute
from orchestrator.scheduling.worker import DeviceWorker
from skills.embedder import Embedder
from tests.orchestrator.conftest import mock_or_real, quiet_settings, small_pool


class Unreachable(DeviceWorker):
    """A worker whose every read fails as a lost actor's does."""

    def _gone(self) -> BackendError:
        return BackendError(f"worker {self.name} was lost mid-call (ActorDiedError)")

    def resident(self) -> set[str]:
        raise self._gone()

    def timeline(self) -> list[tuple[float, str, str]]:
        raise self._gone()

    def residency_counts(self) -> dict[str, tuple[int, int]]:
        raise self._gone()

    def shutdown(self) -> None:
        raise self._gone()


def on_cpu(name: str, base: str) -> ExpertSpec:
    return ExpertSpec(name=name, base=BaseModelSpec(kind="mock", source=base), placement=ExpertPlacement(worker="cpu"))


@pytest.fixture
def client(tmp_path: Path, embedder: Embedder) -> Iterator[TestClient]:
    workers = {"cpu": DeviceWorker("cpu", 8 * 2**30, mock_or_real), "edge": Unreachable("edge")}
    c = SkillRoute(quiet_settings(tmp_path), small_pool([on_cpu("alpha", "m1"), on_cpu("beta", "m2")]),
                   embedder=embedder, workers=workers)
    c.bootstrap()
    with TestClient(create_app(c)) as tc:
        yield tc
    c.close()


def test_health_names_an_unreachable_worker_and_shows_the_others(client: TestClient) -> None:
    assert client.post("/v1/queries", json={"query": "What is 2+2?", "k": 1}).status_code == 200
    r = client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert set(body["workers"]) == {"cpu"} and body["resident_models"] == body["workers"]["cpu"] != []
    assert "lost mid-call" in body["unavailable_workers"]["edge"]


def test_metrics_and_dashboard_answer_with_the_worker_marked_unavailable(client: TestClient) -> None:
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert 'skillroute_worker_available{worker="edge"} 0.0' in metrics.text
    assert 'skillroute_worker_available{worker="cpu"} 1.0' in metrics.text
    state = client.get("/dashboard/api/state")
    assert state.status_code == 200
    assert set(state.json()["timeline"]["unavailable_workers"]) == {"edge"}
