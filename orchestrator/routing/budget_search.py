"""Exact subset selection under a max-latency and a sum-energy budget: branch and bound over boxes.

Problem (MoE^2, Jin et al. 2025): over candidates i = 1..N choose S maximising a monotone
Q(S) subject to

    latency(S) = max_{i in S} l_i + aggL(|S|) <= L
    energy(S)  = sum_{i in S} e_i + aggE(|S|) <= E,      1 <= |S| <= k_max,

with aggL, aggE non-decreasing in |S| (zero for a single expert). Every constraint is
non-decreasing under inclusion, so the feasible family is *down-closed*: a subset of a
feasible set is feasible (as long as it is non-empty).

Algorithm (discrete monotonic optimisation). A box [lo, hi] is the family {S : lo ⊆ S ⊆ hi}.
- Lower corner: if lo is infeasible every S in the box is (S ⊇ lo, constraints monotone), so
  the box is dropped. We keep lo feasible by construction and score it as an incumbent.
- Reduction: a j in hi \\ lo with lo ∪ {j} infeasible belongs to no feasible S of the box, so
  it is removed from hi. The latency constraint being a max makes this a threshold test:
  j survives iff l_j <= L - aggL(|lo|+1) and e_j <= E - e(lo) - aggE(|lo|+1).
- Upper corner: if hi is feasible it is the best point of the box (Q monotone), so the box is
  closed with Q(hi).
- Bound: every S in the box has Q(S) <= Q(hi) (monotone). Structured qualities give tighter
  valid bounds (see `QualityModel`): with at most r more members allowed by k_max, latency and
  energy, a quality that is symmetric and increasing in each member's q is bounded by
  Q(lo ∪ the r best free members); a noisy-or envelope 1 - exp(-Σ a_i) adds a fractional
  knapsack bound on energy. The smallest valid bound is used.
- Branch on the best free j (highest q): [lo ∪ {j}, hi] and [lo, hi \\ {j}]; the two children
  partition the box. Boxes are expanded best-first by bound; the search stops when the best
  open bound is not above the incumbent.

Why it is exact: the children of a box partition it, so the open boxes, the closed boxes and
the dropped boxes always partition the search space. A box is dropped only when it holds no
feasible set, or when its bound, which is >= Q of every set in it, is <= the incumbent (up to
TOL = 1e-12), so no dropped set beats the answer. Each expansion moves one free element into
lo or out of hi, so the search ends after finitely many boxes.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

TOL = 1e-12
Members = tuple[int, ...]
ValueFn = Callable[[Sequence[int]], float]


@dataclass(frozen=True)
class QualityModel:
    """A monotone set quality plus optional structure that buys tighter bounds.

    `value(members)` takes distinct candidate indices in any order. Promises (they must hold
    for the result to be exact): `value` is non-decreasing under inclusion; if `ranked`, it is
    symmetric and non-decreasing in each member's candidate quality q; if `log_gain` is given,
    value(S) <= 1 - exp(-Σ_{i in S} log_gain[i]) with log_gain >= 0 (the noisy-or envelope).
    """

    value: ValueFn
    ranked: bool = False
    log_gain: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Limits:
    """Budgets plus aggregation cost tabulated by subset size m = 0..k_max."""

    latency: float
    energy: float
    k_max: int
    agg_latency: tuple[float, ...]
    agg_energy: tuple[float, ...]


@dataclass
class _Box:
    lo: Members
    free: int  # hi \ lo as a bit mask over candidate indices
    latency: float  # max l over lo
    energy: float  # Σ e over lo
    branch: int = -1  # the free index to split on, chosen when the bound was computed


class BoxSearch:
    """One branch-and-bound run; `run()` returns (best members, best value, boxes explored).

    Sets are bit masks; every scan walks a precomputed order (best q, cheapest energy, best
    gain per joule) and stops early, so a box costs O(N) at worst and no sorting.
    """

    def __init__(
        self,
        lat: Sequence[float],
        en: Sequence[float],
        limits: Limits,
        model: QualityModel,
        incumbent: tuple[Members, float],
    ):
        self.lat, self.en, self.lim, self.model = lat, en, limits, model
        self.best, self.best_value = incumbent
        self.nodes = 0
        self._heap: list[tuple[float, int, _Box]] = []

    def run(self, pool: Sequence[int]) -> tuple[Members, float, int]:
        """Search the boxes inside [∅, pool]; `pool` must be ordered best q first."""
        self._index(pool)
        self._offer(_Box((), self._reduce(self._all, 0, 0.0, 0.0), 0.0, 0.0))
        while self._heap:
            neg_bound, _, box = heapq.heappop(self._heap)
            if -neg_bound <= self.best_value + TOL:
                break
            self._branch(box)
        return self.best, self.best_value, self.nodes

    def _index(self, pool: Sequence[int]) -> None:
        lat, en, gain = self.lat, self.en, self.model.log_gain
        self._by_q = list(pool)
        self._by_lat = sorted(pool, key=lat.__getitem__)
        self._by_en = sorted(pool, key=en.__getitem__)
        self._lat_masks, self._en_masks = _prefix_masks(self._by_lat), _prefix_masks(self._by_en)
        self._lat_vals = [lat[i] for i in self._by_lat]
        self._en_vals = [en[i] for i in self._by_en]
        self._all = self._lat_masks[-1]
        if gain is not None:
            self._by_gain = sorted(pool, key=gain.__getitem__, reverse=True)
            self._by_ratio = sorted(pool, key=lambda i: _ratio(gain[i], en[i]), reverse=True)

    def _branch(self, box: _Box) -> None:
        j = box.branch
        rest = box.free & ~(1 << j)
        lo = box.lo + (j,)
        latency, energy = max(box.latency, self.lat[j]), box.energy + self.en[j]
        self._consider(lo)  # lo ∪ {j} is feasible: j survived the reduction
        self._offer(_Box(lo, self._reduce(rest, len(lo), latency, energy), latency, energy))
        self._offer(_Box(box.lo, rest, box.latency, box.energy))

    def _reduce(self, free: int, size: int, latency: float, energy: float) -> int:
        """Keep the j for which lo ∪ {j} is feasible (lo has `size`, `latency`, `energy`)."""
        lim = self.lim
        if size + 1 > lim.k_max:
            return 0
        lat_cap = lim.latency - lim.agg_latency[size + 1]
        en_cap = lim.energy - energy - lim.agg_energy[size + 1]
        if latency > lat_cap or en_cap < 0:
            return 0
        fast = self._lat_masks[bisect.bisect_right(self._lat_vals, lat_cap)]
        return free & fast & self._en_masks[bisect.bisect_right(self._en_vals, en_cap)]

    def _offer(self, box: _Box) -> None:
        """Close the box if a corner or witness settles it, else queue it if it can still win."""
        self.nodes += 1
        if not box.free:
            return
        hi = box.lo + tuple(_members(self._by_q, box.free))
        if self._feasible(hi):
            self._consider(hi)
            return
        r = self._extra(box)
        if r == 0:
            return  # only lo itself is feasible here, and it was scored when lo was built
        bound, witness, box.branch = self._bound(box, r)
        if witness and self._feasible(witness) and self._consider(witness) >= bound - TOL:
            return  # a feasible set of the box reaches the box's bound
        if bound > self.best_value + TOL:
            heapq.heappush(self._heap, (-bound, self.nodes, box))

    def _feasible(self, members: Members) -> bool:
        return limits_feasible(members, self.lat, self.en, self.lim)

    def _consider(self, members: Members) -> float:
        v = self.model.value(members)
        if v > self.best_value:
            self.best, self.best_value = members, v
        return v

    def _extra(self, box: _Box) -> int:
        """Most free members a feasible S in the box can add (k_max, latency, energy)."""
        lim, size = self.lim, len(box.lo)
        r = min(lim.k_max - size, box.free.bit_count())
        while r > 0 and box.latency + lim.agg_latency[size + r] > lim.latency:
            r -= 1
        if r == 0 or lim.energy == math.inf:
            return r
        spent, t = box.energy, 0
        for j in _members(self._by_en, box.free, r):
            spent += self.en[j]
            if spent + lim.agg_energy[size + t + 1] > lim.energy:
                break
            t += 1
        return t

    def _bound(self, box: _Box, r: int) -> tuple[float, Members | None, int]:
        """(bound, a set of the box to try, the index to branch on); the smallest bound wins."""
        model = self.model
        first = next(iter(_members(self._by_q, box.free, 1)))
        if not model.ranked and model.log_gain is None:
            return model.value(box.lo + tuple(_members(self._by_q, box.free))), None, first
        options: list[tuple[float, Members | None, int]] = []
        if model.ranked:
            top = tuple(_members(self._by_q, box.free, r))
            options.append((model.value(box.lo + top), box.lo + top, first))
        if model.log_gain is not None:
            options.append(self._envelope(box, r, model.log_gain, first))
        return min(options, key=lambda o: o[0])

    def _envelope(
        self, box: _Box, r: int, gain: Sequence[float], first: int
    ) -> tuple[float, Members | None, int]:
        """Noisy-or envelope: at most r members (best gains) or a fractional energy knapsack."""
        added = sum(gain[j] for j in _members(self._by_gain, box.free, r))
        room = self.lim.energy - box.energy - self.lim.agg_energy[len(box.lo) + 1]
        branch = first
        if room < math.inf:
            fractional = self._knapsack(box.free, room, gain)
            if fractional < added:  # energy binds: split in gain-per-joule order, as for knapsacks
                added, branch = fractional, next(iter(_members(self._by_ratio, box.free, 1)))
        bound = -math.expm1(-(sum(gain[i] for i in box.lo) + added))
        return bound, None, branch

    def _knapsack(self, free: int, room: float, gain: Sequence[float]) -> float:
        """Fractional knapsack: the LP bound on Σ gain with Σ e <= room."""
        total = 0.0
        for j in _members(self._by_ratio, free):
            if self.en[j] <= room:
                total, room = total + gain[j], room - self.en[j]
            else:
                return total + (gain[j] * room / self.en[j] if room > 0 else 0.0)
        return total


def _members(order: Sequence[int], mask: int, limit: int | None = None) -> Iterator[int]:
    """The indices of `mask` in `order`, at most `limit` of them."""
    if limit is None:
        limit = len(order)
    for i in order:
        if limit <= 0:
            return
        if mask >> i & 1:
            limit -= 1
            yield i


def _prefix_masks(order: Sequence[int]) -> list[int]:
    """masks[t] = the first t indices of `order` as a bit mask."""
    masks = [0]
    for i in order:
        masks.append(masks[-1] | 1 << i)
    return masks


def _ratio(gain: float, energy: float) -> float:
    return gain / energy if energy > 0 else math.inf


def limits_feasible(members: Sequence[int], lat: Sequence[float], en: Sequence[float],
                    limits: Limits) -> bool:
    """Whether a non-empty subset meets every constraint."""
    m = len(members)
    if m == 0 or m > limits.k_max:
        return False
    latency = max(lat[i] for i in members) + limits.agg_latency[m]
    energy = sum(en[i] for i in members) + limits.agg_energy[m]
    return latency <= limits.latency and energy <= limits.energy
