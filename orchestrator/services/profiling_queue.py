"""The background queue that profiles registered experts, one run at a time, in order."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class ProfilingQueue:
    """One background thread profiles submitted experts in order; `join` waits for it to drain."""

    def __init__(self, work: Callable[[list[int]], None]):
        self._work = work
        self._q: queue.Queue[list[int] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="profiler", daemon=True)
        self._thread.start()

    def submit(self, ids: list[int]) -> None:
        self._q.put(ids)

    def join(self) -> None:
        self._q.join()

    def close(self) -> None:
        """Finish what was submitted, then stop the thread."""
        self._q.put(None)
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while (ids := self._q.get()) is not None:
            try:
                self._work(ids)
            except Exception:  # one run's failure (a locked database) must not end the thread: every
                # later registration would stay `profiling` until a restart. Experts it left
                # unprofiled are pending then (`ExpertService.pending_profiles`).
                log.exception("profiling experts %s failed", ids)
            finally:
                self._q.task_done()
        self._q.task_done()
