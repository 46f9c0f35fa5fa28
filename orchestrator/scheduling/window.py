"""The online batching window: queries that arrive close together are answered as one batch.

A batch closes when it holds `max_batch` queries or `max_wait_s` after its first query
arrived, whichever is first, so a lone query waits at most `max_wait_s` (one that queued behind
a running batch past its window takes only what is queued with it). With `max_wait_s` 0
(the settings' default `batching.wait_ms`) a batch is whatever was queued when the window got
to it: nothing waits for a timer, and under load the requests that arrive while one batch runs
form the next. A timer only delays a lone query: 50 ms of it was 7% of a short answer from the 0.5B model
(`bench/overhead.py`), and at 200 clients the batches formed while the device was busy anyway.
With `weigh` (an item's predicted work, e.g. prompt and output tokens) a batch also closes once
it holds `max_work`, so one batch of long queries cannot hold a short one for long. A submission
that would take a batch past either limit opens the next batch instead; submissions are never
split across batches, so one larger than the limits runs alone. A device does one batch at a
time, which is what keeps model loads at the planner's floor. With `lanes` (the devices an
item's generation takes, e.g. its experts' workers) a batch starts as soon as no running batch
holds one of its devices, so batches on different devices, or on none (every expert served
elsewhere), run at once (at most `max_running` on none: slow servers filling them keep no
device's work waiting); a submission that shares a device with a running
batch opens a later batch, which waits for it. One whose devices are free starts ahead of
submissions queued before it that wait for theirs, but never on a device one of those waits
for: none waits for good. A batch holds its devices until it ends, so it takes only submissions
that share a device with it (or, on none, take none): work on another device, queued with it,
forms a batch of its own that runs beside it, rather than waiting for its generation. Without
lanes every batch shares one: they run one at a time, in order.

A runner that can say when an item is done before its batch is (`Releasing`: a short query
stored while the batch's long ones still run) releases it; a submission whose items have all
been released is resolved then, the rest once the batch returns. A batch that raises fails only
the submissions it had not resolved.

Closing runs what was submitted before the close; a submission after it fails at once
(`WindowClosed`): queued behind the stop, no batch would ever take it and its future never resolved.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Generic, TypeVar

from orchestrator.probe import NULL_PROBE, Probe

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
Release = Callable[[int, R], None]  # (an item's place in the batch, its result), before the batch returns
RECENT_BATCHES = 200  # batch sizes kept for the dashboard and tests (the metrics keep them all)
CLOSE_WAIT_S = 30.0  # a close waits this long for the batches submitted before it
MAX_RUNNING = 8  # batches at once on no device (each holds a pool of threads); those on one are one per device
ONE_LANE = frozenset({""})  # without `lanes`, every batch takes this one: they run in turn
LOOKAHEAD = 64  # queued submissions a batch looks past for ones on its devices (each is read)
EVERY = "*"  # a lane that meets every other: a submission whose devices could not be read
Lanes = Callable[[T], Collection[str]]  # the devices an item's batch generates on


class WindowClosed(RuntimeError):
    """Submitted after the window closed: nothing will answer it here."""


@dataclass
class _Submission(Generic[T, R]):
    items: list[T]
    arrived: float  # on the window's clock: a batch's window runs from its first query's arrival
    future: Future[list[R]] = field(default_factory=Future)
    lanes: frozenset[str] | None = None  # its devices when last read (`_startable`), while it waits


@dataclass(frozen=True)
class Releasing(Generic[T, R]):
    """A batch runner that releases each item's result as soon as it has it (any thread, each
    item at most once), and returns every result in order at the end."""

    run: Callable[[list[T], Release[R]], list[R]]


class BatchingWindow(Generic[T, R]):
    def __init__(self, run_batch: Callable[[list[T]], list[R]] | Releasing[T, R], max_batch: int, max_wait_s: float,
                 name: str = "batching-window", probe: Probe = NULL_PROBE,
                 weigh: Callable[[T], float] | None = None, max_work: float = float("inf"),
                 clock: Callable[[], float] = time.monotonic, lanes: Lanes[T] | None = None,
                 max_running: int = MAX_RUNNING):
        if max_running < 1:  # batches on no device would never start
            raise ValueError(f"max_running must be at least 1, not {max_running}")
        self.probe, self._clock = probe, clock
        self._lanes, self.max_running = lanes, max_running
        self._run = run_batch.run if isinstance(run_batch, Releasing) else _releasing_nothing(run_batch)
        self.max_batch, self.max_wait_s = max_batch, max_wait_s
        self.weigh, self.max_work = weigh, max_work
        # submissions not in a batch yet, the running batches' lanes by number, and the close: one
        # condition, as a submission, a batch's end and the close each may let a batch start
        self._pending: deque[_Submission[T, R]] = deque()
        self._running: dict[int, frozenset[str]] = {}
        self._cond, self._started, self._closed = threading.Condition(), 0, False
        self._waiting, self._count_lock = 0, threading.Lock()  # items queued, not yet taken into a batch
        self.batch_sizes: deque[int] = deque(maxlen=RECENT_BATCHES)  # the newest executed batches' sizes
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, items: Sequence[T]) -> Future[list[R]]:
        """Queue the items; the future resolves to their results in order. It is running from
        the start, so a caller that stops waiting (a dropped client) cannot cancel work that
        others share: the items run and their results are kept."""
        sub: _Submission[T, R] = _Submission(list(items), self._clock())
        sub.future.set_running_or_notify_cancel()
        if not self._queued(sub):  # failed outside the lock: its callbacks may submit again
            sub.future.set_exception(WindowClosed("the batching window is closed: nothing more is answered here"))
        return sub.future

    def _queued(self, sub: _Submission[T, R]) -> bool:
        """Queue `sub` unless the window is closed (checked with the append, as one step against `close`)."""
        with self._cond:
            if self._closed:
                return False
            self._counted(len(sub.items))
            self._pending.append(sub)
            self._cond.notify_all()
            return True

    def _lanes_of(self, subs: Sequence[_Submission[T, R]]) -> frozenset[str]:
        """The devices the submissions take, read now, as the batch starts: an expert placed
        on another worker since they were submitted runs there. A read that raises must not end
        the window's thread (every query after it would wait for good): they take the one lane."""
        if self._lanes is None:
            return ONE_LANE
        try:
            return frozenset(lane for sub in subs for item in sub.items for lane in self._lanes(item))
        except Exception:
            log.exception("reading a submission's devices failed; it runs as if it needed every one")
            return frozenset({EVERY})

    def reread(self) -> None:
        """Read every waiting submission's devices again (experts were placed anew: one waiting
        for a busy worker may find its expert on an idle one now)."""
        with self._cond:
            for sub in self._pending:
                sub.lanes = None
            self._cond.notify_all()

    def depth(self) -> int:
        """Submissions waiting for a batch (not counting those in running batches)."""
        return len(self._pending)

    def waiting(self) -> int:
        """Items waiting for a batch (not counting those in running batches)."""
        return self._waiting

    def running(self) -> int:
        """Batches running now: more than one only where they share no device (`lanes`)."""
        with self._cond:
            return len(self._running)

    def _counted(self, change: int) -> None:
        with self._count_lock:
            self._waiting += change

    def close(self) -> None:
        """Stop taking submissions; wait (bounded) for those already queued to run."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=CLOSE_WAIT_S)

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            self._start(*batch)
        with self._cond:  # closing: what was submitted before it still runs
            self._cond.wait_for(lambda: not self._running)

    def _take(self) -> tuple[int, list[_Submission[T, R]]] | None:
        """The next batch, its lanes held; None once closed with nothing left to run. It begins
        with the first submission whose devices are free, and takes the ones queued after it
        while they fit and theirs are free too (`_gather`)."""
        with self._cond:
            while (found := self._startable()) is None:
                if self._closed and not self._pending:
                    return None
                self._cond.wait()
            batch, lanes = self._gather(*found)
            self._started += 1
            self._running[self._started] = lanes
            return self._started, batch

    def _startable(self) -> tuple[int, set[str]] | None:
        """The place of the first submission that can start now, and the devices the ones after it
        may not take (running batches', and those each earlier waiting one waits for: a later one
        never takes a device before one waiting for it, so none waits for good). The caller holds
        `_cond`. A waiting one's devices are read again only once those last read are free (each
        look would otherwise read every queued query's): the one that starts is read as it does.
        With `max_running` batches on no device running, one on none waits (unread) for them."""
        far_full = sum(not lanes for lanes in self._running.values()) >= self.max_running
        busy: set[str] = set().union(*self._running.values())
        for at, sub in enumerate(self._pending):
            if far_full and sub.lanes == frozenset():  # waits for a batch on none to end, not a device
                continue
            if sub.lanes is None or not _meet(sub.lanes, busy):
                sub.lanes = self._lanes_of([sub])
            if not _meet(sub.lanes, busy) and (sub.lanes or not far_full):
                return at, busy
            busy |= sub.lanes
        return None

    def _gather(self, at: int, busy: set[str]) -> tuple[list[_Submission[T, R]], frozenset[str]]:
        """From the submission at `at`, take those queued after it that share a device with the
        batch (or, where it takes none, take none either), until the batch is full, the next of
        those would overfill it, or the window since the first has passed (the caller holds `_cond`; waiting
        for the window lets go of it). A batch holds its devices until it ends: one on other
        devices, or on none where the batch takes some, would keep them from work that could run
        beside it, so it is passed over for a later batch, as is one waiting for a device; no later
        one takes what those passed over take. The batch, and the devices it takes."""
        first = self._pending[at]
        del self._pending[at]
        lanes = first.lanes or frozenset()
        batch, size, work, passed = [first], len(first.items), self._work(first), 0
        deadline = first.arrived + self.max_wait_s  # not from now: it may have queued behind a batch
        while size < self.max_batch and work < self.max_work and passed < LOOKAHEAD:
            if at == len(self._pending):  # none left after it: wait out the window (arrivals notify)
                left = deadline - self._clock()
                if self._closed or self.max_wait_s <= 0 or left <= 0 or passed:  # a passed one may start now
                    break
                self._cond.wait(left)
                continue
            nxt = self._pending[at]
            nxt.lanes = self._lanes_of([nxt])
            if _meet(nxt.lanes, busy) or not _joins(nxt.lanes, lanes):
                busy |= nxt.lanes
                at, passed = at + 1, passed + 1
                continue
            grown = size + len(nxt.items), work + self._work(nxt)
            if grown[0] > self.max_batch or grown[1] > self.max_work:
                break
            del self._pending[at]
            batch.append(nxt)
            size, work, lanes = *grown, lanes | nxt.lanes
        return batch, lanes

    def _start(self, number: int, batch: list[_Submission[T, R]]) -> None:
        """Run the batch on a thread of its own, its lanes held (`_take`) until it ends."""
        threading.Thread(target=self._run_held, args=(number, batch), name=f"{self._thread.name}-{number}",
                         daemon=True).start()

    def _run_held(self, number: int, batch: list[_Submission[T, R]]) -> None:
        try:
            self._execute(batch)
        finally:
            with self._cond:
                del self._running[number]
                self._cond.notify_all()

    def _work(self, sub: _Submission[T, R]) -> float:
        """Its predicted work; one whose weighing raises counts as endless, so its batch takes no
        more (as with `_lanes_of`, the window's thread must go on)."""
        try:
            return sum(map(self.weigh, sub.items)) if self.weigh else 0.0
        except Exception:
            log.exception("weighing a submission failed; its batch takes no more")
            return float("inf")

    def _observed(self, size: int) -> None:
        """Tell the probe; a probe that raises (a metrics bug) costs its count, not the batch's queries."""
        try:
            self.probe.batch_executed(size)
        except Exception:
            log.exception("the probe failed to count a batch")

    def _execute(self, batch: list[_Submission[T, R]]) -> None:
        items = [x for sub in batch for x in sub.items]
        self._counted(-len(items))
        self.batch_sizes.append(len(items))
        resolving = _Resolving(batch)
        self._observed(len(items))
        try:
            results = self._run(items, resolving.release)
        except BaseException as exc:  # every caller still waiting learns why the batch failed
            resolving.fail(exc)
            return
        resolving.resolve(results)


def _joins(lanes: Collection[str], batch: Collection[str]) -> bool:
    """Whether a submission on `lanes` belongs in a batch on `batch`: it shares a device with it,
    or neither takes any."""
    return _meet(lanes, batch) or not (lanes or batch)


def _meet(lanes: Collection[str], busy: Collection[str]) -> bool:
    """Whether `lanes` share a device with `busy` (one of them `EVERY`: any device at all)."""
    if not lanes or not busy:
        return False
    return EVERY in lanes or EVERY in busy or not set(lanes).isdisjoint(busy)


def _releasing_nothing(run_batch: Callable[[list[T]], list[R]]) -> Callable[[list[T], Release[R]], list[R]]:
    """A plain runner as one that releases nothing early: its batch's results come at its end."""
    return lambda items, _release: run_batch(items)


class _Resolving(Generic[T, R]):
    """One batch's submissions, each resolved once all its items are released or the batch ends."""

    def __init__(self, batch: list[_Submission[T, R]]):
        self._owner = [(sub, at) for sub in batch for at in range(len(sub.items))]  # item → (submission, place)
        self._starts = list(accumulate((len(sub.items) for sub in batch[:-1]), initial=0))  # each one's first item
        self._released: dict[int, dict[int, R]] = {id(sub): {} for sub in batch}  # unresolved: place → result
        self._batch, self._lock = batch, threading.Lock()

    def release(self, index: int, result: R) -> None:
        sub, at = self._owner[index]
        with self._lock:
            released = self._released.get(id(sub))
            if released is None:  # resolved already (a late release after the batch's end)
                return
            released[at] = result
            if len(released) < len(sub.items):
                return
            del self._released[id(sub)]
        sub.future.set_result([released[i] for i in range(len(sub.items))])  # outside the lock: callbacks run here

    def resolve(self, results: Sequence[R]) -> None:
        for start, sub in self._unresolved():
            sub.future.set_result(list(results[start:start + len(sub.items)]))

    def fail(self, exc: BaseException) -> None:
        for _, sub in self._unresolved():
            sub.future.set_exception(exc)

    def _unresolved(self) -> list[tuple[int, _Submission[T, R]]]:
        """The submissions not resolved yet, with their first item's place; no release resolves them from now on."""
        with self._lock:
            subs = zip(self._starts, self._batch, strict=True)
            left = [(start, sub) for start, sub in subs if id(sub) in self._released]
            self._released.clear()
        return left
