"""A stand-in under a budget keeps the whole query within it, not only itself."""

from __future__ import annotations

import pytest

from orchestrator.budgets.stand_in import stand_in_cost, stand_in_fits, stand_in_start
from orchestrator.domain import BudgetCandidate, BudgetRecord


def record(candidates: list[tuple[str, float, float, str | None]], chosen: list[str], latency_s: float,
           energy_j: float, budget_ms: float | None = None, budget_j: float | None = None) -> BudgetRecord:
    cands = [BudgetCandidate(expert=n, quality=0.5, latency_s=lat, energy_j=e, device=d) for n, lat, e, d in candidates]
    return BudgetRecord(latency_ms=budget_ms, energy_j=budget_j, k_max=3, from_key=[], chosen=chosen,
                        predicted_quality=0.7, predicted_latency_s=latency_s, predicted_energy_j=energy_j,
                        solver_nodes=1, candidates=cands)


def test_a_stand_in_that_fits_alone_but_not_beside_the_others_on_its_device_is_refused() -> None:
    """Three experts on one worker; the plan {alpha, beta} takes 8.6 s of an 8.61 s budget, plus
    1 s to aggregate. gamma alone (7.25 s) fits; after alpha's failure, beside beta, it does not."""
    shared = [("alpha", 4.3, 10.0, "w1"), ("beta", 4.3, 10.0, "w1"), ("gamma", 7.25, 10.0, "w1")]
    r = record(shared, ["alpha", "beta"], latency_s=9.6, energy_j=25.0, budget_ms=9610)
    assert stand_in_cost(r, ["alpha", "beta"], "alpha", "gamma") == pytest.approx((4.3 + 4.3 + 7.25 + 1.0, 35.0))
    assert not stand_in_fits(r, ["alpha", "beta"], "alpha", "gamma")
    cheap = record([*shared, ("delta", 0.005, 1.0, "w1")], ["alpha", "beta"], latency_s=9.6, energy_j=25.0,
                   budget_ms=9610)
    assert stand_in_fits(cheap, ["alpha", "beta"], "alpha", "delta")


def test_a_stand_in_elsewhere_starts_once_the_replaced_expert_has_failed() -> None:
    r = record([("alpha", 2.0, 5.0, "edge"), ("beta", 1.0, 5.0, "server")], ["alpha"], latency_s=2.0,
               energy_j=5.0, budget_ms=2500, budget_j=20.0)
    assert stand_in_cost(r, ["alpha"], "alpha", "beta") == pytest.approx((3.0, 10.0))  # 2 s, then 1 s
    assert not stand_in_fits(r, ["alpha"], "alpha", "beta")
    assert stand_in_fits(r.model_copy(update={"latency_ms": 3000.0}), ["alpha"], "alpha", "beta")
    assert not stand_in_fits(r.model_copy(update={"latency_ms": 3000.0, "energy_j": 9.0}), ["alpha"], "alpha", "beta")


def test_a_stand_in_for_a_stand_in_starts_after_both_have_failed() -> None:
    """A, B and C on three machines, 4 s each, a 10 s budget. C standing in for B (itself standing
    in for A from 4 s) starts at 8 s and ends at 12 s: the check once started it at 4 s."""
    r = record([("a", 4.0, 1.0, "x"), ("b", 4.0, 1.0, "y"), ("c", 4.0, 1.0, "z")], ["a"], latency_s=4.0,
               energy_j=1.0, budget_ms=10_000)
    assert stand_in_fits(r, ["a"], "a", "b")
    started = {"b": stand_in_start(r, "a")}
    assert stand_in_cost(r, ["a", "b"], "b", "c", started) == pytest.approx((12.0, 3.0))
    assert not stand_in_fits(r, ["a", "b"], "b", "c", started)


def test_a_stand_in_never_starts_before_now() -> None:
    """The replaced expert timed out at 6 s where 2 s were predicted: the stand-in (1 s) ends at
    7 s at the earliest, past a 5 s budget it would meet had the failure come on time."""
    r = record([("alpha", 2.0, 5.0, "edge"), ("beta", 1.0, 5.0, "server")], ["alpha"], latency_s=2.0,
               energy_j=5.0, budget_ms=5000)
    assert stand_in_fits(r, ["alpha"], "alpha", "beta", elapsed_s=1.5)
    assert stand_in_cost(r, ["alpha"], "alpha", "beta", elapsed_s=6.0) == pytest.approx((7.0, 10.0))
    assert not stand_in_fits(r, ["alpha"], "alpha", "beta", elapsed_s=6.0)


def test_a_stand_in_for_a_stand_in_on_one_device_waits_once_for_the_first_failure() -> None:
    """a (4 s on x) fails; b (on y) stands in from 4 s and fails at 8 s; c (also on y) stands in
    and ends at 12 s. a's 4 s was counted twice (16 s), refusing c under a 12.5 s budget."""
    r = record([("a", 4.0, 1.0, "x"), ("b", 4.0, 1.0, "y"), ("c", 4.0, 1.0, "y")], ["a"], latency_s=4.0,
               energy_j=1.0, budget_ms=12_500)
    started = {"b": stand_in_start(r, "a")}
    assert stand_in_start(r, "b", started) == pytest.approx(8.0)
    assert stand_in_cost(r, ["a", "b"], "b", "c", started) == pytest.approx((12.0, 3.0))
    assert stand_in_fits(r, ["a", "b"], "b", "c", started)


def test_the_wait_for_a_failure_elsewhere_overlaps_the_stand_ins_device_running_the_plan() -> None:
    """Plan {a on x, b on y}, 4 s each; a fails at 4 s and c (4 s, y) stands in: y ran b over
    0-4 s, so c runs over 4-8 s. The wait was added to y's whole turn (12 s)."""
    r = record([("a", 4.0, 1.0, "x"), ("b", 4.0, 1.0, "y"), ("c", 4.0, 1.0, "y")], ["a", "b"], latency_s=4.0,
               energy_j=2.0, budget_ms=9_000)
    assert stand_in_cost(r, ["a", "b"], "a", "c") == pytest.approx((8.0, 3.0))
    assert stand_in_fits(r, ["a", "b"], "a", "c")


def test_a_stand_in_that_may_start_now_still_waits_for_its_devices_turn() -> None:
    """The query is 6 s in; y runs b over 0-10 s, so c (4 s, y) ends at 14 s, not at 6 + 4 s."""
    r = record([("a", 4.0, 1.0, "x"), ("b", 10.0, 1.0, "y"), ("c", 4.0, 1.0, "y")], ["a", "b"], latency_s=10.0,
               energy_j=2.0)
    assert stand_in_cost(r, ["a", "b"], "a", "c", elapsed_s=6.0) == pytest.approx((14.0, 3.0))
    assert stand_in_cost(r, ["a", "b"], "a", "c", elapsed_s=12.0) == pytest.approx((16.0, 3.0))


def test_a_failed_expert_that_queued_on_its_device_fails_after_its_wait() -> None:
    """a and b share x (4 s each): a may run second and fail at 8 s, not 4 s; its stand-in c (x)
    then fails at 12 s at worst, and e on y ends at 16 s. Counted from a's start alone, e was
    predicted at 12 s and let stand in past a 13 s budget."""
    r = record([("a", 4.0, 1.0, "x"), ("b", 4.0, 1.0, "x"), ("c", 4.0, 1.0, "x"), ("e", 4.0, 1.0, "y")],
               ["a", "b"], latency_s=8.0, energy_j=2.0, budget_ms=13_000)
    started = {"c": stand_in_start(r, "a")}
    assert started["c"] == pytest.approx(8.0) and stand_in_start(r, "c", started) == pytest.approx(12.0)
    assert stand_in_cost(r, ["a", "b", "c"], "c", "e", started) == pytest.approx((16.0, 4.0))
    assert not stand_in_fits(r, ["a", "b", "c"], "c", "e", started)
