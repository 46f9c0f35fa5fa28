"""The profiling set (questions with their skills) and every expert's graded answers to it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from sqlalchemy import Row, Select, delete, func, insert, select
from sqlalchemy.orm import Session

from orchestrator.store.models import ValidationAnswer, ValidationQuestion

AnswerRow = Row[int, int, str, bool]  # expert_id, question_id, text, correct
TimingRow = Row[int, int | None, int | None, float | None]  # expert_id, prompt_tokens, completion_tokens, latency_s


class Graded(NamedTuple):
    """One graded answer to store; its reply's timing unset when it failed (nothing to learn)."""

    question_id: int
    text: str
    correct: bool
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_s: float | None = None


class ValidationRepository:
    def __init__(self, session: Session):
        self.session = session

    def questions(self, dataset: str) -> Sequence[ValidationQuestion]:
        stmt = select(ValidationQuestion).where(ValidationQuestion.dataset == dataset)
        return self.session.scalars(stmt.order_by(ValidationQuestion.id)).all()

    def count(self, dataset: str) -> int:
        stmt = select(func.count()).select_from(ValidationQuestion).where(ValidationQuestion.dataset == dataset)
        return int(self.session.scalar(stmt) or 0)

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

    def save_answers(self, expert_id: int, answers: Sequence[Graded]) -> None:
        """Replace this expert's graded answers."""
        # bulk statements, not one ORM object per row: a recorded pool saves 66,154 answers at start
        self.session.execute(delete(ValidationAnswer).where(ValidationAnswer.expert_id == expert_id))
        if answers:
            self.session.execute(insert(ValidationAnswer), [{"expert_id": expert_id, **a._asdict()} for a in answers])

    def answers(self, expert_ids: Sequence[int], dataset: str | None = None) -> Sequence[AnswerRow]:
        """(expert_id, question_id, text, correct) rows, oldest first: plain rows, not ORM
        objects, as every start reads all of them (66,154 for the recorded pool). With `dataset`,
        only answers to that set's questions: an expert profiled on an earlier set (the pool
        file's `validation:` changed since) still holds that set's until profiled again."""
        a = ValidationAnswer
        stmt = select(a.expert_id, a.question_id, a.text, a.correct).where(a.expert_id.in_(expert_ids))
        if dataset is not None:
            stmt = stmt.where(a.question_id.in_(self._ids(dataset)))
        return self.session.execute(stmt.order_by(a.id)).all()

    def answered(self, expert_ids: Sequence[int], dataset: str) -> set[int]:
        """The experts of `expert_ids` with an answer on record to a question of `dataset`."""
        a = ValidationAnswer
        stmt = select(a.expert_id).where(a.expert_id.in_(expert_ids), a.question_id.in_(self._ids(dataset)))
        return set(self.session.scalars(stmt.distinct()).all())

    @staticmethod
    def _ids(dataset: str) -> Select[int]:
        return select(ValidationQuestion.id).where(ValidationQuestion.dataset == dataset)

    def timings(self, expert_ids: Sequence[int], limit: int) -> list[TimingRow]:
        """The last `limit` timed answers of these experts together, oldest first."""
        a = ValidationAnswer
        stmt = select(a.expert_id, a.prompt_tokens, a.completion_tokens, a.latency_s).where(
            a.expert_id.in_(expert_ids), a.latency_s.is_not(None))
        return list(reversed(self.session.execute(stmt.order_by(a.id.desc()).limit(limit)).all()))
