"""The dashboard's residency view: the models resident now always show, as open lanes."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from experts.mock import MockBackend
from experts.types import BaseModelSpec
from orchestrator.container import SkillRoute
from orchestrator.observability.dashboard import MAX_SEGMENTS, residency
from orchestrator.scheduling import worker as worker_module
from orchestrator.scheduling.worker import DeviceWorker

KEPT = BaseModelSpec(kind="mock", source="aggregator")  # loaded first and never evicted


def churned(loads: int) -> DeviceWorker:
    """A worker with room for two models: the kept one, and `loads` others taking turns."""
    worker = DeviceWorker("cpu", memory_budget_bytes=200 * 2**20, factory=lambda spec: MockBackend(spec.key))
    worker.ensure_loaded(KEPT)
    for i in range(loads):
        worker.ensure_loaded(BaseModelSpec(kind="mock", source=f"m{i % 3}"), protect={KEPT.key})
    return worker


def open_lanes(view: dict[str, list[dict[str, object]]]) -> set[object]:
    return {s["model"] for s in view["segments"] if s["end"] is None}


def test_more_closed_segments_than_shown_cut_the_oldest_closed_ones_not_the_resident() -> None:
    worker = churned(MAX_SEGMENTS + 5)
    view = residency({"cpu": worker.timeline()})
    assert len(view["segments"]) == MAX_SEGMENTS
    assert open_lanes(view) == worker.resident() == {KEPT.key, f"mock:m{(MAX_SEGMENTS + 4) % 3}"}
    ends = [s["end"] for s in view["segments"] if s["end"] is not None]
    assert min(ends) > worker.timeline()[0][0]  # the oldest closed ones went


def test_a_model_whose_load_left_the_timeline_shows_open_from_the_oldest_event_kept(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_module, "TIMELINE_EVENTS", 10)
    worker = churned(20)
    assert ("load", KEPT.key) not in [e[1:] for e in worker.timeline()]  # aged out
    [kept] = [s for s in residency({"cpu": worker.timeline()}, {"cpu": worker.resident()})["segments"]
              if s["model"] == KEPT.key]
    assert kept["end"] is None and kept["start"] == worker.timeline()[0][0]


def test_the_dashboard_state_shows_every_resident_model(container: SkillRoute, client: TestClient,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    client.post("/v1/queries", json={"query": "What is 3*7?", "k": 3, "seed": 1})
    worker = container.fleet[container.fleet.default]
    monkeypatch.setattr(worker, "events", type(worker.events)(maxlen=10))  # every load aged out
    timeline = client.get("/dashboard/api/state").json()["timeline"]
    assert open_lanes(timeline) == worker.resident() != set()
