"""A submission to a closed window fails at once, naming why, rather than queue behind the stop
sentinel where no batch would ever take it (review r3: its future never resolved, its waiters hung
and the window counted its items waiting forever)."""

from __future__ import annotations

import threading

import pytest

from orchestrator.scheduling.window import BatchingWindow, WindowClosed

WAIT_S = 30  # an event not set by then means the order under test did not happen


def test_a_submission_after_the_close_fails_at_once_and_is_not_counted_waiting() -> None:
    window: BatchingWindow[str, str] = BatchingWindow(lambda items: items, max_batch=2, max_wait_s=0)
    window.close()
    late = window.submit(["late"])
    with pytest.raises(WindowClosed):
        late.result(timeout=WAIT_S)
    assert window.waiting() == 0


def test_what_was_submitted_before_the_close_still_runs() -> None:
    entered, release = threading.Event(), threading.Event()

    def run(items: list[str]) -> list[str]:
        entered.set()
        assert release.wait(WAIT_S)
        return items

    window: BatchingWindow[str, str] = BatchingWindow(run, max_batch=1, max_wait_s=0)
    first, second = window.submit(["a"]), window.submit(["b"])
    assert entered.wait(WAIT_S)
    closer = threading.Thread(target=window.close)
    closer.start()
    release.set()
    closer.join(WAIT_S)
    assert first.result(WAIT_S) == ["a"] and second.result(WAIT_S) == ["b"]
    with pytest.raises(WindowClosed):
        window.submit(["c"]).result(timeout=WAIT_S)
