"""An unexpected failure inside a request leaves in the OpenAI error shape, naming nothing internal;
a store lock that timed out is a 503 to retry, not a 500."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event
from sqlalchemy.exc import OperationalError

from orchestrator.api.app import create_app
from orchestrator.container import SkillRoute

SECRET = "password=hunter2 at /srv/skillroute/db.sqlite"  # what an exception may carry: never shown


@pytest.fixture
def lenient(container: SkillRoute) -> Iterator[TestClient]:
    """A client that gets the response a server error sends, as an HTTP client would, not the exception."""
    with TestClient(create_app(container), raise_server_exceptions=False) as client:
        yield client


def test_an_unexpected_error_is_a_500_in_the_error_shape_and_is_logged(
        lenient: TestClient, container: SkillRoute, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """It was Starlette's bare text/plain "Internal Server Error"."""
    def broken(*_: object) -> None:
        raise RuntimeError(SECRET)

    monkeypatch.setattr(container.batches, "get", broken)
    with caplog.at_level(logging.ERROR, logger="orchestrator.api.errors"):
        r = lenient.get("/v1/batches/1")
    assert r.status_code == 500 and r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("server_error", "internal_error", None)
    assert "hunter2" not in r.text and "RuntimeError" not in r.text
    assert any(rec.exc_info and SECRET in str(rec.exc_info[1]) for rec in caplog.records)  # for the operator


def test_a_store_lock_timeout_is_a_503_with_retry_after(lenient: TestClient, container: SkillRoute) -> None:
    """The store gave up waiting for a lock (SQLite: busy past its timeout): busy, not broken."""
    def locked(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if statement.lstrip().startswith("INSERT INTO queries"):
            raise OperationalError(statement, {}, Exception("database is locked"))

    event.listen(container.db.engine, "before_cursor_execute", locked)
    try:
        r = lenient.post("/v1/batches", json={"queries": [{"query": "What is 2+2?", "k": 1}]})
    finally:
        event.remove(container.db.engine, "before_cursor_execute", locked)
    assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
    error = r.json()["error"]
    assert (error["type"], error["code"]) == ("store_busy", "store_busy")  # native: a service error's type is its code
    assert "INSERT" not in error["message"]
