"""skillroute_queries_total counts each query once, at the final status the store kept."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import OperationalError

from orchestrator.container import SkillRoute
from orchestrator.domain import Ask
from orchestrator.store.repositories.queries import QueryRepository


def finished(container: SkillRoute) -> dict[str, float]:
    read = container.metrics.registry.get_sample_value
    return {s: read("skillroute_queries_total", {"status": s}) or 0.0 for s in ("done", "failed")}


def test_an_answer_the_store_refused_counts_failed_only(container: SkillRoute, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: QueryRepository, finished: object) -> list[object]:
        raise OperationalError("UPDATE", {}, Exception("database is locked"))

    monkeypatch.setattr(QueryRepository, "finish_many", refuse)
    [row] = container.queries.ask([Ask(text="What is 5*7?", k=2, seed=2)])
    assert row.status == "failed" and "could not be stored" in (row.error or "")
    assert finished(container) == {"done": 0.0, "failed": 1.0}


def test_a_second_answer_the_store_dropped_is_not_counted_again(container: SkillRoute) -> None:
    items, done = container.queries.start([Ask(text="What is 4*7?", k=2, seed=1)])
    done.result()
    assert container.queries.run(items) == {}  # finished already (another replica's recovery, say)
    assert finished(container) == {"done": 1.0, "failed": 0.0}


def test_failing_a_query_finished_already_counts_nothing(container: SkillRoute) -> None:
    [row] = container.queries.ask([Ask(text="What is 3*7?", k=2, seed=1)])
    container.queries._fail([row.id], "an expert this query was routed to is no longer in the pool")
    assert container.queries.get(row.id).status == "done"
    assert finished(container) == {"done": 1.0, "failed": 0.0}
