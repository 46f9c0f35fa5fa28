"""A key's rate limit holds across Serve replicas: two services on one database (each with its own
engine, access control and key cache, as two replica processes have) count against one limit, on
SQLite and on Postgres."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from orchestrator.api.app import create_app
from orchestrator.container import SkillRoute
from orchestrator.store.repositories.rate_limits import RateLimitRepository
from skills.embedder import Embedder
from tests.live_server import live_server
from tests.orchestrator.conftest import mock_or_real


@pytest.fixture
def replicas(container: SkillRoute, embedder: Embedder) -> Iterator[tuple[str, str]]:
    """Two replicas over real HTTP: the `container` fixture's service and a second one built from
    the same settings (so the same database)."""
    other = SkillRoute(container.settings, container.pool_config, factory=mock_or_real, embedder=embedder)
    other.bootstrap()
    try:
        with live_server(create_app(container)) as a, live_server(create_app(other)) as b:
            yield a, b
    finally:
        other.close()


def models(url: str, key: str) -> httpx.Response:
    return httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=30)


def test_the_limit_is_shared_and_the_next_request_on_either_replica_is_429(replicas, container) -> None:  # type: ignore[no-untyped-def]
    a, b = replicas
    row, key = container.keys.create("shared", "client", requests_per_minute=3)
    assert [models(url, key).status_code for url in (a, b, a)] == [200, 200, 200]
    for url in (b, a):  # a per-process limit would let each replica take 3
        r = models(url, key)
        assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 60, r.text
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
    _, fresh = container.keys.create("fresh", "client", requests_per_minute=3)
    assert models(b, fresh).status_code == 200  # the limit is the key's, not the replicas'
    with container.db.session() as s:
        assert RateLimitRepository(s).count(row.id) == 3  # refused requests are not stored


async def burst(urls: list[str], key: str) -> list[int]:
    async with httpx.AsyncClient(timeout=60, headers={"Authorization": f"Bearer {key}"}) as http:
        replies = await asyncio.gather(*(http.get(f"{u}/v1/models") for u in urls))
    return [r.status_code for r in replies]


def test_a_concurrent_burst_across_replicas_passes_exactly_the_limit(replicas, container) -> None:  # type: ignore[no-untyped-def]
    a, b = replicas
    _, key = container.keys.create("burst", "client", requests_per_minute=5)
    for url in (a, b):  # each replica verifies the key once (scrypt), so the burst races on the count alone
        assert models(url, key).status_code == 200
    codes = asyncio.run(burst([a, b] * 10, key))
    assert sorted(codes) == [200] * 3 + [429] * 17
