"""Queries, their routing decisions and the generations that answered them."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, Row, and_, bindparam, case, func, insert, or_, select, update
from sqlalchemy.orm import Session, selectinload

from orchestrator.domain import Answer, Ask, Decision, Outcome
from orchestrator.store.models import GenerationRow, Query, RoutingDecision


class QueryRepository:
    def __init__(self, session: Session):
        self.session = session

    def accept(self, ask: Ask, decision: Decision | None = None, owner: str | None = None) -> Query:
        """Write the query (and the decision made for it) before any work, so an accepted query
        survives a crash and is asked again exactly as it was admitted; `owner`: the running
        service that answers it."""
        row = self._row(ask, decision, owner)
        self.session.add(row)
        self.session.flush()
        return row

    def accept_many(self, asks: Sequence[Ask], decisions: Sequence[Decision], owner: str | None = None) -> list[int]:
        """`accept` for many queries in one flush (the inserts go as one multi-row statement
        each for queries and decisions, not one round trip per row); their ids, in order."""
        rows = [self._row(a, d, owner) for a, d in zip(asks, decisions, strict=True)]
        self.session.add_all(rows)
        self.session.flush()
        return [r.id for r in rows]

    @staticmethod
    def _row(ask: Ask, decision: Decision | None, owner: str | None) -> Query:
        row = Query(text=ask.text, k=ask.k, status="accepted", request=ask.model_dump(mode="json"), owner=owner)
        if decision is not None:
            row.decision = RoutingDecision(record=decision.model_dump(mode="json"))
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

    def pending(self, through: int | None = None, owner: str | None = None) -> Sequence[Query]:
        """Accepted, never finished queries (those with ids up to `through`, and `owner`'s, if
        given), oldest first."""
        stmt = select(Query).where(Query.status == "accepted").options(selectinload(Query.decision))
        if through is not None:
            stmt = stmt.where(Query.id <= through)
        if owner is not None:
            stmt = stmt.where(Query.owner == owner)
        return self.session.scalars(stmt.order_by(Query.id)).all()

    def claim(self, owner: str, live: Collection[str], through: int) -> None:
        """Make `owner` the owner of every accepted query up to `through` whose owner is not in
        `live` (or was never named): a start takes over what dead services left."""
        self.session.execute(update(Query).where(_orphaned(live), Query.id <= through).values(owner=owner))

    def adopt(self, owner: str, live: Collection[str], most: int) -> list[int]:
        """Take over up to `most` accepted queries whose owner is not in `live`, oldest first;
        the ids taken. The UPDATE checks the owner again, so of two services adopting at once
        each query goes to one (the other sees it owned by a live service)."""
        ids = list(self.session.scalars(select(Query.id).where(_orphaned(live)).order_by(Query.id).limit(most)))
        if not ids:
            return []
        self.session.execute(update(Query).where(Query.id.in_(ids), _orphaned(live)).values(owner=owner))
        return list(self.session.scalars(select(Query.id).where(Query.id.in_(ids), Query.owner == owner)
                                         .order_by(Query.id)))

    def release(self, owner: str, ids: Collection[int]) -> None:
        """Give up `owner`'s claim on these queries (those still accepted): no one's again."""
        self.session.execute(update(Query).where(Query.id.in_(ids), Query.owner == owner,
                                                 Query.status == "accepted").values(owner=None))

    def pending_count(self, through: int | None = None, owner: str | None = None,
                      live: Collection[str] = ()) -> int:
        """How many queries are accepted (up to `through`); with `owner`, only those it may take:
        its own, and those no service in `live` owns."""
        stmt = select(func.count()).select_from(Query).where(Query.status == "accepted")
        if through is not None:
            stmt = stmt.where(Query.id <= through)
        if owner is not None:
            stmt = stmt.where(or_(Query.owner == owner, _orphaned([*live, owner])))
        return int(self.session.scalar(stmt) or 0)

    def last_id(self) -> int:
        """The newest query's id (0 when there is none)."""
        return int(self.session.scalar(select(func.max(Query.id))) or 0)

    def finish(self, query_id: int, out: Outcome) -> None:
        """A finished query: its decision as it ran, every generation, the final answer (or,
        when no generation succeeded, its error)."""
        row = self.session.get(Query, query_id)
        if row is not None:
            self.finish_many([(query_id, ask_of(row), out)])

    def finish_many(self, finished: Sequence[tuple[int, Ask, Outcome]]) -> list[Query]:
        """`finish` for a whole batch in a fixed number of statements whatever its size (an UPDATE
        claiming the queries, a read of which decisions exist, then an executemany each to fill in
        the queries, update and insert their decisions and insert the generations). Returns each
        query as it now stands in the store, built from what was written rather than read back: a
        reply needs no second read. A query finished already (answered by another replica's
        recovery, say) is left as it is, and left out of what is returned: its first answer
        stands, with its generations, once."""
        claimed = self._claim(finished)
        kept = [(qid, ask, out, [a.model_dump() for a in out.answers]) for qid, ask, out in finished if qid in claimed]
        rows = [_finished_row(qid, claimed[qid], ask, out, answers) for qid, ask, out, answers in kept]
        if not rows:
            return []
        conn = self.session.connection()
        conn.execute(_FINISH, [{"b_id": r.id, "b_answer": r.answer, "b_reply": r.reply, "b_error": r.error,
                                "b_latency": r.latency_s} for r in rows])
        self._decide(rows)
        if generations := [{"query_id": qid, **a} for qid, _, _, answers in kept for a in answers]:
            conn.execute(insert(GenerationRow), generations)
        return rows

    def _claim(self, finished: Sequence[tuple[int, Ask, Outcome]]) -> dict[int, datetime]:
        """Mark those of these queries still accepted done (or failed, where every generation
        failed) in one conditional UPDATE; the ids it changed, with their creation times. The
        check and the write are one statement so that of two replicas finishing one query only
        the first changes it: PostgreSQL re-checks a row another transaction held once that one
        ends, SQLite lets one writer in at a time and the second reads what the first committed.
        A check read apart from the write let both through on SQLite (FOR UPDATE is a no-op there)."""
        failed = [qid for qid, _, out in finished if out.error is not None]
        stmt = (update(Query).where(Query.id.in_([qid for qid, _, _ in finished]), Query.status == "accepted")
                .values(status=case((Query.id.in_(failed), "failed"), else_="done"))
                .returning(Query.id, Query.created_at))
        return {qid: created for qid, created in self.session.connection().execute(stmt)}

    def _decide(self, rows: Sequence[Query]) -> None:
        """Store each finished query's decision as it ran: replace the one stored at admission,
        or insert it for rows from before decisions were stored at admission."""
        records = {r.id: r.decision.record for r in rows if r.decision is not None}
        stored = set(self.session.scalars(select(RoutingDecision.query_id)
                                          .where(RoutingDecision.query_id.in_(list(records)))))
        conn = self.session.connection()
        if changed := [{"b_qid": qid, "b_record": rec} for qid, rec in records.items() if qid in stored]:
            conn.execute(_REDECIDE, changed)
        if new := [{"query_id": qid, "record": rec} for qid, rec in records.items() if qid not in stored]:
            conn.execute(insert(RoutingDecision), new)

    def timings(self, experts: Sequence[str], limit: int) -> list[Row[str, int, int, float]]:
        """(expert, prompt_tokens, completion_tokens, latency_s) of these experts' last `limit`
        generations together, oldest first."""
        g = GenerationRow
        stmt = select(g.expert, g.prompt_tokens, g.completion_tokens, g.latency_s).where(g.expert.in_(experts))
        return list(reversed(self.session.execute(stmt.order_by(g.id.desc()).limit(limit)).all()))

    def fail(self, query_id: int, error: str) -> bool:
        """Fail a query still accepted, saying whether it was; one finished already keeps its outcome."""
        # one conditional UPDATE, as in `_claim`: a replica finishing it meanwhile keeps its answer
        done = self.session.execute(update(Query).where(Query.id == query_id, Query.status == "accepted")
                                    .values(status="failed", error=error))
        return bool(cast(CursorResult[Any], done).rowcount)


def _orphaned(live: Collection[str]) -> ColumnElement[bool]:
    return and_(Query.status == "accepted", or_(Query.owner.is_(None), Query.owner.not_in(list(live))))


# fills in queries `_claim` changed in the same transaction (the status is set there already)
_FINISH = update(Query).where(Query.id == bindparam("b_id")).values(
    answer=bindparam("b_answer"), reply=bindparam("b_reply"), error=bindparam("b_error"),
    latency_s=bindparam("b_latency"))
_REDECIDE = update(RoutingDecision).where(RoutingDecision.query_id == bindparam("b_qid")).values(
    record=bindparam("b_record"))


def _finished_row(query_id: int, created_at: datetime, ask: Ask, out: Outcome,
                  answers: Sequence[dict[str, Any]]) -> Query:
    """The stored row of a query `finish_many` finished, as it was written (not attached to a session)."""
    failed = out.error is not None  # every generation failed: the query fails alone, its decision kept
    row = Query(id=query_id, text=ask.text, k=ask.k, request=ask.model_dump(mode="json"), created_at=created_at,
                status="failed" if failed else "done", answer=None if failed else out.answer,
                reply=None if failed else out.text,
                error=out.error, latency_s=out.latency_s)
    row.decision = RoutingDecision(query_id=query_id, record=out.decision.model_dump(mode="json"))
    row.generations = [GenerationRow(query_id=query_id, **a) for a in answers]  # `out.answers`, dumped once
    return row


def ask_of(row: Query) -> Ask:
    """How a stored query was asked (rows from before the whole request was stored have only
    mode, seed and budget beside the text and k)."""
    return Ask.model_validate({"text": row.text, "k": row.k, **(row.request or {})})


def decision_of(row: Query) -> Decision | None:
    return Decision.model_validate(row.decision.record) if row.decision is not None else None


def answers_of(row: Query) -> list[Answer]:
    return [Answer.model_validate(g, from_attributes=True) for g in row.generations]
