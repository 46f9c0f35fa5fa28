"""Read-only queries behind the web dashboard: profiles, recent decisions, recruitment history."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Select, or_, select
from sqlalchemy.orm import Session, selectinload

from orchestrator.store.models import Expert, Query, RoutingDecision, SkillScore

S = TypeVar("S", bound=Select[Any])


class DashboardRepository:
    def __init__(self, session: Session):
        self.session = session

    def experts(self) -> Sequence[tuple[str, str, float | None]]:
        """(name, status, accuracy) of every registered expert, in registration order."""
        stmt = select(Expert.name, Expert.status, Expert.accuracy).order_by(Expert.id)
        return [(n, s, a) for n, s, a in self.session.execute(stmt)]

    def skill_scores(self) -> Sequence[tuple[str, str, float]]:
        """(expert, skill, profile score) for every ready expert."""
        stmt = (select(Expert.name, SkillScore.skill, SkillScore.score).join(SkillScore.expert)
                .where(Expert.status == "ready").order_by(Expert.id, SkillScore.skill))
        return [(e, s, v) for e, s, v in self.session.execute(stmt)]

    def recent_queries(self, limit: int, reader: int | None = None) -> Sequence[Query]:
        """The newest queries `reader` may read (`readable_by`) with their decisions, newest first."""
        stmt = readable_by(select(Query).options(selectinload(Query.decision)), reader)
        return self.session.scalars(stmt.order_by(Query.id.desc()).limit(limit)).all()

    def recruitments(self, since: datetime | None = None, limit: int = 5000,
                     reader: int | None = None) -> Sequence[tuple[datetime, list[Any]]]:
        """(query time, recruited names) of the newest routed queries `reader` may read, oldest first.

        Names stay a JSON list inside the decision record (repeats count), so the shares are
        summed in Python: JSON arrays do not aggregate the same way in SQLite and Postgres. Only
        that list is read, by a JSON path in SQL: the whole record holds every eligible expert's
        scores and budgets: 5,000 of them (100 experts) cost ~1.3 s of a ~2 s dashboard poll.
        """
        names = RoutingDecision.record["recruited"]  # NULL where the record is no object holding it
        stmt = readable_by(select(Query.created_at, names).join(RoutingDecision.query), reader)
        if since is not None:
            stmt = stmt.where(Query.created_at >= since)
        rows = self.session.execute(stmt.order_by(Query.id.desc()).limit(limit)).all()
        return [(t, _names(n)) for t, n in reversed(rows)]


def _names(recruited: object) -> list[str]:
    """The names of a stored record's `recruited`; none from one that does not read as a decision
    (another release's): one such row failed the whole dashboard, as `readable_row` avoids."""
    return [n for n in recruited if isinstance(n, str)] if isinstance(recruited, list) else []


def readable_by(stmt: S, reader: int | None) -> S:
    """Only the queries the client key `reader` may read, as `services.queries.readable` decides
    for one (None: all; a key its own and anonymous ones; 0 anonymous ones), in SQL so that a
    limit counts readable rows. The asking key is `key_id` inside the stored request."""
    if reader is None:
        return stmt
    asker = Query.request["key_id"].as_integer()
    return stmt.where(or_(asker.is_(None), asker == reader))
