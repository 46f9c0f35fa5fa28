"""Whether a stand-in keeps a budgeted query within its budget.

When a recruited expert fails, the next-ranked one may stand in. Under a budget it must keep
the whole query within it, not only fit alone: it runs beside the experts still answering, and
after the one it replaces has failed, which at worst is at the end of that one's predicted
time, counted from when that one started (a stand-in for a stand-in starts after both), and
never before now: the time the query has already taken (a queue, a timeout) is spent. Each
device runs its experts one after another, each no earlier than it may start (`_finish`): the
wait for a failure on another device overlaps what this one is running, and is counted once.
Every expert tried keeps its charge (a failed one spent its energy), and the aggregation costs
what the plan said (a stand-in replaces one answer with one, so the answers to aggregate do not
grow).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

from orchestrator.budgets._limits import device_groups, members_latency
from orchestrator.domain import BudgetCandidate, BudgetRecord


def stand_in_fits(record: BudgetRecord, tried: Sequence[str], replaced: str, stand_in: str,
                  started: Mapping[str, float] | None = None, elapsed_s: float = 0.0) -> bool:
    """Whether `stand_in`, taking over from the failed `replaced`, keeps every expert `tried` so
    far and the aggregation within the record's budget, as predicted. `started`: the predicted
    start of each stand-in sent so far (`stand_in_start`); `elapsed_s`: the query's time so far."""
    latency, energy = stand_in_cost(record, tried, replaced, stand_in, started, elapsed_s)
    within_latency = record.latency_ms is None or latency * 1e3 <= record.latency_ms
    return within_latency and (record.energy_j is None or energy <= record.energy_j)


def stand_in_cost(record: BudgetRecord, tried: Sequence[str], replaced: str, stand_in: str,
                  started: Mapping[str, float] | None = None, elapsed_s: float = 0.0) -> tuple[float, float]:
    """Predicted (latency_s, energy_j) of the query once `stand_in` has answered for `replaced`."""
    by_name, starts = {c.expert: c for c in record.candidates}, dict(started or {})
    # it starts now at the earliest: what the query has taken so far is spent
    starts[stand_in] = max(stand_in_start(record, replaced, started), elapsed_s)
    members = [by_name[n] for n in dict.fromkeys([*tried, stand_in])]
    agg_latency, agg_energy = _aggregation(record, by_name)
    return _finish(members, starts) + agg_latency, sum(c.energy_j for c in members) + agg_energy


def stand_in_start(record: BudgetRecord, replaced: str, started: Mapping[str, float] | None = None) -> float:
    """When the stand-in may start, at worst: once the replaced expert has failed, at the end of
    its predicted run, which on a shared device comes after every run there that may start no
    later than it (the experts planned and stood in so far, `started` holding the stand-ins'
    starts): it may have waited for them. Whether the stand-in's own device is free by then is
    `_finish`'s to say."""
    starts = dict(started or {})
    by_name = {c.expert: c for c in record.candidates}
    before = by_name[replaced]
    tried = [by_name[n] for n in dict.fromkeys([*record.chosen, *starts, replaced]) if n in by_name]
    own = starts.get(replaced, 0.0)
    ahead = [c for c in tried if c.expert == replaced or (before.device is not None and c.device == before.device
                                                          and starts.get(c.expert, 0.0) <= own)]
    return _drained((starts.get(c.expert, 0.0), c.latency_s) for c in ahead)


def _finish(members: Sequence[BudgetCandidate], starts: Mapping[str, float]) -> float:
    """When the last of `members` ends: each device runs its own in turn, in the order they may
    start, none before its start (`starts`; absent: 0). An expert with no device has one alone."""
    queues = defaultdict[tuple[bool, str], list[tuple[float, float]]](list)
    for c in members:
        device = (c.device is None, c.expert if c.device is None else c.device)
        queues[device].append((starts.get(c.expert, 0.0), c.latency_s))
    return max((_drained(runs) for runs in queues.values()), default=0.0)


def _drained(runs: Iterable[tuple[float, float]]) -> float:
    """When one device has run every (start, latency) run, idle only while none may start."""
    t = 0.0
    for start, latency in sorted(runs):
        t = max(t, start) + latency
    return t


def _aggregation(record: BudgetRecord, by_name: dict[str, BudgetCandidate]) -> tuple[float, float]:
    """The plan's aggregation cost: its predicted totals less its experts' own."""
    chosen = [by_name[n] for n in record.chosen]
    experts_latency = members_latency(range(len(chosen)), [c.latency_s for c in chosen],
                                      device_groups([c.device for c in chosen]))
    return (max(record.predicted_latency_s - experts_latency, 0.0),
            max(record.predicted_energy_j - sum(c.energy_j for c in chosen), 0.0))
