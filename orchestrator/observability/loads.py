"""Model load durations, kept where the loads happen and exported at scrape time.

Under Ray the models load in the worker actor's process, whose DeviceWorker has no Prometheus
registry: the actor keeps its load durations in a `LoadTimes` (its worker's probe) and the
replica reads them at scrape time, as it reads the residency counts. Inline, the app's
`Metrics` keeps one per worker the same way, so both export one histogram family. Bounded: one
row of bucket counts and a sum per model, however many loads, for the `MAX_MODELS` models loaded
last (models come and go with registrations; the device worker forgets as many).
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections.abc import Callable, Iterable, Mapping

from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from orchestrator.probe import Probe

log = logging.getLogger(__name__)
# to 20 min: a large model's first load (a 70B's weights into vLLM) can take longer than 5 min
LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200)
# model → (loads per bucket, the last past every bound; seconds in all): plain data, to cross Ray
Snapshot = dict[str, tuple[list[int], float]]
MAX_MODELS = 256  # as scheduling.worker's and experts.calibration's per-model state


class LoadTimes(Probe):
    """The load durations of one worker's models (a probe: the worker reports each load)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # loads (a prefetch thread) and reads (a scrape) meet here
        self._models: Snapshot = {}

    def model_loaded(self, worker: str, model: str, seconds: float) -> None:
        with self._lock:
            counts, total = self._models.pop(model, ([0] * (len(LOAD_BUCKETS) + 1), 0.0))
            counts[bisect.bisect_left(LOAD_BUCKETS, seconds)] += 1  # le: a bound counts what equals it
            self._models[model] = (counts, total + seconds)  # re-inserted: the dict's order is by last load
            if len(self._models) > MAX_MODELS:
                del self._models[next(iter(self._models))]

    def snapshot(self) -> Snapshot:
        with self._lock:
            return {m: (list(counts), total) for m, (counts, total) in self._models.items()}


class LoadTimeCollector(Collector):
    """skillroute_model_load_seconds of every worker, read at scrape time; a worker that cannot
    answer (its actor lost) is left out of this scrape, logged, as the residency counts are."""

    def __init__(self, workers: Mapping[str, Callable[[], Snapshot]]):
        self.workers = workers  # the caller's dict: workers added later are read too

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily("skillroute_model_load_seconds", "Time to load a base model on a worker.",
                                       labels=["worker", "model"])
        for worker, read in list(self.workers.items()):
            for model, (counts, total) in sorted(_read(worker, read).items()):
                family.add_metric([worker, model], _cumulative(counts), total)
        return [family]


def _read(worker: str, read: Callable[[], Snapshot]) -> Snapshot:
    try:
        return read()
    except Exception as exc:  # any failure to read is this worker's, not the scrape's
        log.warning("worker %s did not report its load times: %s", worker, exc)
        return {}


def _cumulative(counts: list[int]) -> list[tuple[str, float]]:
    """Prometheus' buckets: each bound with the loads at or under it, +Inf last."""
    bounds = [*(str(float(b)) for b in LOAD_BUCKETS), "+Inf"]
    running = [sum(counts[:i + 1]) for i in range(len(counts))]
    return [(b, float(n)) for b, n in zip(bounds, running, strict=True)]
