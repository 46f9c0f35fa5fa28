"""skillroute_lessons_total{source=feedback} counts the lessons the store keeps: one per query,
however the feedback arrives; feedback given again replaces the first, whatever it marks."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import select, update

from orchestrator.container import SkillRoute
from orchestrator.domain import Ask
from orchestrator.services.errors import Unprocessable
from orchestrator.services.feedback import FeedbackService, Verdict
from orchestrator.store.models import LessonRow, Query
from orchestrator.store.repositories.lessons import LessonRepository

pytestmark = pytest.mark.both_databases


def counted(c: SkillRoute) -> tuple[float | None, int]:
    with c.db.session() as s:
        kept = LessonRepository(s).counts().get("feedback", 0)
    return c.metrics.registry.get_sample_value("skillroute_lessons_total", {"source": "feedback"}), kept


def stored_answer(c: SkillRoute, query_id: int, answer: str) -> None:
    """The query as if the service had answered this (an aggregator may write anything, or nothing)."""
    with c.db.session() as s:
        s.execute(update(Query).where(Query.id == query_id).values(answer=answer))


def test_feedback_given_again_counts_one_lesson(container: SkillRoute) -> None:
    [row] = container.queries.ask([Ask(text="What is 6*7?", k=3, seed=1)])
    verdicts = [container.feedback.give(row.id, correct=True) for _ in range(3)]
    assert [v.replaced for v in verdicts] == [False, True, True] and verdicts[0].marks
    assert counted(container) == (1, 1)


def test_two_feedbacks_at_once_count_one_lesson(container: SkillRoute, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each read whether the query had feedback before either stored its own: the store kept one
    lesson, but /metrics counted two and both replies said `replaced: false`."""
    [row] = container.queries.ask([Ask(text="What is 2 + 3?", k=2, mode="topk", seed=1)])
    both_read, real = threading.Barrier(2, timeout=30), FeedbackService._read

    def read_then_wait(self: FeedbackService, query_id: int) -> Any:
        out = real(self, query_id)
        both_read.wait()
        return out

    monkeypatch.setattr(FeedbackService, "_read", read_then_wait)
    verdicts: list[Verdict] = []
    givers = [threading.Thread(target=lambda: verdicts.append(container.feedback.give(row.id, correct=True)))
              for _ in range(2)]
    for t in givers:
        t.start()
    for t in givers:
        t.join(60)
    assert sorted(v.replaced for v in verdicts) == [False, True] and counted(container) == (1, 1)


def test_feedback_that_marks_no_one_still_replaces_the_first(container: SkillRoute) -> None:
    """`correct: false` on an answer no expert gave marks no one; the first feedback's marks,
    which said the experts' letter was wrong, kept counting after the user withdrew them."""
    [row] = container.queries.ask([Ask(text="What is 6*7?\nA. 42\nB. 36\nC. 48\nD. 54", k=3, seed=1)])
    first = container.feedback.give(row.id, answer="C")
    picked = {t.split()[1] for t in (g.text for g in container.queries.get(row.id).generations) if t.split()}
    stored_answer(container, row.id, f"Answer: {next(x for x in 'ABCD' if x not in picked)}")
    second = container.feedback.give(row.id, correct=False)
    assert first.marks and second.marks == {} and second.replaced
    with container.db.session() as s:
        assert [dict(x.marks) for x in s.scalars(select(LessonRow))] == [{}]
    assert counted(container) == (1, 1)


def test_correct_on_an_empty_answer_is_refused(container: SkillRoute) -> None:
    """An empty answer was read as no gold, so `correct` graded the experts' consensus instead."""
    [row] = container.queries.ask([Ask(text="What is 6*7?\nA. 42\nB. 36\nC. 48\nD. 54", k=3, seed=1)])
    stored_answer(container, row.id, "")
    for correct in (True, False):
        with pytest.raises(Unprocessable) as refused:
            container.feedback.give(row.id, correct=correct)
        assert refused.value.param == "correct"
    assert counted(container)[1] == 0
