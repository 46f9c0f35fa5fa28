"""The router seam: what profiling learned in, scored experts for one query out.

The service and `bench/` both go through a `Router`, so the benchmark measures the code the
service runs. `SymbolicRouter` is the published Symbolic-MoE scorer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from orchestrator.routing.recruit import ExpertScore, local_suitability, score_experts
from skills.profiling import global_competence


@dataclass
class RoutingEvidence:
    """What profiling produced for the current pool.

    `profiles` maps expert → skill → Σ±1; `question_embeddings` (n × d, L2-normalised) and
    `correct` (expert → n booleans, aligned with the embeddings) are the per-question records
    that learned routers use; they are None for a pool profiled without them.
    """

    profiles: dict[str, dict[str, float]]
    question_embeddings: np.ndarray | None = None
    correct: dict[str, np.ndarray] | None = None
    competence: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.competence:
            self.competence = global_competence({n: sum(p.values()) for n, p in self.profiles.items()})


class Router(Protocol):
    name: str

    def score(self, skills: Sequence[str], query_embedding: np.ndarray | None) -> list[ExpertScore]:
        """Every eligible expert with its weight for this query, best first."""
        ...


class SymbolicRouter:
    """Symbolic-MoE as published: w_i = S_i·γ_i over the mapped skills."""

    name = "symbolic"

    def __init__(self, evidence: RoutingEvidence):
        self.evidence = evidence

    def score(self, skills: Sequence[str], query_embedding: np.ndarray | None = None) -> list[ExpertScore]:
        suitability = local_suitability(self.evidence.profiles, skills)
        return score_experts(suitability, self.evidence.competence)


