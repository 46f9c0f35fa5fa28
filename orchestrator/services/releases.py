"""Unloading a base model from the workers where no remaining expert over it runs (an expert
removed, moved, disabled over another model, or registered for nothing).

A worker busy generating is not waited for, nor is a batch that may need the model yet: one
routed before the change still runs its stages on it (an aggregation sent once its experts are
in has no claim on its worker until then), and unloaded under it the model loaded again for that
stage and stayed resident for good (on a worker that did not even hold it at the removal). So
while any batch runs, a thread of its own waits for the batches running then to end and only then
looks for the workers holding it; with none running it looks at once. Where a worker is busy (a
generation, a load, a claim on the model) a thread waits for it, then unloads the model if still
nothing needs it.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable

from orchestrator.scheduling.fleet import Fleet
from orchestrator.scheduling.worker import claims
from orchestrator.services.pool import PoolState
from orchestrator.services.profiling_pending import unload_if_free
from orchestrator.services.storing import InFlight
from orchestrator.store.db import Database
from orchestrator.store.repositories.experts import ExpertRepository

log = logging.getLogger(__name__)


class Releases:
    def __init__(self, db: Database, fleet: Fleet, pool: PoolState, batches: InFlight | None = None):
        self.db, self.fleet, self.pool = db, fleet, pool
        self.batches = batches or InFlight()  # the query batches running (`QueryService.running`)
        self._waiting: Counter[str] = Counter()  # base model keys a thread waits to unload
        self._lock = threading.Lock()

    def release(self, key: str) -> None:
        """Unload the model where nothing needs it (see the module doc). Never waits."""
        if self.batches.idle():
            self._now(key)
        else:
            self._thread(self._after_batches, key)

    def _now(self, key: str) -> None:
        for name in self.unneeded(key):
            if not unload_if_free(self.fleet[name], key):
                self._thread(self._when_free, key, name)

    def _thread(self, target: Callable[..., None], key: str, *args: str) -> None:
        with self._lock:
            self._waiting[key] += 1
        threading.Thread(target=self._counted, args=(target, key, *args), daemon=True,
                         name=f"release-{key}").start()

    def _counted(self, target: Callable[..., None], key: str, *args: str) -> None:
        try:
            target(key, *args)
        except Exception:  # a thread of its own: nobody above it to tell
            log.exception("unloading %s failed", key)
        finally:
            with self._lock:
                self._waiting[key] -= 1
                if not self._waiting[key]:
                    del self._waiting[key]

    def _after_batches(self, key: str) -> None:
        self.batches.wait()
        self._now(key)

    def waiting(self, key: str) -> bool:
        """Whether a thread waits to unload the model."""
        with self._lock:
            return self._waiting[key] > 0

    def _when_free(self, key: str, name: str) -> None:
        """Wait out the worker's generation and the claims on the model, then unload it if still
        nothing needs it (an expert over it may have come meanwhile); the store is read with the
        worker not held."""
        claims(self.fleet[name]).wait_unneeded(key)
        if name in self.unneeded(key):
            self.fleet[name].unload(key)

    def unneeded(self, key: str) -> list[str]:
        """The workers holding the model where no remaining expert over it runs."""
        placement = self.pool.placement()
        with self.db.session() as s:
            users = [r.name for r in ExpertRepository(s).list(profiles=False)
                     if r.base_model_key == key and r.name in placement]
        needed = {placement[n] for n in users}
        # a worker that cannot answer holds nothing to free; a running batch may load it yet
        held, _ = self.fleet.each(lambda w: w.resident() | claims(w).needed())
        return [name for name, keys in held.items() if name not in needed and key in keys]
