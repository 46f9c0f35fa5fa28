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
LAPSED_POLL_S = 1.0  # a wait for a model to be unneeded looks again this often (a held claim may lapse)


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
        late) and ignored; the same version renews the lease."""
        def put() -> None:
            held = self._others.get(owner)
            if held is None or version >= held.version:
                self._others[owner] = _Held(version, [(frozenset(k), r) for k, r in views], self._clock() + lease_s)
        self.change(put)

    def needed(self) -> set[str]:
        """The models the batches running on the worker still need."""
        with self._lock:
            return {k for left, _ in self._views() for k in left}

    def wait_unneeded(self, key: str) -> None:
        """Return once no running batch needs `key` (they would load it again) and the worker is free."""
        with self._changed:  # the device lock: the generation under way is waited out too
            while key in self.needed():
                self.wait_while(lambda needed, _: key in needed, LAPSED_POLL_S)

    def change(self, edit: Callable[[], None]) -> None:
        """Edit the claims; waiting loads look again. The device lock (held through generations)
        is taken to wake them only when one waits."""
        with self._lock:
            edit()
            wake = self._waiting > 0
        if wake:
            with self._changed:
                self._changed.notify_all()

    def wait_while(self, blocked: Callable[[set[str], set[str]], bool], timeout: float | None = None) -> bool:
        """With the device lock held: if `blocked(needed, running)`, wait for a change (at most
        `timeout`); whether a change came. Counted waiting before the device lock is let go, so
        no change is missed."""
        with self._lock:
            views = self._views()
            running = {r for _, r in views if r is not None}
            if not blocked({k for left, _ in views for k in left}, running):
                return False
            self._waiting += 1
        try:
            return self._changed.wait(timeout)
        finally:
            with self._lock:
                self._waiting -= 1

    def _views(self) -> list[View]:
        """Every claim's view, this process's and the others' not lapsed (dropped); under `_lock`."""
        now = self._clock()
        for owner in [o for o, h in self._others.items() if h.lapses <= now]:
            del self._others[owner]
        return [*(c.view() for c in self._held), *(v for h in self._others.values() for v in h.views)]
