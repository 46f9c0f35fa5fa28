"""What the batches running on a device worker still need: their claims on its models.

A running batch claims its stages' models (`Claims.claim`) so no other load switches them out
mid-batch (see `DeviceWorker._room_for`). Batches run by another process on a worker actor (a
Serve replica's) are told to the actor as a whole set per process (`Claims.hold`), newest
version kept, on a lease the process renews while it holds any: a replica that dies mid-batch
stops renewing, and its claims lapse rather than spare its models for good.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

# One claim as told to another process: the models it still needs, and the one it generates on now.
View = tuple[frozenset[str], str | None]
# A wait on the claims looks again this often: a claim told by another process may lapse, and
# its change wakes no one when a generation holds the device (`hold` does not wait it out).
POLL_S = 1.0
FORGET_AFTER_S = 600.0  # a lapsed process's last version is kept this long: a tell it sent before comes late


class Claim:
    """One running batch's hold on its worker's models (Claims.claim): those it still needs
    (its stages to come, and the one it keeps for last) and the one its current stage generates on."""

    def __init__(self, claims: Claims, keys: Iterable[str], kept: str | None):
        self.left = frozenset([*keys, *([kept] if kept else [])])
        self.kept, self._claims = kept, claims
        self.running: str | None = None

    def stage(self, key: str) -> None:
        """The batch generates on `key` now, done with its previous stage's model unless kept: one
        change, so a load waiting on that stage never finds it ended with its model still needed."""
        def move() -> None:
            if self.running not in (None, self.kept):
                self.left -= {self.running}
            self.running = key
        self._claims.change(move)

    def view(self) -> View:
        return self.left, self.running


@dataclass
class _Held:
    """Another process's claims on this worker (`Claims.hold`)."""

    version: int
    views: list[View]
    lapses: float  # monotonic time


class Claims:
    """The claims of the batches running on one worker (`claims`), under a lock of their own: a
    status read never waits for a generation. A load waits on them (`wait_while`) with the device
    lock let go."""

    def __init__(self, device_lock: Any = None, clock: Callable[[], float] = time.monotonic):
        self._held: list[Claim] = []
        self._others: dict[str, _Held] = {}  # by process (`hold`)
        self._lock, self._changed, self._waiting = threading.Lock(), threading.Condition(device_lock), 0
        self._freed = threading.Condition(self._lock)  # a claim let go (for `wait_unneeded`)
        self._clock = clock

    @contextmanager
    def claim(self, keys: Iterable[str], kept: str | None = None) -> Iterator[Claim]:
        """Hold a batch's models while it runs (`executor.execute`): its stages' (`keys`), each
        until its stage is done (`Claim.stage`), and `kept` (its aggregator's) until it ends."""
        claim = Claim(self, keys, kept)
        self.change(lambda: self._held.append(claim))
        try:
            yield claim
        finally:
            self.change(lambda: self._held.remove(claim))

    def hold(self, owner: str, version: int, views: Sequence[View], lease_s: float) -> None:
        """Another process's claims here, all of them (none: it holds nothing), for `lease_s` unless
        told again. A version older than the one held is stale (told on another thread, it came
        late) and ignored; the same version renews the lease. Never waits for the device: a
        running generation would hold this call (and the teller's batch) for its whole chunk;
        a waiter it does not wake looks again within POLL_S."""
        def put() -> None:
            held = self._others.get(owner)
            if held is None or version >= held.version:
                self._others[owner] = _Held(version, [(frozenset(k), r) for k, r in views], self._clock() + lease_s)
        self.change(put, wait=False)

    def needed(self) -> set[str]:
        """The models the batches running on the worker still need."""
        with self._lock:
            return {k for left, _ in self._views() for k in left}

    def wait_unneeded(self, key: str, timeout: float | None = None) -> bool:
        """Return once no running batch needs `key` (they would load it again) and the worker is
        free: True; False if `timeout` passed first (an actor's caller asks again, so no thread of
        the actor is held for as long as a batch runs)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if not self._wait_unclaimed(key, deadline):
                return False
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            # the device lock: the generation under way is waited out too (within `timeout` as well)
            if not self._changed.acquire(timeout=-1 if left is None else left):
                return False
            try:
                if key not in self.needed():  # a batch may have claimed it while the device was busy
                    return True
            finally:
                self._changed.release()

    def _wait_unclaimed(self, key: str, deadline: float | None) -> bool:
        """Wait (the device let be: a generation would hold the wait past `deadline`) until no claim
        needs `key`: True; False once `deadline` passed. Polled: a claim told by another process lapses unannounced."""
        with self._freed:
            while any(key in keys for keys, _ in self._views()):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._freed.wait(POLL_S if left is None else min(POLL_S, left))
            return True

    def change(self, edit: Callable[[], None], wait: bool = True) -> None:
        """Edit the claims; waiting loads look again. The device lock (held through generations)
        is taken to wake them only when one waits, and, unless `wait`, only if it is free."""
        with self._lock:
            edit()
            self._freed.notify_all()
            wake = self._waiting > 0
        if wake and self._changed.acquire(blocking=wait):
            try:
                self._changed.notify_all()
            finally:
                self._changed.release()

    def wait_while(self, blocked: Callable[[set[str], set[str]], bool], timeout: float | None = None) -> bool:
        """With the device lock held: while `blocked(needed, running)`, wait (at most `timeout` in
        all); whether it waited and then a change came or the block ended (look again), False if
        it was not blocked or the time ran out."""
        deadline = None if timeout is None else time.monotonic() + timeout
        waited = False
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            outcome = self._wait_once(blocked, left)
            if outcome is None:
                return waited
            if outcome or (left is not None and left <= POLL_S):
                return outcome
            waited = True

    def _wait_once(self, blocked: Callable[[set[str], set[str]], bool], left: float | None) -> bool | None:
        """None if not blocked; else wait up to POLL_S (and `left`): whether a change came.
        Counted waiting before the device lock is let go, so no change is missed."""
        with self._lock:
            views = self._views()
            if not blocked({k for keys, _ in views for k in keys}, {r for _, r in views if r is not None}):
                return None
            self._waiting += 1
        try:
            return self._changed.wait(POLL_S if left is None else max(0.0, min(POLL_S, left)))
        finally:
            with self._lock:
                self._waiting -= 1

    def _views(self) -> list[View]:
        """Every claim's view, this process's and the others' not lapsed; under `_lock`. A lapsed
        process's version is kept a while (its views dropped): a tell it sent before comes late."""
        now = self._clock()
        for owner, held in list(self._others.items()):
            if held.lapses + FORGET_AFTER_S <= now:
                del self._others[owner]
            elif held.lapses <= now:
                held.views = []
        return [*(c.view() for c in self._held), *(v for h in self._others.values() for v in h.views)]
