"""The profiling set (questions with their skills) and every expert's graded answers to it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator.store.models import ValidationAnswer, ValidationQuestion


class ValidationRepository:
    def __init__(self, session: Session):
        self.session = session

    def questions(self, dataset: str) -> Sequence[ValidationQuestion]:
        stmt = select(ValidationQuestion).where(ValidationQuestion.dataset == dataset)
        return self.session.scalars(stmt.order_by(ValidationQuestion.id)).all()

    def add_questions(self, dataset: str, rows: Sequence[tuple[str, dict[str, Any], list[str], bytes | None]]
                      ) -> None:
        """Store (qid, payload, skills, embedding) rows; the set is written once and then reused."""
        self.session.add_all(
            ValidationQuestion(dataset=dataset, qid=qid, payload=payload, skills=skills, embedding=embedding)
            for qid, payload, skills, embedding in rows
        )

    def set_embeddings(self, rows: Sequence[tuple[int, bytes]]) -> None:
        """Store (question row id, float32 embedding bytes) for questions that had none."""
        for row_id, blob in rows:
            self.session.get_one(ValidationQuestion, row_id).embedding = blob

    def save_answers(self, expert_id: int, answers: Sequence[tuple[int, str, bool]]) -> None:
        """Replace this expert's graded answers: (question row id, text, correct)."""
        for old in self.session.scalars(select(ValidationAnswer).where(ValidationAnswer.expert_id == expert_id)):
            self.session.delete(old)
        self.session.flush()
        self.session.add_all(
            ValidationAnswer(expert_id=expert_id, question_id=qid, text=text, correct=ok) for qid, text, ok in answers
        )

    def answers(self, expert_ids: Sequence[int]) -> Sequence[ValidationAnswer]:
        stmt = select(ValidationAnswer).where(ValidationAnswer.expert_id.in_(expert_ids))
        return self.session.scalars(stmt.order_by(ValidationAnswer.id)).all()
