"""Queries, their routing decisions and the generations that answered them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from orchestrator.store.models import GenerationRow, Query, RoutingDecision


class QueryRepository:
    def __init__(self, session: Session):
        self.session = session

    def accept(self, text: str, k: int, request: dict[str, Any] | None = None) -> Query:
        """Write the query before any work, so an accepted query survives a crash."""
        row = Query(text=text, k=k, status="accepted", request=request)
        self.session.add(row)
        self.session.flush()
        return row

    def get(self, query_id: int) -> Query | None:
        opts = [selectinload(Query.decision), selectinload(Query.generations)]
        return self.session.get(Query, query_id, options=opts)

    def recent(self, limit: int = 50) -> Sequence[Query]:
        stmt = select(Query).order_by(Query.id.desc()).limit(limit)
        return self.session.scalars(stmt.options(selectinload(Query.decision))).all()

    def pending(self) -> Sequence[Query]:
        return self.session.scalars(select(Query).where(Query.status == "accepted").order_by(Query.id)).all()

    def save_decision(self, query_id: int, **fields: Any) -> None:
        self.session.add(RoutingDecision(query_id=query_id, **fields))

    def add_generations(self, query_id: int, rows: Sequence[dict[str, Any]]) -> None:
        self.session.add_all(GenerationRow(query_id=query_id, **r) for r in rows)

    def finish(self, query_id: int, answer: str, latency_s: float) -> None:
        row = self.session.get(Query, query_id)
        if row is not None:
            row.status, row.answer, row.latency_s = "done", answer, latency_s

    def fail(self, query_id: int, error: str) -> None:
        row = self.session.get(Query, query_id)
        if row is not None:
            row.status, row.error = "failed", error
