"""A batch (and recovery) feeds the window one chunk at a time: a live query sent while a chunk
runs is taken before the batch's next chunk, and a chunk that fails does not strand the rest."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path

import pytest

from experts.mock import MockBackend
from experts.types import BaseModelSpec, GenerationRequest
from orchestrator.container import SkillRoute
from orchestrator.domain import Ask
from orchestrator.services.admission import Admitted
from orchestrator.services.batches import BatchEntry
from orchestrator.settings import BatchingSettings
from orchestrator.store.models import Query
from skills.embedder import Embedder
from tests.orchestrator.conftest import mock_expert, quiet_settings, small_pool

WAIT_S = 30  # an event not set by then means the order under test did not happen
CHUNK = 2


class Gate:
    """Holds the runner on a query marked HOLD until opened, saying when it got there."""

    def __init__(self) -> None:
        self.reached, self.opened = threading.Event(), threading.Event()

    def __call__(self, request: GenerationRequest) -> str | None:
        if not any("HOLD" in m.content for m in request.messages):
            return None
        self.reached.set()
        return None if self.opened.wait(WAIT_S) else "the gate never opened"


@pytest.fixture
def gate() -> Gate:
    return Gate()


@pytest.fixture
def service(tmp_path: Path, embedder: Embedder, gate: Gate) -> Iterator[SkillRoute]:
    """A service whose window takes CHUNK queries a batch, on mocks that honour `gate`."""
    def mocks(spec: BaseModelSpec) -> MockBackend:
        return MockBackend(spec.key, fault=gate)

    settings = quiet_settings(tmp_path, batching=BatchingSettings(max_batch=CHUNK))
    c = SkillRoute(settings, small_pool([mock_expert("alpha", "m1")]), factory=mocks, embedder=embedder)
    c.bootstrap()
    yield c
    c.close()


def asks(n: int, first: str = "What is 0+1?") -> list[Ask]:
    return [Ask(text=first, k=1, seed=0)] + [Ask(text=f"What is {i}+1?", k=1, seed=i) for i in range(1, n)]


def test_a_live_query_sent_during_a_batch_is_taken_before_the_batch_s_next_chunk(
        service: SkillRoute, gate: Gate, monkeypatch: pytest.MonkeyPatch) -> None:
    window, chunks = service.queries.window, spy_on_chunks(service, monkeypatch)
    before = len(window.batch_sizes)
    service.batches.submit([BatchEntry(a) for a in asks(3 * CHUNK, "HOLD: what is 0+1?")])
    assert gate.reached.wait(WAIT_S)  # the batch's first chunk is running
    assert service.queries.waiting() == 2 * CHUNK  # the chunks not fed yet count against the backlog bound
    live = service.queries.submit([Ask(text="What is 6*7?", k=1)])
    gate.opened.set()
    assert live.result(WAIT_S)[0].status == "done"
    assert [q.status for _, done in chunks for q in done.result(WAIT_S)] == ["done"] * 3 * CHUNK
    # the live query (alone: 1) ran right after the chunk it arrived during, not after the whole batch
    assert list(window.batch_sizes)[before:] == [CHUNK, 1, CHUNK, CHUNK]


def spy_on_chunks(service: SkillRoute, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, Future[list[Query]]]]:
    """Every chunk `QueryService.queue` is given, with its future, to wait on."""
    chunks: list[tuple[int, Future[list[Query]]]] = []
    queue = service.queries.queue

    def spy(items: Sequence[Admitted], what: str) -> list[tuple[int, Future[list[Query]]]]:
        chunks.extend(queued := queue(items, what))
        return queued

    monkeypatch.setattr(service.queries, "queue", spy)
    return chunks


def test_a_chunk_after_one_that_failed_is_still_fed_and_answered(service: SkillRoute,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The pipeline raises on the first chunk (its queries stored failed); the next chunk, fed only
    once that one is done, must still reach the window: its queries are stored, and were accepted."""
    answer = service.queries.pipeline.answer

    def breaks_on_marked(snapshot, asks, *args, **kwargs):  # type: ignore[no-untyped-def]
        if any("BREAK" in a.text for a in asks):
            raise RuntimeError("the device fell over")
        return answer(snapshot, asks, *args, **kwargs)

    monkeypatch.setattr(service.queries.pipeline, "answer", breaks_on_marked)
    items = service.queries.admission.admit(asks(2 * CHUNK, "BREAK: what is 0+1?"))
    (_, first), (_, second) = service.queries.queue(items, "a test batch")
    with pytest.raises(RuntimeError, match="fell over"):
        first.result(WAIT_S)
    assert [q.status for q in second.result(WAIT_S)] == ["done"] * CHUNK
    assert [q.status for q in service.queries.get_many([i.query_id for i in items[:CHUNK]])] == ["failed"] * CHUNK
