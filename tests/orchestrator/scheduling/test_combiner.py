"""Group commit: calls that queue while a group runs are run together next, each keeping its
own result or failure."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from orchestrator.scheduling.combiner import Combiner


def until(condition, within_s: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)  # between polls of the condition


class Recorder:
    """Doubles each item; item 0 holds its group until `gate` opens; negatives fail alone."""

    def __init__(self) -> None:
        self.groups: list[list[int]] = []
        self.gate = threading.Event()
        self.entered = threading.Event()

    def __call__(self, items: list[int]) -> list[int | BaseException]:
        self.groups.append(items)
        if 0 in items:
            self.entered.set()
            assert self.gate.wait(30)
        return [ValueError(f"bad {i}") if i < 0 else 2 * i for i in items]


def test_a_lone_call_runs_at_once_as_a_group_of_one() -> None:
    run = Recorder()
    assert Combiner(run).call(21) == 42
    assert run.groups == [[21]]


def queued_behind_a_held_group(combiner: Combiner[int, int], run: Recorder, pool: ThreadPoolExecutor,
                               items: list[int]) -> tuple[Future[int], list[Future[int]]]:
    """Call 0 (held by `run` until its gate opens), then `items` while it runs; open the gate
    once all of them are queued."""
    first = pool.submit(combiner.call, 0)
    assert run.entered.wait(30)
    later = [pool.submit(combiner.call, i) for i in items]
    until(lambda: len(combiner._queued) == len(items))
    run.gate.set()
    return first, later


def test_calls_queued_while_a_group_runs_are_run_together_next() -> None:
    run = Recorder()
    combiner: Combiner[int, int] = Combiner(run)
    with ThreadPoolExecutor(8) as pool:
        first, later = queued_behind_a_held_group(combiner, run, pool, [1, 2, 3, 4, 5])
        assert first.result() == 0 and [f.result() for f in later] == [2, 4, 6, 8, 10]
    assert run.groups[0] == [0] and sorted(run.groups[1]) == [1, 2, 3, 4, 5] and len(run.groups) == 2


def test_a_member_that_fails_fails_alone() -> None:
    run = Recorder()
    combiner: Combiner[int, int] = Combiner(run)
    with ThreadPoolExecutor(4) as pool:
        first, (good, bad) = queued_behind_a_held_group(combiner, run, pool, [3, -1])
        assert first.result() == 0 and good.result() == 6
        with pytest.raises(ValueError, match="bad -1"):
            bad.result()


def test_a_group_that_raises_tells_every_member() -> None:
    def broken(items: list[int]) -> list[int | BaseException]:
        raise RuntimeError("the store is gone")

    with pytest.raises(RuntimeError, match="the store is gone"):
        Combiner(broken).call(1)
