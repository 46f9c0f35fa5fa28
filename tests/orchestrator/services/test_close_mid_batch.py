"""A batch still running when the service closes (past the window's bounded wait) is stored and
answered at its end, though the storer has stopped (review r2: its finished query went to the dead
storer, the batch waited forever in `drain`, the row stayed accepted and the client had no reply)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from orchestrator.domain import Ask
from orchestrator.scheduling import window
from orchestrator.services.storing import Early, EarlyStore
from orchestrator.settings import BatchingSettings
from skills.embedder import Embedder
from tests.orchestrator.pipeline.held import SLOW, WAIT_S, Hold, two_workers


def test_a_batch_outliving_the_close_is_still_stored_and_answered(
        tmp_path: Path, embedder: Embedder, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(window, "CLOSE_WAIT_S", 0.0)  # as when a batch runs past the window's 30 s
    hold = Hold()
    c = two_workers(tmp_path, embedder, hold, BatchingSettings(max_batch=2, wait_ms=0))
    try:
        done = c.queries.submit([Ask(text=SLOW, expert="beta")])
        assert hold.entered.wait(WAIT_S)
        c.queries.close()  # the window's wait is spent at once; the storer stops
        hold.release.set()
        (row,) = done.result(WAIT_S)
        assert row.status == "done" and c.queries.get(row.id).status == "done"
        c.queries.window._thread.join(WAIT_S)
        assert not c.queries.window._thread.is_alive()
    finally:
        hold.release.set()
        c.close()


def test_a_query_handed_to_a_closed_storer_is_left_to_its_batch() -> None:
    stored: list[int] = []
    storer = EarlyStore(lambda group: stored.extend(qid for qid, _, _ in group) or {}, lambda ids: [])
    storer.close()
    batch = Early()
    storer.put((1, None, None), batch, 0)  # type: ignore[arg-type]  # never stored: only its id is read
    draining = threading.Thread(target=storer.drain, args=(batch,), daemon=True)
    draining.start()
    draining.join(WAIT_S)
    assert not draining.is_alive()  # nothing was handed to the stopped thread to wait for
    assert stored == [] and batch.settled == set()
