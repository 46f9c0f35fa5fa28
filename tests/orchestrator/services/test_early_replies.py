"""A query finished before its batch is stored and answered then, not when the batch's longest
query is done (audit: a short query batched with long ones was written at 4 s and returned at
12 s). The long one here is held on an event on its own worker. A batch takes only work on its
workers, so the long one comes with a short one on the other worker (`held_batch`): the quick
query under test joins that batch, which `max_batch` 3 closes (the window's timer never would)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from orchestrator.api.app import create_app
from orchestrator.container import SkillRoute
from orchestrator.domain import Ask
from orchestrator.settings import BatchingSettings
from orchestrator.store.models import Query
from orchestrator.store.repositories.queries import decision_of
from skills.embedder import Embedder
from tests.orchestrator.pipeline.held import SLOW, WAIT_S, Hold, two_workers


@pytest.fixture
def held(tmp_path: Path, embedder: Embedder) -> Iterator[tuple[SkillRoute, Hold]]:
    """alpha on worker `quick`, beta (HOLD questions held) on worker `slow`; batches of three."""
    hold = Hold()
    c = two_workers(tmp_path, embedder, hold, BatchingSettings(max_batch=3, wait_ms=10_000))
    yield c, hold
    hold.release.set()
    c.close()


def held_batch(c: SkillRoute) -> Future[list[Query]]:
    """The long query (held) with a short one on the quick worker: its batch takes both workers."""
    return c.queries.submit([Ask(text=SLOW, expert="beta"), Ask(text="What is 3+3?", expert="alpha")])


def test_a_quick_query_is_stored_and_answered_while_its_batch_s_long_one_still_runs(held) -> None:  # type: ignore[no-untyped-def]
    c, hold = held
    slow = held_batch(c)
    quick = c.queries.submit([Ask(text="What is 2+2?", expert="alpha")])
    assert hold.entered.wait(WAIT_S)
    (row,) = quick.result(WAIT_S)  # before: only once the slow one was released
    assert row.status == "done" and row.answer and c.queries.get(row.id).status == "done"  # stored
    assert not slow.done() and c.queries.window.batch_sizes[-1] == 3
    hold.release.set()
    late, _ = slow.result(WAIT_S)
    assert late.status == "done" and c.queries.get(late.id).status == "done"


def test_a_quick_query_s_device_time_is_its_batch_s_up_to_its_end(held) -> None:  # type: ignore[no-untyped-def]
    c, hold = held
    slow = held_batch(c)
    (row,) = c.queries.submit([Ask(text="What is 2+2?", expert="alpha")]).result(WAIT_S)
    assert hold.entered.wait(WAIT_S) and not slow.done()
    decision = decision_of(row)
    assert decision is not None and [d.worker for d in decision.devices] == ["quick"]
    assert decision.devices[0].measured_s is not None and decision.devices[0].predicted_s > 0
    hold.release.set()
    slow.result(WAIT_S)


def test_plain_and_streamed_replies_come_back_while_the_long_query_of_their_batch_runs(held) -> None:  # type: ignore[no-untyped-def]
    """The HTTP client gets its reply, and a streamed chat its last event, while the batch holds."""
    c, hold = held
    with TestClient(create_app(c)) as client:
        slow = held_batch(c)
        plain = {"model": "alpha", "messages": [{"role": "user", "content": "What is 2+2?"}]}
        r = client.post("/v1/chat/completions", json=plain)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"], r.text
        assert not slow.done()
        hold.release.set()
        slow.result(WAIT_S)
        hold.release.clear()
        slow = held_batch(c)
        body = {"model": "alpha", "messages": [{"role": "user", "content": "What is 4+4?"}], "stream": True}
        with client.stream("POST", "/v1/chat/completions", json=body) as s:
            lines = [ln for ln in s.iter_lines() if ln]
        assert lines[-1] == "data: [DONE]" and not slow.done()
        assert json.loads(lines[-2].removeprefix("data: "))["choices"][0]["finish_reason"] == "stop"
        hold.release.set()
        slow.result(WAIT_S)
