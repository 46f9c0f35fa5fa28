"""skillroute_lessons_total{source=feedback} counts the lessons the store keeps: one per query."""

from __future__ import annotations

from orchestrator.container import SkillRoute
from orchestrator.domain import Ask
from orchestrator.store.repositories.lessons import LessonRepository


def test_feedback_given_again_counts_one_lesson(container: SkillRoute) -> None:
    [row] = container.queries.ask([Ask(text="What is 6*7?", k=3, seed=1)])
    verdicts = [container.feedback.give(row.id, correct=True) for _ in range(3)]
    assert [v.replaced for v in verdicts] == [False, True, True] and verdicts[0].marks
    with container.db.session() as s:
        kept = LessonRepository(s).counts().get("feedback", 0)
    counted = container.metrics.registry.get_sample_value("skillroute_lessons_total", {"source": "feedback"})
    assert counted == kept == 1
