"""Running services' heartbeats (`services/instances.py` says what they are for)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from orchestrator.store.models import Instance


class InstanceRepository:
    def __init__(self, session: Session):
        self.session = session

    def beat(self, instance_id: str, host: str, pid: int, now: datetime) -> None:
        """Say the instance is alive now (its row made on the first beat)."""
        self.session.merge(Instance(id=instance_id, host=host, pid=pid, seen_at=now))

    def remove(self, instance_id: str) -> None:
        self.session.execute(delete(Instance).where(Instance.id == instance_id))

    def all(self) -> Sequence[Instance]:
        return self.session.scalars(select(Instance)).all()

    def forget_older_than(self, moment: datetime) -> None:
        """Drop the rows of instances silent since before `moment` (crashed long ago)."""
        self.session.execute(delete(Instance).where(Instance.seen_at < moment))
