"""Rate limits in the store: a sliding window per key, bounded rows, and no two connections (two
replicas) ever both taking the last slot, on SQLite and on Postgres."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from orchestrator.store.db import Database
from orchestrator.store.repositories.keys import KeyRepository
from orchestrator.store.repositories.rate_limits import RateLimitRepository


def new_key(db: Database, name: str = "k") -> int:
    with db.session() as s:
        return KeyRepository(s).add(name, "client", name, "00", "00").id


def hit(db: Database, key_id: int, now: float, limit: int = 2, window_s: float = 60.0) -> float | None:
    with db.session() as s:
        return RateLimitRepository(s).hit(key_id, now, window_s, limit)


def test_sliding_window_frees_a_slot_after_a_minute(db: Database) -> None:
    one, two = new_key(db, "one"), new_key(db, "two")
    assert [hit(db, one, 1000.0), hit(db, one, 1010.0)] == [None, None]
    assert hit(db, one, 1010.0) == pytest.approx(50.0) and hit(db, two, 1010.0) is None  # keys are apart
    assert hit(db, one, 1059.0) == pytest.approx(1.0)
    assert hit(db, one, 1060.5) is None  # the first hit left the window
    assert hit(db, one, 1061.0) == pytest.approx(9.0)  # the 1010 one is now the oldest


def test_a_key_keeps_at_most_its_limit_of_rows(db: Database) -> None:
    key = new_key(db)
    for second in range(0, 600, 7):  # ten minutes of steady traffic, refused ones included
        hit(db, key, float(second), limit=3)
    with db.session() as s:
        assert RateLimitRepository(s).count(key) == 3


def test_two_connections_racing_for_the_last_slots_take_exactly_the_limit(database_url: str, db: Database) -> None:
    """Two engines stand for two replicas: 24 requests at one instant, released together, limit 5."""
    key, limit, tries = new_key(db), 5, 24
    other = Database(database_url)
    start = threading.Barrier(tries)

    def one(i: int) -> float | None:
        start.wait(timeout=30)
        return hit(db if i % 2 else other, key, 5000.0, limit=limit)

    try:
        with ThreadPoolExecutor(tries) as pool:
            results = list(pool.map(one, range(tries)))
    finally:
        other.engine.dispose()
    assert results.count(None) == limit
    assert all(r == pytest.approx(60.0) for r in results if r is not None)
    with db.session() as s:
        assert RateLimitRepository(s).count(key) == limit
