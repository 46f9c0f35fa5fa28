"""The window bounds a batch by the predicted work of its queries (prompt and output tokens),
and the service bounds the window's backlog at the door."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, func, select
from sqlalchemy.exc import OperationalError

from experts.mock import MockBackend
from experts.types import BaseModelSpec, Generation, GenerationRequest, StreamEvent
from orchestrator.api.app import create_app
from orchestrator.container import SkillRoute
from orchestrator.domain import Ask
from orchestrator.services.admission import ModelNotFound
from orchestrator.services.batches import BatchEntry
from orchestrator.services.errors import Busy
from orchestrator.services.queries import predicted_tokens
from orchestrator.settings import BatchingSettings
from orchestrator.store.models import Query
from skills.embedder import Embedder
from tests.orchestrator.conftest import mock_expert, quiet_settings, small_pool

WAIT_S = 30  # an event not set by then means the order under test did not happen


def test_a_query_weighs_its_prompt_and_output_once_per_answering_expert(container: SkillRoute) -> None:
    short, long = container.queries.admission.admit([
        Ask(text="What is 2 + 2?", k=1, max_tokens=16),
        Ask(text="Read all of this first. " * 400 + "What is 2 + 2?", k=2)])
    most = container.pipeline.limits.expert_max_tokens
    assert predicted_tokens(short, most) == (5 * 4 / 3 + 16) * 1
    assert predicted_tokens(long, most) > 2 * 2000  # two experts, each reading ~2,000 prompt tokens
    window = container.queries.window
    assert window.max_work == container.settings.batching.max_batch_tokens
    assert window.weigh is not None and window.weigh(long) == predicted_tokens(long, most)
    container.queries.run([short, long])  # admitted queries are answered, not left pending


def test_a_backlog_past_its_bound_refuses_new_requests_before_storing_anything(tmp_path: Path,
                                                                                embedder: Embedder) -> None:
    started, gate = threading.Event(), threading.Event()

    def hold(request: GenerationRequest) -> str | None:  # a query marked HOLD keeps the runner busy
        if not any("HOLD" in m.content for m in request.messages):
            return None
        started.set()
        return None if gate.wait(WAIT_S) else "the gate never opened"

    def mocks(spec: BaseModelSpec) -> MockBackend:
        return MockBackend(spec.key, fault=hold)

    settings = quiet_settings(tmp_path, batching=BatchingSettings(max_batch=1, max_waiting=2))
    c = SkillRoute(settings, small_pool([mock_expert("alpha", "m1")]), factory=mocks, embedder=embedder)
    chat = {"model": "auto", "messages": [{"role": "user", "content": "one too many"}]}
    with TestClient(create_app(c, owns_container=True)) as client:
        first = c.queries.submit([Ask(text="HOLD: what is 1+1?", k=1)])
        assert started.wait(WAIT_S)  # the runner holds the first batch: what follows waits
        queued = [c.queries.submit([Ask(text=f"What is {i}+{i}?", k=1)]) for i in (2, 3)]
        before = _stored(c)
        for path, body in [("/v1/queries", {"query": "one too many"}), ("/v1/chat/completions", chat),
                           ("/v1/batches", {"queries": [{"query": "one too many"}]})]:
            r = client.post(path, json=body)
            assert r.status_code == 503 and r.headers["Retry-After"] == "5", (path, r.text)
            assert r.json()["error"]["message"].startswith("2 queries are waiting to be answered"), r.text
        assert _stored(c) == before
        gate.set()
        assert [q.error for f in (first, *queued) for q in f.result(WAIT_S)] == [None, None, None]
        assert client.post("/v1/queries", json={"query": "room again", "k": 1}).status_code == 200


def _stored(c: SkillRoute) -> int:
    with c.db.session() as s:
        return s.scalar(select(func.count()).select_from(Query)) or 0


def test_an_answer_the_store_refuses_fails_its_query_alone_and_the_rest_are_stored(container: SkillRoute) -> None:
    """The database refuses one query's generations (fault injected at the driver's door): the
    batch is stored again query by query, that query stored as failed naming why, the other done.
    Before, the whole batch stayed `accepted` until a restart and every client got a 500."""
    asks = [Ask(text="What is 2+2?", k=1, seed=1), Ask(text="What is 3+3?", k=1, seed=1)]
    items = container.queries.admission.admit(asks)
    poisoned = items[0].query_id

    def refuse(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if statement.lstrip().startswith("INSERT INTO generations") and any(
                row.get("query_id") == poisoned for row in context.compiled_parameters):
            raise OperationalError(statement, {}, Exception("the store refused this row"))

    event.listen(container.db.engine, "before_cursor_execute", refuse)
    try:
        container.queries.run(items)
    finally:
        event.remove(container.db.engine, "before_cursor_execute", refuse)
    lost, kept = container.queries.get_many([i.query_id for i in items])
    assert (lost.status, kept.status) == ("failed", "done") and kept.answer
    assert lost.error is not None and lost.error.startswith("its answer could not be stored: OperationalError")


@pytest.mark.parametrize("door", ["admit", "admit_batch"])
def test_requests_arriving_together_cannot_all_pass_the_backlog_bound(tmp_path: Path, embedder: Embedder,
                                                                       monkeypatch: pytest.MonkeyPatch,
                                                                       door: str) -> None:
    """The bound was checked before admission, the queries counted only once queued: eight
    requests of three, checked while none was queued, all passed a bound of four (24 waiting).
    The check now takes room for the request, held until it is queued, so the others are refused."""
    settings = quiet_settings(tmp_path, batching=BatchingSettings(max_waiting=4))
    c = SkillRoute(settings, small_pool([mock_expert("alpha", "m1")]), factory=lambda s: MockBackend(s.key),
                   embedder=embedder)
    c.bootstrap()
    decided, opened = threading.Semaphore(0), threading.Event()  # each request past the bound or refused
    admit = getattr(c.admission, door)

    def held(*args: object, **kwargs: object) -> object:
        decided.release()
        assert opened.wait(WAIT_S)
        return admit(*args, **kwargs)

    monkeypatch.setattr(c.admission, door, held)
    send = c.queries.submit if door == "admit" else lambda asks: c.batches.submit([BatchEntry(a) for a in asks])
    accepted, refused = [], []

    def client(i: int) -> None:
        try:
            accepted.append(send([Ask(text=f"What is {i}+{j}?", k=1) for j in range(3)]))
        except Busy:
            refused.append(i)
            decided.release()

    clients = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    try:
        for t in clients:
            t.start()
        assert all(decided.acquire(timeout=WAIT_S) for _ in clients)  # every one checked before any is queued
        opened.set()
        for t in clients:
            t.join(WAIT_S)
        assert (len(accepted), len(refused)) == (1, 7)
    finally:
        opened.set()
        c.close()


def test_room_taken_at_the_door_is_given_back_once_queued_or_refused(container: SkillRoute) -> None:
    with pytest.raises(ModelNotFound):
        container.queries.submit([Ask(text="What is 2+2?", expert="nobody")])
    assert container.queries.waiting() == 0  # refused at admission: its room is not held for good
    assert container.queries.ask([Ask(text="What is 2+2?", k=1)])[0].status == "done"
    assert container.queries.waiting() == 0


class Unstorable(MockBackend):
    """A remote server's replies as a store cannot take them as sent: half an emoji (a lone
    surrogate) for a query marked EMOJI, a prompt token count past any integer column for HUGE."""

    def _write(self, request: GenerationRequest) -> Iterator[StreamEvent]:
        marked = " ".join(m.content for m in request.messages)
        for piece in super()._write(request):
            if isinstance(piece, Generation) and "EMOJI" in marked:
                piece = Generation(**{**piece.model_dump(), "text": piece.text + " \ud83d"})
            elif isinstance(piece, Generation) and "HUGE" in marked:
                piece = Generation(**{**piece.model_dump(), "prompt_tokens": 2**70})
            yield piece


def test_a_reply_the_driver_cannot_take_fails_its_query_alone(tmp_path: Path, embedder: Embedder) -> None:
    """A lone surrogate failed every query stored beside it with SQLite's UnicodeEncodeError (only
    SQLAlchemy's errors fell back to storing query by query), all left `accepted`. It is now
    stored as U+FFFD; a value the driver still refuses (an OverflowError) fails its query alone."""
    settings = quiet_settings(tmp_path)
    c = SkillRoute(settings, small_pool([mock_expert("alpha", "m1")]), factory=lambda s: Unstorable(s.key),
                   embedder=embedder)
    c.bootstrap()
    try:
        items = c.admission.admit([Ask(text=t, k=1) for t in ("What is 2+2?", "EMOJI: what is 4+4?",
                                                              "HUGE: what is 5+5?")])
        c.queries.run(items)
        plain, emoji, huge = c.queries.get_many([i.query_id for i in items])
    finally:
        c.close()
    assert (plain.status, emoji.status, huge.status) == ("done", "done", "failed")
    assert emoji.generations[0].text.endswith(" \ufffd")
    assert huge.error is not None and huge.error.startswith("its answer could not be stored: OverflowError")
