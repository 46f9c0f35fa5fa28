"""The Prometheus metrics of one app, in the app's own registry.

A per-app `CollectorRegistry` (not the process-global default) lets tests and benches build
several apps in one process without "duplicated timeseries" errors. Counters that can be read
from state the service already keeps (the worker's residency counts, the window's queue) are
collected at scrape time instead of being counted twice; everything else is recorded by the
`Probe` hooks. Dashboards and alerts rely on these names: rename only with the Grafana JSON.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from contextlib import suppress
from typing import get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from orchestrator.domain import Decision, Outcome, Role
from orchestrator.observability.loads import LoadTimeCollector, LoadTimes, Snapshot
from orchestrator.probe import Probe

log = logging.getLogger(__name__)
Counts = Callable[[], Mapping[str, tuple[int, int]]]

# up to an hour: a latency budget may be (the API's limit), a generation may run to its expert's
# timeout_s (as long; none by default) and a model of unknown size is predicted at ~650 s. Past the
# top bound a value counts in +Inf alone, which histogram_quantile reads as that bound (p95 of 300).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 3600)
ROUTING_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# to 1 MJ: three 70B experts on H100 servers are predicted at ~12,500 J, and budgets go higher
ENERGY_BUCKETS = (0.1, 0.5, 1, 5, 10, 50, 100, 500, 1000, 5000, 10000, 50000, 100000, 1000000)
REMEMBER_REMOVED = 1024  # removed names kept to filter late generations (bounded: names grow with traffic)


class ResidencyCollector(Collector):
    """Loads, unloads and resident models per worker, read from each worker's residency counts.

    Read at scrape time because under Ray the loads happen in the worker actor's process: the
    worker's counts are the one record that reaches this process either way. One collector for
    every worker, so each metric is one family (a family per worker repeats its HELP line, which
    Prometheus rejects). A worker that cannot answer (its actor lost, its node gone) reports
    available 0 and no counts: one lost worker never fails the whole scrape.
    """

    def __init__(self, workers: Mapping[str, Counts]):
        self.workers = dict(workers)

    def collect(self) -> Iterable[Metric]:
        labels = ["worker", "model"]
        loads = CounterMetricFamily("skillroute_model_loads", "Base model loads per worker.", labels=labels)
        unloads = CounterMetricFamily("skillroute_model_unloads", "Base model unloads per worker.", labels=labels)
        resident = GaugeMetricFamily("skillroute_model_resident", "1 while the base model is loaded on the worker.",
                                     labels=labels)
        available = GaugeMetricFamily("skillroute_worker_available",
                                      "1 while the worker answers (its actor is running), else 0.", labels=["worker"])
        for worker, counts in self._counts().items():
            available.add_metric([worker], 0.0 if counts is None else 1.0)
            for key, (n_loads, n_unloads) in sorted((counts or {}).items()):
                loads.add_metric([worker, key], n_loads)
                unloads.add_metric([worker, key], n_unloads)
                resident.add_metric([worker, key], 1.0 if n_loads > n_unloads else 0.0)
        return [loads, unloads, resident, available]

    def _counts(self) -> dict[str, Mapping[str, tuple[int, int]] | None]:
        """Each worker's counts; None for one that did not answer (logged)."""
        out: dict[str, Mapping[str, tuple[int, int]] | None] = {}
        for worker, counts in self.workers.items():
            try:
                out[worker] = dict(counts())
            except Exception as exc:  # any failure to read is this worker's, not the scrape's
                log.warning("worker %s did not report its residency: %s", worker, exc)
                out[worker] = None
        return out


class EvidenceCollector(Collector):
    """How many of each expert's marks the router knows: its certainty, one series per expert.
    A read that fails (the store unreachable) reports no series, as a lost worker's residency
    does: it never fails the whole scrape."""

    def __init__(self, counts: Callable[[], Mapping[str, int]]):
        self.counts = counts

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily("skillroute_expert_evidence", "Observed marks of each expert the router knows.",
                                   labels=["expert"])
        for expert, n in sorted(self._counts().items()):
            family.add_metric([expert], float(n))
        return [family]

    def _counts(self) -> dict[str, int]:
        try:
            return dict(self.counts())
        except Exception as exc:  # any failure to read is this metric's, not the scrape's
            log.warning("the experts' evidence could not be read: %s: %s", type(exc).__name__, exc)
            return {}


class Metrics(Probe):
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self._http()
        self._routing()
        self._scheduling()
        self._generation()
        self._budgets()
        self._pool: Callable[[], Collection[str] | None] | None = None  # `watch` sets it
        self._removed: OrderedDict[str, None] = OrderedDict()  # the last REMEMBER_REMOVED names removed
        self._removed_lock = threading.Lock()  # removals come on request threads, batches on theirs

    def _http(self) -> None:
        r, labels = self.registry, ["method", "endpoint", "status"]
        self.requests = Counter("skillroute_http_requests", "HTTP requests by route and status.", labels, registry=r)
        self.errors = Counter("skillroute_http_errors", "HTTP responses with status >= 400, and unhandled errors.",
                              labels, registry=r)
        self.request_seconds = Histogram("skillroute_http_request_duration_seconds", "HTTP request duration.",
                                         ["method", "endpoint"], buckets=LATENCY_BUCKETS, registry=r)

    def _routing(self) -> None:
        r = self.registry
        self.routing_seconds = Histogram("skillroute_routing_latency_seconds",
                                         "Time to route one batch: skills, expert scores and recruits.",
                                         buckets=ROUTING_BUCKETS, registry=r)
        self.decisions = Counter("skillroute_routing_decisions", "Queries routed.", ["router", "mode"], registry=r)
        self.recruitments = Counter("skillroute_recruitments", "Draws that recruited each expert (repeats count).",
                                    ["expert"], registry=r)
        self.aggregations = Counter("skillroute_aggregator_selected", "Queries aggregated by each expert.",
                                    ["expert"], registry=r)
        self.queries = Counter("skillroute_queries", "Queries that reached a final status.", ["status"], registry=r)
        for status in ("done", "failed"):
            self.queries.labels(status=status)
        # a count, ever: a competition or exploration lesson that feedback on the same query later
        # replaces stays counted, so this is not the lessons the store holds (the dashboard shows those)
        self.lessons = Counter("skillroute_lessons", "Lessons learned, ever, by source (competitions, explorations, "
                               "feedback), including those later replaced by feedback on the same query.",
                               ["source"], registry=r)
        for source in ("competition", "explore", "feedback"):
            self.lessons.labels(source=source)

    def _scheduling(self) -> None:
        r = self.registry
        # each worker's load durations, read at scrape time: those of workers built here kept in
        # `_loads` (this is their probe), those of worker actors read from them (`watch_load_times`)
        self._loads: dict[str, LoadTimes] = {}
        self.load_times: dict[str, Callable[[], Snapshot]] = {}
        r.register(LoadTimeCollector(self.load_times))
        self.batch_size = Histogram("skillroute_batch_size", "Queries per executed batch of the batching window.",
                                    buckets=BATCH_BUCKETS, registry=r)
        # a submission is a whole request (one query, or up to a batch's worth): the backlog that
        # 503 overloaded is decided on is counted in queries, outside the window too (`watch_waiting`)
        self.queue_depth = Gauge("skillroute_queue_depth", "Submissions (requests or batch chunks, not queries) "
                                 "waiting in the batching window; skillroute_queries_waiting counts the backlog.",
                                 registry=r)
        self.queries_waiting = Gauge("skillroute_queries_waiting", "Queries accepted and not yet taken into a batch: "
                                     "in the batching window or held back as chunks not fed to it yet (batch jobs, "
                                     "recovery, adoption). Past SKILLROUTE_BATCHING__MAX_WAITING a request is a 503.",
                                     registry=r)
        self.batches_running = Gauge("skillroute_batches_running", "Batches running now: at once only where they "
                                     "share no worker.", registry=r)
        self.pool_experts = Gauge("skillroute_pool_experts", "Profiled experts the router can recruit.", registry=r)

    def _generation(self) -> None:
        r, labels = self.registry, ["expert", "role"]
        self.completion_tokens = Counter("skillroute_tokens_generated", "Completion tokens generated.", labels,
                                         registry=r)
        self.prompt_tokens = Counter("skillroute_prompt_tokens", "Prompt tokens read.", labels, registry=r)
        self.generation_seconds = Histogram("skillroute_generation_latency_seconds", "Latency of one generation.",
                                            labels, buckets=LATENCY_BUCKETS, registry=r)

    def _budgets(self) -> None:
        """Predicted vs measured cost per budgeted query, and the budgets asked for; measured latency of
        every query too (most carry no budget, so it is kept apart from the budgeted one)."""
        r = self.registry
        self.latency_measured = Histogram("skillroute_query_latency_seconds", "Measured latency of a query's batch.",
                                          buckets=LATENCY_BUCKETS, registry=r)
        self.latency_budgeted = Histogram("skillroute_query_budgeted_latency_seconds",
                                          "Measured latency of a budgeted query's batch (what its budget is held to).",
                                          buckets=LATENCY_BUCKETS, registry=r)
        self.latency_predicted = Histogram("skillroute_query_predicted_latency_seconds",
                                           "Latency the budget solver predicted for the chosen experts.",
                                           buckets=LATENCY_BUCKETS, registry=r)
        self.latency_budget = Histogram("skillroute_query_latency_budget_seconds", "Latency budgets asked for.",
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.energy_measured = Histogram("skillroute_query_energy_joules",
                                         "Energy of a budgeted query: local power x measured wall time (estimate).",
                                         buckets=ENERGY_BUCKETS, registry=r)
        self.energy_predicted = Histogram("skillroute_query_predicted_energy_joules",
                                          "Energy the budget solver predicted for the chosen experts.",
                                          buckets=ENERGY_BUCKETS, registry=r)
        self.energy_budget = Histogram("skillroute_query_energy_budget_joules", "Energy budgets asked for.",
                                       buckets=ENERGY_BUCKETS, registry=r)
        self.over_budget = Counter("skillroute_budget_exceeded", "Queries whose measured cost exceeded the budget.",
                                   ["resource"], registry=r)
        for resource in ("latency", "energy"):
            self.over_budget.labels(resource=resource)

    def watch(self, workers: Mapping[str, Counts], queue_depth: Callable[[], int],
              pool: Callable[[], Collection[str] | None], ready: Callable[[], int] | None = None) -> None:
        """Read these at scrape time: each worker's residency counts, the window's queue, the pool's
        experts (None: not loaded yet) and how many of them can be recruited (`ready`; unset: all,
        though one still profiling is only explored). The pool is also read as a batch is counted
        (`_gone`)."""
        self.registry.register(ResidencyCollector(workers))
        self.queue_depth.set_function(lambda: float(queue_depth()))
        count = ready or (lambda: len(pool() or ()))
        self.pool_experts.set_function(lambda: float(count()))
        self._pool = pool

    def watch_waiting(self, waiting: Callable[[], int]) -> None:
        """Read at scrape time: the queries accepted and not yet in a batch (`QueryService.waiting`)."""
        self.queries_waiting.set_function(lambda: float(waiting()))

    def watch_running(self, running: Callable[[], int]) -> None:
        """Read at scrape time: the batches running now (`BatchingWindow.running`)."""
        self.batches_running.set_function(lambda: float(running()))

    def observe_request(self, method: str, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(method, endpoint, str(status)).inc()
        if status >= 400:
            self.errors.labels(method, endpoint, str(status)).inc()
        self.request_seconds.labels(method, endpoint).observe(seconds)

    # --- Probe hooks -------------------------------------------------------------------------

    def model_loaded(self, worker: str, model: str, seconds: float) -> None:
        times = self._loads.setdefault(worker, LoadTimes())
        self.load_times.setdefault(worker, times.snapshot)
        times.model_loaded(worker, model, seconds)

    def batch_executed(self, size: int) -> None:
        self.batch_size.observe(size)

    def routed(self, decisions: Sequence[Decision], seconds: float) -> None:
        self.routing_seconds.observe(seconds)
        # held from the check to the last increment: a removal lands before or after them, never between
        with self._removed_lock:
            gone = self._gone()
            for d in decisions:
                self.decisions.labels(d.router, d.mode).inc()
                for name in (n for n in d.recruited if n not in gone):
                    self.recruitments.labels(name).inc()

    def answered(self, outcomes: Sequence[Outcome]) -> None:
        with self._removed_lock:  # as in `routed`
            gone = self._gone()
            for o in outcomes:
                self._generations(o, gone)
        for o in outcomes:
            self._costs(o)

    def _generations(self, o: Outcome, gone: Collection[str]) -> None:
        for a in (a for a in o.answers if a.expert not in gone):
            self.completion_tokens.labels(a.expert, a.role).inc(a.completion_tokens)
            self.prompt_tokens.labels(a.expert, a.role).inc(a.prompt_tokens)
            self.generation_seconds.labels(a.expert, a.role).observe(a.latency_s)
            if a.role == "aggregator":
                self.aggregations.labels(a.expert).inc()

    def _gone(self) -> set[str]:
        """Removed experts not back in the pool: a generation of one that was running as it was
        removed is not counted, or it would bring back the series `expert_removed` dropped for good.
        The caller holds `_removed_lock` until its increments are done. The pool is read under it
        too: a removal updates the pool before it drops the series (`ExpertService.remove`), so a
        read after a removal's lock sees the expert gone, and one before it is followed by its drop."""
        if not self._removed:
            return set()
        live = self._pool() if self._pool is not None else None
        return set(self._removed) - set(live or ())

    def _costs(self, o: Outcome) -> None:
        """Measured latency always; predicted and measured cost against the budget when it has one."""
        self.latency_measured.observe(o.latency_s)
        b = o.decision.budget
        if b is None:
            return
        if b.measured_latency_s is not None:
            self.latency_budgeted.observe(b.measured_latency_s)
        self.latency_predicted.observe(b.predicted_latency_s)
        self.energy_predicted.observe(b.predicted_energy_j)
        if b.measured_energy_j is not None:
            self.energy_measured.observe(b.measured_energy_j)
        limit_s = None if b.latency_ms is None else b.latency_ms / 1e3
        self._against_budget("latency", self.latency_budget, b.measured_latency_s, limit_s)
        self._against_budget("energy", self.energy_budget, b.measured_energy_j, b.energy_j)

    def _against_budget(self, resource: str, hist: Histogram, measured: float | None, limit: float | None) -> None:
        if limit is None:
            return
        hist.observe(limit)
        if measured is not None and measured > limit:
            self.over_budget.labels(resource).inc()

    def queries_finished(self, status: str, count: int) -> None:
        self.queries.labels(status).inc(count)

    def learned(self, sources: Sequence[str]) -> None:
        for source in sources:
            self.lessons.labels(source).inc()

    def expert_removed(self, name: str) -> None:
        """Drop the series labelled by the removed expert, each label combination they can have:
        registered and removed experts would otherwise add ~25 series apiece for good. Under
        `_removed_lock` throughout, so a batch's check-and-increment never straddles it."""
        with self._removed_lock:
            self._removed[name] = None
            self._removed.move_to_end(name)
            while len(self._removed) > REMEMBER_REMOVED:
                self._removed.popitem(last=False)
            self._drop_series(name)

    def _drop_series(self, name: str) -> None:
        for counter in (self.recruitments, self.aggregations):
            with suppress(KeyError):  # a series it never had
                counter.remove(name)
        for metric in (self.completion_tokens, self.prompt_tokens, self.generation_seconds):
            for role in get_args(Role):
                with suppress(KeyError):
                    metric.remove(name, role)

    def watch_load_times(self, workers: Mapping[str, Callable[[], Snapshot]]) -> None:
        """Read these workers' load durations at scrape time: worker actors, whose models load in
        their own process (`serving.worker_actor.WorkerActor.load_seconds`), not through this probe."""
        self.load_times.update(workers)

    def watch_evidence(self, counts: Callable[[], Mapping[str, int]]) -> None:
        """Each expert's observed marks (profiling and lessons), read at scrape time."""
        self.registry.register(EvidenceCollector(counts))
