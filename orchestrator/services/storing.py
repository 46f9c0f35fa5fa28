"""Storing a batch's queries as they finish, so each client's reply goes out then, not when its
batch's longest query is done (a short query batched with long ones was written at 4 s and
returned at 12 s).

One thread per service stores them: the device threads only hand each finished query over. It
commits whatever has been handed over since its last commit as one transaction, so a batch whose
queries finish together is still stored in a few transactions, not one per query, and the store
is not written by many threads at once. A group the store refuses is stored query by query, as a
whole batch's is (`QueryService._store`). A query stored, or stored failed, is released to the
batching window at once (`Early.release`); one the storer could not store at all (the store
gone) is left to the batch's end, which stores it again and raises as before if it still cannot.
So is one handed over once the storer has closed (a batch that outlived the window's close): the
stopped thread would never store it, and its batch would wait in `drain` forever.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from orchestrator.domain import Ask, Outcome
from orchestrator.scheduling.window import Release
from orchestrator.store.models import Query

log = logging.getLogger(__name__)
Answered = tuple[int, Ask, Outcome]  # (query id, what it asked, its outcome)
StoreMany = Callable[[Sequence[Answered]], dict[int, Query]]  # the rows stored done (or failed by its outcome)
ReadMany = Callable[[Sequence[int]], list[Query]]
CLOSE_WAIT_S = 60.0  # a close waits this long for the last group's commit


@dataclass
class Early:
    """One batch's queries the storer stored: their places in the window's batch go to `release`
    (None: nobody waits for them early). Read by the batch only after `EarlyStore.drain`."""

    release: Release[Query] | None = None
    rows: dict[int, Query] = field(default_factory=dict)  # stored with their outcome, by id
    settled: set[int] = field(default_factory=set)  # rows or not: stored failed where the store refused them

    def landed(self, place: int, query_id: int, row: Query, stored: bool) -> None:
        if stored:
            self.rows[query_id] = row
        self.settled.add(query_id)
        if self.release is not None:
            self.release(place, row)


@dataclass(frozen=True)
class _Handed:
    finished: Answered
    batch: Early
    place: int  # in the window's batch


class EarlyStore:
    """The storing thread (see the module doc): `store` stores a group (falling back query by
    query, storing failed what it cannot store), `read` reads back those it did not return."""

    def __init__(self, store: StoreMany, read: ReadMany, name: str = "storer"):
        self._store, self._read = store, read
        self._handed: list[_Handed] = []
        self._committing: list[_Handed] = []  # the group being stored now
        self._cond, self._closed = threading.Condition(), False
        self._stopped = False  # the thread has exited: nothing handed over will be stored by it
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def put(self, finished: Answered, batch: Early, place: int) -> None:
        """Store a finished query; its row goes to `batch` once stored. Never blocks on the store.
        Once closed, it is not taken: left unsettled, its batch's end stores it."""
        with self._cond:
            if self._closed:
                return
            self._handed.append(_Handed(finished, batch, place))
            self._cond.notify_all()

    def drain(self, batch: Early) -> None:
        """Wait until everything `batch` handed over is stored (or its failure logged). Only its
        own: batches on other devices run at once, and theirs could keep the storer busy for good."""
        def stored() -> bool:
            return self._stopped or not any(h.batch is batch for h in (*self._handed, *self._committing))

        with self._cond:
            self._cond.wait_for(stored)

    def close(self) -> None:
        """Store what is handed over, then stop the thread (idempotent)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=CLOSE_WAIT_S)

    def _loop(self) -> None:
        try:
            while (group := self._next()) is not None:
                self._stored(group)
        finally:  # however it ends, a batch draining must not wait for a thread that is gone
            with self._cond:
                self._stopped = True
                self._cond.notify_all()

    def _stored(self, group: list[_Handed]) -> None:
        try:
            self._commit(group)
        except Exception:  # the store is gone: the batch's end stores these again, and raises
            log.exception("storing %d finished queries failed; their batch stores them at its end", len(group))
        with self._cond:
            self._committing = []
            self._cond.notify_all()

    def _next(self) -> list[_Handed] | None:
        """Everything handed over since the last commit; None once closed with nothing left."""
        with self._cond:
            self._cond.wait_for(lambda: bool(self._handed) or self._closed)
            if not self._handed:
                return None
            group, self._handed = self._handed, []
            self._committing = group
            return group

    def _commit(self, group: Sequence[_Handed]) -> None:
        rows = self._store([h.finished for h in group])
        missing = [h.finished[0] for h in group if h.finished[0] not in rows]
        read = {q.id: q for q in self._read(missing)} if missing else {}  # stored failed, or finished elsewhere
        for h in group:
            qid = h.finished[0]
            if (row := rows.get(qid) or read.get(qid)) is not None:
                h.batch.landed(h.place, qid, row, qid in rows)


class InFlight:
    """The batches running now. A batch's clients may have their rows before it ends, and its
    lessons are handed to the learner only at its end: waiting for what they taught (`learned`)
    first waits for the batches running when asked."""

    def __init__(self) -> None:
        self._running: set[int] = set()
        self._cond, self._next = threading.Condition(), 0

    def begin(self) -> int:
        with self._cond:
            self._next += 1
            self._running.add(self._next)
            return self._next

    def end(self, batch: int) -> None:
        with self._cond:
            self._running.discard(batch)
            self._cond.notify_all()

    def idle(self) -> bool:
        """Whether no batch runs now."""
        with self._cond:
            return not self._running

    def wait(self) -> None:
        """Until every batch running now has ended."""
        with self._cond:
            now = set(self._running)
            self._cond.wait_for(lambda: not now & self._running)
