"""Registering experts: check the model really loads, store it, profile it in the background."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence

from experts.backend import BackendError
from experts.types import ExpertSpec
from orchestrator.scheduling.fleet import Fleet
from orchestrator.services.errors import Conflict, NotFound, Unprocessable
from orchestrator.services.pool import PoolState
from orchestrator.services.profiling import ProfilingService
from orchestrator.store.db import Database
from orchestrator.store.models import Expert
from orchestrator.store.repositories.experts import ExpertRepository

log = logging.getLogger(__name__)


class ExpertService:
    def __init__(self, db: Database, fleet: Fleet, pool: PoolState, profiler: ProfilingService):
        self.db, self.fleet, self.pool, self.profiler = db, fleet, pool, profiler
        self.queue = ProfilingQueue(lambda ids: self._profile_batch(ids))

    def register(self, spec: ExpertSpec, profile: bool = True) -> Expert:
        """Validate and load the model first: a bad model is refused and nothing is stored."""
        with self.db.session() as s:
            if ExpertRepository(s).by_name(spec.name) is not None:
                raise Conflict(f"an expert named {spec.name!r} already exists", "name")
        self.pool.deployment.check(spec)  # a worker and a device the deployment has
        self.check_loads(spec)
        with self.db.session() as s:
            row = ExpertRepository(s).add(spec, status="profiling" if profile else "registered")
        if profile:
            self.queue.submit([row.id])
        return row

    def check_loads(self, spec: ExpertSpec) -> None:
        """Load the model on the worker it will run on: a bad model is refused (422) there."""
        worker = self.fleet[self.pool.worker_for(spec)]
        try:
            worker.backend(spec.base).validate()
            worker.ensure_loaded(spec.base)
        except BackendError as exc:
            worker.forget(spec.base.key)
            raise Unprocessable(str(exc), "model.source") from exc
        except Exception as exc:  # llama.cpp raises ValueError for a GGUF it cannot load
            worker.forget(spec.base.key)
            raise Unprocessable(f"model failed to load: {exc}", "model.source") from exc

    def all(self) -> Sequence[Expert]:
        with self.db.session() as s:
            return ExpertRepository(s).list()

    def get(self, expert_id: int) -> Expert:
        with self.db.session() as s:
            row = ExpertRepository(s).get(expert_id)
        if row is None:
            raise NotFound(f"no expert with id {expert_id}", "id")
        return row

    def pending_profiles(self) -> list[int]:
        """Experts stored but not yet profiled (a new pool, or a crash mid-profile)."""
        with self.db.session() as s:
            return [r.id for r in ExpertRepository(s).list() if r.status in ("registered", "profiling")]

    def _profile_batch(self, ids: Sequence[int]) -> None:
        with self.db.session() as s:
            rows = [ExpertRepository(s).get(i) for i in ids]
            todo = [(r.id, ExpertSpec.model_validate(r.spec)) for r in rows if r is not None]
            for eid, _ in todo:
                ExpertRepository(s).set_status(eid, "profiling")
        try:
            self.profiler.profile(todo)
            self.profiler.choose_aggregator()
        except Exception as exc:
            log.exception("profiling failed")
            self._mark_failed([e for e, _ in todo], f"profiling failed: {exc}")
        self.pool.refresh()

    def _mark_failed(self, ids: Sequence[int], error: str) -> None:
        with self.db.session() as s:
            for eid in ids:
                ExpertRepository(s).set_status(eid, "failed", error)


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
            finally:
                self._q.task_done()
        self._q.task_done()
