"""The claims of the batches this process runs on a worker actor, told to the actor.

The actor's worker makes room for every process's loads (each replica's batches, a registration,
a profiling run), so it must know what each process's running batches still need: every change
sends this process's whole set (`Claims.hold` there), versioned, since a renewal on the beat
thread may overtake it; the beat renews the lease while any is held. A replica that dies
mid-batch stops renewing, and its claims lapse after LEASE_S; an actor restarted by Ray learns
them again at the next change or beat.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from experts.backend import BackendError
from orchestrator.scheduling.claims import Claims, View

log = logging.getLogger(__name__)
LEASE_S = 60.0  # claims of a process that stopped telling them lapse this long after the last time
BEAT_S = LEASE_S / 4  # how often a process holding claims renews them
TELL_TIMEOUT_S = 5.0  # a change waits this long for the actor to take it (it may wait out a generation)


class Actor(Protocol):
    """What the claims need of the worker's proxy (remote_worker.RemoteWorker)."""

    name: str

    def ask(self, method: str, *args: Any, timeout: float | None = None) -> Any: ...


class RemoteClaims(Claims):
    """Claims kept here, as a DeviceWorker's are, and told to the worker's actor on every change."""

    def __init__(self, worker: Actor):
        super().__init__()
        self._worker, self._owner, self._version = worker, uuid.uuid4().hex, 0
        self._beat: threading.Thread | None = None
        self._ended = threading.Event()  # never set: the beat lives as long as the process
        self._told_empty = True  # the actor holds nothing of ours: no beat needed

    def change(self, edit: Callable[[], None]) -> None:
        with self._lock:
            edit()
            self._version += 1
            version, views = self._version, [c.view() for c in self._held]
        self._tell(version, views)
        self._beating()

    def needed(self) -> set[str]:
        """What the batches of every process on the worker still need, as the actor knows it."""
        return set(self._worker.ask("claims_needed", timeout=TELL_TIMEOUT_S))

    def wait_unneeded(self, key: str) -> None:
        self._worker.ask("wait_unneeded", key)

    def _tell(self, version: int, views: list[View]) -> None:
        """Tell the actor; a worker lost or slow is not this batch's failure (a restarted actor
        learns the claims at the next change or beat)."""
        try:
            self._worker.ask("hold_claims", self._owner, version, views, LEASE_S, timeout=TELL_TIMEOUT_S)
            self._told_empty = not views
        except BackendError as exc:  # the proxy raises WorkerLost / WorkerUnavailable
            log.debug("worker %s was not told this process's claims: %s", self._worker.name, exc)

    def _beating(self) -> None:
        """Start the beat that renews the lease, once (a daemon: it ends with the process)."""
        with self._lock:
            if self._beat is not None:
                return
            self._beat = threading.Thread(target=self._beat_forever, daemon=True,
                                          name=f"claims-{self._worker.name}")
        self._beat.start()

    def _beat_forever(self) -> None:
        while not self._ended.wait(BEAT_S):
            with self._lock:
                version, views = self._version, [c.view() for c in self._held]
            if views or not self._told_empty:
                self._tell(version, views)
