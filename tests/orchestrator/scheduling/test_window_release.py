"""A runner that releases items before its batch is done: a submission whose items are all
released resolves then; the rest resolve from what the batch returns; a batch that raises fails
only the submissions it had not resolved."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from orchestrator.scheduling.window import BatchingWindow, Release, Releasing

WAIT_S = 10  # an event not set by then means the order under test did not happen


class HeldBatch:
    """Releases the items named in `early` at once, then holds the batch until `end` is set;
    it returns every item upper-cased, or raises `fail` if given."""

    def __init__(self, early: set[str], fail: Exception | None = None):
        self.early, self.fail = early, fail
        self.released, self.end = threading.Event(), threading.Event()

    def __call__(self, items: list[str], release: Release[str]) -> list[str]:
        for at, item in enumerate(items):
            if item in self.early:
                release(at, f"early {item}")
        self.released.set()
        assert self.end.wait(WAIT_S)
        if self.fail is not None:
            raise self.fail
        return [x.upper() for x in items]


def window_of(run: Callable[[list[str], Release[str]], list[str]]) -> BatchingWindow[str, str]:
    return BatchingWindow(Releasing(run), max_batch=4, max_wait_s=WAIT_S)  # the batch closes on size


def test_a_submission_all_released_resolves_while_its_batch_runs() -> None:
    held = HeldBatch(early={"a", "b"})
    window = window_of(held)
    both, half = window.submit(["a", "b"]), window.submit(["c", "d"])
    assert both.result(WAIT_S) == ["early a", "early b"]
    assert held.released.is_set() and not half.done()
    held.end.set()
    assert half.result(WAIT_S) == ["C", "D"]
    window.close()


def test_a_submission_released_in_part_resolves_at_the_batch_s_end_with_its_results() -> None:
    held = HeldBatch(early={"a", "c"})
    window = window_of(held)
    first, second = window.submit(["a", "b"]), window.submit(["c", "d"])
    assert held.released.wait(WAIT_S) and not first.done() and not second.done()
    held.end.set()
    assert first.result(WAIT_S) == ["A", "B"] and second.result(WAIT_S) == ["C", "D"]
    window.close()


def test_a_batch_that_raises_fails_only_the_submissions_not_resolved_yet() -> None:
    held = HeldBatch(early={"a"}, fail=RuntimeError("the store went away"))
    window = window_of(held)
    done, lost = window.submit(["a"]), window.submit(["b", "c", "d"])
    assert done.result(WAIT_S) == ["early a"]
    held.end.set()
    with pytest.raises(RuntimeError, match="the store went away"):
        lost.result(WAIT_S)
    assert done.result(0) == ["early a"]
    window.close()


def test_a_release_after_the_batch_ended_is_ignored() -> None:
    late: list[Release[str]] = []

    def run(items: list[str], release: Release[str]) -> list[str]:
        late.append(release)
        return [x.upper() for x in items]

    window: BatchingWindow[str, str] = BatchingWindow(Releasing(run), max_batch=1, max_wait_s=0)
    assert window.submit(["a"]).result(WAIT_S) == ["A"]
    late[0](0, "too late")  # no second result for a resolved future (it would raise)
    window.close()
