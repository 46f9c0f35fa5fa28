"""Request bodies over the limit are refused with 413 before anything parses or stores them."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from orchestrator.api.app import create_app
from orchestrator.container import SkillRoute
from orchestrator.settings import HttpSettings
from tests.orchestrator.conftest import mock_or_real, quiet_settings

LIMIT = 64 * 1024


@pytest.fixture
def limited(container: SkillRoute, tmp_path) -> Iterator[tuple[TestClient, SkillRoute]]:  # type: ignore[no-untyped-def]
    settings = quiet_settings(tmp_path / "limited", http=HttpSettings(max_body_bytes=LIMIT))
    c = SkillRoute(settings, container.pool_config, factory=mock_or_real, embedder=container.embedder)
    with TestClient(create_app(c, owns_container=True)) as client:
        yield client, c


def test_a_declared_body_over_the_limit_is_413_and_nothing_is_stored(limited) -> None:  # type: ignore[no-untyped-def]
    client, c = limited
    before = c.queries.watermark()
    big = json.dumps({"query": "What is 2 + 2? " + "x" * (5 * 2**20)})  # a 5 MB body
    r = client.post("/v1/queries", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large" and str(LIMIT) in r.json()["error"]["message"]
    assert c.queries.watermark() == before


def test_a_chunked_body_is_cut_off_once_it_passes_the_limit(limited) -> None:  # type: ignore[no-untyped-def]
    client, c = limited
    before = c.queries.watermark()

    def chunks() -> Iterator[bytes]:  # no Content-Length: the size is only known as it arrives
        yield b'{"query": "What is 2 + 2? '
        for _ in range(100):
            yield b"y" * 4096
        yield b'"}'

    r = client.post("/v1/queries", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert c.queries.watermark() == before


def test_a_body_under_the_limit_is_answered(limited) -> None:  # type: ignore[no-untyped-def]
    client, _ = limited
    r = client.post("/v1/queries", json={"query": "What is 2 + 2?", "k": 1})
    assert r.status_code == 200, r.text
