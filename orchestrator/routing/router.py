"""The router seam: what profiling learned in, scored experts for one query out.

The service and `bench/` both go through a `Router`, so the benchmark measures the code the
service runs. `SymbolicRouter` is the published Symbolic-MoE scorer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from orchestrator.routing.recruit import ExpertScore, RecruitMode, local_suitability, score_experts
from orchestrator.routing.voting import AnswerReliability
from skills.profiling import global_competence


@dataclass
class RoutingEvidence:
    """What profiling produced for the current pool.

    `profiles` maps expert → skill → Σ±1; `question_embeddings` (n × d, L2-normalised) and
    `correct` (expert → n booleans, aligned with the embeddings) are the per-question records
    that learned routers use; they are None for a pool profiled without them. `labels` (one per
    question: its MMLU subject or MMLU-Pro category, when the source has one) let the k-NN router
    shrink towards an expert's accuracy on the query's likely topic instead of overall.
    `choices` (expert → the option letter each answer picked, None when it picked none) let
    a vote weigh an answer by how reliable the expert is when it picks that letter.
    """

    profiles: dict[str, dict[str, float]]
    question_embeddings: np.ndarray | None = None
    correct: dict[str, np.ndarray] | None = None
    labels: list[str] | None = None
    choices: dict[str, list[str | None]] | None = None
    competence: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.competence:
            self.competence = global_competence({n: sum(p.values()) for n, p in self.profiles.items()})


class Router(Protocol):
    name: str
    preferred_mode: RecruitMode  # how a query that names no recruitment mode recruits
    reliability: AnswerReliability | None  # per-letter vote offsets, for routers with log-odds weights

    def score(self, skills: Sequence[str], query_embedding: np.ndarray | None) -> list[ExpertScore]:
        """Every eligible expert with its weight for this query, best first."""
        ...


class SymbolicRouter:
    """Symbolic-MoE as published: w_i = S_i·γ_i over the mapped skills."""

    name = "symbolic"
    preferred_mode: RecruitMode = "sample"  # the paper draws k experts from the weights
    reliability: AnswerReliability | None = None  # S_i·γ_i weights are not log-odds: as published

    def __init__(self, evidence: RoutingEvidence):
        self.evidence = evidence

    def score(self, skills: Sequence[str], query_embedding: np.ndarray | None = None) -> list[ExpertScore]:
        suitability = local_suitability(self.evidence.profiles, skills)
        return score_experts(suitability, self.evidence.competence)


