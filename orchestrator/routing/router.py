"""The router seam: what profiling learned in, scored experts for one query out.

The service and `bench/` both go through a `Router`, so the benchmark measures the code the
service runs. `SymbolicRouter` is the published Symbolic-MoE scorer.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Protocol

import numpy as np

from orchestrator.aggregation.option_prior import OptionPrior
from orchestrator.aggregation.reliability import AnswerReliability
from orchestrator.domain import ExpertScore, RecruitMode
from orchestrator.routing.evidence import RoutingEvidence
from orchestrator.routing.recruit import local_suitability, score_experts


class Router(Protocol):
    name: str
    preferred_mode: RecruitMode  # how a query that names no recruitment mode recruits
    calibrated: bool  # suitability is an estimated P(correct), not a relative weight
    reliability: AnswerReliability | None  # per-letter vote offsets, for routers with log-odds weights
    option_prior: OptionPrior | None  # the vote's prior over options, for the same routers

    def score(self, skills: Sequence[str], query_embedding: np.ndarray | None, n_options: int = 0
              ) -> list[ExpertScore]:
        """Every eligible expert with its weight for this query, best first. `n_options`: how many
        lettered options the query offers (0: free text), the chance level of a calibrated weight."""
        ...

    def score_batch(self, skills: Sequence[Sequence[str]], query_embeddings: np.ndarray,
                    n_options: Sequence[int] | None = None) -> list[list[ExpertScore]]:
        """`score` for many queries (rows of `query_embeddings`, each with its skills and options)."""
        ...

    def among(self, scores: Sequence[ExpertScore], skills: Sequence[str], ready: Collection[str]
              ) -> list[ExpertScore]:
        """A query's `scores` (of the experts that can take it) when only `ready` ones can be
        recruited: the others (new experts being explored) keep their scores but must not change
        the ready ones'."""
        ...


class SymbolicRouter:
    """Symbolic-MoE as published: w_i = S_i·γ_i over the mapped skills."""

    name = "symbolic"
    preferred_mode: RecruitMode = "sample"  # the paper draws k experts from the weights
    calibrated = False
    reliability: AnswerReliability | None = None  # S_i·γ_i weights are not log-odds: as published
    option_prior: OptionPrior | None = None  # nor a likelihood ratio a prior's log ratio adds to

    def __init__(self, evidence: RoutingEvidence):
        self.evidence = evidence

    def score(self, skills: Sequence[str], query_embedding: np.ndarray | None = None, n_options: int = 0,
              among: Collection[str] | None = None) -> list[ExpertScore]:
        """`among`: the experts that can take the query (None: all). The S > 0 filter and its
        fallbacks run over those alone, so an expert dropped later cannot take the others down."""
        suitability = local_suitability(self.evidence.profiles, skills)  # S·γ has no chance level
        if among is not None:
            suitability = {n: s for n, s in suitability.items() if n in among}
        return score_experts(suitability, self.evidence.competence)

    def score_batch(self, skills: Sequence[Sequence[str]], query_embeddings: np.ndarray,
                    n_options: Sequence[int] | None = None) -> list[list[ExpertScore]]:
        return [self.score(s) for s in skills]

    def among(self, scores: Sequence[ExpertScore], skills: Sequence[str], ready: Collection[str]
              ) -> list[ExpertScore]:
        """The ready experts scored again among themselves: S > 0 and its fallbacks run over the
        pool, so over every expert they dropped all ready ones when only an explored (or
        ineligible) one was positive (a false NoExperts), or left a lone γ = 0 expert of weight 0
        that sampling could not draw from."""
        explored = [s for s in scores if s.name not in ready]
        certain = self.score(skills, among=ready)  # not only `scores`: the pool-wide filter dropped some
        return sorted([*certain, *explored], key=lambda x: (-x.weight, x.name))




def build_router(evidence: RoutingEvidence, name: str = "symbolic") -> Router:
    """`knn` (question-level neighbours, bench/routing_quality.py) needs per-question records;
    a pool profiled without them falls back to the published Symbolic-MoE scorer."""
    if name == "knn":
        from orchestrator.routing.knn_router import EvidenceError, KnnRouter

        try:
            return KnnRouter(evidence)
        except EvidenceError:
            return SymbolicRouter(evidence)
    return SymbolicRouter(evidence)
