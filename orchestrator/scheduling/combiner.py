"""Group commit: calls that arrive while one group runs are run together as the next group.

Admission routes each query and writes it before any work; one at a time, every request pays a
routing pass and a commit of its own, and under load the commits queue behind SQLite's single
writer. Combined, the requests that arrived while a group was being stored are routed in one
matrix product and stored in one transaction. Nothing waits for a timer: a lone call runs at
once as a group of one, and under load the group is whatever queued meanwhile.

The caller's own thread does the work (no extra thread): the first caller to find no group
running leads the next one, runs it, hands each member its result, and wakes the others; one
of those still waiting leads the group after. Each leader runs one group, the one holding its
own call, so no caller is kept working for others indefinitely.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Call(Generic[T, R]):
    item: T
    done: bool = False
    value: R | None = None
    error: BaseException | None = None

    def outcome(self) -> R:
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]  # set with done, before anyone reads it


class Combiner(Generic[T, R]):
    """`call(item)` returns `run_group(items)[i]` for its item, run in a group with the calls
    that queued beside it. `run_group` returns one result or exception per item, in order, so
    one member's failure stays its own; if it raises, every member of the group gets that."""

    def __init__(self, run_group: Callable[[list[T]], Sequence[R | BaseException]]):
        self._run = run_group
        self._cond = threading.Condition()
        self._queued: list[_Call[T, R]] = []
        self._running = False

    def call(self, item: T) -> R:
        mine: _Call[T, R] = _Call(item)
        with self._cond:
            self._queued.append(mine)
            while self._running and not mine.done:
                self._cond.wait()
            if mine.done:
                return mine.outcome()
            self._running = True
            group, self._queued = self._queued, []
        try:
            self._settle(group)
        finally:
            with self._cond:
                self._running = False
                self._cond.notify_all()
        return mine.outcome()

    def _settle(self, group: list[_Call[T, R]]) -> None:
        try:
            results = list(self._run([c.item for c in group]))
        except BaseException as exc:  # the group's shared step failed: every member hears why
            results = [exc] * len(group)
        for c, r in zip(group, results, strict=True):
            if isinstance(r, BaseException):
                c.error = r
            else:
                c.value = r
            c.done = True
