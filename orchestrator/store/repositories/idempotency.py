"""Idempotency keys: the first request's result under a key, written with what it created."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from orchestrator.store.models import IdempotencyKey


class KeyTaken(Exception):
    """Another request stored the same key first (a race): its transaction won, this one rolls back."""


class IdempotencyRepository:
    def __init__(self, session: Session):
        self.session = session

    def get(self, scope: str, key: str) -> IdempotencyKey | None:
        stmt = select(IdempotencyKey).where(IdempotencyKey.scope == scope, IdempotencyKey.key == key)
        return self.session.scalars(stmt).one_or_none()

    def add(self, row: IdempotencyKey) -> None:
        """Store the key; the unique (scope, key) constraint decides a race, portably: the loser
        gets KeyTaken and its whole transaction (the queries it admitted too) rolls back."""
        self.session.add(row)
        try:
            self.session.flush()
        except IntegrityError as exc:
            raise KeyTaken(f"idempotency key {row.key!r} is already stored") from exc

    def delete(self, row_id: int) -> None:
        self.session.execute(delete(IdempotencyKey).where(IdempotencyKey.id == row_id))

    def purge(self, before: datetime) -> int:
        """Forget keys stored before `before`; returns how many."""
        result = self.session.execute(delete(IdempotencyKey).where(IdempotencyKey.created_at < before))
        return int(getattr(result, "rowcount", 0) or 0)
