"""Refits run on a thread of their own, asks made meanwhile folded into one more."""

from __future__ import annotations

import threading

from orchestrator.services.refits import Refits


def test_asks_while_a_refit_runs_fold_into_one_more() -> None:
    started, release, runs = threading.Event(), threading.Event(), []

    def fit() -> None:
        runs.append(threading.current_thread().name)
        started.set()
        assert release.wait(30)

    refits = Refits(fit)
    refits.ask()
    assert started.wait(30)
    for _ in range(3):
        refits.ask()
    assert not refits.settled(0.05)
    release.set()
    assert refits.settled(30)
    assert runs == ["refit", "refit"]
    refits.close()


def test_a_failed_refit_leaves_the_thread_to_run_the_next() -> None:
    runs: list[int] = []

    def fit() -> None:
        runs.append(len(runs))
        if len(runs) == 1:
            raise RuntimeError("fit failed")

    refits = Refits(fit)
    refits.ask()
    assert refits.settled(30)
    refits.ask()
    assert refits.settled(30)
    assert runs == [0, 1]
    refits.close()


def test_close_ends_the_thread_and_later_asks_run_nothing() -> None:
    runs: list[int] = []
    refits = Refits(lambda: runs.append(1))
    refits.ask()
    assert refits.settled(30)
    thread = refits._thread
    refits.close()
    assert thread is not None
    thread.join(30)
    assert not thread.is_alive()
    refits.ask()
    assert refits.settled(1) and runs == [1]
