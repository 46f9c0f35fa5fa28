"""skillroute_model_load_seconds under Ray: the models load in the worker actor's process, away
from the replica's metrics, so the actor keeps their durations and the replica reads them at
scrape time. Here the actor is its plain class (no Ray), its worker handed to the container as
a replica's RemoteWorker is."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.api.app import create_app
from orchestrator.container import SkillRoute
from orchestrator.serving.worker_actor import WorkerActor
from skills.embedder import Embedder
from tests.orchestrator.conftest import mock_expert, mock_or_real, quiet_settings, small_pool


@pytest.fixture
def actor() -> WorkerActor:
    return WorkerActor("cpu", 8 * 2**30, mock_or_real)


@pytest.fixture
def served(tmp_path: Path, embedder: Embedder, actor: WorkerActor) -> Iterator[SkillRoute]:
    experts = [mock_expert("alpha", "m1", "math persona"), mock_expert("beta", "m1"), mock_expert("gamma", "m2")]
    c = SkillRoute(quiet_settings(tmp_path), small_pool(experts), factory=mock_or_real, embedder=embedder,
                   workers={"cpu": actor.worker})
    c.bootstrap()
    yield c
    c.close()


def total(text: str, name: str) -> float:
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def test_the_actor_s_load_durations_are_exported_like_its_load_counts(served: SkillRoute, actor: WorkerActor) -> None:
    served.metrics.watch_load_times({"cpu": actor.load_seconds})
    with TestClient(create_app(served)) as client:
        actor.worker.shutdown()  # so the query loads its models again
        client.post("/v1/queries", json={"query": "What is 3*7?", "k": 3, "seed": 1})
        text = client.get("/metrics").text
    assert total(text, "skillroute_model_loads_total") > 0
    assert total(text, "skillroute_model_load_seconds_count") == total(text, "skillroute_model_loads_total")
    assert sorted(actor.load_seconds()) == sorted(actor.worker.residency_counts())
