"""API keys: stored as salted hashes, found by their public prefix."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator.store.models import ApiKey, utcnow


class KeyRepository:
    def __init__(self, session: Session):
        self.session = session

    def add(self, name: str, role: str, prefix: str, salt: str, digest: str,
            requests_per_minute: int | None = None, default_latency_ms: float | None = None,
            default_energy_j: float | None = None) -> ApiKey:
        row = ApiKey(name=name, role=role, prefix=prefix, salt=salt, digest=digest,
                     requests_per_minute=requests_per_minute, default_latency_ms=default_latency_ms,
                     default_energy_j=default_energy_j)
        self.session.add(row)
        self.session.flush()
        return row

    def by_prefix(self, prefix: str) -> ApiKey | None:
        return self.session.scalars(select(ApiKey).where(ApiKey.prefix == prefix)).first()

    def get(self, key_id: int) -> ApiKey | None:
        return self.session.get(ApiKey, key_id)

    def list(self) -> Sequence[ApiKey]:
        return self.session.scalars(select(ApiKey).order_by(ApiKey.id)).all()

    def has_active(self, role: str) -> bool:
        stmt = select(ApiKey.id).where(ApiKey.role == role, ApiKey.revoked_at.is_(None)).limit(1)
        return self.session.scalar(stmt) is not None

    def set_budget(self, key_id: int, latency_ms: float | None, energy_j: float | None) -> bool:
        row = self.session.get(ApiKey, key_id)
        if row is None:
            return False
        row.default_latency_ms, row.default_energy_j = latency_ms, energy_j
        return True

    def revoke(self, key_id: int) -> bool:
        row = self.session.get(ApiKey, key_id)
        if row is None:
            return False
        row.revoked_at = row.revoked_at or utcnow()
        return True
