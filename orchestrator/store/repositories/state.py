"""Small key/value facts about the pool."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from orchestrator.store.models import AppState


class StateRepository:
    def __init__(self, session: Session):
        self.session = session

    def get(self, key: str) -> dict[str, Any] | None:
        row = self.session.get(AppState, key)
        return dict(row.value) if row else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        row = self.session.get(AppState, key)
        if row is None:
            self.session.add(AppState(key=key, value=value))
        else:
            row.value = value

    def drop(self, key: str) -> None:
        row = self.session.get(AppState, key)
        if row is not None:
            self.session.delete(row)
