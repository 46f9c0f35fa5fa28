"""The learner behind the batching window: the lessons answered batches taught, applied by one
background thread, one batch at a time, in the order they were handed over.

Applying lessons rebuilds the router (0.2 s at the memory's bound) and every `refit_every`-th lesson
refits its parameters (28 s at scale). Done on the batch's thread, every client of the batch waited
for it before its reply and every query queued behind it waited too; handed over here, a batch is
answered as soon as it is stored.

Bounded by blocking, not by merging: past `bound` batches waiting, a batch ending waits for room
(and the window's next batch on its workers with it). Only
competitions and explorations teach here, at most `per_minute` of them, so the bound (64 batches:
minutes of lessons at the default cap, beyond any refit) is met only when learning is slower than
traffic for good; waiting then is back-pressure, and no lesson is dropped, reordered or learned in a
merged call whose one failure would lose other batches' lessons too. Waiting lessons are held in
memory only (`pool.learn` stores them): the bound also bounds what a crash loses.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")
PENDING_BATCHES = 64
CLOSE_WAIT_S = 120.0  # a close waits this long for what is queued: a refit at scale takes ~30 s


class LearningQueue(Generic[T]):
    def __init__(self, learn: Callable[[T], None], bound: int = PENDING_BATCHES):
        self._learn = learn
        self._q: queue.Queue[T | None] = queue.Queue(maxsize=bound)
        # a submit's closed check and put, and a close's flag and sentinel, are one step each: a
        # close between the two left lessons behind the sentinel, unlearned, and `learned` waiting
        self._closed, self._lock = False, threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="learner", daemon=True)
        self._thread.start()

    def submit(self, taught: T) -> None:
        """Queue a batch's lessons; with `bound` batches waiting, wait for room (see the module doc)."""
        with self._lock:  # held while waiting for room: the learner frees it without the lock
            if self._closed:  # only a batch that outlived the window's close: nothing would learn it
                log.warning("lessons handed over after the learner closed were not learned")
                return
            self._q.put(taught)

    def learned(self) -> None:
        """Wait until every batch queued so far is learned (or its failure logged)."""
        self._q.join()

    def close(self) -> None:
        """Learn what is queued, then stop the thread (idempotent). Close the window first: its
        last batches hand their lessons over as they finish."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._q.put(None)
        self._thread.join(timeout=CLOSE_WAIT_S)
        if self._thread.is_alive():
            log.warning("the learner had not finished after %.0f s; its queued lessons are lost", CLOSE_WAIT_S)
        else:
            self._drop_leftovers()

    def _drop_leftovers(self) -> None:
        """Mark done what is still queued once the thread is gone (none, unless a put got past the
        lock), so `learned` returns rather than wait for lessons nothing will learn."""
        dropped = 0
        while True:
            try:
                self._q.get_nowait()
            except queue.Empty:
                break
            self._q.task_done()
            dropped += 1
        if dropped:
            log.warning("%d batch(es) of lessons queued behind the learner's stop were not learned", dropped)

    def _loop(self) -> None:
        while (taught := self._q.get()) is not None:
            try:
                self._learn(taught)
            except Exception:  # the thread must outlive a failure, or every later batch waits forever
                log.exception("learning from a batch failed; its queries are stored")
            finally:
                self._q.task_done()
        self._q.task_done()
