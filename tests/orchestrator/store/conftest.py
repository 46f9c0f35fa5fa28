"""The store's tests run on SQLite and on Postgres: tests/conftest.py parametrizes `database_url`
for everything under this folder (ids `[sqlite]` and `[postgres]`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from orchestrator.store.db import Database, migrate


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    """A migrated, empty store."""
    migrate(database_url)
    database = Database(database_url)
    yield database
    database.engine.dispose()
