"""A worker's status reads (residency counts, timeline, resident models) from other threads:
/metrics, the dashboard and /health read them while the runner loads, unloads and generates.
They never fail on a concurrent load (a failed read reports a live worker unavailable and drops
its series), and never wait out a generation (a worker actor's read gives up after 2 s)."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator

import pytest

from experts.mock import MockBackend
from experts.types import BaseModelSpec, GenerationRequest
from orchestrator.observability.metrics import ResidencyCollector
from orchestrator.scheduling.worker import DeviceWorker

WAIT_S = 30  # an event not set by then means the order under test did not happen
LOADS = 1000  # each load evicts the last and, past MAX_MODELS keys, forgets the oldest's counts


@pytest.fixture
def busy_switching() -> Iterator[None]:
    """Thread switches as often as the interpreter allows: an unguarded read meets a write within
    a few hundred loads (it did in about one read in ten before the reads took the records' lock)."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def one_at_a_time() -> DeviceWorker:
    return DeviceWorker("cpu", memory_budget_bytes=1, factory=lambda spec: MockBackend(spec.key, memory=1))


def available(collector: ResidencyCollector) -> list[float]:
    """skillroute_worker_available's values in one scrape of the collector."""
    [family] = [f for f in collector.collect() if f.name == "skillroute_worker_available"]
    return [s.value for s in family.samples]


def test_a_scrape_during_loads_on_another_thread_reports_the_worker_and_its_counts(busy_switching: None) -> None:
    worker = one_at_a_time()
    collector = ResidencyCollector({"cpu": worker.residency_counts})

    def churn() -> None:
        for i in range(LOADS):
            worker.ensure_loaded(BaseModelSpec(kind="mock", source=f"m{i % 400}"))

    loader = threading.Thread(target=churn)
    loader.start()
    seen: list[float] = []
    while loader.is_alive():
        seen += available(collector)
        worker.timeline(), worker.resident()  # raise if they meet a write half done
    loader.join()
    assert seen and set(seen) == {1.0}  # never the live worker reported unavailable, its series dropped
    counts = worker.residency_counts()
    assert sum(loads for loads, _ in counts.values()) - sum(unloads for _, unloads in counts.values()) == 1


def test_status_reads_answer_while_a_generation_holds_the_device() -> None:
    generating, finish = threading.Event(), threading.Event()

    def hold(_request: GenerationRequest, _word: int) -> None:
        generating.set()
        finish.wait(WAIT_S)

    worker = DeviceWorker("cpu", factory=lambda spec: MockBackend(spec.key, gate=hold))
    base = BaseModelSpec(kind="mock", source="m")
    request = GenerationRequest(request_id="r", messages=[{"role": "user", "content": "What is 2+2?"}])
    runner = threading.Thread(target=worker.generate, args=(base, [request]))
    runner.start()
    try:
        assert generating.wait(WAIT_S)  # the runner holds the device lock from here until `finish`
        read: dict[str, object] = {}
        reader = threading.Thread(target=lambda: read.update(
            counts=worker.residency_counts(), events=[e[1:] for e in worker.timeline()], resident=worker.resident()))
        reader.start()
        reader.join(WAIT_S)  # bounds a failure only: the reads must not need the device lock
        assert read == {"counts": {base.key: (1, 0)}, "events": [("load", base.key)], "resident": {base.key}}
    finally:
        finish.set()
        runner.join(WAIT_S)
