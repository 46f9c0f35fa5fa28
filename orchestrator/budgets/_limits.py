"""What a subset of experts costs and whether it fits: the one check the search and brute force share.

Latency. MoE^2 runs every chosen expert in parallel on its own device, so a subset's latency
is its slowest member's. Experts that share one device (all of the embedded pool shares this
machine's CPU) cannot run in parallel: the device generates their answers one after another,
so their latencies add. In general the latency is the busiest device's total,

    latency(S) = max over devices d of  Σ_{i in S on d} l_i   (+ aggregation),

which is the MoE^2 max when no two members share a device and the plain sum when all do.
Candidates carry a device *group*; `None` groups mean "no two share a device" (the fast path).
The sum per device is still non-decreasing under inclusion, so the feasible family stays
down-closed and the branch and bound stays exact (`_search`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

Groups = Sequence[int] | None


@dataclass(frozen=True)
class Limits:
    """Budgets plus aggregation cost tabulated by subset size m = 0..k_max."""

    latency: float
    energy: float
    k_max: int
    agg_latency: tuple[float, ...]
    agg_energy: tuple[float, ...]


def device_groups(devices: Sequence[str | None]) -> tuple[int, ...] | None:
    """Candidate index -> device group; None when no device holds two candidates."""
    named = [d for d in devices if d is not None]
    if len(set(named)) == len(named):
        return None
    ids: dict[str, int] = {}
    out = []
    for i, d in enumerate(devices):
        # a candidate without a device gets a group of its own, numbered past every name
        out.append(ids.setdefault(d, len(ids)) if d is not None else len(devices) + i)
    return tuple(out)


def device_loads(members: Sequence[int], lat: Sequence[float], groups: Sequence[int]) -> dict[int, float]:
    """Total latency each device spends on `members`."""
    loads: dict[int, float] = {}
    for i in members:
        loads[groups[i]] = loads.get(groups[i], 0.0) + lat[i]
    return loads


def members_latency(members: Sequence[int], lat: Sequence[float], groups: Groups = None) -> float:
    """The busiest device's time on `members`, before aggregation (0 for no members)."""
    if not members:
        return 0.0
    if groups is None:
        return max(lat[i] for i in members)
    return max(device_loads(members, lat, groups).values())


def limits_feasible(members: Sequence[int], lat: Sequence[float], en: Sequence[float],
                    limits: Limits, groups: Groups = None) -> bool:
    """Whether a non-empty subset meets every constraint."""
    m = len(members)
    if m == 0 or m > limits.k_max:
        return False
    latency = members_latency(members, lat, groups) + limits.agg_latency[m]
    energy = sum(en[i] for i in members) + limits.agg_energy[m]
    return latency <= limits.latency and energy <= limits.energy
