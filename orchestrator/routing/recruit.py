"""Symbolic-MoE recruitment: local suitability × global competence, then k draws.

S_i = Σ P_i[s] over the query's mapped skills (a skill named twice counts twice, as in the
paper's loop over keywords). w_i = S_i·γ_i over experts with S_i > 0; when no expert is
positive the paper shifts S to S − min + 1 over all experts. Draw k with replacement ∝ w
(an expert drawn twice answers twice), or take the deterministic top-k, or recruit dynamically
until the cumulative weight share passes p ("harder tasks need more experts"). The filter and
its fallbacks run over the experts that can take the query (`SymbolicRouter.score`'s `among`):
run over the whole pool, they dropped the ready experts when only excluded ones were positive.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from orchestrator.domain import ExpertScore, RecruitMode


def score(name: str, suitability: float, competence: float, weight: float) -> ExpertScore:
    # built unvalidated: the router computed these floats itself, once per expert per query,
    # and validating them cost more than the k-NN estimate they came from
    return ExpertScore.model_construct(name=name, suitability=float(suitability), competence=float(competence),
                                       weight=float(weight), recruited=0)


def local_suitability(profiles: Mapping[str, Mapping[str, float]], skills: Sequence[str]) -> dict[str, float]:
    """S_i for every profiled expert (0 for skills an expert was never tested on)."""
    return {name: float(sum(p.get(s, 0.0) for s in skills)) for name, p in profiles.items()}


def score_experts(suitability: Mapping[str, float], competence: Mapping[str, float]) -> list[ExpertScore]:
    """Weights w_i = S_i·γ_i, best first; ties broken by name so the order is reproducible."""
    positive = {n: s for n, s in suitability.items() if s > 0}
    if not positive and suitability:
        low = min(suitability.values())
        positive = {n: s - low + 1.0 for n, s in suitability.items()}
    scores = [score(n, s, competence.get(n, 0.0), s * competence.get(n, 0.0)) for n, s in positive.items()]
    if scores and sum(x.weight for x in scores) <= 0:  # all γ zero: fall back to suitability alone
        scores = [score(x.name, x.suitability, x.competence, x.suitability) for x in scores]
    return sorted(scores, key=lambda x: (-x.weight, x.name))


def recruit(
    scores: Sequence[ExpertScore],
    k: int,
    mode: RecruitMode = "sample",
    rng: random.Random | None = None,
    p: float = 0.8,
) -> list[str]:
    """The recruited expert names (repeats allowed in `sample` mode)."""
    if not scores or k < 1:
        return []
    if mode == "topk":
        return [x.name for x in scores[:k]]
    if mode == "dynamic":
        return _dynamic(scores, k, p)
    return _sample(scores, k, rng or random.Random())


def _sample(scores: Sequence[ExpertScore], k: int, rng: random.Random) -> list[str]:
    """k draws ∝ weight over the experts of positive weight. Without any (every γ zero, or a
    calibrated router's experts all at or below chance) there is nothing to draw by, and
    `random.choices` would raise, failing the query's whole batch: the best k are taken."""
    weighted = [x for x in scores if x.weight > 0]  # a negative weight would skew every draw
    if not weighted:
        return [x.name for x in scores[:k]]
    return rng.choices([x.name for x in weighted], weights=[x.weight for x in weighted], k=k)


def _dynamic(scores: Sequence[ExpertScore], k_max: int, p: float) -> list[str]:
    """Take experts in descending weight until their share of the total weight reaches p."""
    total = sum(x.weight for x in scores)
    chosen: list[str] = []
    acc = 0.0
    for x in scores[:k_max]:
        chosen.append(x.name)
        acc += x.weight
        if acc >= p * total:
            break
    return chosen
