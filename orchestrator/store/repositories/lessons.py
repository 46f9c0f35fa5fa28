"""Lessons the router learned from traffic, kept so a restart keeps what it learned."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from typing import NamedTuple

import numpy as np
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, defer

from orchestrator.routing.learning import Lesson
from orchestrator.store.models import Expert, LessonRow, Query


class Stored(NamedTuple):
    """A stored lesson's id (None: not kept, its query has feedback), the earlier lessons of
    its query it replaced (id, lesson), and the lesson as kept (`_current`: what it teaches)."""

    id: int | None
    replaced: list[tuple[int, Lesson]]
    lesson: Lesson


class LessonRepository:
    def __init__(self, session: Session):
        self.session = session

    def store(self, lesson: Lesson, query_id: int | None = None) -> Stored:
        """Store a lesson; one per query and source (a repeat replaces the first). Feedback
        replaces every earlier lesson of its query: an explored or competed query's answers were
        marked against their consensus, and feedback marks the same answers against the truth,
        so the query would otherwise count twice with marks that disagree. For the same reason a
        competition or exploration lesson of a query that has feedback is not kept (feedback can
        land before it: the query is stored done first). An expert whose persona changed after
        the query was asked loses its marks (`_current`). Returns its id and the lessons it
        replaced (what the live pool takes out of its evidence).

        Two requests storing one query's lesson at once (a retried feedback) both find nothing to
        replace on PostgreSQL, and the second's insert meets the first's row: it is tried once
        more, in a savepoint, now replacing that row, instead of failing its request. Not on
        SQLite, whose writers take turns: there the savepoint would open the transaction itself
        (pysqlite begins none before it) and its release commit the lesson, whatever the rest of
        the session does after (a batch's lessons are stored as one unit)."""
        if self.session.get_bind().dialect.name == "sqlite":
            return self._replace(lesson, query_id)
        try:
            with self.session.begin_nested():
                return self._replace(lesson, query_id)
        except IntegrityError:
            with self.session.begin_nested():
                return self._replace(lesson, query_id)

    def _replace(self, lesson: Lesson, query_id: int | None) -> Stored:
        if query_id is not None:
            self._hold(query_id)
        replaced = self._delete_earlier(lesson, query_id) if query_id is not None else []
        if query_id is not None and lesson.source != "feedback" and self._has_feedback(query_id):
            return Stored(None, replaced, lesson)
        if query_id is not None:  # read after `_delete_earlier`: see `_current`
            lesson = self._current(lesson, query_id)
        row = LessonRow(query_id=query_id, source=lesson.source, skills=list(lesson.skills),
                        embedding=np.asarray(lesson.embedding, dtype="<f4").tobytes(),
                        marks=dict(lesson.marks), choices=dict(lesson.choices))
        self.session.add(row)
        self.session.flush()
        return Stored(row.id, replaced, lesson)

    def _hold(self, query_id: int) -> None:
        """PostgreSQL: lock the query's row until commit, so two lessons of one query are stored
        one after the other and the second sees the first (neither sees the other's uncommitted
        row otherwise, and feedback and a competition lesson were both kept). SQLite takes one
        writer at a time: its transaction holds the write lock from `_delete_earlier` on."""
        if self.session.get_bind().dialect.name != "sqlite":
            self.session.execute(select(Query.id).where(Query.id == query_id).with_for_update(key_share=True))

    def _current(self, lesson: Lesson, query_id: int) -> Lesson:
        """The lesson without the marks of experts whose persona changed after its query was
        asked: they judged the old persona's answers (as feedback treats them, services/feedback.py).
        A learner that lags stores it after the change, above the expert's `stale_lessons` cutoff,
        where they counted for the new persona. Read within the store's write: on SQLite a change
        commits before it (and is seen here) or after it (and its cutoff covers this lesson)."""
        asked = self.session.scalar(select(Query.created_at).where(Query.id == query_id))
        stmt = select(Expert.name, Expert.persona_changed_at).where(Expert.name.in_(list(lesson.marks)))
        changed = {n for n, at in self.session.execute(stmt) if asked is not None and at is not None and at >= asked}
        return _marked_by(lesson, [e for e in lesson.marks if e not in changed]) if changed else lesson

    def _has_feedback(self, query_id: int) -> bool:
        stmt = select(LessonRow.id).where(LessonRow.query_id == query_id, LessonRow.source == "feedback")
        return self.session.scalar(stmt.limit(1)) is not None

    def _delete_earlier(self, lesson: Lesson, query_id: int) -> list[tuple[int, Lesson]]:
        """Delete what `lesson` replaces of its query; returned as deleted, in one statement (a
        row stored meanwhile is deleted and returned too), their embeddings left unread."""
        stmt = delete(LessonRow).where(LessonRow.query_id == query_id)
        if lesson.source != "feedback":
            stmt = stmt.where(LessonRow.source == lesson.source)
        columns = (LessonRow.id, LessonRow.skills, LessonRow.marks, LessonRow.choices, LessonRow.source)
        rows = self.session.execute(stmt.returning(*columns), execution_options={"synchronize_session": False})
        return sorted((r.id, Lesson(np.zeros(0, np.float32), tuple(r.skills), {k: bool(v) for k, v in r.marks.items()},
                                    dict(r.choices), r.source)) for r in rows)

    def with_ids(self, stale: Mapping[str, int] | None = None, embedded: int | None = None
                 ) -> list[tuple[int, Lesson]]:
        """Every lesson with its id, oldest first. `stale` (expert → lesson id) leaves out an
        expert's marks in lessons up to that id: they judged answers of a persona it no longer
        has. With `embedded`, only the newest that many carry their embedding and older ones an
        empty one: the k-NN memory keeps only the newest rows and profiles read only skills and
        marks, so a start reads a bounded number of vectors however much traffic has taught."""
        cut = self._first_embedded(embedded)
        old = select(LessonRow).options(defer(LessonRow.embedding)).where(LessonRow.id < cut)
        rows = [*self.session.scalars(old.order_by(LessonRow.id)).all(),
                *self.session.scalars(select(LessonRow).where(LessonRow.id >= cut).order_by(LessonRow.id)).all()]
        lessons = [_lesson(r, with_embedding=r.id >= cut) for r in rows]
        return [(r.id, _fresh(x, r.id, stale) if stale else x) for x, r in zip(lessons, rows, strict=True)]

    def _first_embedded(self, embedded: int | None) -> int:
        """The id from which lessons are read with their embedding (0: all of them)."""
        if embedded is None:
            return 0
        newest = select(LessonRow.id).order_by(LessonRow.id.desc()).offset(max(embedded - 1, 0)).limit(1)
        return int(self.session.scalar(newest) or 0) if embedded > 0 else int(self.last_id()) + 1

    def of_other_width(self, dim: int) -> list[tuple[LessonRow, str | None]]:
        """Lessons whose embedding is not `dim` wide (made by another embedding model), each
        with its query's text when the query is kept."""
        stmt = (select(LessonRow, Query.text).outerjoin(Query, Query.id == LessonRow.query_id)
                .where(func.length(LessonRow.embedding) != 4 * dim))  # bytes: float32 rows
        return [(r, text) for r, text in self.session.execute(stmt).all()]

    def set_embedding(self, row: LessonRow, vector: np.ndarray | None) -> None:
        """Store the lesson's new embedding; None forgets the lesson (nothing to embed again)."""
        if vector is None:
            self.session.delete(row)
        else:
            row.embedding = np.asarray(vector, dtype="<f4").tobytes()

    def last_id(self) -> int:
        return int(self.session.scalar(select(func.max(LessonRow.id))) or 0)

    def counts(self) -> dict[str, int]:
        stmt = select(LessonRow.source, func.count()).group_by(LessonRow.source)
        return {source: int(n) for source, n in self.session.execute(stmt)}

    def for_query(self, query_id: int) -> Sequence[LessonRow]:
        return self.session.scalars(select(LessonRow).where(LessonRow.query_id == query_id)).all()


def _fresh(lesson: Lesson, lesson_id: int, stale: Mapping[str, int]) -> Lesson:
    return _marked_by(lesson, [e for e in lesson.marks if lesson_id > stale.get(e, 0)])


def _marked_by(lesson: Lesson, keep: Collection[str]) -> Lesson:
    """The lesson with only these experts' marks (and letters)."""
    return replace(lesson, marks={e: m for e, m in lesson.marks.items() if e in keep},
                   choices={e: c for e, c in lesson.choices.items() if e in keep})


def _lesson(r: LessonRow, with_embedding: bool = True) -> Lesson:
    embedding = np.frombuffer(r.embedding, dtype="<f4").copy() if with_embedding else np.zeros(0, np.float32)
    return Lesson(embedding, tuple(r.skills),
                  {k: bool(v) for k, v in r.marks.items()}, dict(r.choices), r.source)
