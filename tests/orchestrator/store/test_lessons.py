"""Lessons: feedback outranks the competition or exploration lesson of its query, whichever
arrives first, and on PostgreSQL also when both are stored at once; a lesson keeps no marks of a
persona changed since its query was asked."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from sqlalchemy import text

from orchestrator.domain import Ask
from orchestrator.routing.learning import Lesson
from orchestrator.store.db import Database
from orchestrator.store.repositories.experts import ExpertRepository
from orchestrator.store.repositories.lessons import LessonRepository
from orchestrator.store.repositories.queries import QueryRepository
from tests.orchestrator.conftest import mock_expert


def lesson(source: str) -> Lesson:
    return Lesson(np.ones(4, dtype=np.float32), ("x",), {"e1": source == "feedback"}, source=source)


def query(db: Database) -> int:
    with db.session() as s:
        return QueryRepository(s).accept(Ask(text="What is 2+2?")).id


def sources(db: Database, qid: int) -> list[str]:
    with db.session() as s:
        return sorted(r.source for r in LessonRepository(s).for_query(qid))


@pytest.mark.parametrize("source", ["competition", "explore"])
def test_a_consensus_lesson_stored_after_its_query_s_feedback_is_not_kept(db: Database, source: str) -> None:
    """Feedback can land between a query being stored done and its competition lesson being
    stored: that lesson came second and was kept beside the feedback, so the query counted twice."""
    qid = query(db)
    with db.session() as s:
        LessonRepository(s).store(lesson("feedback"), qid)
    with db.session() as s:
        assert LessonRepository(s).store(lesson(source), qid)[:2] == (None, [])
    assert sources(db, qid) == ["feedback"]


@pytest.mark.parametrize("source", ["competition", "explore"])
def test_a_lesson_stored_after_a_persona_change_leaves_out_that_expert_s_marks(db: Database, source: str) -> None:
    """A lagging learner stores the lesson after the change, above the expert's stale_lessons
    cutoff: the old persona's mark counted for the new one. It judged the old persona's answer."""
    with db.session() as s:
        e1 = ExpertRepository(s).add(mock_expert("e1", "m1", "math persona")).id
        ExpertRepository(s).add(mock_expert("e2", "m1"))
    qid = query(db)
    with db.session() as s:
        ExpertRepository(s).set_spec(e1, mock_expert("e1", "m1", "another persona"))
    both = Lesson(np.ones(4, dtype=np.float32), ("x",), {"e1": True, "e2": False}, {"e1": "A", "e2": "B"}, source)
    with db.session() as s:
        stored = LessonRepository(s).store(both, qid)
    with db.session() as s:
        (row,) = LessonRepository(s).for_query(qid)
    assert row.marks == {"e2": False} and row.choices == {"e2": "B"}
    assert stored.lesson.marks == row.marks and stored.lesson.choices == row.choices  # what the live pool learns


@pytest.mark.parametrize("first", ["feedback", "competition"])
def test_feedback_and_a_competition_lesson_stored_at_once_leave_the_feedback_alone(db: Database, first: str) -> None:
    """PostgreSQL: neither transaction saw the other's uncommitted row, so both were kept. The
    second now waits for the first and then decides (SQLite takes one writer at a time)."""
    if db.engine.dialect.name != "postgresql":
        pytest.skip("SQLite serialises the two writers whole")
    qid, second = query(db), "competition" if first == "feedback" else "feedback"
    errors: list[BaseException] = []

    def store_second() -> None:
        try:
            with db.session() as s:
                LessonRepository(s).store(lesson(second), qid)
        except BaseException as exc:  # noqa: BLE001 - the test reads it
            errors.append(exc)

    with db.session() as s:
        LessonRepository(s).store(lesson(first), qid)  # stored, not committed yet
        thread = threading.Thread(target=store_second)
        thread.start()
        deadline = time.monotonic() + 30
        while thread.is_alive() and not _waiting_on_a_lock(db):  # it finishes at once where it does not wait
            assert time.monotonic() < deadline
            time.sleep(0.01)
    thread.join(30)
    assert not errors and sources(db, qid) == ["feedback"]


def _waiting_on_a_lock(db: Database) -> bool:
    with db.engine.connect() as conn:
        return bool(conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                      "AND datname = current_database()")).scalar())


def test_a_lesson_stored_in_a_session_that_then_fails_is_rolled_back_with_it(db: Database) -> None:
    """On SQLite the lesson's savepoint opened the transaction, and its release committed it: a
    batch's lessons, stored as one unit, were kept in part when a later one failed, and the live
    router (told the unit failed) never took them in."""
    qid = query(db)
    with pytest.raises(RuntimeError), db.session() as s:
        LessonRepository(s).store(lesson("feedback"), qid)
        raise RuntimeError("a later step of the unit failed")
    assert sources(db, qid) == []
