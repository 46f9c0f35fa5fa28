"""Queries queued (recovered, taken over) once the window is closed: their chunks fail at once, the
queries stay accepted for the next start to answer, and nobody waits on them forever (review r3:
a chunk fed to the closed window never resolved, and recover() hung on it)."""

from __future__ import annotations

import threading

import pytest

from orchestrator.container import SkillRoute
from orchestrator.domain import Ask
from orchestrator.scheduling.window import WindowClosed

WAIT_S = 30  # a future or thread not done by then is stuck


def test_chunks_queued_after_the_window_closed_fail_and_their_queries_stay_accepted(container: SkillRoute) -> None:
    queries = container.queries
    items = queries.admission.admit([Ask(text="What is 2+2?"), Ask(text="What is 3+3?")], None)
    queries.window.close()
    for _, done in queries.queue(items, "recovered queries"):
        with pytest.raises(WindowClosed):
            done.result(timeout=WAIT_S)
    assert {q.status for q in queries.get_many([i.query_id for i in items])} == {"accepted"}
    assert queries.waiting() == 0


def test_recover_after_the_window_closed_returns(container: SkillRoute) -> None:
    queries = container.queries
    queries.admission.admit([Ask(text="What is 2+2?")], None)
    queries.window.close()
    recovering = threading.Thread(target=queries.recover, daemon=True)
    recovering.start()
    recovering.join(WAIT_S)
    assert not recovering.is_alive()


def test_many_chunks_queued_after_the_window_closed_all_fail_and_none_is_left_waiting(
        container: SkillRoute) -> None:
    """Each chunk failed at once fed the next from its own callback: past ~330 chunks the stack
    overflowed, the rest never resolved (recover() waited forever) and `waiting` stayed up for good."""
    queries = container.queries
    items = queries.admission.admit([Ask(text="What is 2+2?")], None)
    queries.window.close()
    queries.window.max_batch = 1  # one chunk per query: a crash left 1,000 behind
    chunks = queries.queue(items * 1000, "recovered queries")
    assert len(chunks) == 1000
    assert all(isinstance(done.exception(timeout=WAIT_S), WindowClosed) for _, done in chunks)
    assert queries.waiting() == 0
