"""The routable pool at one moment: ready experts, the router over their evidence, the skill
vocabulary, the aggregator, and where each expert runs and is costed.

A `PoolSnapshot` is immutable; the service (`services.pool.PoolState`) swaps in a new one when
the pool changes (an expert profiled, registered or removed: placement is planned again), so a
query in flight always sees one consistent pool and a new expert joins without a restart.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from experts.traits import traits
from experts.types import BaseModelSpec, ExpertSpec
from experts.workers import WorkerSpec
from orchestrator.budgets.planner import Site, site
from orchestrator.domain import Decision
from orchestrator.routing.evidence import RoutingEvidence
from orchestrator.routing.router import Router
from skills.vocabulary import SkillVocabulary


@dataclass(frozen=True)
class PoolSnapshot:
    experts: dict[str, ExpertSpec]
    router: Router
    vocabulary: SkillVocabulary
    aggregator: str | None
    competence: dict[str, float] = field(default_factory=dict)
    placement: dict[str, str] = field(default_factory=dict)  # expert → the worker it runs on
    workers: dict[str, WorkerSpec] = field(default_factory=dict)
    evidence: RoutingEvidence | None = None  # what the router was built from (it learns on top)
    uncertain: frozenset[str] = frozenset()  # new experts explored, not yet recruited

    @property
    def ready(self) -> list[str]:
        """The experts a query can be recruited to: not those still profiling, only explored."""
        return sorted(self.experts.keys() - self.uncertain)

    def worker_of(self, expert: str, default: str) -> str:
        return self.placement.get(expert, default)

    def sites(self) -> dict[str, Site]:
        """Each expert's costing site: its worker's device where it runs on one of its own."""
        return {n: site(spec, self.workers.get(self.placement.get(n, ""))) for n, spec in self.experts.items()}

    def workers_of(self, decision: Decision, default: str) -> frozenset[str]:
        """The workers whose devices the decision's generations take: its experts', competitors'
        and aggregator's (present in the pool), but not a model's served elsewhere, which takes
        none (its server's time). A stand-in for a failed expert may add one: it is not known here."""
        names = [*decision.recruited, *decision.competitors, *([decision.aggregator] if decision.aggregator else [])]
        specs = [(n, self.experts[n]) for n in names if n in self.experts]
        return frozenset(self.worker_of(n, default) for n, spec in specs if not traits(spec.base).served_elsewhere)

    def served_elsewhere(self, default: str) -> list[tuple[str, BaseModelSpec]]:
        """The pool's models served elsewhere, each with a worker it is called through (each worker
        an expert over it is placed on: placement is per expert), once each."""
        pairs = {(self.worker_of(n, default), spec.base.key): spec.base for n, spec in self.experts.items()
                 if traits(spec.base).served_elsewhere}
        return [(worker, base) for (worker, _), base in sorted(pairs.items())]
