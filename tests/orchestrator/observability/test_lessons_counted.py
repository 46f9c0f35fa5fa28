"""Two lesson counts that disagree by design, each named for what it counts: the dashboard's
Learning panel shows the lessons the store holds (feedback on a query replaces its competition
lesson), skillroute_lessons_total counts every lesson learned, ever (a counter never goes down)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.api.app import create_app
from orchestrator.container import SkillRoute
from orchestrator.settings import LearningSettings, Settings
from skills.embedder import Embedder
from tests.orchestrator.conftest import mock_expert, mock_or_real, small_pool


@pytest.fixture
def competing(tmp_path: Path, embedder: Embedder) -> Iterator[TestClient]:
    """A service whose every query is a competition, over three experts."""
    learning = LearningSettings(competition_rate=1.0, explore_rate=0.0, consensus_teaches=True)
    experts = [mock_expert("alpha", "m1", "math persona"), mock_expert("beta", "m1", "law persona"),
               mock_expert("gamma", "m2")]
    c = SkillRoute(Settings(data_dir=tmp_path, learning=learning), small_pool(experts), factory=mock_or_real,
                   embedder=embedder)
    c.bootstrap()
    with TestClient(create_app(c)) as client:
        yield client
    c.close()


def lessons_metric(client: TestClient) -> tuple[dict[str, float], str]:
    families = text_string_to_metric_families(client.get("/metrics").text)
    [family] = [f for f in families if f.name == "skillroute_lessons"]
    return {s.labels["source"]: s.value for s in family.samples if s.name.endswith("_total")}, family.documentation


def test_feedback_replacing_a_competition_lesson_leaves_it_counted_ever_but_not_held(competing: TestClient) -> None:
    asked = competing.post("/v1/queries", json={"query": "What is 2+2?\nA) 3\nB) 4\nC) 5\nD) 6", "k": 2, "seed": 1})
    assert asked.json()["competition"] is True
    competing.app.state.skillroute.queries.learned()  # type: ignore[attr-defined]
    assert competing.post(f"/v1/queries/{asked.json()['id']}/feedback", json={"correct": True}).status_code == 200
    held = competing.get("/dashboard/api/state").json()["learning"]["lessons"]
    counted, help_text = lessons_metric(competing)
    assert held == {"competition": 0, "explore": 0, "feedback": 1}
    assert counted == {"competition": 1, "explore": 0, "feedback": 1}
    assert "ever" in help_text and "replaced" in help_text  # says it is not the lessons held
