"""A query's budget: the request's own limits, else its API key's defaults; and its 422.

A request's `latency_ms` / `energy_j` win over the key's `default_latency_ms` /
`default_energy_j`, field by field, so a key with an energy default can still ask one query for
a tighter latency. No limit from either side means no budget: the query is routed as before.
"""

from __future__ import annotations

from orchestrator.budgets.solver import InfeasibleBudget
from orchestrator.domain import QueryBudget
from orchestrator.services.errors import BudgetInfeasible
from orchestrator.services.keys import Caller, KeyBudget, KeyService


class BudgetService:
    """One caller's budgets: its key's defaults are read once per request."""

    def __init__(self, keys: KeyService, caller: Caller):
        self.defaults = keys.budget(caller.key_id)

    def resolve(self, latency_ms: float | None, energy_j: float | None) -> QueryBudget | None:
        """The budget a query with these request fields runs under; None: unbudgeted."""
        return merge(KeyBudget(latency_ms, energy_j), self.defaults)


def merge(request: KeyBudget, key: KeyBudget) -> QueryBudget | None:
    latency_ms = request.latency_ms if request.latency_ms is not None else key.latency_ms
    energy_j = request.energy_j if request.energy_j is not None else key.energy_j
    if latency_ms is None and energy_j is None:
        return None
    from_key = tuple(name for name, mine, theirs in (("latency_ms", request.latency_ms, key.latency_ms),
                                                     ("energy_j", request.energy_j, key.energy_j))
                     if mine is None and theirs is not None)
    return QueryBudget(latency_s=None if latency_ms is None else latency_ms / 1e3, energy_j=energy_j, from_key=from_key)


def infeasible(exc: InfeasibleBudget, budget: QueryBudget | None, where: str = "") -> BudgetInfeasible:
    """The 422: which limit no expert meets, where it came from, and the cheapest options."""
    param = _binding(exc)
    source = _source(param.split(","), budget.from_key if budget else ())
    detail = {k: v for k, v in exc.detail().items() if k not in ("error", "message")}
    return BudgetInfeasible(f"{where}infeasible budget {param}{source}: {exc}", param, detail)


def _source(limits: list[str], from_key: tuple[str, ...]) -> str:
    """Which of the binding limits the API key supplied: both limits binding together named
    neither, though the key gave both."""
    keyed = [x for x in limits if x in from_key]
    if not keyed:
        return ""
    return " (the API key's default)" if keyed == limits else f" ({keyed[0]}: the API key's default)"


def _binding(exc: InfeasibleBudget) -> str:
    """Every limit even the cheapest expert misses (both: raising one alone would still fail);
    both also when each is met alone but not together."""
    b = exc.budget
    missed = [name for name, limit, cheapest in (("latency_ms", b.latency_s, exc.fastest.latency_s),
                                                 ("energy_j", b.energy_j, exc.least_energy.energy_j))
              if limit is not None and cheapest > limit]
    return ",".join(missed) or "latency_ms,energy_j"
