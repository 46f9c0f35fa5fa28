"""Queries, their routing decisions and the generations that answered them."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from orchestrator.domain import Answer, Ask, Decision, Outcome
from orchestrator.store.models import GenerationRow, Query, RoutingDecision


class QueryRepository:
    def __init__(self, session: Session):
        self.session = session

    def accept(self, ask: Ask, decision: Decision | None = None) -> Query:
        """Write the query (and the decision made for it) before any work, so an accepted query
        survives a crash and is asked again exactly as it was admitted."""
        row = Query(text=ask.text, k=ask.k, status="accepted", request=ask.model_dump(mode="json"))
        if decision is not None:
            row.decision = RoutingDecision(record=decision.model_dump(mode="json"))
        self.session.add(row)
        self.session.flush()
        return row

    def get(self, query_id: int) -> Query | None:
        opts = [selectinload(Query.decision), selectinload(Query.generations)]
        return self.session.get(Query, query_id, options=opts)

    def get_many(self, ids: Sequence[int]) -> list[Query]:
        """The queries with these ids, in the order given (missing ids are skipped)."""
        opts = [selectinload(Query.decision), selectinload(Query.generations)]
        rows = {q.id: q for q in self.session.scalars(select(Query).where(Query.id.in_(ids)).options(*opts))}
        return [rows[i] for i in ids if i in rows]

    def recent(self, limit: int = 50) -> Sequence[Query]:
        stmt = select(Query).order_by(Query.id.desc()).limit(limit)
        return self.session.scalars(stmt.options(selectinload(Query.decision))).all()

    def pending(self, through: int | None = None) -> Sequence[Query]:
        """Accepted, never finished queries (those with ids up to `through`, if given), oldest first."""
        stmt = select(Query).where(Query.status == "accepted").options(selectinload(Query.decision))
        if through is not None:
            stmt = stmt.where(Query.id <= through)
        return self.session.scalars(stmt.order_by(Query.id)).all()

    def pending_count(self, through: int | None = None) -> int:
        stmt = select(func.count()).select_from(Query).where(Query.status == "accepted")
        if through is not None:
            stmt = stmt.where(Query.id <= through)
        return int(self.session.scalar(stmt) or 0)

    def last_id(self) -> int:
        """The newest query's id (0 when there is none)."""
        return int(self.session.scalar(select(func.max(Query.id))) or 0)

    def finish(self, query_id: int, out: Outcome) -> None:
        """A finished query: its decision as it ran, every generation, the final answer (or,
        when no generation succeeded, its error)."""
        self.finish_many([(query_id, out)])

    def finish_many(self, finished: Sequence[tuple[int, Outcome]]) -> None:
        """`finish` for a whole batch: one read of its rows (decisions only; the generations
        are only added), so storing a batch costs a few statements, not a few per query."""
        ids = [qid for qid, _ in finished]
        stmt = select(Query).where(Query.id.in_(ids)).options(selectinload(Query.decision))
        rows = {q.id: q for q in self.session.scalars(stmt)}
        for qid, out in finished:
            if (row := rows.get(qid)) is not None:
                self._finished(row, out)

    def _finished(self, row: Query, out: Outcome) -> None:
        record = out.decision.model_dump(mode="json")
        if row.decision is None:
            row.decision = RoutingDecision(record=record)
        else:
            row.decision.record = record
        self.session.add_all(GenerationRow(query_id=row.id, **a.model_dump()) for a in out.answers)
        if out.error is not None:  # every generation failed: the query fails alone, its decision kept
            row.status, row.error, row.latency_s = "failed", out.error, out.latency_s
        else:
            row.status, row.answer, row.latency_s = "done", out.answer, out.latency_s

    def fail(self, query_id: int, error: str) -> None:
        row = self.session.get(Query, query_id)
        if row is not None:
            row.status, row.error = "failed", error


def ask_of(row: Query) -> Ask:
    """How a stored query was asked (rows from before the whole request was stored have only
    mode, seed and budget beside the text and k)."""
    return Ask.model_validate({"text": row.text, "k": row.k, **(row.request or {})})


def decision_of(row: Query) -> Decision | None:
    return Decision.model_validate(row.decision.record) if row.decision is not None else None


def answers_of(row: Query) -> list[Answer]:
    return [Answer.model_validate(g, from_attributes=True) for g in row.generations]
