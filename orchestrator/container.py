"""The composition root: one settings object in, the store, device worker, pool, pipeline and
services built and wired once, each given its metrics probe here.

Building does no work. Starting migrates the schema, loads (or first profiles) the pool and
answers what a crash left: `start` does it all here (the CLI's commands, tests);
`start_in_background` (the app's lifespan) only migrates before returning, so HTTP is served
at once, and runs the rest on a thread, its progress in `startup` (what /ready reports).
`close` stops the batching window (and learns what its batches taught) and the profiler and,
when it owns the device worker, unloads it.
"""

from __future__ import annotations

import functools
import gc
import logging
import threading
from collections.abc import Callable, Mapping, Sequence

from experts.devices import DeviceProfile
from experts.factory import make_backend
from experts.types import BaseModelSpec, ExpertSpec, Generation
from experts.workers import LOCAL_GPU_PROFILE, LOCAL_PROFILE, WorkerSpec, declared_workers, local_workers, memory_bytes
from orchestrator.budgets.planner import BudgetPlanner, device_table, site
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
from orchestrator.services.deployment import Deployment, fail_misplaced, fail_unreadable
from orchestrator.services.experts import ExpertService
from orchestrator.services.feedback import FeedbackService
from orchestrator.services.idempotency import IdempotencyService
from orchestrator.services.instances import Instance
from orchestrator.services.keys import KeyService
from orchestrator.services.pool import PoolState
from orchestrator.services.pool_file import sync_pool_file
from orchestrator.services.profiling import ProfilingService
from orchestrator.services.queries import QueryService
from orchestrator.services.startup import StartupState
from orchestrator.services.timings import restore_timings
from orchestrator.settings import Settings, embedding_kind
from orchestrator.store.db import Database, migrate, preparing
from orchestrator.store.repositories.experts import ExpertRepository
from skills.embedder import Embedder, get_embedder

Progress = Callable[[int, int], None]
log = logging.getLogger(__name__)


class SkillRoute:
    def __init__(self, settings: Settings, pool: PoolConfig, factory: BackendFactory | None = None,
                 embedder: Embedder | None = None, workers: Mapping[str, DeviceWorker] | None = None):
        """`workers` injects devices owned elsewhere (Ray actors' proxies, by worker name);
        `close` leaves them running. Without them, each worker of the deployment is built here."""
        self.settings, self.pool_config = settings, pool
        self.metrics = Metrics()
        self.db = Database(settings.db_url)
        kind = embedding_kind(settings.embedding.kind, pool.router or settings.router)
        self.embedder = embedder or get_embedder(kind, settings.embedding.cache_dir)
        profiles = device_table(settings.budgets.devices_file)
        specs = deployment_workers(settings, profiles, workers)
        factory = factory or functools.partial(make_backend, options=settings.backend_options())
        self._owns_workers = workers is None
        self.fleet = Fleet(workers or {w.name: DeviceWorker(w.name, memory_bytes(w, profiles), factory, self.metrics)
                                       for w in specs})
        self.deployment = Deployment(specs, profiles, self._model_size)
        self._build_services(settings, pool, profiles)
        self.startup = StartupState()
        self._started, self._bootstrapped, self._start_lock = False, False, threading.Lock()

    def _live_keywords(self, router: str) -> tuple[KeywordReader, str] | None:
        """The keyword LLM that reads live queries' skills, where the router ranks by skills. The
        k-NN router ranks by the query's embedding: the keywords (`keyword_samples` generations
        a query) changed no decision. The validation set's keywords still make the profiles."""
        v = self.pool_config.validation
        if v.keyword_mode != "llm":
            return None
        if router == "knn":
            log.warning("keyword_mode llm: the k-NN router ranks by the query's embedding, so live queries' "
                        "keywords are not read (the validation set's make the skill profiles)")
            return None
        return KeywordReader(self.fleet, v.keyword_samples, seed=v.seed), str(v.keyword_expert)

    def _build_services(self, settings: Settings, pool: PoolConfig, profiles: Mapping[str, DeviceProfile]) -> None:
        aggregation = pool.aggregator.mode
        learning = settings.learning
        self.pool = PoolState(self.db, pool.validation.dataset_key(), self.embedder, self.deployment,
                              pool.router or settings.router, aggregation != "vote", learning.refit_every)
        planner = BudgetPlanner(profiles)
        self.profiler = ProfilingService(self.db, self.fleet, self.embedder, pool, self.pool.placement,
                                         timed=self._profiled)
        limits = GenerationLimits(pool.generation.expert_max_tokens, pool.generation.aggregator_max_tokens)
        policy = CompetitionPolicy(learning.competition_rate, learning.per_minute,
                                   consensus_teaches=learning.consensus_teaches)
        v = pool.validation
        self.pipeline = Pipeline(self.fleet, self.embedder, planner, limits,
                                 v.skills_per_question, aggregation, self.metrics, settings.backend_options(),
                                 policy=policy, explore_rate=learning.explore_rate,
                                 keywords=self._live_keywords(pool.router or settings.router),
                                 recruit=pool.recruit)
        self.instance = Instance(self.db, settings.recovery)
        self.admission = Admission(self.db, self.pool, self.pipeline, self.instance.id)
        self.queries = QueryService(self.db, self.pool, self.pipeline, self.admission, settings.batching,
                                    self.instance, probe=self.metrics)
        self.experts = ExpertService(self.db, self.fleet, self.pool, self.profiler, self.metrics, self.queries.running)
        self.chat = ChatService(self.pool, self.queries)
        self.batches = BatchService(self.db, self.queries)
        self.keys = KeyService(self.db)
        self.idempotency = IdempotencyService(self.db, settings.idempotency.retention_hours * 3600)
        self.feedback = FeedbackService(self.db, self.pool, self.embedder, self.metrics)
        # read at scrape time, but a scrape never loads the pool: until a start has loaded it (as
        # /health reads it), reading the snapshot would run a whole refresh on the scrape's thread
        self.metrics.watch({n: w.residency_counts for n, w in self.fleet.workers.items()}, self.queries.window.depth,
                           lambda: self.pool.snapshot.experts if self.startup.status.serving else None,
                           lambda: len(self.pool.snapshot.ready) if self.startup.status.serving else 0)
        self.metrics.watch_waiting(self.queries.waiting)  # the backlog 503 overloaded is decided on, in queries
        self.metrics.watch_running(self.queries.window.running)  # at once only on disjoint workers
        self.metrics.watch_evidence(lambda: self.pool.evidence_counts() if self.startup.status.serving else {})

    def _placed(self, worker: str, base: BaseModelSpec) -> bool:
        """Whether an expert of the pool runs on `base` on `worker` now."""
        return (worker, base.key) in {(w, b.key) for w, b in self.pool.snapshot.served_elsewhere(self.fleet.default)}

    def _model_size(self, base: BaseModelSpec) -> int:
        """A base model's resident size, as the first worker's backend reads it (no load)."""
        return self.fleet[self.fleet.default].size_of(base)

    def _profiled(self, spec: ExpertSpec, worker: str, replies: Sequence[Generation]) -> None:
        """A profiling run's replies teach the budgets what each model takes on this machine, so
        its first budgeted query is costed by its own runs (`BudgetPlanner.record`)."""
        where = site(spec, self.deployment.workers.get(worker))
        self.pipeline.planner.record((spec, where, g) for g in replies)

    def start(self, progress: Progress | None = None) -> int:
        """Bring the service up here and now: schema, profiles, then the queries a crash left
        unfinished (answered as they were admitted). Returns how many were recovered (0 when
        it was started already)."""
        through = self._begin()
        return 0 if through is None else self._finish(through, progress)

    def start_in_background(self) -> None:
        """The app's start: the schema and a note of what the last run left, then return, so
        HTTP is served at once; loading the pool and recovery run on a thread behind it."""
        through = self._begin()
        if through is None:
            return
        if self._bootstrapped and not self.queries.pending_count(through):
            self.startup.update(phase="ready")  # nothing left to run: ready at once
            return
        threading.Thread(target=self._finish_logged, args=(through,), name="skillroute-start", daemon=True).start()

    def _begin(self) -> int | None:
        """Claim the one start (None if it was claimed), migrate, and return the newest query id:
        what is pending up to it the last run left; anything later is live traffic."""
        with self._start_lock:
            if self._started:
                return None
            self._started = True
        self.startup.update(phase="loading", pool_loaded=self._bootstrapped)
        migrate(self.settings.db_url)
        self._alive()
        return self.queries.watermark()

    def _finish(self, through: int, progress: Progress | None, defer: bool = False) -> int:
        try:
            if not self._bootstrapped:
                self.bootstrap(progress, defer=defer)
            # phase and count at once: /ready must never say "recovering 0" while queries wait
            self.startup.update(phase="recovering", pool_loaded=True, recovering=self.queries.pending_count(through))
            recovered = self.queries.recover(through, lambda left: self.startup.update(recovering=left))
        except Exception as exc:
            self.startup.update(phase="failed", error=f"{type(exc).__name__}: {exc}")
            raise
        self.startup.update(phase="ready")
        return recovered

    def _finish_logged(self, through: int) -> None:
        try:
            recovered = self._finish(through, None, defer=True)  # HTTP is up: profile behind it
        except Exception:
            log.exception("start-up failed")  # /ready says so too, until a restart
            return
        snap = self.pool.snapshot
        log.info("ready: %d experts, aggregator %s; %d queries left by the last run answered",
                 len(snap.ready), snap.aggregator, recovered)

    def bootstrap(self, progress: Progress | None = None, defer: bool = False) -> None:
        """`prepare`, then load the pool it stored for routing."""
        self.prepare(progress, defer)
        self.fleet.connect_elsewhere(self.pool.refresh().served_elsewhere(self.fleet.default), self._placed)
        self._bootstrapped = True
        # The loaded pool (a replay recording: ~10^5 objects) lives as long as the process; out of
        # the collector's sight, a full collection no longer walks it. Under load such walks
        # took a third of the event loop's time.
        gc.collect()
        gc.freeze()

    def prepare(self, progress: Progress | None = None, defer: bool = False) -> None:
        """Migrate the store, bring the stored experts in line with the pool file
        (`services.pool_file`), profile whatever is unprofiled, pick the aggregator. Profiles
        live in the database, so a restart with the same pool profiles nothing. Replicas
        starting together take turns (`store.db.preparing`): the later ones find it done.

        With `defer` (the app's start, HTTP already up), experts left unprofiled while others are
        ready (a restart mid-profiling, an expert new to the pool file) are handed to the
        background profiler as a registered expert is, so the service routes at once; only a
        pool with nothing ready yet is profiled here, as there is nothing to route to before."""
        migrate(self.settings.db_url)
        self._alive()
        with preparing(self.settings.db_url):
            from_file = {e.name for e in self.pool_config.experts}
            fail_misplaced(self.db, self.deployment, from_file)
            fail_unreadable(self.db, functools.partial(self._validate_source, self.pool.placement()), from_file)
            sync_pool_file(self.experts, self.db, self.pool_config.experts)
            restore_timings(self.db, self.pipeline.planner, self.pool.placement(), self.deployment.workers)
            behind = self._profile_pending(progress, defer)
            self.profiler.choose_aggregator()
        if behind:  # after the aggregator choice: the queue's run chooses again once they are in
            self.experts.queue.submit(behind)

    def _validate_source(self, placement: Mapping[str, str], spec: ExpertSpec) -> None:
        """Read `spec`'s model header on the worker it runs on (a file may be on that node alone)."""
        self.fleet[placement.get(spec.name, self.fleet.default)].backend(spec.base).validate()

    def _profile_pending(self, progress: Progress | None, defer: bool) -> list[int]:
        """Profile the experts stored but not profiled here, or with `defer` and an expert ready
        already, return them for the background profiler."""
        pending = self.experts.pending_profiles()
        if not pending:
            return []
        if defer and self._any_ready():
            return pending
        self.experts.queue.join()
        with self.db.session() as s:
            rows = [ExpertRepository(s).get(i) for i in pending]
            todo = [(r.id, ExpertSpec.model_validate(r.spec)) for r in rows if r is not None]
        if self.startup.status.phase == "loading":  # a start's, not a caller's own bootstrap
            self.startup.update(phase="profiling")
        self.profiler.profile(todo, self._profiling_progress(progress))
        return []

    def _any_ready(self) -> bool:
        with self.db.session() as s:
            return bool(ExpertRepository(s).list(status="ready", profiles=False))

    def _profiling_progress(self, progress: Progress | None) -> Progress:
        def report(done: int, total: int) -> None:
            if self.startup.status.phase == "profiling":  # a bootstrap outside a start leaves it be
                self.startup.update(profiled=(done, total))
            if progress is not None:
                progress(done, total)

        return report

    def _alive(self) -> None:
        """Say this service is alive (before it admits or recovers anything), and keep saying so;
        once it is ready, each heartbeat also takes over what services that died left."""
        self.instance.beat()
        self.instance.keep_beating(self._adopt)

    def _adopt(self) -> None:
        if self.startup.status.phase == "ready":
            self.queries.adopt()

    def close(self) -> None:
        """Stop the window and the profiler, unload owned workers, release the store (idempotent)."""
        self.instance.stop()
        self.queries.close()  # the window, then its lessons: learned while the pool and store are up
        self.experts.queue.close()
        self.pool.close()
        if self._owns_workers:
            self.fleet.shutdown()
        self.instance.close()  # last: what the window left unanswered is a dead service's from here
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
