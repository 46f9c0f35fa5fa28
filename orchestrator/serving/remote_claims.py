"""The claims of the batches this process runs on a worker actor, told to the actor.

The actor's worker makes room for every process's loads (each replica's batches, a registration,
a profiling run), so it must know what each process's running batches still need: every change
sends this process's whole set (`Claims.hold` there), versioned, since a renewal on the beat
thread may overtake it; the beat renews the lease while any is held. A replica that dies
mid-batch stops renewing, and its claims lapse after LEASE_S; an actor restarted by Ray learns
them again at the next change or beat. Claims only spare models: a tell that fails (an actor
lost, busy, or made by a release without them) costs a reload at worst, never the batch.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from ray.exceptions import GetTimeoutError

from experts.backend import BackendError
from orchestrator.scheduling.claims import Claims, View

log = logging.getLogger(__name__)
LEASE_S = 60.0  # claims of a process that stopped telling them lapse this long after the last time
BEAT_S = LEASE_S / 4  # how often a process holding claims renews them
TELL_TIMEOUT_S = 5.0  # a change waits this long for the actor to take it
WAIT_SLICE_S = 10.0  # a wait for a model to be unneeded holds an actor thread this long at most, then asks again


class Actor(Protocol):
    """What the claims need of the worker's proxy (remote_worker.RemoteWorker)."""

    name: str

    def ask(self, method: str, *args: Any, timeout: float | None = None) -> Any: ...


class RemoteClaims(Claims):
    """Claims kept here, as a DeviceWorker's are, and told to the worker's actor on every change."""

    def __init__(self, worker: Actor):
        super().__init__()
        self._worker, self._owner, self._version = worker, uuid.uuid4().hex, 0
        self._beat: threading.Thread | None = None  # runs while the actor may hold claims of ours
        self._told = (0, True)  # the newest version the actor took, and whether it held nothing
        # after a tell failed, changes are not told until then (the beat tries): a worker whose
        # node left answers each call with an error after ~2 s, 3 calls a batch that fails anyway
        self._quiet_until = float("-inf")

    def change(self, edit: Callable[[], None], wait: bool = True) -> None:
        with self._lock:
            edit()
            self._version += 1
            version, views = self._version, [c.view() for c in self._held]
            quiet = time.monotonic() < self._quiet_until
        if not quiet:
            self._tell(version, views)
        self._beating()

    def needed(self) -> set[str]:
        """What the batches of every process on the worker still need, as the actor knows it."""
        return set(self._worker.ask("claims_needed", timeout=TELL_TIMEOUT_S))

    def wait_unneeded(self, key: str, timeout: float | None = None) -> bool:
        """Asked in slices: a wait never holds one of the actor's threads for a whole batch. A
        slice answered late (the actor's threads all busy) is asked again while the actor answers
        a probe; an actor lost or unreachable raises (WorkerLost) instead of hanging the caller."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while deadline is None or time.monotonic() < deadline:
            try:
                if self._worker.ask("wait_unneeded", key, WAIT_SLICE_S, timeout=WAIT_SLICE_S + TELL_TIMEOUT_S):
                    return True
            except BackendError as exc:  # the proxy's WorkerUnavailable, for a late answer too
                if not isinstance(exc.__cause__, GetTimeoutError):
                    raise
                self._worker.ask("info", timeout=TELL_TIMEOUT_S)  # busy, not gone: ask again
        return False

    def _tell(self, version: int, views: list[View]) -> None:
        try:
            self._worker.ask("hold_claims", self._owner, version, views, LEASE_S, timeout=TELL_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - advisory: see the module doc
            log.debug("worker %s was not told this process's claims: %s", self._worker.name, exc)
            with self._lock:
                self._quiet_until = time.monotonic() + BEAT_S
            return
        with self._lock:
            if version >= self._told[0]:
                self._told = (version, not views)

    def _beating(self) -> None:
        """Start the beat that renews the lease, unless it runs."""
        with self._lock:
            if self._beat is not None:
                return
            self._beat = threading.Thread(target=self._beat_on, daemon=True, name=f"claims-{self._worker.name}")
        self._beat.start()

    def _beat_on(self) -> None:
        """Renew every BEAT_S while anything is held here; with nothing held, tell so once (if the
        actor was not told) and stop: what it may hold of ours lapses anyway, and a beat retrying
        a lost worker (or a Ray shut down) for good would outlive it."""
        pace = threading.Event()  # never set: the beat's clock
        while not pace.wait(BEAT_S):
            with self._lock:
                version, views = self._version, [c.view() for c in self._held]
            if views or self._told != (version, True):
                self._tell(version, views)
            with self._lock:
                if not self._held:
                    self._beat = None
                    return
