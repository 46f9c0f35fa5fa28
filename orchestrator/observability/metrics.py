"""The Prometheus metrics of one app, in the app's own registry.

A per-app `CollectorRegistry` (not the process-global default) lets tests and benches build
several apps in one process without "duplicated timeseries" errors. Counters that can be read
from state the service already keeps (the worker's residency timeline, the window's queue) are
collected at scrape time instead of being counted twice; everything else is recorded by the
`Probe` hooks. Dashboards and alerts rely on these names: rename only with the Grafana JSON.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from orchestrator.observability.probe import Probe

if TYPE_CHECKING:
    from orchestrator.pipeline import Decision, Outcome

Events = Callable[[], Sequence[tuple[float, str, str]]]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
ROUTING_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
ENERGY_BUCKETS = (0.1, 0.5, 1, 5, 10, 50, 100, 500, 1000, 5000, 10000)


class ResidencyCollector(Collector):
    """Loads, unloads and resident models per worker, read from the worker's residency timeline.

    Read at scrape time because under Ray the loads happen in the worker actor's process: the
    timeline is the one record that reaches this process either way.
    """

    def __init__(self, worker: str, events: Events):
        self.worker, self.events = worker, events

    def collect(self) -> Iterable[Metric]:
        events = list(self.events())
        labels = ["worker", "model"]
        loads = CounterMetricFamily("skillroute_model_loads", "Base model loads per worker.", labels=labels)
        unloads = CounterMetricFamily("skillroute_model_unloads", "Base model unloads per worker.", labels=labels)
        resident = GaugeMetricFamily("skillroute_model_resident", "1 while the base model is loaded on the worker.",
                                     labels=labels)
        counts = Tally((kind, key) for _, kind, key in events)
        for key in sorted({k for _, _, k in events}):
            loads.add_metric([self.worker, key], counts["load", key])
            unloads.add_metric([self.worker, key], counts["unload", key])
            resident.add_metric([self.worker, key], 1.0 if counts["load", key] > counts["unload", key] else 0.0)
        return [loads, unloads, resident]


class Metrics(Probe):
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self._http()
        self._routing()
        self._scheduling()
        self._generation()
        self._budgets()

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

    def _scheduling(self) -> None:
        r = self.registry
        self.load_seconds = Histogram("skillroute_model_load_seconds", "Time to load a base model on a worker.",
                                      ["worker", "model"], buckets=LOAD_BUCKETS, registry=r)
        self.batch_size = Histogram("skillroute_batch_size", "Queries per executed batch of the batching window.",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("skillroute_queue_depth", "Submissions waiting in the batching window.", registry=r)
        self.pool_experts = Gauge("skillroute_pool_experts", "Profiled experts the router can recruit.", registry=r)

    def _generation(self) -> None:
        r, labels = self.registry, ["expert", "role"]
        self.completion_tokens = Counter("skillroute_tokens_generated", "Completion tokens generated.", labels,
                                         registry=r)
        self.prompt_tokens = Counter("skillroute_prompt_tokens", "Prompt tokens read.", labels, registry=r)
        self.generation_seconds = Histogram("skillroute_generation_latency_seconds", "Latency of one generation.",
                                            labels, buckets=LATENCY_BUCKETS, registry=r)

    def _budgets(self) -> None:
        """Predicted vs measured cost per query, and the budgets asked for (once decisions carry them)."""
        r = self.registry
        self.latency_measured = Histogram("skillroute_query_latency_seconds", "Measured latency of a query's batch.",
                                          buckets=LATENCY_BUCKETS, registry=r)
        self.latency_predicted = Histogram("skillroute_query_predicted_latency_seconds",
                                           "Latency the budget solver predicted for the chosen experts.",
                                           buckets=LATENCY_BUCKETS, registry=r)
        self.latency_budget = Histogram("skillroute_query_latency_budget_seconds", "Latency budgets asked for.",
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.energy_measured = Histogram("skillroute_query_energy_joules", "Measured energy of a query's generations.",
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

    def watch(self, worker: str, events: Events, queue_depth: Callable[[], int],
              pool_size: Callable[[], int]) -> None:
        """Read these at scrape time: the worker's residency timeline, the window's queue, the pool."""
        self.registry.register(ResidencyCollector(worker, events))
        self.queue_depth.set_function(lambda: float(queue_depth()))
        self.pool_experts.set_function(lambda: float(pool_size()))

    def observe_request(self, method: str, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(method, endpoint, str(status)).inc()
        if status >= 400:
            self.errors.labels(method, endpoint, str(status)).inc()
        self.request_seconds.labels(method, endpoint).observe(seconds)

    # --- Probe hooks -------------------------------------------------------------------------

    def model_loaded(self, worker: str, model: str, seconds: float) -> None:
        self.load_seconds.labels(worker, model).observe(seconds)

    def batch_executed(self, size: int) -> None:
        self.batch_size.observe(size)

    def routed(self, decisions: Sequence[Decision], seconds: float) -> None:
        self.routing_seconds.observe(seconds)
        for d in decisions:
            self.decisions.labels(d.router, d.mode).inc()
            for name in d.recruited:
                self.recruitments.labels(name).inc()

    def answered(self, outcomes: Sequence[Outcome]) -> None:
        for o in outcomes:
            for a in o.answers:
                g = a.generation
                self.completion_tokens.labels(a.expert, a.role).inc(g.completion_tokens)
                self.prompt_tokens.labels(a.expert, a.role).inc(g.prompt_tokens)
                self.generation_seconds.labels(a.expert, a.role).observe(g.latency_s)
                if a.role == "aggregator":
                    self.aggregations.labels(a.expert).inc()
            self._costs(o)

    def _costs(self, o: Outcome) -> None:
        """Measured latency always; energy, predictions and budgets when the outcome carries them."""
        self.latency_measured.observe(o.latency_s)
        energy = _measured_energy(o)
        if energy is not None:
            self.energy_measured.observe(energy)
        _observe_if(self.latency_predicted, _attr(o.decision, "predicted_latency_s"))
        _observe_if(self.energy_predicted, _attr(o.decision, "predicted_energy_j"))
        budget = getattr(o.decision, "budget", None)
        self._against_budget("latency", self.latency_budget, o.latency_s, _attr(budget, "latency_s"))
        self._against_budget("energy", self.energy_budget, energy, _attr(budget, "energy_j"))

    def _against_budget(self, resource: str, hist: Histogram, measured: float | None, limit: float | None) -> None:
        if limit is None:
            return
        hist.observe(limit)
        if measured is not None and measured > limit:
            self.over_budget.labels(resource).inc()

    def queries_finished(self, status: str, count: int) -> None:
        self.queries.labels(status).inc(count)


def _attr(obj: object, name: str) -> float | None:
    """A numeric field the budget work will add to decisions; absent or None until then."""
    value = getattr(obj, name, None) if obj is not None else None
    return float(value) if isinstance(value, int | float) else None


def _observe_if(hist: Histogram, value: float | None) -> None:
    if value is not None:
        hist.observe(value)


def _measured_energy(o: Outcome) -> float | None:
    """Sum of the generations' `energy_j` where backends report it (replay experts will)."""
    values = [_attr(a.generation, "energy_j") for a in o.answers]
    known = [v for v in values if v is not None]
    return sum(known) if known else None
