"""A competition's lesson learned after an expert's persona changed (the learner lagged behind the
change) judges the old persona: its mark teaches nothing, live as after a restart, as feedback's."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from orchestrator.domain import Ask
from orchestrator.routing.learning import Lesson, observed_counts
from orchestrator.services.expert_changes import ExpertChange
from orchestrator.services.pool import load_evidence
from orchestrator.store.repositories.lessons import LessonRepository, Stored
from skills.embedder import Embedder
from tests.orchestrator.services.test_learning import QUESTION, service


def test_a_lesson_learned_after_a_persona_change_does_not_mark_the_new_persona(
        tmp_path: Path, embedder: Embedder, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lesson was stored after the change, above alpha's stale_lessons cutoff, so the old
    persona's mark counted as evidence of the new one."""
    c = service(tmp_path, embedder, explore=0.0)
    c.start()
    try:
        released, learn = threading.Event(), c.pool.learn

        def lagging(lessons: Sequence[tuple[int | None, Lesson]]) -> list[Stored]:
            released.wait(30)  # a refit or a busy store holds the learner
            return learn(lessons)

        monkeypatch.setattr(c.pool, "learn", lagging)
        (query,) = c.queries.ask([Ask(text=QUESTION, k=1, seed=1)])
        alpha = c.experts.find("alpha")
        c.experts.update(alpha.id, ExpertChange({"system_prompt": "a chemistry persona"}), background=False)
        before = c.pool.evidence_counts()
        released.set()
        c.queries.learned()
        with c.db.session() as s:
            (row,) = LessonRepository(s).for_query(query.id)
        assert row.source == "competition" and set(row.marks) == {"beta", "gamma"}
        assert {n: c.pool.evidence_counts()[n] - before[n] for n in before} == {"alpha": 0, "beta": 1, "gamma": 1}
        rebuilt = load_evidence(c.db, c.pool.dataset, embedder).evidence
        assert c.pool.evidence_counts() == observed_counts(rebuilt)
    finally:
        c.close()
