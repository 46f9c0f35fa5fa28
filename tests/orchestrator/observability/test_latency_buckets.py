"""Latencies past 300 s land in a finite bucket: a budget may be up to an hour, a model of unknown
size is predicted at ~650 s and a generation may run up to its expert's timeout_s (an hour), and
in +Inf alone histogram_quantile reads them as the top finite bound, so the p95 panels showed 300."""

from __future__ import annotations

import math

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.domain import Answer, BudgetRecord, Decision, Outcome
from orchestrator.observability.metrics import Metrics

PREDICTED_S, MEASURED_S, BUDGET_S = 653.0, 640.0, 3600.0  # an unknown-size model under the API's largest budget


def slow_budgeted_query() -> Outcome:
    budget = BudgetRecord(latency_ms=BUDGET_S * 1e3, energy_j=None, k_max=1, from_key=[], chosen=["big"],
                          predicted_quality=0.5, predicted_latency_s=PREDICTED_S, predicted_energy_j=1.0,
                          measured_latency_s=MEASURED_S, solver_nodes=1, candidates=[])
    decision = Decision(router="knn", mode="topk", seed=0, recruited=["big"], budget=budget)
    answer = Answer(expert="big", role="expert", text="Answer: A", latency_s=MEASURED_S)
    return Outcome(decision=decision, answers=[answer], text="Answer: A", latency_s=MEASURED_S)


def covering_bound(metrics: Metrics, family: str) -> float:
    """The smallest `le` whose bucket holds every observation of the (one-series) histogram."""
    samples = [s for f in text_string_to_metric_families(generate_latest(metrics.registry).decode())
               if f.name == family for s in f.samples]
    total = next(s.value for s in samples if s.name == f"{family}_count")
    assert total > 0, family
    return min(float(s.labels["le"]) for s in samples if s.name == f"{family}_bucket" and s.value == total)


def test_a_slow_budgeted_query_lands_in_finite_buckets_above_its_values() -> None:
    metrics = Metrics()
    metrics.answered([slow_budgeted_query()])
    metrics.observe_request("POST", "/v1/queries", 200, MEASURED_S + 1)  # a synchronous query waits for it
    expected = {"skillroute_query_predicted_latency_seconds": PREDICTED_S,
                "skillroute_query_latency_budget_seconds": BUDGET_S,
                "skillroute_query_budgeted_latency_seconds": MEASURED_S,
                "skillroute_query_latency_seconds": MEASURED_S,
                "skillroute_generation_latency_seconds": MEASURED_S,
                "skillroute_http_request_duration_seconds": MEASURED_S + 1}
    bounds = {family: covering_bound(metrics, family) for family in expected}
    assert all(math.isfinite(b) for b in bounds.values()), bounds
    assert all(bounds[f] >= v for f, v in expected.items()), bounds


def test_a_large_budgeted_query_s_energy_lands_in_finite_buckets_above_it() -> None:
    """Three 70B experts on H100 servers are predicted at ~12,500 J (4,175 J each), above the top
    bound of 10,000 J, and energy budgets go to 1e9 J: the energy p95 panels read 10,000."""
    outcome = slow_budgeted_query()
    assert outcome.decision.budget is not None
    budget = outcome.decision.budget.model_copy(update={"energy_j": 50_000.0, "predicted_energy_j": 12_525.0,
                                                        "measured_energy_j": 12_000.0})
    metrics = Metrics()
    metrics.answered([outcome.model_copy(update={"decision": outcome.decision.model_copy(update={"budget": budget})})])
    expected = {"skillroute_query_predicted_energy_joules": 12_525.0, "skillroute_query_energy_joules": 12_000.0,
                "skillroute_query_energy_budget_joules": 50_000.0}
    bounds = {family: covering_bound(metrics, family) for family in expected}
    assert all(math.isfinite(b) and b >= expected[f] for f, b in bounds.items()), bounds
