"""A streamed chat that fails in an unexpected way once its headers are sent (a store error
reading the stored reply, a bug writing its end) still ends as a client can read: an OpenAI
error event naming only the failure's type (its message may hold SQL or paths), then [DONE]."""

from __future__ import annotations

import json
import logging
from typing import Any, NoReturn

import httpx
import pytest
from sqlalchemy.exc import OperationalError

from orchestrator.api import openai_compat
from orchestrator.container import SkillRoute
from tests.orchestrator.api.test_streaming import ASK, Control, served

__all__ = ["served"]  # the fixture, shared with test_streaming.py

SECRET = "SELECT secret FROM internals"


def store_fails(*_: Any) -> NoReturn:
    raise OperationalError(SECRET, {}, Exception("database is locked"))


@pytest.mark.parametrize("where", ["read", "end"])
def test_an_unexpected_failure_mid_stream_ends_in_an_error_event_and_done(
        served: tuple[SkillRoute, Control, str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        where: str) -> None:
    c, _, url = served
    if where == "read":  # the stored reply cannot be read
        monkeypatch.setattr(c.chat, "result", store_fails)
    else:  # the stored reply was read; writing the stream's end fails
        monkeypatch.setattr(openai_compat, "skillroute_info", store_fails)
    with caplog.at_level(logging.ERROR):
        r = httpx.post(f"{url}/v1/chat/completions", json={"model": "gamma", "messages": ASK, "stream": True},
                       timeout=30)
    events = [line.removeprefix("data: ") for line in r.text.splitlines() if line.startswith("data: ")]
    assert r.status_code == 200 and events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert (error["code"], error["type"]) == ("internal_error", "server_error")
    assert "OperationalError" in error["message"]
    assert SECRET not in r.text and "locked" not in r.text
    assert any(rec.exc_info and SECRET in str(rec.exc_info[1]) for rec in caplog.records)  # the cause is logged


def test_a_query_that_fails_ends_its_stream_in_the_error_a_plain_request_gets(
        served: tuple[SkillRoute, Control, str]) -> None:
    """Every expert fails: the plain request is a 503 whose error is OpenAI's `server_error`; the
    stream's last event was the same error with its code as the `type` (`not_ready`)."""
    _, control, url = served
    control.fails = lambda r: True
    body = {"model": "auto", "messages": ASK, "seed": 4}
    plain = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)
    r = httpx.post(f"{url}/v1/chat/completions", json={**body, "stream": True}, timeout=30)
    events = [line.removeprefix("data: ") for line in r.text.splitlines() if line.startswith("data: ")]
    assert plain.status_code == 503 and events[-1] == "[DONE]"
    assert json.loads(events[-2]) == plain.json() and plain.json()["error"]["type"] == "server_error"


def test_a_stream_past_the_open_streams_cap_is_an_overload_to_retry(
        served: tuple[SkillRoute, Control, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """It was a 503 `not_ready` without Retry-After, as a pool that cannot answer at all is."""
    c, _, url = served
    monkeypatch.setattr(c.chat.hub, "max_open", 0)
    r = httpx.post(f"{url}/v1/chat/completions", json={"model": "auto", "messages": ASK, "stream": True}, timeout=30)
    assert r.status_code == 503 and r.json()["error"]["code"] == "overloaded" and r.headers["retry-after"]
