"""A generation of an expert removed while it ran does not bring back the series its removal dropped."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.domain import Answer, Decision, Outcome
from orchestrator.observability.metrics import REMEMBER_REMOVED, Metrics


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
