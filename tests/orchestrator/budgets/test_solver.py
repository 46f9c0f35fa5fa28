"""MoE^2 budget selection: the branch and bound equals brute force, and the pieces are monotone."""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from collections.abc import Callable, Sequence

import pytest

from experts.devices import CostEstimate
from orchestrator.budgets._limits import limits_feasible
from orchestrator.budgets._quality import quality_model
from orchestrator.budgets._search import BoxSearch
from orchestrator.budgets.solver import (
    AggregationCost,
    Budget,
    Candidate,
    InfeasibleBudget,
    QualityModel,
    _limits,
    brute_force,
    monotone,
    noisy_or,
    quality_from_weights,
    solve,
    subset_cost,
    weighted_vote,
    weighted_vote_above,
)
from orchestrator.routing.recruit import score as expert_score

Instance = tuple[list[Candidate], Budget, AggregationCost]


def random_instance(rng: random.Random, n: int, k_max: int | None = None) -> Instance:
    """Costs either independent of quality or rising with it; budgets tight, loose or absent."""
    correlated = rng.random() < 0.5
    narrow = rng.random() < 0.3  # near-ties: many subsets within 1e-3 of the optimum
    cands = []
    for i in range(n):
        q = rng.uniform(0.6, 0.62) if narrow else rng.uniform(0.05, 0.95)
        q = rng.choice([0.5, 0.7]) if rng.random() < 0.15 else q  # exact ties
        scale = q / (1 - q) if correlated else rng.uniform(0.2, 5)
        cands.append(Candidate(f"x{i}", q, 0.1 + scale * rng.uniform(0.5, 1.5),
                               scale * rng.uniform(1, 20)))
    lat = sorted(c.latency_s for c in cands)
    en = sorted(c.energy_j for c in cands)
    L = rng.choice([None, lat[-1], rng.uniform(0.7 * lat[0], lat[-1])])
    E = rng.choice([None, sum(en), rng.uniform(0.7 * en[0], sum(en[: max(1, n // 2)]))])
    agg = AggregationCost(rng.uniform(0, 0.3), rng.uniform(0, 0.05), rng.uniform(0, 3),
                          rng.uniform(0, 1))
    k = k_max if k_max is not None else rng.choice([1, 2, 3, 5, n])
    return cands, Budget(L, E, k), agg


def coverage(n: int, rng: random.Random) -> Callable[[Sequence[int]], float]:
    """A monotone but not symmetric quality: expected weighted coverage of a few skills."""
    skills = [(rng.random(), [rng.random() * rng.random() for _ in range(n)]) for _ in range(4)]
    total = sum(w for w, _ in skills)

    def value(members: Sequence[int]) -> float:
        return sum(w * (1 - math.prod(1 - p[i] for i in members)) for w, p in skills) / total

    return value


def assert_same_optimum(cands: list[Candidate], budget: Budget, agg: AggregationCost,
                        quality: object) -> None:
    try:
        expected = brute_force(cands, budget, quality, agg)  # type: ignore[arg-type]
    except InfeasibleBudget as exc:
        with pytest.raises(InfeasibleBudget) as info:
            solve(cands, budget, quality, agg)  # type: ignore[arg-type]
        assert (info.value.fastest, info.value.least_energy) == (exc.fastest, exc.least_energy)
        return
    got = solve(cands, budget, quality, agg)  # type: ignore[arg-type]
    assert got.quality == pytest.approx(expected.quality, abs=1e-9)
    # the same tie rule: of equally good subsets the smaller, then cheaper, one
    assert got.indices == expected.indices
    assert 1 <= len(got.chosen) <= budget.k_max
    assert got.latency_s <= (budget.latency_s if budget.latency_s is not None else math.inf)
    assert got.energy_j <= (budget.energy_j if budget.energy_j is not None else math.inf)
    assert (got.latency_s, got.energy_j) == subset_cost(cands, got.indices, agg)


def quality_for(kind: str, cands: list[Candidate], rng: random.Random) -> object:
    """A quality spec by name; "coverage" is a plain monotone callable, "submodular" the same
    function declared submodular, "envelope" noisy-or bounded by its LP envelope alone."""
    if kind == "coverage":
        return coverage(len(cands), rng)
    if kind == "submodular":
        return monotone(coverage(len(cands), rng), submodular=True)
    if kind == "envelope":
        return envelope_only([c.quality for c in cands])
    return kind


@pytest.mark.parametrize("quality", ["noisy_or", "weighted_vote", "coverage", "submodular"])
def test_branch_and_bound_equals_brute_force(quality: str) -> None:
    rng = random.Random(f"budgets-{quality}")
    for _ in range(250):
        cands, budget, agg = random_instance(rng, rng.randint(1, 9))
        assert_same_optimum(cands, budget, agg, quality_for(quality, cands, rng))


def test_equal_to_brute_force_with_no_member_limit() -> None:
    rng = random.Random(7)
    for _ in range(60):
        n = rng.randint(8, 11)
        cands, budget, agg = random_instance(rng, n, k_max=n)
        assert_same_optimum(cands, budget, agg, rng.choice(["noisy_or", "weighted_vote"]))


def test_equal_to_brute_force_at_sixteen_experts() -> None:
    rng = random.Random(16)
    for i in range(30):
        cands, budget, agg = random_instance(rng, 16, k_max=rng.choice([2, 3, 4]))
        kind = ("noisy_or", "weighted_vote", "submodular")[i % 3]
        assert_same_optimum(cands, budget, agg, quality_for(kind, cands, rng))


def on_devices(rng: random.Random, cands: list[Candidate]) -> list[Candidate]:
    """Some candidates share a device (their latencies add there), the rest have their own."""
    return [dataclasses.replace(c, device=rng.choice(["cpu", "gpu", None, None])) for c in cands]


@pytest.mark.parametrize("quality", ["noisy_or", "weighted_vote", "coverage", "submodular"])
def test_shared_devices_equal_brute_force(quality: str) -> None:
    rng = random.Random(f"shared-{quality}")
    for _ in range(200):
        cands, budget, agg = random_instance(rng, rng.randint(1, 10))
        assert_same_optimum(on_devices(rng, cands), budget, agg, quality_for(quality, cands, rng))


def test_shared_devices_equal_brute_force_at_sixteen_experts() -> None:
    rng = random.Random(61)
    for _ in range(20):
        cands, budget, agg = random_instance(rng, 16, k_max=rng.choice([3, 5]))
        assert_same_optimum(on_devices(rng, cands), budget, agg, "noisy_or")


def test_experts_on_one_device_add_their_latencies() -> None:
    cands = [Candidate("a", 0.7, 1.0, 1.0, "cpu"), Candidate("b", 0.6, 1.0, 1.0, "cpu"),
             Candidate("c", 0.5, 1.5, 1.0, "gpu")]
    assert subset_cost(cands, (0, 1)) == (2.0, 2.0)  # one after another on the cpu
    assert subset_cost(cands, (0, 2)) == (1.5, 2.0)  # in parallel on two devices
    assert solve(cands, Budget(latency_s=1.8)).chosen == ("a", "c")  # a+b would take 2.0 s
    assert solve(cands, Budget(latency_s=2.6)).chosen == ("a", "b", "c")  # cpu 2.0, gpu 1.5


def test_all_ties_pick_k_max_experts() -> None:
    cands = [Candidate(f"t{i}", 0.6, 1.0, 5.0) for i in range(6)]
    got = solve(cands, Budget(latency_s=2.0, energy_j=17.0, k_max=5))
    assert len(got.chosen) == 3  # energy allows three of the identical experts
    assert got.quality == pytest.approx(1 - 0.4**3)


def test_a_member_that_adds_no_quality_is_left_out() -> None:
    """Equal predicted quality: the smaller subset wins, then the cheaper one of that size."""
    cands = [Candidate("a", 0.6, 1.0, 1.0), Candidate("zero", 0.0, 0.1, 0.1), Candidate("b", 0.6, 1.0, 1.0)]
    assert solve(cands, Budget(k_max=3)).chosen == ("a", "b")
    below = solve(cands[:1] + [Candidate("low", 0.1, 0.1, 0.1)], Budget(k_max=2), weighted_vote_above([0.6, 0.1], 0.25))
    assert below.chosen == ("a",)
    same = [Candidate("dear", 1.0, 1.0, 9.0), Candidate("cheap", 1.0, 1.0, 2.0), Candidate("c", 0.5, 0.5, 1.0)]
    assert solve(same, Budget(k_max=3)).chosen == ("cheap",)  # 1.0 alone: nothing to add


def test_ties_everywhere_still_equal_brute_force() -> None:
    """Qualities drawn from a few values (0 and 1 among them) make many subsets equally good."""
    rng = random.Random(21)
    for _ in range(300):
        n = rng.randint(1, 8)
        cands = [Candidate(f"t{i}", rng.choice([0.0, 0.25, 0.5, 0.6, 1.0]), rng.choice([0.5, 1.0, 2.0]),
                           rng.choice([0.0, 1.0, 2.0]), rng.choice([None, "a"])) for i in range(n)]
        budget = Budget(rng.choice([None, 2.0, 4.0]), rng.choice([None, 2.0, 5.0]), rng.randint(1, 6))
        agg = AggregationCost(rng.choice([0.0, 0.5]), 0.0, rng.choice([0.0, 0.5]), 0.0)
        quality = rng.choice(["noisy_or", "weighted_vote", weighted_vote_above([c.quality for c in cands], 0.25)])
        assert_same_optimum(cands, budget, agg, quality)

def test_best_pair_breaks_the_energy_budget() -> None:
    # A+B would be best (0.98) but needs 18 J; A+C fits 13 J and beats A alone or B+C.
    cands = [Candidate("A", 0.9, 1.0, 10.0), Candidate("B", 0.8, 1.0, 8.0),
             Candidate("C", 0.5, 1.0, 3.0)]
    got = solve(cands, Budget(latency_s=5.0, energy_j=14.0))
    assert got.chosen == ("A", "C")
    assert got.quality == pytest.approx(1 - 0.1 * 0.5)
    assert (got.latency_s, got.energy_j) == (1.0, 13.0)


def test_aggregation_latency_can_force_a_single_expert() -> None:
    cands = [Candidate("fast", 0.6, 0.5, 1.0), Candidate("slow", 0.8, 0.9, 1.0)]
    agg = AggregationCost(latency_base_s=0.2)
    got = solve(cands, Budget(latency_s=1.0), aggregation=agg)
    assert got.chosen == ("slow",)  # together: 0.9 + 0.2 > 1.0
    both = solve(cands, Budget(latency_s=1.2), aggregation=agg)
    assert both.chosen == ("fast", "slow") and both.latency_s == pytest.approx(1.1)


def test_tight_budget_chooses_cheaper_subset_than_loose() -> None:
    rng = random.Random(3)
    cands = [Candidate(f"e{i}", q, 0.2 + q, 10 * q) for i, q in
             enumerate(rng.uniform(0.3, 0.9) for _ in range(10))]
    loose = solve(cands, Budget(latency_s=5.0, energy_j=100.0))
    tight = solve(cands, Budget(latency_s=5.0, energy_j=12.0))
    assert tight.energy_j < loose.energy_j and tight.quality <= loose.quality


def test_infeasible_budget_names_the_cheapest_options() -> None:
    cands = [Candidate("quick", 0.9, 0.3, 50.0), Candidate("frugal", 0.5, 2.0, 1.0)]
    with pytest.raises(InfeasibleBudget) as info:
        solve(cands, Budget(latency_s=0.2, energy_j=0.5))
    exc = info.value
    assert exc.fastest.name == "quick" and exc.least_energy.name == "frugal"
    assert "quick (300 ms" in str(exc) and "frugal" in str(exc)
    detail = exc.detail()
    assert detail["error"] == "infeasible_budget"
    assert detail["fastest"] == {"expert": "quick", "latency_ms": 300.0, "energy_j": 50.0}


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="no candidate"):
        solve([], Budget())
    with pytest.raises(ValueError, match="k_max"):
        Budget(k_max=0)
    with pytest.raises(ValueError, match="quality"):
        Candidate("x", 1.5, 1.0, 1.0)
    shrinking = AggregationCost(latency_base_s=1.0, latency_per_member_s=-0.4)
    with pytest.raises(ValueError, match="non-decreasing"):
        solve([Candidate(f"x{i}", 0.5, 1, 1) for i in range(4)], Budget(), aggregation=shrinking)


@pytest.mark.parametrize("build", [noisy_or, weighted_vote])
def test_quality_functions_are_monotone(build: Callable[[Sequence[float]], QualityModel]) -> None:
    rng = random.Random(11)
    for _ in range(400):
        n = rng.randint(1, 12)
        qs = [rng.choice([0.0, 1.0, rng.random()]) if rng.random() < 0.1 else rng.random()
              for _ in range(n)]
        model = build(qs)
        big = [i for i in range(n) if rng.random() < 0.6]
        small = [i for i in big if rng.random() < 0.5]
        assert model.value(small) <= model.value(big) + 1e-12
        assert 0.0 <= model.value(big) <= 1.0


def test_weighted_vote_is_bounded_by_noisy_or_and_exact_on_small_cases() -> None:
    qs = [0.6, 0.6, 0.6, 0.3]
    vote, anyone = weighted_vote(qs), noisy_or(qs)
    assert vote.value([3]) == pytest.approx(0.3)
    assert vote.value([0, 3]) == pytest.approx(0.6)  # two disagreeing: follow the better one
    # three at 0.6: two or more right (0.648) or only the first right (0.6 * 0.4 * 0.4).
    assert vote.value([0, 1, 2]) == pytest.approx(0.648 + 0.096)
    rng = random.Random(5)
    for _ in range(200):
        members = [i for i in range(4) if rng.random() < 0.7]
        assert vote.value(members) <= anyone.value(members) + 1e-12


def test_a_vote_with_a_floor_is_monotone_exact_and_adds_nothing_below_it() -> None:
    """Members at or below the floor count alone, never beside one above it; the search over
    that model still equals brute force."""
    model = weighted_vote_above([0.5, 0.1875, 0.125], floor=0.25)
    assert model.value([0, 1, 2]) == model.value([0]) == pytest.approx(0.5)
    assert model.value([1, 2]) == pytest.approx(0.1875)  # alone, the better one's estimate
    assert weighted_vote([0.5, 0.1875, 0.125]).value([0, 1, 2]) > 0.5  # any two agreeing count
    rng = random.Random(12)
    for _ in range(300):
        cands, budget, agg = random_instance(rng, rng.randint(1, 9))
        qs, floor = [c.quality for c in cands], rng.uniform(0.1, 0.6)
        vote = weighted_vote_above(qs, floor)
        big = [i for i in range(len(qs)) if rng.random() < 0.6]
        assert vote.value([i for i in big if rng.random() < 0.5]) <= vote.value(big) + 1e-12
        assert_same_optimum(cands, budget, agg, vote)


def test_any_monotone_callable_works() -> None:
    rng = random.Random(9)
    cands, budget, agg = random_instance(rng, 8, k_max=4)
    fn = coverage(8, rng)
    got = solve(cands, Budget(None, None, 4), monotone(fn))
    assert got.quality == pytest.approx(brute_force(cands, Budget(None, None, 4), fn).quality)


def test_router_weights_become_qualities_and_an_aggregator_is_costed_from_two_estimates() -> None:
    scores = [expert_score("big", 3.0, 1.0, 3.0), expert_score("small", 1.0, 1.0, 1.5)]
    q = quality_from_weights(scores)
    assert q == {"big": pytest.approx(0.9), "small": pytest.approx(0.45)}
    cands = [Candidate("big", q["big"], 2.0, 400.0), Candidate("small", q["small"], 0.5, 5.0)]
    # the aggregator reading its prompt alone, and with one answer more: each answer adds the difference
    agg = AggregationCost.from_estimates(CostEstimate(latency_s=1.0, energy_j=50.0),
                                         CostEstimate(latency_s=1.25, energy_j=60.0))
    assert agg.latency(1) == 0.0 and agg.latency(3) == pytest.approx(1.75)
    assert agg.energy(1) == 0.0 and agg.energy(3) == pytest.approx(80.0)
    best = solve(cands, Budget(latency_s=cands[0].latency_s + 0.01), aggregation=agg)
    assert best.chosen == ("big",)


def envelope_only(qs: Sequence[float]) -> QualityModel:
    """Noisy-or with only its log-gain envelope: the bound is then the LP (knapsack/dual) one."""
    return QualityModel(noisy_or(qs).value, log_gain=noisy_or(qs).log_gain)


@pytest.mark.parametrize(
    "quality", ["noisy_or", "weighted_vote", "coverage", "submodular", "envelope"]
)
def test_every_box_bound_is_at_least_the_box_optimum(quality: str) -> None:
    """The invariant exactness rests on: no feasible set of a box beats the box's bound."""
    rng = random.Random(f"bound-{quality}")
    checked = 0
    for _ in range(300):
        n = rng.randint(2, 9)
        cands, budget, agg = random_instance(rng, n)
        model = quality_model(quality_for(quality, cands, rng), [c.quality for c in cands])  # type: ignore[arg-type]
        lim = _limits(budget, agg, n)
        lat, en = [c.latency_s for c in cands], [c.energy_j for c in cands]
        lo = tuple(i for i in range(n) if rng.random() < 0.2)
        if lo and not limits_feasible(lo, lat, en, lim):
            continue
        free = [i for i in range(n) if i not in lo and rng.random() < 0.8]
        box = [lo + x for m in range(len(free) + 1) for x in itertools.combinations(free, m)]
        best = max((model.value(s) for s in box if limits_feasible(s, lat, en, lim)), default=None)
        if best is None:
            continue
        search = BoxSearch(lat, en, lim, model, ((), -math.inf))
        assert search.box_bound(range(n), lo, free) >= best - 1e-12
        checked += 1
    assert checked > 100
