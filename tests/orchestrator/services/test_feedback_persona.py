"""Feedback on a query an expert answered before its persona changed judges the old persona:
its mark teaches nothing, live as after a restart (the reply still lists it)."""

from __future__ import annotations

from orchestrator.container import SkillRoute
from orchestrator.domain import Ask
from orchestrator.routing.learning import observed_counts
from orchestrator.services.expert_changes import ExpertChange
from orchestrator.services.pool import load_evidence
from orchestrator.store.repositories.lessons import LessonRepository
from skills.embedder import Embedder


def test_feedback_after_a_persona_change_does_not_mark_the_new_persona(container: SkillRoute,
                                                                        embedder: Embedder) -> None:
    """stale_lessons names the lessons stored before the change, and feedback given after it
    stores a newer one: the old persona's answer was marked for the new persona."""
    query = container.queries.ask([Ask(text="What is 2 + 3?", k=3, mode="topk", seed=1)])[0]
    alpha = container.experts.find("alpha")
    container.experts.update(alpha.id, ExpertChange({"system_prompt": "a chemistry persona"}), background=False)
    before = container.pool.evidence_counts()
    verdict = container.feedback.give(query.id, correct=True)
    assert {"alpha", "beta", "gamma"} <= set(verdict.marks)  # the reply lists every answer
    with container.db.session() as s:
        (row,) = LessonRepository(s).for_query(query.id)
    assert set(row.marks) == set(verdict.marks) - {"alpha"}
    moved = {n: container.pool.evidence_counts()[n] - before[n] for n in before}
    assert moved == {n: int(n != "alpha") for n in before}
    rebuilt = load_evidence(container.db, container.pool.dataset, embedder).evidence
    assert container.pool.evidence_counts() == observed_counts(rebuilt)
