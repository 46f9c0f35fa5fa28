"""The composition root: one settings object in, the store, device worker, pool, pipeline and
services built and wired once, each given its metrics probe here.

Building does no work: `start` (called by the app's lifespan, or by the CLI with a progress
bar) migrates the schema, profiles what is unprofiled and answers what a crash left; `close`
stops the batching window and the profiler and, when it owns the device worker, unloads it.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Mapping

from experts.devices import DeviceProfile
from experts.factory import make_backend
from experts.types import BaseModelSpec, ExpertSpec
from experts.workers import LOCAL_GPU_PROFILE, LOCAL_PROFILE, WorkerSpec, declared_workers, local_workers, memory_bytes
from orchestrator.budgets.planner import BudgetPlanner, device_table
from orchestrator.observability.metrics import Metrics
from orchestrator.pipeline import GenerationLimits, Pipeline
from orchestrator.pipeline.keywords import KeywordReader
from orchestrator.pools.schema import PoolConfig
from orchestrator.routing.learning import CompetitionPolicy
from orchestrator.scheduling.fleet import Fleet
from orchestrator.scheduling.worker import BackendFactory, DeviceWorker
from orchestrator.services.admission import Admission
from orchestrator.services.batches import BatchService
from orchestrator.services.chat import ChatService
from orchestrator.services.deployment import Deployment
from orchestrator.services.experts import ExpertService
from orchestrator.services.feedback import FeedbackService
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
                 embedder: Embedder | None = None, workers: Mapping[str, DeviceWorker] | None = None):
        """`workers` injects devices owned elsewhere (Ray actors' proxies, by worker name);
        `close` leaves them running. Without them, each worker of the deployment is built here."""
        self.settings, self.pool_config = settings, pool
        self.metrics = Metrics()
        self.db = Database(settings.db_url)
        self.embedder = embedder or get_embedder()
        profiles = device_table(settings.budgets.devices_file)
        specs = deployment_workers(settings, profiles, workers)
        factory = factory or functools.partial(make_backend, options=settings.backend_options())
        self._owns_workers = workers is None
        self.fleet = Fleet(workers or {w.name: DeviceWorker(w.name, memory_bytes(w, profiles), factory, self.metrics)
                                       for w in specs})
        self.deployment = Deployment(specs, profiles, self._model_size)
        self._build_services(settings, pool, profiles)
        self._started, self._start_lock = False, threading.Lock()

    def _build_services(self, settings: Settings, pool: PoolConfig, profiles: Mapping[str, DeviceProfile]) -> None:
        aggregation = pool.aggregator.mode
        learning = settings.learning
        self.pool = PoolState(self.db, pool.validation.dataset_key(), self.embedder, self.deployment,
                              pool.router or settings.router, aggregation == "llm", learning.refit_every)
        self.profiler = ProfilingService(self.db, self.fleet, self.embedder, pool, self.pool.placement)
        limits = GenerationLimits(pool.generation.expert_max_tokens, pool.generation.aggregator_max_tokens)
        policy = CompetitionPolicy(learning.competition_rate, learning.per_minute,
                                   consensus_teaches=learning.consensus_teaches)
        v = pool.validation
        keywords = (KeywordReader(self.fleet, v.keyword_samples, seed=v.seed), str(v.keyword_expert)) \
            if v.keyword_mode == "llm" else None
        self.pipeline = Pipeline(self.fleet, self.embedder, BudgetPlanner(profiles), limits,
                                 v.skills_per_question, aggregation, self.metrics, settings.backend_options(),
                                 policy=policy, explore_rate=learning.explore_rate, keywords=keywords)
        self.admission = Admission(self.db, self.pool, self.pipeline)
        b = settings.batching
        self.queries = QueryService(self.db, self.pool, self.pipeline, self.admission, b.max_batch,
                                    b.wait_ms / 1000, probe=self.metrics)
        self.experts = ExpertService(self.db, self.fleet, self.pool, self.profiler)
        self.chat = ChatService(self.pool, self.queries)
        self.batches = BatchService(self.db, self.queries)
        self.keys = KeyService(self.db)
        self.feedback = FeedbackService(self.db, self.pool, self.embedder, self.metrics)
        self.metrics.watch({n: w.residency_counts for n, w in self.fleet.workers.items()},
                           self.queries.window.depth, lambda: len(self.pool.snapshot.experts))
        self.metrics.watch_evidence(self.pool.evidence_counts)

    def _model_size(self, base: BaseModelSpec) -> int:
        """A base model's resident size, as the first worker's backend reads it (no load)."""
        return self.fleet[self.fleet.default].backend(base).memory_bytes()

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
        """Stop the window and the profiler, unload owned workers, release the store (idempotent)."""
        self.queries.window.close()
        self.experts.queue.close()
        if self._owns_workers:
            self.fleet.shutdown()
        self.db.engine.dispose()


def deployment_workers(settings: Settings, profiles: Mapping[str, DeviceProfile],
                       injected: Mapping[str, DeviceWorker] | None) -> list[WorkerSpec]:
    """The deployment's workers: the devices file's, else this machine's CPU; a worker injected
    under a name the file does not declare (the Ray runtime's GPU workers, a test's own device)
    is costed on a profile of its name if there is one, else as this machine's CPU."""
    declared = declared_workers(settings.budgets.devices_file, profiles)
    specs = declared or local_workers(settings.backends.memory_budget_gb)
    if injected is None:
        return specs
    known = {w.name: w for w in specs}
    return [known.get(n) or WorkerSpec(name=n, device=_profile_of(n, profiles)) for n in injected]


def _profile_of(worker: str, profiles: Mapping[str, DeviceProfile]) -> str:
    return LOCAL_GPU_PROFILE if worker.startswith("gpu") and LOCAL_GPU_PROFILE in profiles else LOCAL_PROFILE
