"""Exact subset selection under a max-latency and a sum-energy budget: branch and bound over boxes.

Problem (MoE^2, Jin et al. 2025): over candidates i = 1..N choose S maximising a monotone Q(S) s.t.

    latency(S) = max_{i in S} l_i + aggL(|S|) <= L
    energy(S)  = sum_{i in S} e_i + aggE(|S|) <= E,      1 <= |S| <= k_max,

with aggL, aggE non-decreasing in |S| (zero for a single expert). Where experts share a device
the max is over devices of the latencies each device adds up (`_limits`); everything below holds
for both, and the reduction then caps a free j by the time its device has left. Every constraint
is non-decreasing under inclusion, so the feasible family is *down-closed*.

Algorithm (discrete monotonic optimisation). A box [lo, hi] is the family {S : lo ⊆ S ⊆ hi}.
- Lower corner: if lo is infeasible so is every S in the box, which is dropped. We keep lo
  feasible by construction and score it as an incumbent.
- Reduction: a j in hi \\ lo with lo ∪ {j} infeasible is in no feasible S of the box: removed
  from hi. The latency being a max, this is a threshold test: j survives iff
  l_j <= L - aggL(|lo|+1) and e_j <= E - e(lo) - aggE(|lo|+1).
- Upper corner: if hi is feasible, Q(hi) is the box's best value (Q monotone) and its bound.
- Bound: Q(hi) for an arbitrary monotone callable. Structured qualities (`QualityModel`) get
  tighter bounds that still hold for every feasible S of the box; r is the most members any
  feasible S can add (from k_max, the aggregation latency and the r cheapest energies):
  * ranked (symmetric, increasing in each member's q): profile(q(lo) + u_1..u_r), where u_t
    is an upper bound on the t-th best q of any feasible extension (`_profile` proves it);
  * noisy-or envelope (Q <= 1 - exp(-Σ a_i), a_i = -log(1 - q_i)): the LP relaxation of
    "add at most r members within the energy left", solved by its dual (weak duality makes
    every dual point a valid bound, so an early stop only loosens it);
  * submodular: Q(lo) + the same LP over the marginal gains Q(lo ∪ {j}) - Q(lo).
  The smallest bound is used; the set it was built from (lo ∪ the r best free) is scored.
- Branch on one free j: [lo ∪ {j}, hi] and [lo, hi \\ {j}], a partition of the box. j is the
  best free member by q, or by gain per joule when the LP's energy row binds and k_max does not
  (the knapsack case). Boxes are expanded best-first by bound until the best open bound is
  below the incumbent. The choice of j and the order change the running time, never the answer.
- Ties: of subsets within TOL in Q the smaller, faster, less energy-hungry, lower-indexed one
  wins (`subset_key`, in that order): a member that adds no predicted quality only adds cost. A
  box whose bound only ties the incumbent stays open while it may hold a set of a lower key: it
  must add members until its best free ones reach the incumbent's Q (`_fewest`), each costing
  at least the cheapest free one (`_least_key`).

Why it is exact: the children of a box partition it, so the open, closed and dropped boxes
always partition the search space. A box is dropped only when it holds no feasible set, or no
set that can outrank the incumbent (its bound, >= Q of every set in it, is below the incumbent,
or ties it with no room for a lower key). Each expansion moves one free element into lo or out
of hi, so the search ends after finitely many boxes.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from orchestrator.budgets._limits import Groups, Limits, device_loads, limits_feasible, members_latency

__all__ = ["BoxSearch", "Limits", "QualityModel", "limits_feasible", "outranks", "subset_key"]

TOL = 1e-12  # qualities this close are equal: the smaller, then cheaper, subset wins
DUAL_STEPS = 12  # bisection steps on the energy price; any number keeps the bound valid
Members = tuple[int, ...]
ValueFn = Callable[[Sequence[int]], float]
Key = tuple[int, float, float, Members]  # how equally good subsets rank: the least first
SHADE = 1 - 1e-9  # lowers a cost bound that, summed in another order, could round past the cost


@dataclass(frozen=True)
class QualityModel:
    """A monotone set quality plus optional structure that buys tighter bounds. `value(members)`
    takes distinct candidate indices in any order. Promises (the result is exact when they hold):
    `value` is non-decreasing under inclusion. With `profile`, value(S) = profile([qualities[i]
    for i in S]), `profile` symmetric and non-decreasing in every entry (a "ranked" quality). With
    `log_gain` (>= 0), value(S) <= 1 - exp(-Σ_{i in S} log_gain[i]) (the noisy-or envelope). If
    `submodular`, Q(A ∪ {j}) - Q(A) >= Q(B ∪ {j}) - Q(B) for A ⊆ B (coverage, noisy-or are)."""

    value: ValueFn
    submodular: bool = False
    profile: Callable[[Sequence[float]], float] | None = None
    qualities: tuple[float, ...] = ()
    log_gain: tuple[float, ...] | None = None


@dataclass
class _Box:
    lo: Members
    free: int  # hi \ lo as a bit mask over candidate indices
    latency: float  # the busiest device's time on lo (max l when no device is shared)
    energy: float  # Σ e over lo
    branch: int = -1  # the free index to split on, chosen when the bound was computed


class BoxSearch:
    """One branch-and-bound run; `run()` returns (best members, best value, boxes explored).
    Sets are bit masks; the scans walk precomputed orders (best q, cheapest energy, best gain per
    joule) and stop early, and the reduction is two bisections over prefix masks, so a box costs
    O(N) apart from the LP dual (a few sorts of the free members, when it is needed)."""

    def __init__(self, lat: Sequence[float], en: Sequence[float], limits: Limits, model: QualityModel,
                 incumbent: tuple[Members, float], groups: Groups = None):
        self.lat, self.en, self.lim, self.model = lat, en, limits, model
        self.groups = groups  # device group per candidate; None: no device is shared
        self.best, self.best_value = incumbent
        self.best_key = self._key(self.best)
        self.nodes = 0
        self._heap: list[tuple[float, int, _Box]] = []

    def run(self, pool: Sequence[int]) -> tuple[Members, float, int]:
        """Search the boxes inside [∅, pool] (`pool`'s order: best first, the branching order
        for a quality without a profile)."""
        self._index(pool)
        self._offer(_Box((), self._reduce(self._all, (), 0.0, 0.0), 0.0, 0.0))
        while self._heap:
            neg_bound, _, box = heapq.heappop(self._heap)
            if -neg_bound < self.best_value - TOL:
                break  # no open box reaches the incumbent, not even to tie it
            if self._open(box, -neg_bound):
                self._branch(box)
        return self.best, self.best_value, self.nodes

    def box_bound(self, pool: Sequence[int], lo: Members, free: Sequence[int]) -> float:
        """The bound the search puts on the box [lo, lo ∪ free] (lo feasible); for tests."""
        self._index(pool)
        latency, energy = members_latency(lo, self.lat, self.groups), sum(self.en[i] for i in lo)
        mask = self._reduce(sum(1 << j for j in free), lo, latency, energy)
        box = _Box(lo, mask, latency, energy)
        r = self._extra(box) if mask else 0
        return self.model.value(lo) if r == 0 else self._bound(box, r)[0]

    def _index(self, pool: Sequence[int]) -> None:
        lat, en, gain = self.lat, self.en, self.model.log_gain
        qs = self.model.qualities
        self._by_q = sorted(pool, key=lambda i: (-qs[i], i)) if self.model.profile else list(pool)
        self._by_lat = sorted(pool, key=lat.__getitem__)
        self._by_en = sorted(pool, key=en.__getitem__)
        self._lat_masks, self._en_masks = _prefix_masks(self._by_lat), _prefix_masks(self._by_en)
        self._lat_vals, self._en_vals = [lat[i] for i in self._by_lat], [en[i] for i in self._by_en]
        self._all = self._lat_masks[-1]
        self._group_masks: dict[int, int] = {}
        for i, g in ((i, self.groups[i]) for i in pool) if self.groups is not None else ():
            self._group_masks[g] = self._group_masks.get(g, 0) | 1 << i
        if gain is not None:
            self._by_gain = sorted(pool, key=gain.__getitem__, reverse=True)
            self._by_ratio = sorted(pool, key=lambda i: _ratio(gain[i], en[i]), reverse=True)

    def _branch(self, box: _Box) -> None:
        j = box.branch
        rest = box.free & ~(1 << j)
        lo = box.lo + (j,)
        shared = self.groups is not None  # then j queues behind lo's work on its device
        latency = members_latency(lo, self.lat, self.groups) if shared else max(box.latency, self.lat[j])
        energy = box.energy + self.en[j]
        self._consider(lo)  # lo ∪ {j} is feasible: j survived the reduction
        self._offer(_Box(lo, self._reduce(rest, lo, latency, energy), latency, energy))
        self._offer(_Box(box.lo, rest, box.latency, box.energy))

    def _reduce(self, free: int, lo: Members, latency: float, energy: float) -> int:
        """Keep the j for which lo ∪ {j} is feasible (lo costs `latency` and `energy`)."""
        lim, size = self.lim, len(lo)
        if size + 1 > lim.k_max:
            return 0
        lat_cap = lim.latency - lim.agg_latency[size + 1]
        en_cap = lim.energy - energy - lim.agg_energy[size + 1]
        if latency > lat_cap or en_cap < 0:
            return 0
        fast = self._lat_masks[bisect.bisect_right(self._lat_vals, lat_cap)]
        free &= fast & self._en_masks[bisect.bisect_right(self._en_vals, en_cap)]
        return free if self.groups is None or not lo else self._device_room(free, lo, lat_cap)

    def _device_room(self, free: int, lo: Members, lat_cap: float) -> int:
        """A free j on a device lo already uses queues behind lo's work there: its own
        latency must fit what that device has left, not the whole cap."""
        assert self.groups is not None
        for g, load in device_loads(lo, self.lat, self.groups).items():
            room = self._lat_masks[bisect.bisect_right(self._lat_vals, lat_cap - load)]
            free &= ~self._group_masks.get(g, 0) | room
        return free

    def _offer(self, box: _Box) -> None:
        """Score the box's upper corner or witness, and queue the box if it can still win."""
        self.nodes += 1
        if not box.free:
            return
        hi = box.lo + tuple(_members(self._by_q, box.free))
        if len(hi) <= self.lim.k_max and self._feasible(hi):
            bound, box.branch = self._consider(hi), hi[len(box.lo)]  # Q(hi) is the box's best
        else:
            r = self._extra(box)
            if r == 0:
                return  # only lo itself is feasible here, and it was scored when lo was built
            bound, witness, box.branch = self._bound(box, r)
            if witness and self._feasible(witness):
                self._consider(witness)
        if self._open(box, bound):
            heapq.heappush(self._heap, (-bound, self.nodes, box))

    def _open(self, box: _Box, bound: float) -> bool:
        """Whether a set of the box may outrank the incumbent: a higher Q, or an equal one
        (within TOL) with a lower key; ties cost only the boxes that may hold a lower key."""
        tie = bound >= self.best_value - TOL and self._least_key(box) <= self.best_key[:3]
        return bound > self.best_value + TOL or tie

    def _least_key(self, box: _Box) -> tuple[int, float, float]:
        """Lower bounds on (size, latency, energy) of a set of the box that ties the incumbent:
        it adds at least `_fewest` members, none cheaper than the cheapest free ones."""
        t = self._fewest(box)
        m, lim = len(box.lo) + t, self.lim
        fast, frugal = _members(self._by_lat, box.free, t), _members(self._by_en, box.free, t)
        if m > min(self.best_key[0], lim.k_max) or len(fast) < t:
            return m, math.inf, math.inf
        latency = max(box.latency, self.lat[fast[-1]]) + lim.agg_latency[m]
        energy = box.energy + sum(self.en[j] for j in frugal) + lim.agg_energy[m]
        return m, latency * SHADE, energy * SHADE

    def _fewest(self, box: _Box) -> int:
        """A lower bound on the members the box must add to reach the incumbent's Q - TOL: a
        ranked Q needs as many of its best free ones (none within what the incumbent's size
        leaves: one more); Q near 1 ties many sets, and this keeps their search small."""
        model, most = self.model, max(0, self.best_key[0] - len(box.lo))
        if model.profile is None:
            return 1
        qs = [model.qualities[i] for i in box.lo]
        top = [model.qualities[j] for j in _members(self._by_q, box.free, most)]
        reach = (t for t in range(1, len(top) + 1) if model.profile(qs + top[:t]) >= self.best_value - TOL)
        return next(reach, most + 1)

    def _feasible(self, members: Members) -> bool:
        return limits_feasible(members, self.lat, self.en, self.lim, self.groups)

    def _consider(self, members: Members) -> float:
        v = self.model.value(members)
        if v >= self.best_value - TOL and outranks(v, key := self._key(members), (self.best_value, self.best_key)):
            self.best, self.best_value, self.best_key = members, v, key
        return v

    def _key(self, members: Members) -> Key:
        return subset_key(members, self.lat, self.en, self.lim, self.groups)

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
        first = _members(self._by_q, box.free, 1)[0]
        if model.profile is None and model.log_gain is None and not model.submodular:
            return model.value(box.lo + tuple(_members(self._by_q, box.free))), None, first
        options: list[tuple[float, Members | None, int]] = []
        if model.submodular:
            options.append(self._submodular(box, r))
        if model.profile is not None:
            top = tuple(_members(self._by_q, box.free, r))
            qs = [model.qualities[i] for i in box.lo] + self._profile(box, r)
            options.append((model.profile(qs), box.lo + top, first))
        if model.log_gain is not None:
            options.append(self._envelope(box, r, model.log_gain, first))
        return min(options, key=lambda o: o[0])

    def _profile(self, box: _Box, r: int) -> list[float]:
        """u_t >= the t-th best q of any feasible extension: the q at which, scanning the free
        members best q first, t of those seen first fit the energy left for t extra members.
        For a feasible extension F, its t best members fit that energy and all have q >= its
        t-th best q, so the scan reaches a fitting t-set no later: u_t >= q_(t)(F). A ranked
        quality is therefore at most profile(q(lo) + u) on the box."""
        lim, size, qs = self.lim, len(box.lo), self.model.qualities
        rooms = [lim.energy - box.energy - lim.agg_energy[size + t] for t in range(1, r + 1)]
        cheapest: list[float] = []  # the r smallest energies seen so far, ascending
        u: list[float] = []
        for j in _members(self._by_q, box.free):
            bisect.insort(cheapest, self.en[j])
            del cheapest[r:]
            while len(u) < len(cheapest) and sum(cheapest[: len(u) + 1]) <= rooms[len(u)]:
                u.append(qs[j])
            if len(u) == r:
                break
        return u

    def _envelope(self, box: _Box, r: int, gain: Sequence[float], first: int) -> tuple[float, Members | None, int]:
        """Noisy-or envelope 1 - exp(-Σ gain) with the LP bound on the gain the box can add."""
        room = self.lim.energy - box.energy - self.lim.agg_energy[len(box.lo) + 1]
        have = sum(gain[i] for i in box.lo)
        # Gain the box must add to stay open (to tie the incumbent); a bound below it prunes the box.
        target = self.best_value - TOL
        need = math.inf if target >= 1.0 else -math.log1p(-target) - have
        added, energy_binds = self._lp_gain(box.free, r, room, gain, need, (self._by_gain, self._by_ratio))
        branch = _members(self._by_ratio, box.free, 1)[0] if self._knapsack_like(box, r, energy_binds) else first
        return -math.expm1(-(have + added)), None, branch

    def _knapsack_like(self, box: _Box, r: int, energy_binds: bool) -> bool:
        """Split as a knapsack solver would (best gain per joule first) when energy binds and
        k_max does not; with k_max binding too, best q first keeps the tree far smaller."""
        return energy_binds and r < self.lim.k_max - len(box.lo)

    def _submodular(self, box: _Box, r: int) -> tuple[float, Members | None, int]:
        """Q(lo ∪ F) <= Q(lo) + Σ_{j in F} [Q(lo ∪ {j}) - Q(lo)] for a submodular Q, so the LP
        bound on those marginal gains bounds the box."""
        base = self.model.value(box.lo)
        free = _members(self._by_q, box.free)
        gain = [0.0] * len(self.lat)
        for j in free:  # lo ∪ {j} is feasible (j survived the reduction): a free incumbent try
            gain[j] = max(0.0, self._consider(box.lo + (j,)) - base)
        by_gain = sorted(free, key=gain.__getitem__, reverse=True)
        by_ratio = sorted(free, key=lambda j: _ratio(gain[j], self.en[j]), reverse=True)
        room = self.lim.energy - box.energy - self.lim.agg_energy[len(box.lo) + 1]
        need = self.best_value - TOL - base
        added, energy_binds = self._lp_gain(box.free, r, room, gain, need, (by_gain, by_ratio))
        branch = by_ratio[0] if self._knapsack_like(box, r, energy_binds) else by_gain[0]
        return base + added, None, branch

    def _lp_gain(self, free: int, r: int, room: float, gain: Sequence[float], need: float,
                 orders: tuple[Sequence[int], Sequence[int]]) -> tuple[float, bool]:
        """An upper bound on max Σ gain·x s.t. Σ x <= r, Σ e·x <= room, 0 <= x <= 1 (the LP
        relaxation), and whether the energy row binds. Cheap bounds first; the exact LP value
        (by its dual) only when they cannot prune the box. `orders` ranks candidates by gain
        and by gain per joule (best first)."""
        by_gain, by_ratio = orders
        top = _members(by_gain, free, r)
        top_gain = sum(gain[j] for j in top)
        if room == math.inf or sum(self.en[j] for j in top) <= room or top_gain == math.inf:
            return top_gain, False
        items = _members(by_ratio, free)
        fractional, used = self._knapsack(items, room, gain)
        if used <= r or min(top_gain, fractional) <= need:
            return min(top_gain, fractional), True  # the knapsack's LP point has <= r members
        return min(top_gain, fractional, self._dual(items, r, room, gain, need)), True

    def _dual(self, items: list[int], r: int, room: float, gain: Sequence[float], need: float) -> float:
        """min over mu >= 0 of h(mu) = mu·room + Σ of the r largest positive (gain_j - mu·e_j).
        h is the Lagrangian dual of the LP with the energy row priced at mu (the cardinality
        row is then solved exactly by taking the r best); every mu gives a valid bound (weak
        duality), so stopping the bisection early only loosens it. h is convex and its slope
        is room - Σ e over the r chosen, which the bisection drives to zero."""
        g, e = [gain[j] for j in items], [self.en[j] for j in items]
        lo, hi = 0.0, max(gj / ej for gj, ej in zip(g, e, strict=True) if ej > 0)
        best = math.inf
        for _ in range(DUAL_STEPS):
            mu = (lo + hi) / 2
            top = sorted(((gj - mu * ej, ej) for gj, ej in zip(g, e, strict=True)), reverse=True)
            chosen = [(c, ej) for c, ej in top[:r] if c > 0]
            best = min(best, mu * room + sum(c for c, _ in chosen))
            if best <= need:
                break
            lo, hi = (mu, hi) if sum(ej for _, ej in chosen) > room else (lo, mu)
        return best

    def _knapsack(self, items: Sequence[int], room: float, gain: Sequence[float]) -> tuple[float, int]:
        """Fractional knapsack over `items` (in gain-per-joule order): the LP bound on Σ gain
        with Σ e <= room, and how many items its solution touches."""
        total = 0.0
        for n, j in enumerate(items):
            if self.en[j] <= room:
                total, room = total + gain[j], room - self.en[j]
            elif room > 0:
                return total + gain[j] * room / self.en[j], n + 1
            else:
                return total, n
        return total, len(items)


def subset_key(members: Sequence[int], lat: Sequence[float], en: Sequence[float], limits: Limits,
               groups: Groups = None) -> Key:
    """How a subset ranks among equally good ones, least first: fewer members, then the lower
    latency and energy (aggregation included), then the lower indices."""
    s = tuple(sorted(members))  # one order of summing, whichever order the members came in
    m, lim = len(s), limits
    return m, members_latency(s, lat, groups) + lim.agg_latency[m], sum(en[i] for i in s) + lim.agg_energy[m], s


def outranks(value: float, key: Key, other: tuple[float, Key]) -> bool:
    """Whether a subset beats `other` (value, key): a higher Q, or an equal Q with a lower key."""
    return value > other[0] + TOL or value >= other[0] - TOL and key < other[1]


def _members(order: Sequence[int], mask: int, limit: int | None = None) -> list[int]:
    """The indices of `mask` in `order`, at most `limit` of them."""
    return list(itertools.islice((i for i in order if mask >> i & 1), None if limit is None else max(limit, 0)))


def _prefix_masks(order: Sequence[int]) -> list[int]:
    """masks[t] = the first t indices of `order` as a bit mask."""
    return list(itertools.accumulate((1 << i for i in order), operator.or_, initial=0))


def _ratio(gain: float, energy: float) -> float:
    return gain / energy if energy > 0 else math.inf
