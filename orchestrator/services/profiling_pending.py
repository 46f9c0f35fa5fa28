"""What `ExpertService` needs beside its own logic: the profiling queue that knows which experts
wait in it (`PendingQueue`: an expert disabled and enabled again while its run waits or runs is
not queued a second time), and the worker calls that unload or forget a model."""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Callable, Iterable

from orchestrator.scheduling.worker import DeviceWorker, claims
from orchestrator.services.profiling_queue import ProfilingQueue


class PendingQueue(ProfilingQueue):
    """The background profiling queue, counting each expert submitted until its run begins
    (`taken`, called by the run under the service's lock as it marks them in flight)."""

    def __init__(self, work: Callable[[list[int]], None]):
        self._waiting: Counter[int] = Counter()
        self._counting = threading.Lock()
        super().__init__(work)

    def submit(self, ids: list[int]) -> None:
        with self._counting:
            self._waiting.update(ids)
        super().submit(ids)

    def taken(self, ids: Iterable[int]) -> None:
        with self._counting:
            self._waiting.subtract(ids)
            self._waiting = +self._waiting  # those counted down to none

    def waiting(self, expert_id: int) -> bool:
        with self._counting:
            return self._waiting[expert_id] > 0


def unload_if_free(worker: DeviceWorker, key: str) -> bool:
    """Unload the model now if the worker is free and no running batch needs it; whether it did.
    Asked of the worker itself: a worker actor's proxy holds no device lock of its own (the one it
    has only serves callers that expect one), so a DELETE waited out the actor's whole chunk."""
    return key not in claims(worker).needed() and worker.unload_if_free(key)


def forget(worker: DeviceWorker, key: str) -> None:
    """Drop a model that failed to load. One more call to a worker that may be gone (the
    failure being its loss): raised here, it hid the 422 behind a 500."""
    with contextlib.suppress(Exception):
        worker.forget(key)
