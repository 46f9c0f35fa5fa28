"""A generation of an expert removed while it ran, or whose removal lands while its batch is
counted, does not bring back the series its removal dropped."""

from __future__ import annotations

import threading

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.domain import Answer, Decision, Outcome
from orchestrator.observability.metrics import REMEMBER_REMOVED, Metrics

WAIT_S = 30  # an event not set by then means the order under test did not happen


def _batch(*experts: str) -> tuple[list[Decision], list[Outcome]]:
    decision = Decision(router="knn", mode="topk", seed=0, recruited=list(experts))
    answers = [Answer(expert=e, role="expert", text="Answer: A", completion_tokens=3, latency_s=0.1) for e in experts]
    return [decision], [Outcome(decision=decision, answers=answers, text="Answer: A")]


def _experts_in_series(metrics: Metrics) -> set[str]:
    families = text_string_to_metric_families(generate_latest(metrics.registry).decode())
    return {s.labels["expert"] for fam in families for s in fam.samples if "expert" in s.labels}


def _count(metrics: Metrics, *experts: str) -> None:
    decisions, outcomes = _batch(*experts)
    metrics.routed(decisions, 0.01)
    metrics.answered(outcomes)


def test_a_late_generation_of_a_removed_expert_is_not_counted_and_a_returning_name_is() -> None:
    pool = {"a", "b"}
    metrics = Metrics()
    metrics.watch({}, lambda: 0, lambda: pool)
    _count(metrics, "a", "b")
    assert _experts_in_series(metrics) == {"a", "b"}
    pool.discard("a")
    metrics.expert_removed("a")
    _count(metrics, "a", "b")  # the batch that was running as "a" was removed
    assert _experts_in_series(metrics) == {"b"}
    pool.add("a")  # registered again under the same name: counted as any expert
    _count(metrics, "a")
    assert _experts_in_series(metrics) == {"a", "b"}


def test_the_removed_names_it_remembers_are_bounded() -> None:
    metrics = Metrics()
    metrics.watch({}, lambda: 0, lambda: set())
    for i in range(REMEMBER_REMOVED + 10):
        metrics.expert_removed(f"e{i}")
    assert len(metrics._removed) == REMEMBER_REMOVED
    _count(metrics, "e0", f"e{REMEMBER_REMOVED + 9}")  # the oldest is forgotten: counted again
    assert _experts_in_series(metrics) == {"e0"}


class OwnedLock:
    """A lock that says which thread holds it and when a thread first asks for it."""

    def __init__(self) -> None:
        self._lock, self.owner, self.asked = threading.Lock(), 0, threading.Event()

    def __enter__(self) -> None:
        self.asked.set()
        self._lock.acquire()
        self.owner = threading.get_ident()

    def __exit__(self, *_: object) -> None:
        self.owner = 0
        self._lock.release()


@pytest.mark.parametrize("during", [0, 1], ids=["routing", "answering"])
def test_a_removal_landing_while_a_batch_is_counted_drops_the_expert_s_series_for_good(during: int) -> None:
    """The batch reads the pool with "a" in it, then "a" is removed (pool first, then the
    series) on another thread before the batch's increments: were the check and the increments
    not one step, the increments would bring back the series the removal dropped, for good."""
    pool, reads = {"a", "b"}, []
    metrics = Metrics()
    metrics.expert_removed("z")  # something removed before: the batch reads the pool to filter
    lock = metrics._removed_lock = OwnedLock()  # type: ignore[assignment]
    removal = threading.Thread(target=lambda: (pool.discard("a"), metrics.expert_removed("a")))

    def read_pool() -> set[str]:
        live = set(pool)
        if len(reads) == during:  # the batch has read the pool: now the removal comes
            lock.asked.clear()
            removal.start()
            assert lock.asked.wait(WAIT_S)
            if lock.owner != threading.get_ident():  # nothing holds it off: it lands before the increments
                removal.join(WAIT_S)
        reads.append(live)
        return live

    metrics.watch({}, lambda: 0, read_pool)
    _count(metrics, "a", "b")
    removal.join(WAIT_S)
    assert _experts_in_series(metrics) == {"b"}
