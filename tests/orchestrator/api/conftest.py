"""Fixtures for the API tests: a real HTTP server (uvicorn on a free port, in a thread), an empty pool."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from orchestrator.container import SkillRoute
from orchestrator.pools.schema import ArithmeticSource, PoolConfig, ValidationConfig
from tests.live_server import live_server
from tests.orchestrator.conftest import quiet_settings


@pytest.fixture
def serve():  # type: ignore[no-untyped-def]
    """`with serve(app) as url:` runs the app on a real socket until the block ends."""
    return live_server


@pytest.fixture
def empty_container(tmp_path, embedder):  # type: ignore[no-untyped-def]
    """A service whose pool has no expert yet (nothing to route to)."""
    pool = PoolConfig(validation=ValidationConfig(sources=[ArithmeticSource(n=2)]), experts=[])
    c = SkillRoute(quiet_settings(tmp_path), pool, embedder=embedder)
    c.bootstrap()
    yield c
    c.close()


@pytest.fixture
def tokyo_time(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process's local time is UTC+9 (no DST), so a stored UTC moment read as local is 9 h off."""
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    yield
    monkeypatch.undo()  # TZ back before tzset reads it again
    time.tzset()
