"""The profiler's queue outlives a run that raised: the next registration is still profiled."""

from __future__ import annotations

import threading

from orchestrator.services.profiling_queue import ProfilingQueue

WAIT_S = 20  # not done by then: the thread is gone


def test_a_run_that_raised_leaves_the_queue_profiling_the_next() -> None:
    """One step of a run (the pool's refresh, on a locked database) raised: the thread died, and
    every later registration stayed `profiling` until a restart (`join` hung)."""
    done: list[list[int]] = []
    second = threading.Event()

    def work(ids: list[int]) -> None:
        if ids == [1]:
            raise RuntimeError("database is locked")
        done.append(ids)
        second.set()

    q = ProfilingQueue(work)
    q.submit([1])
    q.submit([2])
    try:
        assert second.wait(WAIT_S) and done == [[2]]
    finally:
        q.close()
