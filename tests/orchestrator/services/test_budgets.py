"""A query's 422 names every limit that no expert meets."""

from __future__ import annotations

import pytest

from orchestrator.budgets.solver import Budget, CheapOption, InfeasibleBudget
from orchestrator.domain import QueryBudget
from orchestrator.services.budgets import infeasible

FAST, FRUGAL = CheapOption("fast", 1.0, 10.0), CheapOption("frugal", 2.0, 5.0)


@pytest.mark.parametrize(("latency_s", "energy_j", "param"), [(0.5, 20.0, "latency_ms"), (3.0, 1.0, "energy_j"),
                                                             (0.5, 1.0, "latency_ms,energy_j"),
                                                             (1.5, 7.0, "latency_ms,energy_j")])
def test_the_422_names_each_limit_missed(latency_s: float, energy_j: float, param: str) -> None:
    """Both missed named only latency: raising it alone would still be refused, for energy."""
    exc = InfeasibleBudget(Budget(latency_s, energy_j), FAST, FRUGAL)
    assert infeasible(exc, QueryBudget(latency_s=latency_s, energy_j=energy_j)).param == param


def test_both_missed_say_which_the_key_gave() -> None:
    exc = InfeasibleBudget(Budget(0.5, 1.0), FAST, FRUGAL)
    error = infeasible(exc, QueryBudget(latency_s=0.5, energy_j=1.0, from_key=("energy_j",)))
    assert str(error).startswith("infeasible budget latency_ms,energy_j (energy_j: the API key's default):")
