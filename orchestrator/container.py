"""The composition root: one settings object in, the store, device worker, pool, pipeline and
services built and wired once, each given its metrics probe here.

Building does no work: `start` (called by the app's lifespan, or by the CLI with a progress
bar) migrates the schema, profiles what is unprofiled and answers what a crash left; `close`
stops the batching window and the profiler and, when it owns the device worker, unloads it.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable

from experts.factory import make_backend
from experts.types import ExpertSpec
from orchestrator.budgets.planner import BudgetPlanner, device_table
from orchestrator.observability.metrics import Metrics
from orchestrator.pipeline import GenerationLimits, Pipeline
from orchestrator.pools.schema import PoolConfig
from orchestrator.scheduling.worker import BackendFactory, DeviceWorker
from orchestrator.services.admission import Admission
from orchestrator.services.batches import BatchService
from orchestrator.services.chat import ChatService
from orchestrator.services.experts import ExpertService
from orchestrator.services.keys import KeyService
from orchestrator.services.pool import PoolState
from orchestrator.services.profiling import ProfilingService
from orchestrator.services.queries import QueryService
from orchestrator.settings import Settings
from orchestrator.store.db import Database, migrate
from orchestrator.store.repositories.experts import ExpertRepository
from skills.embedder import Embedder, get_embedder

Progress = Callable[[int, int], None]


class SkillRoute:
    def __init__(self, settings: Settings, pool: PoolConfig, factory: BackendFactory | None = None,
                 embedder: Embedder | None = None, worker: DeviceWorker | None = None):
        """`worker` injects a device owned elsewhere (a Ray actor's proxy); `close` leaves it running."""
        self.settings, self.pool_config = settings, pool
        self.metrics = Metrics()
        self.db = Database(settings.db_url)
        factory = factory or functools.partial(make_backend, options=settings.backend_options())
        self._owns_worker = worker is None
        self.worker = worker or DeviceWorker("cpu", settings.memory_budget_bytes, factory, probe=self.metrics)
        self.embedder = embedder or get_embedder()
        self._build_services(settings, pool)
        self._started, self._start_lock = False, threading.Lock()

    def _build_services(self, settings: Settings, pool: PoolConfig) -> None:
        devices = device_table(settings.budgets.devices_file)
        self.profiler = ProfilingService(self.db, self.worker, self.embedder, pool)
        aggregation = pool.aggregator.mode
        self.pool = PoolState(self.db, self.profiler.dataset, self.embedder, pool.router or settings.router,
                              llm_aggregator=aggregation == "llm")
        limits = GenerationLimits(pool.generation.expert_max_tokens, pool.generation.aggregator_max_tokens)
        self.pipeline = Pipeline(self.worker, self.embedder, BudgetPlanner(devices), limits,
                                 pool.validation.skills_per_question, aggregation=aggregation, probe=self.metrics)
        self.admission = Admission(self.db, self.pool, self.pipeline)
        b = settings.batching
        self.queries = QueryService(self.db, self.pool, self.pipeline, self.admission, b.max_batch,
                                    b.wait_ms / 1000, probe=self.metrics)
        self.experts = ExpertService(self.db, self.worker, self.pool, self.profiler, devices)
        self.chat = ChatService(self.pool, self.queries)
        self.batches = BatchService(self.db, self.queries)
        self.keys = KeyService(self.db)
        self.metrics.watch(self.worker.name, self.worker.residency_counts, self.queries.window.depth,
                           lambda: len(self.pool.snapshot.experts))

    def start(self, progress: Progress | None = None) -> int:
        """Bring the service up once: schema, profiles, then the queries a crash left unfinished
        (answered as they were admitted). Returns how many were recovered."""
        with self._start_lock:
            if self._started:
                return 0
            self.bootstrap(progress)
            recovered = self.queries.recover()
            self._started = True
            return recovered

    def bootstrap(self, progress: Progress | None = None) -> None:
        """Migrate the store, register the pool file's new experts, profile whatever is
        unprofiled, pick the aggregator. Profiles live in the database, so a restart with the
        same pool profiles nothing."""
        migrate(self.settings.db_url)
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
        """Stop the window and the profiler, unload an owned worker, release the store (idempotent)."""
        self.queries.window.close()
        self.experts.queue.close()
        if self._owns_worker:
            self.worker.shutdown()
        self.db.engine.dispose()
