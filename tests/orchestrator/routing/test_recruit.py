"""Recruitment against hand-computed Symbolic-MoE numbers."""

import random
from collections import Counter

import pytest

from orchestrator.routing.evidence import RoutingEvidence
from orchestrator.routing.recruit import local_suitability, recruit, score, score_experts
from orchestrator.routing.router import SymbolicRouter

PROFILES = {"a": {"math": 3.0, "law": -1.0}, "b": {"math": 1.0, "law": 2.0}, "c": {"math": -2.0, "law": 1.0}}


def test_local_suitability_sums_profile_over_mapped_skills():
    assert local_suitability(PROFILES, ["math", "law"]) == {"a": 2.0, "b": 3.0, "c": -1.0}
    # a skill named twice counts twice; an unknown skill counts zero
    assert local_suitability(PROFILES, ["math", "math", "poetry"]) == {"a": 6.0, "b": 2.0, "c": -4.0}


def test_weights_are_suitability_times_competence_over_positive_experts():
    # totals a=2, b=3, c=-1 → shifted 4, 5, 1 → squared 16, 25, 1 → γ = /42
    router = SymbolicRouter(RoutingEvidence(PROFILES))
    assert router.evidence.competence == pytest.approx({"a": 16 / 42, "b": 25 / 42, "c": 1 / 42})
    scores = router.score(["math", "law"])
    assert [s.name for s in scores] == ["b", "a"]  # c has S ≤ 0 and is excluded
    assert scores[0].weight == pytest.approx(3 * 25 / 42)
    assert scores[1].weight == pytest.approx(2 * 16 / 42)


def test_no_positive_expert_falls_back_to_shifted_suitability():
    scores = score_experts({"a": -3.0, "b": -1.0}, {"a": 0.5, "b": 0.5})
    # shifted S − min + 1: a → 1, b → 3
    assert [(s.name, s.suitability) for s in scores] == [("b", 3.0), ("a", 1.0)]


def test_topk_is_deterministic_and_distinct():
    scores = SymbolicRouter(RoutingEvidence(PROFILES)).score(["math", "law"])
    assert recruit(scores, 1, "topk") == ["b"]
    assert recruit(scores, 5, "topk") == ["b", "a"]


def test_sampling_draws_with_replacement_in_proportion_to_weight():
    scores = SymbolicRouter(RoutingEvidence(PROFILES)).score(["math", "law"])
    draws = recruit(scores, 20_000, "sample", random.Random(7))
    share_b = Counter(draws)["b"] / len(draws)
    assert share_b == pytest.approx(75 / 107, abs=0.01)  # w_b / (w_a + w_b) = 75 / (75 + 32)
    assert recruit(scores, 3, "sample", random.Random(1)) == recruit(scores, 3, "sample", random.Random(1))


def test_dynamic_k_stops_once_cumulative_share_passes_p():
    scores = SymbolicRouter(RoutingEvidence(PROFILES)).score(["math", "law"])
    assert recruit(scores, 3, "dynamic", p=0.5) == ["b"]  # b alone holds 70%
    assert recruit(scores, 3, "dynamic", p=0.9) == ["b", "a"]
    assert recruit(scores, 1, "dynamic", p=0.9) == ["b"]  # never past k


def test_empty_pool_recruits_nobody():
    assert recruit([], 3) == []


def test_knn_router_needs_question_records_and_falls_back_to_symbolic():
    from orchestrator.routing.router import build_router

    assert build_router(RoutingEvidence(PROFILES), "knn").name == "symbolic"
    assert build_router(RoutingEvidence(PROFILES), "symbolic").name == "symbolic"


def test_sampling_without_positive_weight_takes_the_best_k_instead_of_failing():
    # all γ zero beside others that were filtered out, or a calibrated router's experts all at chance
    scores = [score("a", 1.0, 0.0, 0.0), score("b", 0.5, 0.0, 0.0)]
    assert recruit(scores, 2, "sample", random.Random(1)) == ["a", "b"]
    below_chance = [score("a", 0.3, 0.4, -0.2), score("b", 0.2, 0.4, -0.9)]
    assert recruit(below_chance, 1, "sample", random.Random(1)) == ["a"]


def test_sampling_draws_by_the_positive_weights_alone():
    # a calibrated router's below-chance expert has negative weight: it once skewed every draw
    scores = [score("c", 0.9, 0.5, 3.0), score("a", 0.6, 0.5, 1.0), score("b", 0.3, 0.5, -1.0)]
    draws = Counter(recruit(scores, 20_000, "sample", random.Random(3)))
    assert draws["b"] == 0 and draws["a"] / 20_000 == pytest.approx(0.25, abs=0.01)


def test_the_positive_filter_and_its_fallbacks_run_over_the_experts_named():
    router = SymbolicRouter(RoutingEvidence(PROFILES))
    # over the whole pool only c is dropped (S = -1); without b, a is still positive alone
    assert [s.name for s in router.score(["math", "law"], among={"a", "c"})] == ["a"]
    # among c alone nobody is positive: c's S is shifted to 1 instead of the query finding nobody
    assert [(s.name, s.suitability) for s in router.score(["math", "law"], among={"c"})] == [("c", 1.0)]
    assert router.score(["math", "law"], among=set()) == []
