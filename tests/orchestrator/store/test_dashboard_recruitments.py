"""The dashboard's recruitment history, read out of the stored decision records on SQLite and on
Postgres (the JSON path into the record is SQL that differs by database), and the share panel's
numbers made of it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from orchestrator.domain import Ask, Decision
from orchestrator.observability.dashboard import recruitment_share
from orchestrator.store.db import Database
from orchestrator.store.models import RoutingDecision
from orchestrator.store.repositories.dashboard import DashboardRepository
from orchestrator.store.repositories.queries import QueryRepository

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def store(db: Database, asked: Sequence[tuple[int, list[str] | None]]) -> list[int]:
    """One query per (seconds after T0, recruited names; None: no decision), at that time."""
    with db.session() as s:
        rows = [QueryRepository(s).accept(Ask(text=f"q{i}"), None if names is None else
                                          Decision.made("symbolic", "sample", i, [], [], names, None))
                for i, (_, names) in enumerate(asked)]
        for row, (at, _) in zip(rows, asked, strict=True):
            row.created_at = T0 + timedelta(seconds=at)
        return [r.id for r in rows]


def recruitments(db: Database, **kwargs: Any) -> list[tuple[datetime, list[str]]]:
    with db.session() as s:
        return [(t, list(names)) for t, names in DashboardRepository(s).recruitments(**kwargs)]


def test_the_share_panel_counts_every_draw_of_each_routed_query(db: Database) -> None:
    """Repeats count, a query with no decision is left out, and the buckets span the queries'
    times: 40 s in 20 buckets of 2 s, so the four routed queries fall in buckets 0, 5, 10 and 19."""
    store(db, [(0, ["a", "a", "b"]), (10, ["b"]), (15, None), (20, ["c", "a"]), (40, ["a", "c"])])
    rows = recruitments(db)
    assert [(t - T0).total_seconds() for t, _ in rows] == [0, 10, 20, 40]
    assert [names for _, names in rows] == [["a", "a", "b"], ["b"], ["c", "a"], ["a", "c"]]
    share = recruitment_share(rows)
    assert share["experts"] == ["a", "b", "c"]
    assert [t - T0.timestamp() for t in share["times"]] == [0, 10, 20, 38]
    assert share["shares"] == {"a": [0.6667, 0.0, 0.5, 0.5], "b": [0.3333, 1.0, 0.0, 0.0], "c": [0.0, 0.0, 0.5, 0.5]}


def test_the_limit_keeps_the_newest_queries_and_since_the_later_ones(db: Database) -> None:
    store(db, [(0, ["a"]), (10, ["b"]), (20, ["c"])])
    assert [names for _, names in recruitments(db, limit=2)] == [["b"], ["c"]]
    assert [names for _, names in recruitments(db, since=T0 + timedelta(seconds=5))] == [["b"], ["c"]]


def test_records_that_do_not_read_as_decisions_give_no_names_and_fail_nothing(db: Database) -> None:
    """Another release's records: names stored as objects, no names, a null record, a list, a
    string for the list. Each gives the names it holds as strings, none otherwise."""
    odd: list[Any] = [{"recruited": [{"name": "alpha"}, "b"]}, {"router": "symbolic"}, None, ["x"],
                      {"recruited": "alpha"}, {"recruited": None}]
    ids = store(db, [(i, ["a"]) for i in range(len(odd) + 1)])
    with db.session() as s:
        for qid, record in zip(ids, odd, strict=False):
            s.query(RoutingDecision).filter_by(query_id=qid).update({"record": record})
    assert [names for _, names in recruitments(db)] == [["b"], [], [], [], [], [], ["a"]]
