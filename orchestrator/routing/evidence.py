"""What routers learn from: the profiles and per-question records that profiling produced."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from orchestrator.aggregation.option_prior import OptionPrior
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
    `observed` (expert → n booleans) says which marks are known: profiling knows every expert's,
    a learned question (a competition, feedback) only those of the experts that answered it;
    None: all are known.
    `options` is how many lettered options its questions offered (the median of those with
    two or more; None: unknown): the chance level an expert's accuracy on them was measured at,
    against which the k-NN router weighs a free-text query, which has none of its own.
    `option_prior` is fitted on the profiling questions' options and gold letters (how their
    options were written), for the vote to start from (`aggregation.option_prior`; None: flat).
    """

    profiles: dict[str, dict[str, float]]
    question_embeddings: np.ndarray | None = None
    correct: dict[str, np.ndarray] | None = None
    labels: list[str] | None = None
    choices: dict[str, list[str | None]] | None = None
    competence: dict[str, float] = field(default_factory=dict)
    observed: dict[str, np.ndarray] | None = None
    learned_rows: int = 0  # how many of the last rows came from traffic (`routing.learning`), not profiling
    options: int | None = None
    option_prior: OptionPrior | None = None

    def __post_init__(self) -> None:
        if not self.competence:
            self.competence = global_competence({n: sum(p.values()) for n, p in self.profiles.items()})


def typical_options(counts: Iterable[int]) -> int | None:
    """The median option count of the questions that offer lettered options (None: none do)."""
    lettered = [n for n in counts if n >= 2]
    return round(statistics.median(lettered)) if lettered else None
