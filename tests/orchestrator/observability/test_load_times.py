"""Load durations kept as bucket counts export as the histogram prometheus_client would make."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram

from orchestrator.observability.loads import LOAD_BUCKETS, MAX_MODELS, LoadTimeCollector, LoadTimes, Snapshot

SECONDS = [0.001, 0.01, 0.3, 1.0, 7.5, 299.0, 301.0, 4000.0]  # bounds themselves, and past the last


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in registry.collect() for s in f.samples}


def test_the_export_equals_a_prometheus_histogram_of_the_same_loads() -> None:
    times, expected = LoadTimes(), CollectorRegistry()
    reference = Histogram("skillroute_model_load_seconds", "x", ["worker", "model"], buckets=LOAD_BUCKETS,
                          registry=expected)
    for i, s in enumerate(SECONDS):
        times.model_loaded("gpu0", f"m{i % 2}", s)
        reference.labels("gpu0", f"m{i % 2}").observe(s)
    got = CollectorRegistry()
    got.register(LoadTimeCollector({"gpu0": times.snapshot}))
    want = {k: v for k, v in samples(expected).items() if not k[0].endswith("_created")}
    assert samples(got) == want


def test_what_is_kept_does_not_grow_with_the_loads() -> None:
    times = LoadTimes()
    for i in range(10_000):
        times.model_loaded("cpu", f"m{i % 3}", i / 100)
    kept = times.snapshot()
    assert sorted(kept) == ["m0", "m1", "m2"] and all(len(c) == len(LOAD_BUCKETS) + 1 for c, _ in kept.values())
    assert sum(sum(c) for c, _ in kept.values()) == 10_000


def test_what_is_kept_does_not_grow_with_the_models_registered_and_removed() -> None:
    """One model per registration, each loaded once: the models loaded last are kept, a model
    loaded again counts as recent (its row, with every load, is kept)."""
    times = LoadTimes()
    times.model_loaded("cpu", "kept", 1.0)
    for i in range(3 * MAX_MODELS):
        times.model_loaded("cpu", f"m{i}", 1.0)
        if i % 100 == 0:
            times.model_loaded("cpu", "kept", 1.0)
    kept = times.snapshot()
    assert len(kept) == MAX_MODELS and f"m{3 * MAX_MODELS - 1}" in kept and "m0" not in kept
    assert sum(kept["kept"][0]) == 9


def test_a_worker_that_cannot_answer_is_left_out_of_the_scrape() -> None:
    def lost() -> Snapshot:
        raise ConnectionError("actor gone")

    times = LoadTimes()
    times.model_loaded("cpu", "m", 1.0)
    registry = CollectorRegistry()
    registry.register(LoadTimeCollector({"gone": lost, "cpu": times.snapshot}))
    assert {dict(labels)["worker"] for name, labels in samples(registry)} == {"cpu"}


def test_a_load_of_several_minutes_lands_in_a_finite_bucket() -> None:
    """A large model's first load (a 70B into vLLM) can pass 300 s, the top bound was: counted
    in +Inf alone, the load p95 panel read 300 s."""
    times = LoadTimes()
    times.model_loaded("gpu0", "big", 700.0)
    got = CollectorRegistry()
    got.register(LoadTimeCollector({"gpu0": times.snapshot}))
    finite = [float(s.labels["le"]) for f in got.collect() for s in f.samples
              if s.name.endswith("_bucket") and s.value == 1 and s.labels["le"] != "+Inf"]
    assert finite and min(finite) >= 700.0
