"""Unloading a base model from the workers where no remaining expert over it runs (an expert
removed, moved, disabled over another model, or registered for nothing).

A worker busy generating is not waited for, nor is a batch that may need the model yet: one
routed before the change still runs its stages on it (an aggregation sent once its experts are
in has no claim on its worker until then), and unloaded under it the model loaded again for that
stage and stayed resident for good. So while any batch runs, a thread of its own waits for the
batches running then to end, then for the worker and the claims on the model, and unloads it if
still nothing needs it; with none running it is unloaded at once where the worker is free.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter

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
        """Unload the model where nothing needs it: now where the worker is free and no batch runs,
        else on a thread once they are done (see the module doc). Never waits."""
        for name in self.unneeded(key):
            if self.batches.idle() and unload_if_free(self.fleet[name], key):
                continue
            with self._lock:
                self._waiting[key] += 1
            threading.Thread(target=self._when_free, args=(name, key), daemon=True,
                             name=f"release-{name}-{key}").start()

    def waiting(self, key: str) -> bool:
        """Whether a thread waits to unload the model."""
        with self._lock:
            return self._waiting[key] > 0

    def _when_free(self, name: str, key: str) -> None:
        """Wait out the batches running now, the worker's generation and the claims on the model,
        then unload it if still nothing needs it (an expert over it may have come meanwhile); the
        store is read with the worker not held."""
        try:
            self.batches.wait()
            claims(self.fleet[name]).wait_unneeded(key)
            if name in self.unneeded(key):
                self.fleet[name].unload(key)
        except Exception:  # a thread of its own: nobody above it to tell
            log.exception("unloading %s from worker %s failed", key, name)
        finally:
            with self._lock:
                self._waiting[key] -= 1
                if not self._waiting[key]:
                    del self._waiting[key]

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
