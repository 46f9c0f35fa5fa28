"""The batching window's backlog: the queries accepted and not yet taken into a batch, the bound
on them (`max_waiting`, checked at the door), and queued work fed to the window a chunk at a time.

What is accepted is never dropped, so the backlog is bounded before admission: a request takes
its room first (`room`), and holds it while it is admitted and queued. The check and the taking
are one step, so requests arriving together cannot all pass a check none of them is counted in yet.

One key may hold at most `KEY_SHARE` of that bound in queries accepted and not yet answered (a
429 past it): the bound is everyone's, and a key whose rate limit counts requests filled it with
ten batches of 1,000, every other key's query then refused 503 for as long as its answers took
(hours at seconds a query). Anonymous callers (no keys required) are one client: the bound alone.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from functools import partial

from orchestrator.domain import Ask
from orchestrator.scheduling.window import BatchingWindow
from orchestrator.services.admission import Admitted
from orchestrator.services.errors import Busy, RateLimited
from orchestrator.store.models import Query

log = logging.getLogger(__name__)
Chunk = tuple[list[Admitted], Future[list[Query]]]  # a chunk's queries, and the future its caller holds
KEY_SHARE = 0.5  # of `max_waiting`: what one key's unanswered queries may hold (see the module doc)
KEY_RETRY_S = 5.0


class Backlog:
    def __init__(self, window: BatchingWindow[Admitted, Query], max_waiting: int):
        self.window, self.max_waiting = window, max_waiting
        self._lock = threading.Lock()
        self._unfed = 0  # queued chunks not fed to the window yet (`queue`): still waiting
        self._reserved = 0  # room taken by requests still being admitted: not in the window yet
        self._held: Counter[int] = Counter()  # per key: queries accepted and not answered (`Hold`)

    def waiting(self) -> int:
        """Queries accepted (or being admitted) and not yet taken into a batch."""
        return self.window.waiting() + self._unfed + self._reserved

    @contextmanager
    def room(self, n: int, key: int | None = None) -> Iterator[Hold]:
        """Busy (503, nothing stored) when `n` more queries would take the backlog past
        `max_waiting`, RateLimited (429) when they would take `key`'s past its share; else room
        for them, held until the block ends (admitted and queued by then: counted by the window or
        `queue`, so never in neither), and the key's share until the `Hold` is answered. A request
        meeting an empty backlog (or holding nothing of the key's) is taken whatever its size."""
        with self._lock:
            self._check(n, key)
            self._reserved += n
            if key is not None:
                self._held[key] += n
        hold = Hold(self, key, n)
        try:
            yield hold
        finally:  # queued, or refused at admission: either way no longer this request's to hold
            self._count(reserved=-n)
            hold.settle()

    def _check(self, n: int, key: int | None) -> None:
        if (waiting := self.waiting()) and waiting + n > self.max_waiting:
            raise Busy(f"{waiting} queries are waiting to be answered (the bound is {self.max_waiting}): "
                       "try again later")
        share = int(self.max_waiting * KEY_SHARE)
        if key is not None and (held := self._held[key]) and held + n > share:
            raise RateLimited(f"this key has {held} queries accepted and not yet answered, and one key may hold "
                              f"{share} (half of the backlog's bound, so others are answered too): send these once "
                              "some are answered", KEY_RETRY_S)

    def _release(self, key: int, n: int) -> None:
        with self._lock:
            self._held[key] -= n
            if self._held[key] <= 0:  # bounded by the keys with queries in flight
                del self._held[key]

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


class Hold:
    """A key's share of the backlog (`Backlog.room`), kept by its accepted queries until their
    futures resolve (`until`); what was not handed over is given back when the room's block ends."""

    def __init__(self, backlog: Backlog, key: int | None, n: int):
        self._backlog, self._key, self._left = backlog, key, n

    def until(self, futures: Sequence[tuple[int, Future[list[Query]]]]) -> None:
        """Keep `size` of the share until each (size, future) resolves, answered or failed."""
        for size, done in futures:
            self._left -= size
            if self._key is not None:
                done.add_done_callback(partial(_released, self._backlog, self._key, size))

    def settle(self) -> None:
        if self._key is not None and self._left > 0:
            self._backlog._release(self._key, self._left)
        self._left = 0


def key_of(asks: Sequence[Ask]) -> int | None:
    """The key a request's queries were sent with (all stamped alike: `Ask.key_id`)."""
    return asks[0].key_id if asks else None


def _released(backlog: Backlog, key: int, size: int, _done: Future[list[Query]]) -> None:
    backlog._release(key, size)
