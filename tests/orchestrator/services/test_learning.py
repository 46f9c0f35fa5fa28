"""The router learns from its traffic: a competition changes the stored evidence and the next
decision (and a restart keeps it), feedback moves the answering experts' evidence once, and a
new expert is explored before it is recruited."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from orchestrator.api.app import create_app
from orchestrator.container import SkillRoute
from orchestrator.domain import Ask, NoExperts, QueryBudget
from orchestrator.routing.knn_router import KnnRouter
from orchestrator.routing.learning import Lesson
from orchestrator.settings import LearningSettings, Settings
from orchestrator.store.models import LessonRow
from orchestrator.store.repositories.experts import ExpertRepository
from orchestrator.store.repositories.queries import decision_of
from skills.embedder import Embedder
from tests.orchestrator.conftest import mock_expert, mock_or_real, quiet_settings, small_pool

QUESTION = "Which gas do plants absorb for photosynthesis?\nA) Oxygen\nB) Carbon dioxide\nC) Nitrogen\nD) Helium"
EXPERTS = [mock_expert("alpha", "m1", "math persona"), mock_expert("beta", "m1", "law persona"),
           mock_expert("gamma", "m2")]


def service(data: Path, embedder: Embedder, rate: float = 1.0, explore: float | None = None,
            consensus: bool = True) -> SkillRoute:
    learning = LearningSettings(competition_rate=rate, explore_rate=rate if explore is None else explore,
                                per_minute=1000, consensus_teaches=consensus)
    pool = small_pool(EXPERTS).model_copy(update={"router": "knn"})
    return SkillRoute(Settings(data_dir=data, learning=learning), pool, factory=mock_or_real, embedder=embedder)


@pytest.fixture
def competing(tmp_path: Path, embedder: Embedder) -> Iterator[tuple[SkillRoute, TestClient]]:
    c = service(tmp_path, embedder)
    with TestClient(create_app(c, owns_container=True)) as client:
        yield c, client


def lessons(c: SkillRoute) -> int:
    with c.db.session() as s:
        return s.scalar(select(func.count()).select_from(LessonRow)) or 0


def estimates(client: TestClient) -> dict[str, float]:
    r = client.post("/v1/routes", json={"query": QUESTION, "k": 1, "seed": 1})
    assert r.status_code == 200, r.text
    return {e["name"]: e["suitability"] for e in r.json()["experts"]}


def test_a_competition_teaches_the_router_and_a_restart_keeps_it(competing, tmp_path, embedder) -> None:  # type: ignore[no-untyped-def]
    c, client = competing
    before, counts = estimates(client), c.pool.evidence_counts()
    body = client.post("/v1/queries", json={"query": QUESTION, "k": 1, "seed": 1}).json()
    assert body["competition"] and sorted([*body["recruited"], *body["competitors"]]) == ["alpha", "beta", "gamma"]
    assert set(body["competition_scores"]) == {"alpha", "beta", "gamma"}
    assert {g["role"] for g in body["generations"]} == {"expert", "competitor"}
    c.queries.learned()  # answered once stored: the lesson is learned behind the window
    assert lessons(c) == 1 and all(c.pool.evidence_counts()[n] == counts[n] + 1 for n in counts)
    learned = estimates(client)
    right = {n for n, v in body["competition_scores"].items() if v == 1.0}
    assert all(learned[n] > before[n] for n in right) and all(learned[n] < before[n] for n in set(learned) - right)
    metrics = client.get("/metrics").text
    assert 'skillroute_lessons_total{source="competition"} 1.0' in metrics
    assert all(f'skillroute_expert_evidence{{expert="{n}"}} {c.pool.evidence_counts()[n]}.0' in metrics for n in counts)
    refit = KnnRouter(c.pool.snapshot.evidence)  # a start fits the router's parameters afresh, on all it stored
    client.close()
    restarted = service(tmp_path, embedder, rate=0.0)
    with TestClient(create_app(restarted, owns_container=True)):
        assert restarted.pool.evidence_counts() == c.pool.evidence_counts()  # the lesson came back from the store
        router = restarted.pool.snapshot.router
        assert isinstance(router, KnnRouter) and router.params == refit.params
        probe = np.asarray(refit.memory.emb[:3])
        assert router.estimate(probe) == pytest.approx(refit.estimate(probe))


def test_by_default_a_consensus_competition_waits_for_feedback_to_teach(tmp_path, embedder) -> None:  # type: ignore[no-untyped-def]
    c = service(tmp_path, embedder, consensus=False)
    with TestClient(create_app(c, owns_container=True)) as client:
        counts = c.pool.evidence_counts()
        body = client.post("/v1/queries", json={"query": QUESTION, "k": 1, "seed": 1}).json()
        assert body["competition"] and set(body["competition_scores"]) == {"alpha", "beta", "gamma"}
        assert lessons(c) == 0 and c.pool.evidence_counts() == counts  # scored and shown, not taught
        r = client.post(f"/v1/queries/{body['id']}/feedback", json={"answer": "B"})
        assert set(r.json()["experts"]) == {"alpha", "beta", "gamma"}  # every competitor is marked
        assert lessons(c) == 1 and all(c.pool.evidence_counts()[n] == counts[n] + 1 for n in counts)


def test_feedback_moves_the_answering_experts_once(tmp_path, embedder) -> None:  # type: ignore[no-untyped-def]
    c = SkillRoute(quiet_settings(tmp_path), small_pool(EXPERTS), factory=mock_or_real, embedder=embedder)
    with TestClient(create_app(c, owns_container=True)) as client:
        body = client.post("/v1/queries", json={"query": QUESTION, "k": 2, "mode": "topk"}).json()
        counts = c.pool.evidence_counts()
        r = client.post(f"/v1/queries/{body['id']}/feedback", json={"correct": True})
        assert r.status_code == 200 and not r.json()["replaced"], r.text
        marked = r.json()["experts"]
        assert set(marked) == set(body["recruited"])
        moved = {n: c.pool.evidence_counts()[n] - counts[n] for n in counts}
        assert moved == {n: int(n in marked) for n in counts}
        again = client.post(f"/v1/queries/{body['id']}/feedback", json={"correct": True}).json()
        assert again["replaced"] and again["experts"] == marked
        assert {n: c.pool.evidence_counts()[n] - counts[n] for n in counts} == moved  # counted once
        assert lessons(c) == 1
        wrong = client.post(f"/v1/queries/{body['id']}/feedback", json={"correct": False}).json()
        assert set(wrong["experts"]) <= set(marked) and not any(wrong["experts"].values())


def test_feedback_errors_name_the_problem_and_change_nothing(client, container) -> None:  # type: ignore[no-untyped-def]
    qid = client.post("/v1/queries", json={"query": QUESTION, "k": 1}).json()["id"]
    for body in ({}, {"correct": True, "answer": "B"}, {"correct": "maybe"}, {"answer": ""}, {"answer": " \n\t"},
                 {"verdict": "ok"}, {"correct": "yes"}, {"correct": 1}, {"correct": "false"}):  # a verdict is a bool
        r = client.post(f"/v1/queries/{qid}/feedback", json=body)
        assert r.status_code == 422 and r.json()["error"]["type"] == "invalid_request_error", body
    missing = client.post("/v1/queries/987654/feedback", json={"correct": True})
    assert missing.status_code == 404 and "987654" in missing.json()["error"]["message"]
    assert lessons(container) == 0


def test_a_new_expert_is_explored_before_it_is_recruited(tmp_path, embedder) -> None:  # type: ignore[no-untyped-def]
    c = service(tmp_path, embedder, rate=0.0, explore=1.0)  # no competitions; every query explores
    c.start()
    row = c.experts.register(mock_expert("delta", "m3"), profile=False)
    with c.db.session() as s:
        ExpertRepository(s).set_status(row.id, "profiling")  # registered, its profile not in yet
    snap = c.pool.refresh()
    assert "delta" in snap.uncertain and "delta" in snap.experts
    ask = Ask(text=QUESTION, k=3, mode="topk", seed=5)
    decision = c.pipeline.route(snap, [ask])[0]
    assert "delta" not in decision.recruited and decision.competitors == ["delta"] and not decision.competition
    budgeted = ask.model_copy(update={"budget": QueryBudget(latency_s=3600.0, energy_j=1e8)})
    assert "delta" not in c.pipeline.route(snap, [budgeted])[0].recruited  # a budget recruits no uncertain one
    c.queries.ask([ask])
    c.queries.learned()
    assert c.pool.evidence_counts()["delta"] == 1  # its explored answer was scored and learned
    with c.db.session() as s:  # every expert being profiled again: nothing may be recruited yet
        for e in ExpertRepository(s).list():
            ExpertRepository(s).set_status(e.id, "profiling")
    for each in (ask, budgeted):
        with pytest.raises(NoExperts, match="still being profiled"):
            c.pipeline.route(c.pool.refresh(), [each])
    c.close()


def test_feedback_on_an_explored_query_replaces_its_consensus_lesson(tmp_path, embedder) -> None:  # type: ignore[no-untyped-def]
    c = service(tmp_path, embedder, rate=0.0, explore=1.0)
    c.start()
    row = c.experts.register(mock_expert("delta", "m3"), profile=False)
    with c.db.session() as s:
        ExpertRepository(s).set_status(row.id, "profiling")
    c.pool.refresh()
    # k=3: the explorer is marked against the recruited experts' consensus and casts no vote in it,
    # so one recruited expert alone (k=1) is no consensus
    query = c.queries.ask([Ask(text=QUESTION, k=3, mode="topk", seed=5)])[0]
    c.queries.learned()
    counts = c.pool.evidence_counts()
    assert lessons(c) == 1 and counts["delta"] == 1  # the exploration, marked against the consensus
    verdict = c.feedback.give(query.id, answer="B")
    assert "delta" in verdict.marks and not verdict.replaced  # the explorer is marked against the truth
    with c.db.session() as s:
        assert s.scalars(select(LessonRow.source)).all() == ["feedback"]
    assert c.pool.evidence_counts() == counts  # the query counts once, with the truth's marks
    c.close()


def test_a_competitor_removed_before_its_query_runs_drops_out_and_the_query_is_answered(competing) -> None:  # type: ignore[no-untyped-def]
    c, _ = competing
    admitted = c.queries.admission.admit([Ask(text=QUESTION, k=1, seed=1)])
    competitors = admitted[0].decision.competitors
    assert admitted[0].decision.competition and competitors
    c.experts.remove(c.experts.find(competitors[0]).id)  # it leaves the pool while the query waits
    c.queries.run(admitted)
    row = c.queries.get(admitted[0].query_id)
    assert row.status == "done" and row.answer
    assert competitors[0] not in {g.expert for g in row.generations}


def test_a_competition_whose_competitors_all_left_is_none_and_gives_its_slot_back(competing) -> None:  # type: ignore[no-untyped-def]
    """It said `competition: true` with no competitor, and its slot of the per-minute cap stayed spent."""
    c, _ = competing
    policy = c.queries.pipeline.decider.policy
    admitted = c.queries.admission.admit([Ask(text=QUESTION, k=1, seed=1)])
    taken = len(policy._recent)
    for name in admitted[0].decision.competitors:
        c.experts.remove(c.experts.find(name).id)
    c.queries.run(admitted)
    row = c.queries.get(admitted[0].query_id)
    assert row.status == "done" and not decision_of(row).competition and not decision_of(row).competitors
    assert len(policy._recent) == taken - 1


def test_a_competition_lesson_arriving_after_its_query_s_feedback_teaches_nothing(tmp_path, embedder) -> None:  # type: ignore[no-untyped-def]
    """A query is stored done before its competition lesson is: feedback given in between was
    kept beside the later competition lesson, and the query counted twice, live and after a
    restart. Feedback outranks it whichever comes first."""
    c = service(tmp_path, embedder, rate=0.0)
    with TestClient(create_app(c, owns_container=True)):
        query = c.queries.ask([Ask(text=QUESTION, k=3, mode="topk", seed=1)])[0]
        c.feedback.give(query.id, answer="B")
        counts, rows = c.pool.evidence_counts(), c.pool.snapshot.evidence.learned_rows
        late = Lesson(embedder.encode([QUESTION])[0], ("x",), dict.fromkeys(counts, True), source="competition")
        assert [s.id for s in c.pool.learn([(query.id, late)])] == [None]  # not kept: /metrics does not count it either
        assert c.pool.evidence_counts() == counts and c.pool.snapshot.evidence.learned_rows == rows
        with c.db.session() as s:
            assert s.scalars(select(LessonRow.source)).all() == ["feedback"]


def test_a_competition_recovered_after_a_crash_still_teaches(tmp_path: Path, embedder: Embedder) -> None:
    """Its embedding is not stored: recovered without one, every expert answered again and the
    lesson was dropped. Recovery embeds the question as admission did."""
    c = service(tmp_path, embedder)
    c.start()
    (item,) = c.queries.admission.admit([Ask(text=QUESTION, k=1, seed=1)])  # stored accepted, then the crash
    assert item.decision.competition and item.decision.competitors and item.embedding is not None
    c.close()
    again = service(tmp_path, embedder)
    try:
        assert again.start() == 1
        again.queries.learned()
        row = again.queries.get(item.query_id)
        assert row.status == "done" and {g.role for g in row.generations} == {"expert", "competitor"}
        assert lessons(again) == 1
    finally:
        again.close()
