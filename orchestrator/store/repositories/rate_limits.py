"""Rate limits: the requests each API key made in the last window, shared by every replica."""

from __future__ import annotations

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from orchestrator.store.models import ApiKey, RateLimitHit


class RateLimitRepository:
    def __init__(self, session: Session):
        self.session = session

    def hit(self, key_id: int, now: float, window_s: float, limit: int) -> float | None:
        """Count one request of the key at `now` if fewer than `limit` fall in the window ending
        then; else count nothing and return the seconds until the oldest leaves the window.

        Two replicas must not both take the last slot, so the count is read under a lock held to
        commit: on Postgres the key's row (FOR NO KEY UPDATE, which the hits' foreign key does not
        wait on); on SQLite the database's one write lock, which the DELETE takes before the count
        is read (pysqlite opens the transaction at the first write, so the lock select before it
        reads nothing stale)."""
        self.session.execute(select(ApiKey.id).where(ApiKey.id == key_id).with_for_update(key_share=True))
        of_key = RateLimitHit.key_id == key_id
        self.session.execute(delete(RateLimitHit).where(of_key, RateLimitHit.at <= now - window_s))
        count, oldest = self.session.execute(select(func.count(), func.min(RateLimitHit.at)).where(of_key)).one()
        if count >= limit:
            return float(oldest) + window_s - now
        self.session.add(RateLimitHit(key_id=key_id, at=now))
        return None

    def count(self, key_id: int) -> int:
        """The key's stored hits (expired ones included until its next request deletes them)."""
        stmt = select(func.count()).select_from(RateLimitHit).where(RateLimitHit.key_id == key_id)
        return int(self.session.scalar(stmt) or 0)
