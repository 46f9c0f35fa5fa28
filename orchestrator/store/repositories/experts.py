"""Experts, their skill profiles and profiling progress.

An expert's status is `registered → profiling → ready | failed`, or one a user set: `disabled`
(kept and loaded, never routed to) and `removed` (a soft delete: the row and every record that
names it stay readable; it never comes back)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from experts.types import ExpertSpec
from orchestrator.store.models import Expert, SkillScore, ValidationAnswer

HELD = ("disabled", "removed")  # statuses only a user's change sets and lifts


class NameTaken(Exception):
    """Another expert took the name after it was checked (a second service on the store, or the
    CLI beside a running one): the unique name decides the race, portably."""


class ExpertRepository:
    def __init__(self, session: Session):
        self.session = session

    def add(self, spec: ExpertSpec, status: str = "registered", progress_total: int = 0) -> Expert:
        row = Expert(name=spec.name, spec=spec.model_dump(mode="json"), base_model_key=spec.base.key, status=status,
                     progress_done=0, progress_total=progress_total)
        self.session.add(row)
        try:
            self.session.flush()
        except IntegrityError as exc:
            raise NameTaken(spec.name) from exc
        return row

    def get(self, expert_id: int) -> Expert | None:
        return self.session.get(Expert, expert_id, options=[selectinload(Expert.skills)])

    def by_name(self, name: str) -> Expert | None:
        stmt = select(Expert).where(Expert.name == name).options(selectinload(Expert.skills))
        return self.session.scalars(stmt).first()

    def list(self, status: str | None = None, profiles: bool = True) -> Sequence[Expert]:
        """Every expert (of `status`), with its skill rows unless `profiles` is False: they are
        most of the cost (5.9 s against 0.3 s for 3,000 experts of 57 skills), and the placement
        plan, the /ready check and GET /v1/experts without profiles read none of them."""
        stmt = select(Expert).order_by(Expert.id)
        if profiles:
            stmt = stmt.options(selectinload(Expert.skills))
        if status is not None:
            stmt = stmt.where(Expert.status == status)
        return self.session.scalars(stmt).all()

    def set_status(self, expert_id: int, status: str, error: str | None = None) -> None:
        """A profiling outcome. A disabled or removed expert keeps its status: a profile that
        finishes after the user's change must not bring the expert back into routing."""
        row = self.session.get(Expert, expert_id)
        if row is not None and row.status not in HELD:
            row.status, row.error = status, error

    def set_lifecycle(self, expert_id: int, status: str) -> None:
        """A user's change of status (disable, enable, remove, re-profile): always applies."""
        row = self.session.get(Expert, expert_id)
        if row is not None:
            row.status, row.error = status, None

    def set_spec(self, expert_id: int, spec: ExpertSpec) -> None:
        row = self.session.get(Expert, expert_id)
        if row is not None:
            row.spec, row.base_model_key = spec.model_dump(mode="json"), spec.base.key

    def reset_profile(self, expert_id: int, progress_total: int = 0) -> None:
        """Forget the expert's profile and graded validation answers (its persona changed: they
        describe answers it no longer gives), so it is profiled afresh (on `progress_total`
        questions, shown from now)."""
        self.session.execute(delete(SkillScore).where(SkillScore.expert_id == expert_id))
        self.session.execute(delete(ValidationAnswer).where(ValidationAnswer.expert_id == expert_id))
        row = self.session.get(Expert, expert_id)
        if row is not None:
            self.session.expire(row, ["skills"])
            row.accuracy = row.profile_total = None
            row.progress_done, row.progress_total = 0, progress_total

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
