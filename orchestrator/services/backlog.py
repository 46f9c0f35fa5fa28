"""The batching window's backlog: the queries accepted and not yet taken into a batch, the bound
on them (`max_waiting`, checked at the door), and queued work fed to the window a chunk at a time.

What is accepted is never dropped, so the backlog is bounded before admission: a request takes
its room first (`room`), and holds it while it is admitted and queued. The check and the taking
are one step, so requests arriving together cannot all pass a check none of them is counted in yet.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from functools import partial

from orchestrator.scheduling.window import BatchingWindow
from orchestrator.services.admission import Admitted
from orchestrator.services.errors import Busy
from orchestrator.store.models import Query

log = logging.getLogger(__name__)
Chunk = tuple[list[Admitted], Future[list[Query]]]  # a chunk's queries, and the future its caller holds


class Backlog:
    def __init__(self, window: BatchingWindow[Admitted, Query], max_waiting: int):
        self.window, self.max_waiting = window, max_waiting
        self._lock = threading.Lock()
        self._unfed = 0  # queued chunks not fed to the window yet (`queue`): still waiting
        self._reserved = 0  # room taken by requests still being admitted: not in the window yet

    def waiting(self) -> int:
        """Queries accepted (or being admitted) and not yet taken into a batch."""
        return self.window.waiting() + self._unfed + self._reserved

    @contextmanager
    def room(self, n: int) -> Iterator[None]:
        """Busy (503, nothing stored) when `n` more queries would take the backlog past
        `max_waiting`; else room for them, held until the block ends (admitted and queued by
        then: counted by the window or `queue`, so never in neither). A request meeting an empty
        backlog is taken whatever its size (a batch has a size limit)."""
        with self._lock:
            if (waiting := self.waiting()) and waiting + n > self.max_waiting:
                raise Busy(f"{waiting} queries are waiting to be answered (the bound is {self.max_waiting}): "
                           "try again later")
            self._reserved += n
        try:
            yield
        finally:  # queued, or refused at admission: either way no longer this request's to hold
            self._count(reserved=-n)

    def queue(self, items: Sequence[Admitted], what: str) -> list[tuple[int, Future[list[Query]]]]:
        """Queue admitted queries in window-sized chunks, each fed to the window only once the one
        before it is done, so a live query sent meanwhile is taken before the next chunk (queued
        all at once, the window's FIFO held live traffic until the whole batch was answered); each
        chunk's size and future. A chunk that raises is logged as `what`: its queries were stored
        as failed (the pipeline failed), or left accepted where the store took nothing at all
        or the window had closed (`WindowClosed`, a shutdown), for the next start to answer; the
        chunks after it are fed all the same (failing at once once the window is closed)."""
        size = self.window.max_batch
        chunks: deque[Chunk] = deque((list(items[at:at + size]), _running()) for at in range(0, len(items), size))
        futures = [(len(c), done) for c, done in chunks]
        self._count(unfed=len(items))
        self._feed(chunks, what)
        return futures

    def _feed(self, left: deque[Chunk], what: str) -> None:
        """Feed chunks until one is running: once it is done, its callback feeds the rest. One done
        at once (the window closed) is followed here in a loop: fed from its own callback, each
        closed chunk nested a call, and past ~330 the stack overflowed and the rest never resolved."""
        passed: list[tuple[Future[list[Query]], Future[list[Query]]]] = []
        while left:
            chunk, relay = left.popleft()
            done = self.window.submit(chunk)
            self._count(unfed=-len(chunk))  # after: counted waiting in the window first, never in neither
            if not done.done():
                done.add_done_callback(partial(self._fed, left, relay, what))
                break
            passed.append((done, relay))
        for done, relay in passed:  # after the next chunk is fed: a waiter sees it queued
            _pass_on(what, done, relay)

    def _fed(self, left: deque[Chunk], relay: Future[list[Query]], what: str, done: Future[list[Query]]) -> None:
        self._feed(left, what)  # before the relay: a waiter sees the next chunk queued
        _pass_on(what, done, relay)

    def _count(self, unfed: int = 0, reserved: int = 0) -> None:
        with self._lock:
            self._unfed += unfed
            self._reserved += reserved


def _running() -> Future[list[Query]]:
    """A future no caller can cancel, as the window's are: the chunk runs whoever stops waiting."""
    done: Future[list[Query]] = Future()
    done.set_running_or_notify_cancel()
    return done


def _pass_on(what: str, source: Future[list[Query]], target: Future[list[Query]]) -> None:
    """Hand a fed chunk's outcome to the future its caller holds, logging a failure as `what`."""
    if (error := source.exception()) is not None:
        log.warning("%s failed: %s", what, error)
        target.set_exception(error)
    else:
        target.set_result(source.result())
