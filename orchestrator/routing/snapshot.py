"""The routable pool at one moment: ready experts, the router over their evidence, the skill
vocabulary, the aggregator.

A `PoolSnapshot` is immutable; the service (`services.pool.PoolState`) swaps in a new one when
profiling finishes, so a query in flight always sees one consistent pool and a new expert joins
without a restart.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from experts.types import ExpertSpec
from orchestrator.routing.router import Router
from skills.vocabulary import SkillVocabulary


@dataclass(frozen=True)
class PoolSnapshot:
    experts: dict[str, ExpertSpec]
    router: Router
    vocabulary: SkillVocabulary
    aggregator: str | None
    competence: dict[str, float] = field(default_factory=dict)
