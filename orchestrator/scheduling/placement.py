"""Which worker each expert runs on.

An expert whose placement names a worker runs there, even where a persona over the same base
is pinned to another (the base then loads on each). The others are planned: experts over one
base model stay together (one load serves every persona over it) and follow the first pinned
one (by worker name); a base whose placement names a device profile goes to a worker of that
profile when the deployment has one, any other to a worker its kind computes on (a GPU engine
to a GPU worker, llama.cpp, CPU only here, to one without) where there is one. A base planned before
(`now`: where each expert runs now) stays on its worker while that is still one it may go to and
it still fits there beside the pinned ones and those kept before it (largest first): a move loads
it again (planned afresh, registering one expert moved others). The rest, new bases
and those that no longer fit, are placed largest first, each on the worker with the least work
planned among those where it still fits beside what is already placed, so what must stay
resident fits each device and a batch's experts spread over devices that run at once. A base
that fits nowhere goes to the worker with the most memory, where it is swapped in and out.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from experts.traits import traits
from experts.types import BaseModelSpec, ExpertSpec


@dataclass(frozen=True)
class Slot:
    """A worker as the planner sees it: its device profile and its memory budget."""

    name: str
    device: str
    memory_bytes: int
    gpus: float = 0.0  # the GPUs it reserves: where a GPU engine belongs and a CPU-only one does not


@dataclass
class _Load:
    used: int = 0
    work: float = 0.0
    bases: list[str] = field(default_factory=list)


SETTLE_ROUNDS = 3  # a plan planned again from itself settles in one round in every case found


class PlacementError(ValueError):
    """An expert names a worker the deployment does not have."""


def plan_placement(experts: Mapping[str, ExpertSpec], slots: Sequence[Slot],
                   memory: Callable[[BaseModelSpec], int], now: Mapping[str, str] | None = None) -> dict[str, str]:
    """Expert name → worker name, for every expert; `now`: expert name → the worker it runs on
    now, where it stays while it still fits (see the module doc). Planned again from itself until
    it stays (a few rounds): a base that fit nowhere, placed past a worker's memory, kept its place
    the next time ahead of a smaller one there, which then moved on a plain read with nothing changed."""
    placed = _plan(experts, slots, memory, now)
    for _ in range(SETTLE_ROUNDS):
        again = _plan(experts, slots, memory, placed)
        if again == placed:
            break
        placed = again
    return placed


def _plan(experts: Mapping[str, ExpertSpec], slots: Sequence[Slot],
          memory: Callable[[BaseModelSpec], int], now: Mapping[str, str] | None) -> dict[str, str]:
    if not slots:
        raise PlacementError("the deployment has no worker to place experts on")
    by_name = {s.name: s for s in slots}
    groups: dict[str, list[ExpertSpec]] = defaultdict(list)
    for spec in experts.values():
        groups[spec.base.key].append(spec)
    loads = {s.name: _Load() for s in slots}
    sizes = {key: memory(group[0].base) for key, group in groups.items()}
    chosen: dict[str, str] = {}
    pinned = {key: _pinned(group, by_name) for key, group in groups.items()}
    for key, workers in pinned.items():
        if workers:
            _place(groups[key], workers, sizes[key], loads, chosen)
    free = sorted((k for k, w in pinned.items() if not w), key=lambda k: (-sizes[k], k))
    asked = {key: _devices_asked(groups[key], slots) for key in free}
    moving = []  # kept ones first, so a new base cannot take the room a placed one holds
    for key in free:
        if (worker := _where_now(groups[key], now or {}, asked[key], loads, sizes[key])) is None:
            moving.append(key)
        else:
            _place(groups[key], [worker], sizes[key], loads, chosen)
    for key in moving:
        _place(groups[key], [_best(asked[key], loads, sizes[key])], sizes[key], loads, chosen)
    return {spec.name: chosen[spec.name] for spec in experts.values()}


def _pinned(group: Sequence[ExpertSpec], slots: Mapping[str, Slot]) -> list[str]:
    """The workers the group's experts name, sorted (the first is where the unpinned ones go)."""
    named = sorted({s.placement.worker for s in group if s.placement.worker is not None})
    for name in named:
        if name not in slots:
            raise PlacementError(f"expert placed on unknown worker {name!r}; the deployment has "
                                 f"{', '.join(sorted(slots))}")
    return named


def _place(group: Sequence[ExpertSpec], workers: Sequence[str], size: int, loads: Mapping[str, _Load],
           chosen: dict[str, str]) -> None:
    """Each expert on the worker it names, else on the first of `workers`. Personas pinned apart
    each run where they were told, so their base is resident (and its memory counted) on each."""
    for spec in group:
        chosen[spec.name] = spec.placement.worker or workers[0]
    for worker in workers:
        _add(loads[worker], group[0].base.key, size, sum(chosen[s.name] == worker for s in group))


def _where_now(group: Sequence[ExpertSpec], now: Mapping[str, str], candidates: Sequence[Slot],
               loads: Mapping[str, _Load], size: int) -> str | None:
    """The worker the group's base runs on now, if the group may still go there (its device and
    kind) and the base still fits there beside what is already placed; None: place it afresh."""
    held = {now[s.name] for s in group if s.name in now}
    return next((c.name for c in candidates if c.name in held and loads[c.name].used + size <= c.memory_bytes),
                None)


def _devices_asked(group: Sequence[ExpertSpec], slots: Sequence[Slot]) -> list[Slot]:
    asked = {s.placement.device for s in group if s.placement.device is not None}
    matching = [s for s in slots if s.device in asked]
    return matching or _computes_on(group[0].base, slots)


def _computes_on(base: BaseModelSpec, slots: Sequence[Slot]) -> list[Slot]:
    """The workers `base`'s kind computes on (`traits.compute`), where the deployment has one:
    a CPU-only model on a GPU worker competes with the CPU worker for cores neither shares out."""
    need = traits(base).compute
    fit = [s for s in slots if need is None or (s.gpus > 0) == (need == "gpu")]
    return fit or list(slots)


def _best(candidates: Sequence[Slot], loads: Mapping[str, _Load], size: int) -> str:
    fitting = [s for s in candidates if loads[s.name].used + size <= s.memory_bytes]
    if fitting:
        return min(fitting, key=lambda s: (loads[s.name].work, loads[s.name].used, s.name)).name
    return max(candidates, key=lambda s: (s.memory_bytes, s.name)).name


def _add(load: _Load, key: str, size: int, experts: int) -> None:
    load.used += size
    load.work += experts  # each expert over the base is recruited in its own right
    load.bases.append(key)
