"""The composition root: builds the store, device worker, pool and services from settings."""

from __future__ import annotations

from collections.abc import Callable

from experts.factory import make_backend
from experts.types import ExpertSpec
from orchestrator.pipeline import GenerationLimits, Pipeline
from orchestrator.pool import PoolState
from orchestrator.pool_config import PoolConfig
from orchestrator.profiling import ProfilingService
from orchestrator.scheduling.worker import BackendFactory, DeviceWorker
from orchestrator.services.experts import ExpertService
from orchestrator.services.queries import QueryService
from orchestrator.settings import Settings
from orchestrator.store.db import Database, migrate
from orchestrator.store.repositories.experts import ExpertRepository
from skills.embedder import Embedder, get_embedder

Progress = Callable[[int, int], None]


class SkillRoute:
    def __init__(self, settings: Settings, pool: PoolConfig, factory: BackendFactory = make_backend,
                 embedder: Embedder | None = None, worker: DeviceWorker | None = None):
        """`worker` injects a device owned elsewhere (a Ray actor's proxy); `close` leaves it running."""
        self.settings, self.pool_config = settings, pool
        migrate(settings.db_url)
        self.db = Database(settings.db_url)
        self._owns_worker = worker is None
        budget = int(settings.memory_budget_gb * 2**30)
        self.worker = worker if worker is not None else DeviceWorker("cpu", budget, factory)
        self.embedder = embedder or get_embedder()
        self.profiler = ProfilingService(self.db, self.worker, self.embedder, pool)
        aggregation = pool.aggregator.mode
        self.pool = PoolState(self.db, self.profiler.dataset, self.embedder, pool.router or settings.router,
                              llm_aggregator=aggregation == "llm")
        limits = GenerationLimits(pool.generation.expert_max_tokens, pool.generation.aggregator_max_tokens)
        self.pipeline = Pipeline(self.worker, self.embedder, limits, pool.validation.skills_per_question,
                                 aggregation=aggregation)
        wait_s = settings.batch_wait_ms / 1000
        self.queries = QueryService(self.db, self.pool, self.pipeline, settings.batch_max, wait_s)
        self.experts = ExpertService(self.db, self.worker, self.pool, self.profiler)

    def bootstrap(self, progress: Progress | None = None) -> None:
        """Register the pool file's new experts, profile whatever is unprofiled, pick the aggregator.

        Profiles live in the database, so a restart with the same pool profiles nothing.
        """
        with self.db.session() as s:
            known = {r.name for r in ExpertRepository(s).list()}
        for spec in self.pool_config.experts:
            if spec.name not in known:
                self.experts.register(spec, profile=False)
        pending = self.experts.pending_profiles()
        if pending:
            self.experts.queue.join()
            with self.db.session() as s:
                rows = [ExpertRepository(s).get(i) for i in pending]
                todo = [(r.id, ExpertSpec.model_validate(r.spec)) for r in rows if r is not None]
            self.profiler.profile(todo, progress)
        self.profiler.choose_aggregator()
        self.pool.refresh()

    def close(self) -> None:
        self.queries.window.close()
        if self._owns_worker:
            self.worker.shutdown()
        self.db.engine.dispose()
