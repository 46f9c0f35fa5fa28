"""Choose the expert subset with the best expected quality within a latency and energy budget.

MoE^2 (Jin et al. 2025, arXiv 2501.09410): experts run in parallel on their devices, so a
subset's latency is the slowest member's (transfer + prefill + decode) plus the aggregation
step, and its energy is the members' sum plus aggregation. Candidates that name the same
`device` share it and run one after another, so their latencies add there: the latency is the
busiest device's total (`_limits`; on the embedded pool, where every expert runs on this
machine's CPU, that is the plain sum, which is what a wall clock measures). `solve` finds the exact optimum of

    max Q(S)  s.t.  latency(S) <= L,  energy(S) <= E,  1 <= |S| <= k_max

by branch and bound over boxes of {0,1}^N (`_search`, whose docstring says why the
answer is exact). Of subsets equally good (within 1e-12) the one with fewer members wins, then
the faster, then the less energy-hungry: a member that adds no predicted quality is left out.
`brute_force` enumerates every subset; the tests and `bench/budgets.py` hold the two equal.

Before the search, the structure of the latency constraint is used: it is a max, so an expert
whose own cost breaks a budget can never be chosen, and one with l_i + aggL(2) > L (or
e_i + aggE(2) > E) can only be chosen alone. The best single expert is scored up front and
the search runs over the experts that can share a subset.

Quality functions (all monotone non-decreasing under inclusion, checked by the tests):
- `noisy_or`: 1 - Π(1 - q_i), the chance that some member is right and the aggregator sees it.
- `weighted_vote`: a vote with the Bayes-optimal weights log(q_i / (1 - q_i)) (Nitzan &
  Paroush 1982) over open answers (two wrong answers never agree): agreeing members carry
  the day, otherwise the most reliable member's answer is taken. The decision is optimal for
  what it sees and could ignore any extra member, so it never gets worse with more members.
  It models the expected accuracy of the log-odds vote that `voting.weighted_vote` runs, in
  the many-options limit (with few options wrong answers collide and a vote can get worse).
- `monotone(fn, submodular=False)`: any monotone callable over candidate indices (bounds fall
  back to Q(hi), or to marginal gains when it is declared submodular).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from experts.devices import CostEstimate
from orchestrator.budgets._limits import Groups, Limits, device_groups, limits_feasible, members_latency
from orchestrator.budgets._quality import (
    QualityName,
    QualitySpec,
    monotone,
    noisy_or,
    noisy_or_profile,
    quality_from_weights,
    quality_model,
    weighted_vote,
    weighted_vote_above,
    weighted_vote_profile,
)
from orchestrator.budgets._search import TOL, BoxSearch, Key, QualityModel, outranks, subset_key
from orchestrator.domain import QueryError, milliseconds

Costs = tuple[list[float], list[float]]  # each candidate's latency and energy, alone

__all__ = [
    "AggregationCost", "Budget", "BudgetDecision", "Candidate", "CheapOption", "InfeasibleBudget",
    "QualityModel", "QualityName", "QualitySpec", "brute_force",
    "monotone", "noisy_or", "noisy_or_profile", "quality_from_weights", "solve", "subset_cost", "weighted_vote",
    "weighted_vote_above", "weighted_vote_profile",
]



@dataclass(frozen=True)
class Candidate:
    """One expert for this query: estimated correctness q and its predicted cost alone.

    `device` names the device it runs on where that device is shared (candidates naming one
    device run one after another); None: a device of its own."""

    name: str
    quality: float
    latency_s: float
    energy_j: float
    device: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.quality <= 1.0:
            raise ValueError(f"{self.name}: quality must be in [0, 1], got {self.quality}")
        if self.latency_s < 0 or self.energy_j < 0:
            raise ValueError(f"{self.name}: latency and energy must be non-negative")


@dataclass(frozen=True)
class Budget:
    """Per-request limits; None means unlimited."""

    latency_s: float | None = None
    energy_j: float | None = None
    k_max: int = 5

    def __post_init__(self) -> None:
        if self.k_max < 1:
            raise ValueError("k_max must be at least 1")
        if (self.latency_s or 0) < 0 or (self.energy_j or 0) < 0:
            raise ValueError("budgets must be non-negative")


class AggregationModel(Protocol):
    def latency(self, members: int) -> float: ...

    def energy(self, members: int) -> float: ...


@dataclass(frozen=True)
class AggregationCost:
    """Cost of combining m >= 2 answers: a fixed part plus a part per answer read (0 for m < 2)."""

    latency_base_s: float = 0.0
    latency_per_member_s: float = 0.0
    energy_base_j: float = 0.0
    energy_per_member_j: float = 0.0

    def latency(self, members: int) -> float:
        return 0.0 if members < 2 else self.latency_base_s + self.latency_per_member_s * members

    def energy(self, members: int) -> float:
        return 0.0 if members < 2 else self.energy_base_j + self.energy_per_member_j * members

    @classmethod
    def from_estimates(cls, alone: CostEstimate, one_more: CostEstimate) -> AggregationCost:
        """From the aggregator's cost reading its prompt (`alone`) and with one answer more:
        each answer read adds the difference (cost is linear in prompt tokens). The caller
        costs both as it costs the same model as an expert (tensor-parallel on a server node)."""
        return cls(alone.latency_s, one_more.latency_s - alone.latency_s,
                   alone.energy_j, one_more.energy_j - alone.energy_j)


@dataclass(frozen=True)
class CheapOption:
    name: str
    latency_s: float
    energy_j: float


class InfeasibleBudget(QueryError, ValueError):
    """No single expert fits the budget; names the fastest and the least-energy expert."""

    def __init__(self, budget: Budget, fastest: CheapOption, least_energy: CheapOption):
        self.budget, self.fastest, self.least_energy = budget, fastest, least_energy
        super().__init__(
            f"no expert fits latency <= {_fmt(budget.latency_s, 's')} and energy <= "
            f"{_fmt(budget.energy_j, 'J')}: fastest is {_opt(fastest)}, "
            f"least energy is {_opt(least_energy)}"
        )

    def detail(self) -> dict[str, object]:
        """JSON-ready body for the API's 422: the budget asked for and the two cheapest options."""
        b = self.budget
        return {
            "error": "infeasible_budget",
            "message": str(self),
            "budget": {"latency_ms": milliseconds(b.latency_s),
                       "energy_j": b.energy_j, "k_max": b.k_max},
            "fastest": _option(self.fastest),
            "least_energy": _option(self.least_energy),
        }


def _option(o: CheapOption) -> dict[str, object]:
    return {"expert": o.name, "latency_ms": o.latency_s * 1e3, "energy_j": o.energy_j}


def _fmt(value: float | None, unit: str) -> str:
    return "unlimited" if value is None else f"{value:g} {unit}"


def _opt(o: CheapOption) -> str:
    return f"{o.name} ({o.latency_s * 1e3:.0f} ms, {o.energy_j:.3g} J)"


@dataclass(frozen=True)
class BudgetDecision:
    chosen: tuple[str, ...]
    indices: tuple[int, ...]
    quality: float
    latency_s: float
    energy_j: float
    nodes: int
    method: str = "branch_and_bound"


# ---------------------------------------------------------------- solving


def _limits(budget: Budget, agg: AggregationModel, n: int) -> Limits:
    k = min(budget.k_max, max(n, 1))
    lat = tuple(agg.latency(m) if m >= 2 else 0.0 for m in range(k + 1))
    en = tuple(agg.energy(m) if m >= 2 else 0.0 for m in range(k + 1))
    for name, table in (("latency", lat), ("energy", en)):
        if any(b < a for a, b in itertools.pairwise(table)) or min(table) < 0:
            raise ValueError(f"aggregation {name} must be non-negative and non-decreasing in |S|")
    inf = math.inf
    L = inf if budget.latency_s is None else budget.latency_s
    E = inf if budget.energy_j is None else budget.energy_j
    return Limits(L, E, k, lat, en)


def subset_cost(candidates: Sequence[Candidate], members: Sequence[int],
                aggregation: AggregationModel | None = None) -> tuple[float, float]:
    """(latency_s, energy_j) of running `members` in parallel and aggregating their answers."""
    agg = aggregation or AggregationCost()
    m = len(members)
    lat = [c.latency_s for c in candidates]
    latency = members_latency(members, lat, _groups(candidates))
    energy = sum(candidates[i].energy_j for i in members)
    if m >= 2:
        latency, energy = latency + agg.latency(m), energy + agg.energy(m)
    return latency, energy


def _infeasible(candidates: Sequence[Candidate], budget: Budget) -> InfeasibleBudget:
    fast = min(candidates, key=lambda c: (c.latency_s, c.energy_j))
    frugal = min(candidates, key=lambda c: (c.energy_j, c.latency_s))
    opt = [CheapOption(c.name, c.latency_s, c.energy_j) for c in (fast, frugal)]
    return InfeasibleBudget(budget, opt[0], opt[1])


def _decision(candidates: Sequence[Candidate], members: Sequence[int], value: float,
              agg: AggregationModel, nodes: int, method: str) -> BudgetDecision:
    idx = tuple(sorted(members))
    latency, energy = subset_cost(candidates, idx, agg)
    names = tuple(candidates[i].name for i in idx)
    return BudgetDecision(names, idx, value, latency, energy, nodes, method)


def _problem(candidates: Sequence[Candidate], budget: Budget, quality: QualitySpec,
             aggregation: AggregationModel | None) -> tuple[AggregationModel, Limits, QualityModel, Costs]:
    """What `solve` and `brute_force` both search: aggregation, limits, quality model, costs."""
    if not candidates:
        raise ValueError("no candidate experts to choose from")
    agg = aggregation or AggregationCost()
    lim, model = _limits(budget, agg, len(candidates)), quality_model(quality, [c.quality for c in candidates])
    return agg, lim, model, ([c.latency_s for c in candidates], [c.energy_j for c in candidates])


def _groups(candidates: Sequence[Candidate]) -> Groups:
    return device_groups([c.device for c in candidates])


def solve(
    candidates: Sequence[Candidate],
    budget: Budget,
    quality: QualitySpec = "noisy_or",
    aggregation: AggregationModel | None = None,
) -> BudgetDecision:
    """The exact best subset; raises InfeasibleBudget when no single expert fits."""
    agg, lim, model, (lat, en) = _problem(candidates, budget, quality, aggregation)
    singles = [i for i in range(len(candidates)) if limits_feasible((i,), lat, en, lim)]
    if not singles:
        raise _infeasible(candidates, budget)
    groups = _groups(candidates)
    pool = sorted(_pairable(singles, lat, en, lim), key=lambda i: (-candidates[i].quality, i))
    seed = _incumbent(singles, pool, (lat, en, groups), lim, model)
    members, value, nodes = BoxSearch(lat, en, lim, model, seed, groups).run(pool)
    return _decision(candidates, members, value, agg, nodes + len(singles), "branch_and_bound")


def _pairable(singles: Sequence[int], lat: Sequence[float], en: Sequence[float],
              lim: Limits) -> list[int]:
    """Experts that can be in a subset of two or more (the rest can only run alone)."""
    if lim.k_max < 2 or len(singles) < 2:
        return []
    low = sorted(en[i] for i in singles)[:2]
    return [
        i for i in singles
        if lat[i] + lim.agg_latency[2] <= lim.latency
        and en[i] + (low[1] if en[i] == low[0] else low[0]) + lim.agg_energy[2] <= lim.energy
    ]


def _incumbent(
    singles: Sequence[int], pool: Sequence[int],
    costs: tuple[Sequence[float], Sequence[float], Groups], lim: Limits, model: QualityModel,
) -> tuple[tuple[int, ...], float]:
    """Seed: the best single expert, or a greedy pass (best q first) if that outranks it."""
    lat, en, groups = costs
    chosen: list[int] = []
    for i in pool:
        if limits_feasible((*chosen, i), lat, en, lim, groups):
            chosen.append(i)
    def key(members: tuple[int, ...]) -> Key:
        return subset_key(members, lat, en, lim, groups)

    best: tuple[tuple[int, ...], float] = ((), -math.inf)
    for members in [(i,) for i in singles] + ([tuple(chosen)] if chosen else []):
        value = model.value(members)
        if outranks(value, key(members), (best[1], key(best[0]))):
            best = members, value  # an equally good greedy set must also be smaller or cheaper
    return best


def brute_force(
    candidates: Sequence[Candidate],
    budget: Budget,
    quality: QualitySpec = "noisy_or",
    aggregation: AggregationModel | None = None,
) -> BudgetDecision:
    """Reference: score every feasible subset of size 1..k_max (exponential; tests only); of
    the subsets within TOL of the best Q the smaller, then cheaper, one wins (`subset_key`)."""
    agg, lim, model, (lat, en) = _problem(candidates, budget, quality, aggregation)
    groups = _groups(candidates)
    scored, seen = [], 0
    for m in range(1, lim.k_max + 1):
        for members in itertools.combinations(range(len(candidates)), m):
            seen += 1
            if limits_feasible(members, lat, en, lim, groups):
                scored.append((model.value(members), members))
    if not scored:
        raise _infeasible(candidates, budget)
    top = max(v for v, _ in scored)
    value, best = min(((v, s) for v, s in scored if v >= top - TOL),
                      key=lambda vs: subset_key(vs[1], lat, en, lim, groups))
    return _decision(candidates, best, value, agg, seen, "brute_force")
