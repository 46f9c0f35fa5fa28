"""Quality functions of a subset: monotone under inclusion, as the exact search needs.

See `solver`'s module doc for what each models. A private part of the solver: import these
names from `orchestrator.budgets.solver`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

from orchestrator.budgets._search import QualityModel
from orchestrator.domain import ExpertScore

QualityName = Literal["noisy_or", "weighted_vote"]
QualitySpec = QualityName | QualityModel | Callable[[Sequence[int]], float]


def _log_gain(qs: Sequence[float]) -> tuple[float, ...]:
    return tuple(math.inf if q >= 1.0 else -math.log1p(-q) for q in qs)


def noisy_or(qs: Sequence[float]) -> QualityModel:
    """Q(S) = 1 - Π_{i in S} (1 - q_i): some member is right (independent errors)."""
    return _ranked(tuple(qs), noisy_or_profile)


def noisy_or_profile(p: Sequence[float]) -> float:
    return 1.0 - math.prod(1.0 - x for x in p)


def weighted_vote(qs: Sequence[float]) -> QualityModel:
    """Bayes-weighted vote over open answers: P(>= 2 right) + P(only the most reliable right)."""
    # Q <= noisy-or (nobody right -> the vote is wrong), so the noisy-or envelope bounds it.
    return _ranked(tuple(qs), weighted_vote_profile)


def weighted_vote_profile(p: Sequence[float]) -> float:
    if not p:
        return 0.0
    none, one = _none_and_exactly_one(p)
    star = max(range(len(p)), key=p.__getitem__)
    only_star = p[star] * math.prod(1.0 - x for k, x in enumerate(p) if k != star)
    return max(0.0, 1.0 - none - one + only_star)


def weighted_vote_above(qs: Sequence[float], floor: float) -> QualityModel:
    """The weighted vote where a member at or below `floor` moves no vote (its weight is the
    floor's): beside a member above it it adds nothing, alone it is worth its own q. Still
    ranked: raising a member past the floor only adds a voter, and one above it outscores
    every one below."""
    def profile(p: Sequence[float]) -> float:
        above = [x for x in p if x > floor]
        return weighted_vote_profile(above) if above else max(p, default=0.0)

    return _ranked(tuple(qs), profile)


def _ranked(qs: tuple[float, ...], profile: Callable[[Sequence[float]], float]) -> QualityModel:
    def value(members: Sequence[int]) -> float:
        return profile([qs[i] for i in members])

    return QualityModel(value, profile=profile, qualities=qs, log_gain=_log_gain(qs))


def _none_and_exactly_one(p: Sequence[float]) -> tuple[float, float]:
    """P(no member right) and P(exactly one right), by a two-state recursion (no division)."""
    none, one = 1.0, 0.0
    for x in p:
        none, one = none * (1.0 - x), one * (1.0 - x) + none * x
    return none, one


def monotone(fn: Callable[[Sequence[int]], float], submodular: bool = False) -> QualityModel:
    """Wrap any monotone set function over candidate indices (distinct, any order). The bound
    is Q of the upper corner; declare `submodular` (diminishing gains) for a much tighter one."""
    return QualityModel(fn, submodular=submodular)


def quality_model(quality: QualitySpec, qs: Sequence[float]) -> QualityModel:
    """The model a solver call names: a built-in by name, a model as is, any monotone callable."""
    if isinstance(quality, QualityModel):
        return quality
    if quality == "noisy_or":
        return noisy_or(qs)
    if quality == "weighted_vote":
        return weighted_vote(qs)
    if callable(quality):
        return monotone(quality)
    raise ValueError(f"unknown quality function {quality!r}")



def quality_from_weights(scores: Sequence[ExpertScore], q_max: float = 0.9) -> dict[str, float]:
    """Heuristic q_i = q_max · w_i / max w (until per-skill accuracy is calibrated)."""
    top = max((s.weight for s in scores), default=0.0)
    if top <= 0:
        return {s.name: 0.0 for s in scores}
    return {s.name: q_max * max(s.weight, 0.0) / top for s in scores}
