"""Experts, their skill profiles and profiling progress."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, selectinload

from experts.types import ExpertSpec
from orchestrator.store.models import Expert, SkillScore


class ExpertRepository:
    def __init__(self, session: Session):
        self.session = session

    def add(self, spec: ExpertSpec, status: str = "registered") -> Expert:
        row = Expert(name=spec.name, spec=spec.model_dump(mode="json"), base_model_key=spec.base.key, status=status)
        self.session.add(row)
        self.session.flush()
        return row

    def get(self, expert_id: int) -> Expert | None:
        return self.session.get(Expert, expert_id, options=[selectinload(Expert.skills)])

    def by_name(self, name: str) -> Expert | None:
        stmt = select(Expert).where(Expert.name == name).options(selectinload(Expert.skills))
        return self.session.scalars(stmt).first()

    def list(self, status: str | None = None) -> Sequence[Expert]:
        stmt = select(Expert).options(selectinload(Expert.skills)).order_by(Expert.id)
        if status is not None:
            stmt = stmt.where(Expert.status == status)
        return self.session.scalars(stmt).all()

    def set_status(self, expert_id: int, status: str, error: str | None = None) -> None:
        row = self.session.get(Expert, expert_id)
        if row is not None:
            row.status, row.error = status, error

    def set_progress(self, expert_id: int, done: int, total: int) -> None:
        row = self.session.get(Expert, expert_id)
        if row is not None:
            row.progress_done, row.progress_total = done, total

    def save_profile(self, expert_id: int, scores: Mapping[str, float], accuracy: float) -> None:
        """Replace the expert's profile whole, so a re-profile never mixes old and new."""
        self.session.execute(delete(SkillScore).where(SkillScore.expert_id == expert_id))
        self.session.add_all(SkillScore(expert_id=expert_id, skill=s, score=v) for s, v in scores.items())
        row = self.session.get(Expert, expert_id)
        if row is not None:
            row.accuracy, row.profile_total = accuracy, float(sum(scores.values()))

    def delete(self, expert_id: int) -> bool:
        row = self.session.get(Expert, expert_id)
        if row is None:
            return False
        self.session.delete(row)
        return True
